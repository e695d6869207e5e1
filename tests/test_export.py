"""The model export: a folder of plain data that reloads exactly, written all at once, or an error before any work."""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file
from tiny_models import TINY  # tests/ is on sys.path in pytest's prepend mode

import utils
from utils import models
from utils.model_helpers import count_parameters
from utils.training import export
from utils.training.export import export_state_dict, load_exported_weights

ATOL = 1e-5  # the fp32 tolerance export.PARITY_ATOL states; reloads here are in fact bit-exact


class TiedLM(nn.Module):
    """An embedding, a mixer and an LM head tied to the embedding, with one saved and one unsaved buffer.

    Built from sizes, not from a config, so ``TiedLM(config)`` fails and the export's
    reload check falls back to a NaN-filled copy.
    """

    def __init__(self, vocab_size: int = 64, d_model: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.mix = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh())
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("offset", torch.full((d_model,), 0.1), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.embed(input_ids) * self.scale + self.offset))  # (B, T, V)


TIED_CONFIG = {"vocab_size": 64, "d_model": 16, "max_seq_len": 32}
# The token embedding and the LM head tied to it, in each kind of model below.
TIED_NAMES = {
    "gpt": ("tok_emb.weight", "lm_head.weight"),
    "hf_gpt2": ("transformer.wte.weight", "lm_head.weight"),
    "custom": ("embed.weight", "head.weight"),
}


def _gpt2():
    transformers = pytest.importorskip("transformers")
    # bos/eos inside the tiny vocabulary keep transformers from warning about the default 50256.
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config), config


def _build(kind: str):
    """``(model, config, rebuild)``: a seeded model, its config, and a function that builds a fresh one."""
    torch.manual_seed(0)
    if kind == "gpt":
        model, config = models.tiny_gpt(**TINY)
        return model, config, lambda: models.TinyTransformer(config)
    if kind == "hf_gpt2":
        model, config = _gpt2()
        return model, config, lambda: type(model)(config)
    return TiedLM(), dict(TIED_CONFIG), TiedLM


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        output = model(input_ids)
    return getattr(output, "logits", output)


def _ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file is exactly header + tensor bytes."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])  # the format: a little-endian u64, the JSON header, the bytes
    header = json.loads(data[8 : 8 + header_len])
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    assert len(data) == 8 + header_len + max(ends), "bytes beyond the tensors: not a plain safetensors file"
    return header


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("kind", "built_from"), [("gpt", "config"), ("hf_gpt2", "config"), ("custom", "copy")], ids=str
)
def test_export_reloads_exactly_with_strict_loading(tmp_path, kind, built_from):
    model, config, rebuild = _build(kind)
    result = export_state_dict(model, tmp_path / "export", config=config)

    parity = result["parity"]
    assert parity["status"] == "ok", parity["reason"]
    assert parity["built_from"] == built_from
    assert 0.0 <= parity["max_abs_diff"] <= ATOL == parity["atol"]
    assert result["export_dir"] == (tmp_path / "export").resolve()
    assert result["files"] == ["README.md", "config.json", "metadata.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging leftovers

    # Reload independently: a fresh model differs until the file is loaded into it with strict=True.
    fresh = rebuild()
    vocab_size = config["vocab_size"] if isinstance(config, dict) else config.vocab_size
    input_ids = _ids(vocab_size)
    expected = _logits(model, input_ids)
    assert not torch.allclose(_logits(fresh, input_ids), expected, atol=ATOL)
    missing, unexpected = load_model(fresh, tmp_path / "export" / "model.safetensors", strict=True)
    assert not missing and not unexpected
    torch.testing.assert_close(_logits(fresh, input_ids), expected, atol=ATOL, rtol=0)
    embedding, head = TIED_NAMES[kind]
    assert fresh.get_parameter(embedding) is fresh.get_parameter(head)  # still tied after loading


def test_tied_weights_are_stored_once_in_a_plain_safetensors_file(tmp_path):
    model, config, _ = _build("gpt")
    export_state_dict(model, tmp_path / "export", config=config)
    path = tmp_path / "export" / "model.safetensors"

    header = _safetensors_header(path)
    names = set(header) - {"__metadata__"}
    shared = {"tok_emb.weight", "lm_head.weight"}
    assert len(names & shared) == 1  # the tied embedding and LM head: one tensor on disk
    assert names | shared == set(model.state_dict())
    assert header["__metadata__"]["format"] == "pt"
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F32"}
    assert not path.read_bytes().startswith(b"PK")  # not torch.save's zip of pickles


def test_load_exported_weights_loads_strictly_on_the_models_device(tmp_path):
    model, config, rebuild = _build("gpt")
    export_state_dict(model, tmp_path / "export", config=config)
    input_ids = _ids(config.vocab_size)

    for target in (tmp_path / "export", str(tmp_path / "export" / "model.safetensors")):
        fresh = rebuild()
        assert load_exported_weights(fresh, target) is fresh
        torch.testing.assert_close(_logits(fresh, input_ids), _logits(model, input_ids), atol=ATOL, rtol=0)
        assert fresh.lm_head.weight is fresh.tok_emb.weight


def test_load_exported_weights_names_the_path_and_the_fix(tmp_path):
    model, config, _ = _build("gpt")
    export_state_dict(model, tmp_path / "export", config=config)
    with pytest.raises(FileNotFoundError, match=r"export_dir .*nowhere: no model.safetensors there"):
        load_exported_weights(model, tmp_path / "nowhere")
    wider, _ = models.tiny_gpt(**{**TINY, "d_model": 64})
    with pytest.raises(ValueError, match=r"export_dir .*export: the weights do not fit .*config.json"):
        load_exported_weights(wider, tmp_path / "export")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file" * 4)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_exported_weights(model, tmp_path / "junk.safetensors")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load_exported_weights(config, tmp_path / "export")


def _gpt_export(folder: Path, **sizes) -> Path:
    """An export of a tiny GPT (seed 1) with ``sizes`` overriding TINY's."""
    torch.manual_seed(1)
    model, config = models.tiny_gpt(**{**TINY, **sizes})
    return export_state_dict(model, folder, config=config)["export_dir"]


def _wrong_shape_export(folder: Path) -> Path:
    """The tiny GPT's weights with one tensor, ln_f.weight, of the wrong shape: every other one fits."""
    torch.manual_seed(1)
    model, _ = models.tiny_gpt(**TINY)
    state = {name: t.clone() for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied
    state["ln_f.weight"] = torch.ones(7)
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for name, tensor in after.items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=f"{name} was overwritten")


@pytest.mark.parametrize(
    ("make_export", "target_layers", "found"),
    [
        (lambda folder: _gpt_export(folder, n_layers=2), 1, r"unexpected keys \['blocks\.1\."),
        (lambda folder: _gpt_export(folder, n_layers=1), 2, r"missing keys \['blocks\.1\."),
        (_wrong_shape_export, 2, r"shape mismatches \['ln_f\.weight: export \(7,\) vs model \(32,\)'\]"),
    ],
    ids=["2-layer export into a 1-layer model", "1-layer export into a 2-layer model", "one tensor's shape"],
)
def test_weights_that_do_not_fit_leave_the_model_untouched(tmp_path, make_export, target_layers, found):
    folder = make_export(tmp_path / "export")
    torch.manual_seed(5)
    model, _ = models.tiny_gpt(**{**TINY, "n_layers": target_layers})
    before = _state(model)
    saved = load_file(folder / "model.safetensors")
    assert not torch.equal(saved["pos_emb.weight"], before["pos_emb.weight"])  # the control: a load would show
    with pytest.raises(ValueError, match="the weights do not fit this TinyTransformer exactly") as raised:
        load_exported_weights(model, folder)
    _assert_untouched(model, before)
    assert re.search(found, str(raised.value)) and str(raised.value).endswith("Nothing was loaded"), raised.value


def test_an_export_of_another_dtype_is_refused_naming_the_tensor_unless_converted(tmp_path):
    model, config, rebuild = _build("gpt")
    export_state_dict(model, tmp_path / "export", config=config)
    weights = tmp_path / "export" / "model.safetensors"
    halves = {name: t.half() for name, t in load_file(weights).items()}
    save_file(halves, str(weights), metadata={"format": "pt"})  # the export's weights rewritten as float16

    fresh = rebuild()
    before = _state(fresh)
    dtypes = r"is torch.float16 in the export but torch.float32 in the model \(and \d+ more\)"
    with pytest.raises(ValueError, match=rf"tensor '[\w.]+' {dtypes}; pass convert_dtype=True"):
        load_exported_weights(fresh, tmp_path / "export")
    _assert_untouched(fresh, before)
    with pytest.raises(ValueError, match="convert_dtype must be True or False"):
        load_exported_weights(fresh, tmp_path / "export", convert_dtype="yes")

    assert load_exported_weights(fresh, tmp_path / "export", convert_dtype=True) is fresh
    for name, tensor in fresh.state_dict().items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, model.state_dict()[name].half().float(), rtol=0, atol=0)
    assert fresh.lm_head.weight is fresh.tok_emb.weight


# --------------------------------------------------------------------------- the reload check never says ok wrongly


def test_a_factory_of_another_architecture_fails_the_check(tmp_path):
    model, config, _ = _build("gpt")
    deeper = dict(TINY, n_layers=3)
    result = export_state_dict(
        model, tmp_path / "export", config=config, model_factory=lambda: models.tiny_gpt(**deeper)[0]
    )

    parity = result["parity"]
    assert parity["status"] == "fail" and parity["built_from"] == "factory"
    assert "strict=True failed" in parity["reason"] and "blocks.2" in parity["reason"]
    assert parity["max_abs_diff"] is None
    assert result["metadata"]["parity"] == parity
    assert (tmp_path / "export" / "model.safetensors").is_file()  # still written, to inspect
    assert "Warning: the reload check failed" in (tmp_path / "export" / "README.md").read_text()


def test_same_shapes_but_different_logits_fail_the_check(tmp_path):
    """A bidirectional encoder has the GPT's every weight name and shape; only its logits differ."""
    model, config, _ = _build("gpt")
    result = export_state_dict(
        model, tmp_path / "export", config=config, model_factory=lambda: models.tiny_encoder(**TINY)[0]
    )
    parity = result["parity"]
    assert parity["status"] == "fail"
    assert parity["max_abs_diff"] > parity["atol"] == ATOL
    assert "logits differ" in parity["reason"]


def test_a_config_that_builds_another_model_fails_the_check(tmp_path):
    model, _, _ = _build("gpt")
    other = models.ModelConfig(**{**TINY, "n_layers": 1})  # a stale config: the model has 2 layers
    parity = export_state_dict(model, tmp_path / "export", config=other)["parity"]
    assert parity["status"] == "fail" and parity["built_from"] == "config"
    assert "Unexpected key(s)" in parity["reason"]


def test_the_copy_check_compares_with_the_file_not_with_stale_weights(tmp_path, monkeypatch):
    """Weights altered on their way to disk load fine but cannot pass: the copy's own were set to NaN."""
    import safetensors.torch

    save_model = safetensors.torch.save_model

    def save_altered(model, filename, metadata=None):
        altered = TiedLM()
        altered.load_state_dict(model.state_dict())
        with torch.no_grad():
            altered.mix[0].bias.add_(1e-2)
        save_model(altered, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_model", save_altered)
    model, config, _ = _build("custom")
    parity = export_state_dict(model, tmp_path / "export", config=config)["parity"]
    assert parity["built_from"] == "copy" and "TiedLM(config) failed" in parity["reason"]
    assert parity["status"] == "fail" and parity["max_abs_diff"] > ATOL


def test_the_copy_to_reload_into_has_every_saved_tensor_overwritten_and_its_ties_kept():
    model = TiedLM()
    copy = export._nan_copy(model)
    assert all(torch.isnan(t).all() for t in copy.state_dict().values())
    assert copy.head.weight is copy.embed.weight
    assert torch.equal(copy.offset, model.offset)  # not saved, so not exported: it keeps its built value
    assert torch.isfinite(model.embed.weight).all() and model.scale.item() == 0.5  # the original is untouched


def test_the_original_model_is_left_as_it_was_found(tmp_path):
    model, config, _ = _build("gpt")
    model.train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    rng = torch.get_rng_state()
    export_state_dict(model, tmp_path / "export", config=config)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert model.lm_head.weight.device.type == "cpu"
    assert torch.equal(torch.get_rng_state(), rng)  # building the fresh model did not move the caller's RNG


@pytest.mark.requires_cuda
def test_a_cuda_model_is_checked_and_stays_on_cuda(tmp_path):
    model, config, rebuild = _build("gpt")
    model.cuda()
    result = export_state_dict(model, tmp_path / "export", config=config)
    assert result["parity"]["status"] == "ok", result["parity"]["reason"]
    assert model.lm_head.weight.device.type == "cuda"
    assert result["metadata"]["environment"]["device"].startswith("cuda")
    fresh = load_exported_weights(rebuild(), tmp_path / "export")  # a CPU model gets CPU tensors
    input_ids = _ids(config.vocab_size)
    torch.testing.assert_close(_logits(fresh, input_ids), _logits(model, input_ids.cuda()).cpu(), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- what the folder says


def test_metadata_records_versions_metrics_environment_and_the_check(tmp_path):
    model, config, _ = _build("gpt")
    environment = {"device": "cpu", "torch_version": torch.__version__, "precision": "bf16"}
    results = {
        "model": model,
        "config": config,
        "precision": "bf16",
        "environment": environment,
        "val_loss": 2.5,
        "val_accuracy": torch.tensor(0.25),
        "best_value": float("nan"),
        "best_epoch": 3,
        "optimizer_steps": 120,
        "stopped_early": False,  # a flag, not a metric
        "loss_history": [3.0, 2.5],
    }
    result = export_state_dict(results, tmp_path / "export")
    metadata = json.loads((tmp_path / "export" / "metadata.json").read_text())

    assert metadata == result["metadata"]
    assert metadata["format_version"] == export.FORMAT_VERSION == 1
    assert metadata["utils_version"] == utils.__version__
    assert metadata["torch_version"] == torch.__version__
    assert metadata["safetensors_version"] == pytest.importorskip("safetensors").__version__
    assert metadata["model_class"] == "utils.models.TinyTransformer"
    assert metadata["config_class"] == "utils.models.ModelConfig"
    assert metadata["parameter_count"] == count_parameters(model)["total"]
    assert metadata["precision"] == "bf16"
    assert metadata["metrics"] == {
        "val_loss": 2.5,
        "val_accuracy": 0.25,
        "best_value": None,
        "best_epoch": 3,
        "optimizer_steps": 120,
    }
    assert metadata["environment"] == environment
    assert metadata["parity"]["status"] == "ok" and metadata["parity"] == result["parity"]
    config_json = json.loads((tmp_path / "export" / "config.json").read_text())
    assert models.ModelConfig(**config_json) == config


def test_a_bare_model_gets_the_environment_record(tmp_path):
    model, config, _ = _build("gpt")
    metadata = export_state_dict(model, tmp_path / "export", config=config)["metadata"]
    assert metadata["environment"]["device"] == "cpu" and "cpu_threads" in metadata["environment"]
    assert metadata["precision"] is None and metadata["metrics"] == {}


def test_model_card_shows_the_metrics_and_the_check(tmp_path):
    model, config, _ = _build("gpt")
    export_state_dict({"model": model, "config": config, "val_loss": 2.5, "best_epoch": 3}, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("# TinyTransformer\n")
    assert "| metric | value |" in card and "| val_loss | 2.5 |" in card and "| best_epoch | 3 |" in card
    assert f"{count_parameters(model)['total']:,} parameters" in card
    assert "Reload check: **ok**" in card
    assert 'load_model(model, "model.safetensors", strict=True)' in card


def _card_code(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("kind", ["gpt", "hf_gpt2"])
def test_the_model_cards_snippet_rebuilds_the_model(tmp_path, monkeypatch, kind):
    """The card's code, run as a user would in the export folder, gives the original's logits."""
    model, config, _ = _build(kind)
    export_state_dict(model, tmp_path / "export", config=config)
    code = _card_code((tmp_path / "export" / "README.md").read_text())
    ast.parse(code)
    monkeypatch.chdir(tmp_path / "export")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    input_ids = _ids(config.vocab_size)
    torch.testing.assert_close(_logits(namespace["model"], input_ids), _logits(model, input_ids), atol=ATOL, rtol=0)


def test_the_snippet_does_not_claim_a_class_rebuilds_from_its_config_when_it_does_not(tmp_path):
    model, config, _ = _build("custom")
    export_state_dict(model, tmp_path / "export", config=config)
    code = _card_code((tmp_path / "export" / "README.md").read_text())
    assert "config = json.load(f)" in code
    assert "model = TiedLM(...)  # build it exactly as the exported model was built" in code


# --------------------------------------------------------------------------- all at once, or nothing


def _fail_writing_the_weights(monkeypatch) -> None:
    """The weights file is half written when the disk fills up."""
    import safetensors.torch

    def half_write(model, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", half_write)


def test_a_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    model, config, _ = _build("gpt")
    _fail_writing_the_weights(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        export_state_dict(model, tmp_path / "export", config=config)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_export_survives_a_failed_overwrite(tmp_path, monkeypatch):
    model, config, _ = _build("gpt")
    export_state_dict(model, tmp_path / "export", config=config)
    before = _snapshot(tmp_path)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the model card is written

    monkeypatch.setattr(export, "model_card_text", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_state_dict(model, tmp_path / "export", config=config, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_export_and_leaves_no_leftovers(tmp_path):
    model, config, _ = _build("gpt")
    export_state_dict({"model": model, "config": config, "val_loss": 9.0}, tmp_path / "export")
    (tmp_path / ".export.staging-0123abcd").mkdir()  # what a killed export leaves behind
    result = export_state_dict({"model": model, "config": config, "val_loss": 1.0}, tmp_path / "export", overwrite=True)
    assert result["metadata"]["metrics"] == {"val_loss": 1.0}
    assert json.loads((tmp_path / "export" / "metadata.json").read_text())["metrics"] == {"val_loss": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_overwrite_never_replaces_a_folder_that_holds_no_export(tmp_path):
    model, config, _ = _build("gpt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"output_dir .*mine holds files but no earlier export"):
        export_state_dict(model, tmp_path / "mine", config=config, overwrite=True)
    assert _snapshot(tmp_path) == {"mine": b"<dir>", "mine/thesis.tex": b"years of work"}


# --------------------------------------------------------------------------- bad input: an error before any work


def _not_a_model_factory():
    return models.tiny_gpt(**TINY)  # (model, config): the usual slip


def _broken_factory():
    raise KeyError("d_model")


BAD_INPUTS = {
    "output_dir is a file": (dict(output_dir="afile"), ValueError, r"output_dir .*afile is a file; pass a folder"),
    "output_dir under a file": (dict(output_dir="afile/run"), ValueError, "is a file, so the folder cannot be made"),
    "existing export without overwrite": (dict(output_dir="old"), ValueError, r"already holds files; .*overwrite=True"),
    "output_dir not a path": (dict(output_dir=42), ValueError, "output_dir must be a file or folder path"),
    "overwrite not a bool": (dict(overwrite="yes"), ValueError, "overwrite must be True or False"),
    "results without a model": (dict(results_or_model={"val_loss": 1.0}), ValueError, "no model under 'model'"),
    "results with a (model, config) tuple": (
        dict(results_or_model={"model": ("m", "c")}),
        ValueError,
        "pass the trained model itself",
    ),
    "not a module": (dict(results_or_model="model.pt"), TypeError, "must be a torch.nn.Module or a results dict"),
    "a model class": (dict(results_or_model=models.TinyTransformer), TypeError, "not its class"),
    "config of an unknown type": (dict(config=42), TypeError, "config must be a dataclass, dict, SimpleNamespace"),
    "factory not callable": (dict(model_factory=42), TypeError, "model_factory must be a function"),
    "factory returns a tuple": (dict(model_factory=_not_a_model_factory), TypeError, r"not a \(model, config\) tuple"),
    "factory returns None": (
        dict(model_factory=lambda: None),
        TypeError,
        "must return a torch.nn.Module, got NoneType",
    ),
    "factory raises": (dict(model_factory=_broken_factory), RuntimeError, r"model_factory\(\) failed with KeyError"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, monkeypatch, case):
    model, config, _ = _build("gpt")
    export_state_dict(model, tmp_path / "old", config=config)
    (tmp_path / "afile").write_text("keep me")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    kwargs, error, message = BAD_INPUTS[case]
    arguments = {"results_or_model": model, "output_dir": "new", "config": config, **kwargs}
    with pytest.raises(error, match=message):
        export_state_dict(arguments.pop("results_or_model"), arguments.pop("output_dir"), **arguments)
    assert _snapshot(tmp_path) == before


def test_a_factory_must_build_a_new_model_not_return_the_exported_one(tmp_path):
    model, config, _ = _build("gpt")
    with pytest.raises(ValueError, match="returned the model being exported"):
        export_state_dict(model, tmp_path / "export", config=config, model_factory=lambda: model)
    with pytest.raises(TypeError, match="not a model|got TinyTransformer"):
        export_state_dict(model, tmp_path / "export", config=config, model_factory=model)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_any_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"config is required: TiedLM has no usable \.config"):
        export_state_dict(TiedLM(), tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_without_safetensors_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    model, config, _ = _build("gpt")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        export_state_dict(model, tmp_path / "export", config=config)
    assert list(tmp_path.iterdir()) == []


def test_the_folder_helpers_sit_at_the_bottom_of_the_package():
    """utils.folders imports only the standard library (and at most utils.checks)."""
    tree = ast.parse((Path(utils.__file__).parent / "folders.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "shutil" in imported  # the control: the parser sees the imports
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"utils.checks"}, outside
