"""Tier 3: is my design better than a standard transformer of the same size, trained the same way?

``test_benchmark_comparison`` trains the user's model and a baseline through
the one engine (``utils.training.loop.train``) with the same settings: the
same built-in corpus, the same number of optimizer steps, the same seed and
precision. Both are then evaluated on the same held-out text and compared
side by side: parameters, validation loss and perplexity, next-token accuracy,
training tokens/s and step time, inference latency (Tier 1's timing) and peak
training memory (the CUDA allocator, or Tier 1's labelled estimate on CPU).

The default baseline is built here: the built-in decoder-only GPT
(``utils.models.tiny_gpt``) with the user's vocabulary and sequence length, in
the shape whose parameter count is closest to the user's model.

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt()
    >>> report = test_benchmark_comparison(model, config)
    >>> report["verdict"]
    "your model reaches val loss 2.43 vs the baseline's 2.43 at 1.00x its parameters and 1.00x its step time: ..."
    >>> report["summary"]                   # metric, yours, baseline, ratio, note
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import statistics
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils import tier1_critical_validation as tier1
from utils.checks import check_positive_int
from utils.device import reset_peak_memory, resolve_device
from utils.model_helpers import config_size, count_parameters, detect_vocab_size, validate_model
from utils.models import ModelConfig, TinyTransformer
from utils.records import environment_record
from utils.training import loop
from utils.training.data import ByteTokenizer, prepare_lm_data

DEFAULT_TRAIN_STEPS = 200
DEFAULT_N_SAMPLES = 64
# Both models train from scratch, so the comparison's default learning rate is a from-scratch one
# (test_fine_tuning's 5e-5 suits a pretrained model and would leave both near chance).
DEFAULT_LEARNING_RATE = 1e-3
# The default baseline's parameter count is within this share of the user's whenever some shape
# of the built-in GPT gets there; a note says so when none does.
PARAMETER_TOLERANCE = 0.05
# Among shapes this close to the best count (as a share of the target), the one nearest the
# user's d_model and n_layers wins, so the baseline looks like the user's model where it can.
SHAPE_SLACK = 0.005
BASELINE_D_MODELS = tuple(range(16, 4097, 16))
BASELINE_LAYERS = tuple(range(1, 49))
# tiny_gpt's own aspect (d_model 128 over 4 layers): the shape preferred when the config gives none.
DEFAULT_WIDTH_PER_LAYER = 32
# One seed, a short run: a loss (or accuracy) within this share of the baseline's is "about equal".
EQUAL_MARGIN = 0.02
# A model "learned" when its validation loss ended this share below its first logged training loss.
LEARNED_MARGIN = 0.05
# Inference timing: the two models take turns, this many rounds, each a warm-up then timed passes.
LATENCY_ROUNDS, LATENCY_WARMUP, LATENCY_ITERS_PER_ROUND = 4, 3, 5
HF_PREFIX = "hf:"
MB = 2**20

# TrainingSettings fields the comparison sets itself, and why.
_RESERVED_OPTIONS = {
    "n_epochs": "train_steps= sets the budget in optimizer steps",
    "max_steps": "train_steps= sets the budget in optimizer steps",
    "max_val_batches": "n_samples= sets how many held-out sequences are evaluated",
    "checkpoint_dir": "each model trains once, from its own initial weights, without checkpoints",
    "resume_from": "each model trains once, from its own initial weights, without checkpoints",
    "load_best": "each model trains once, from its own initial weights, without checkpoints",
    "monitor": "each model trains once, from its own initial weights, without checkpoints",
    "mode": "each model trains once, from its own initial weights, without checkpoints",
    "use_wandb": "the comparison does not log to W&B; log each model with test_fine_tuning",
    "wandb_project": "the comparison does not log to W&B; log each model with test_fine_tuning",
    "wandb_prefix": "the comparison does not log to W&B; log each model with test_fine_tuning",
}


@dataclass(frozen=True)
class Contender:
    """One side of the comparison.

    Attributes:
        model: what is trained: a copy of a user's module, or a baseline built here.
        config: its config, as the engine reads it.
        vocab_size: its vocabulary (config, else the output width).
        description: how it came to be, for the report.
    """

    model: nn.Module
    config: Any
    vocab_size: int
    description: dict[str, Any]


def test_benchmark_comparison(
    model: nn.Module,
    config: Any,
    baseline: Any = None,
    test_data: Any = None,
    n_samples: int = DEFAULT_N_SAMPLES,
    *,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    seed: int = 0,
    progress: bool = True,
    **training_options: Any,
) -> dict[str, Any]:
    """Train your model and a standard transformer the same way, and compare them side by side.

    Your model is never changed: a deep copy of it is trained (and so is a copy of a baseline
    module you pass), so your weights, gradients, mode and device stay as they were. Both copies
    train on the built-in corpus (Python's standard-library source, byte tokenized) for
    ``train_steps`` optimizer steps, with the same seed, data order, precision and settings, then
    are evaluated on the same ``n_samples`` held-out sequences (the corpus tail, never trained on,
    or ``test_data``). The baseline gets the same seed but, being a different design, its own
    initial weights.

    Args:
        model: your ``nn.Module``; forward takes ``input_ids`` (B, T) and returns logits (B, T, V).
        config: its config; ``vocab_size`` and ``max_seq_len`` are read from it when present.
        baseline: None for the built-in GPT sized to your model (see ``default_baseline``); a
            ``(module, config)`` tuple; or ``'hf:NAME'``, a Hugging Face causal LM whose config is
            in the local cache (or a local folder, ``'hf:/path'``). 'hf:' models are read offline
            only (``local_files_only=True`` with the Hub in offline mode, so nothing is ever
            downloaded) and built from their config with fresh weights under ``seed``: a pretrained
            baseline would not be trained the same way. A baseline that cannot be compared (not
            cached, not a causal LM, a vocabulary smaller than yours, fewer positions than
            ``seq_len``; the same rule for modules and 'hf:' names) gives ``status='skipped'`` with
            the reason, and a warning, before any training.
        test_data: the evaluation text: None for the built-in corpus's held-out tail, or what
            ``test_fine_tuning`` takes as ``val_data`` (strings, a text file, token ids, a
            Dataset). Text is byte tokenized, as the training corpus is.
        n_samples: held-out sequences evaluated (at most as many as the evaluation data holds).
        train_steps: optimizer steps for each model.
        precision: as for ``test_fine_tuning`` ('auto' follows ``use_amp``: fp32 unless it is True).
        device: 'auto', 'cpu', 'cuda' or a torch.device; both models train there.
        seed: seeds both runs, and the baseline's initial weights.
        progress: show the engine's progress bars.
        **training_options: other ``TrainingSettings`` fields, the same for both models:
            ``learning_rate`` (default 1e-3 here), ``batch_size``, ``seq_len`` (default: your
            config's ``max_seq_len``), ``max_corpus_bytes``, ``gradient_accumulation_steps``,
            ``warmup_steps``, ``grad_clip``, ``weight_decay``, ``log_every``, ``init_loss_scale``,
            ``use_amp``, ``compile``. An unknown name is an error.

    Returns:
        A dict: ``status`` ('ok' or 'skipped'), ``verdict`` (one line), ``judgement`` ('better',
        'worse', 'about equal', or None when skipped), ``summary`` (DataFrame: metric, yours,
        baseline, ratio = yours / baseline, note), ``figure`` (both loss curves and bars for the
        rest), ``yours`` and ``baseline`` (each model's engine results plus ``step_time_ms``,
        ``latency_median_ms``, ``latency_p95_ms``, ``peak_memory_mb``, ``memory_method`` and
        ``training_warnings``), ``baseline_description``, ``loss_comparable`` and ``loss_note``
        (val loss and perplexity are compared only over the same vocabulary), ``notes``,
        ``settings`` (the environment record and the comparison's settings) and, when skipped,
        ``reason``.

    Raises:
        TypeError, ValueError: on a bad argument, an unknown option, or a model whose vocabulary
            cannot read the byte-level corpus, before any work starts.
        NonFiniteLossError: when either model's loss turns NaN/Inf.
    """
    validate_model(model)
    _check_baseline_argument(baseline)
    settings = _check_arguments(
        n_samples, train_steps, training_options, precision=precision, device=device, seed=seed, progress=progress
    )
    your_vocab, seq_len = _read_your_sizes(model, config, settings)
    settings = settings.replace(seq_len=seq_len)
    eval_data, n_train = _evaluation_data(test_data, n_samples, your_vocab, settings)
    settings = settings.replace(n_epochs=_epochs_for(train_steps, n_train, settings))
    rival = _resolve_baseline(baseline, model, config, your_vocab, seq_len, seed)
    if isinstance(rival, str):
        return _skipped(rival, baseline, settings)
    yours = Contender(_training_copy(model, "model"), config, your_vocab, {"name": type(model).__name__})
    arms = {"yours": yours, "baseline": rival}
    results = {name: _train_and_measure(arm, settings, eval_data) for name, arm in arms.items()}
    for name, latency in _time_inference(arms, settings, results["yours"]["precision"]).items():
        results[name].update(latency)
    evaluated = f"{n_samples} sequences of " + ("test_data" if test_data is not None else "the held-out corpus tail")
    return _compare(arms, results, settings, evaluated)


test_benchmark_comparison.__test__ = False  # a library function, not a pytest test


# -- arguments -----------------------------------------------------------------


def _check_baseline_argument(baseline: Any) -> None:
    """The baseline's form: None, a (module, config) pair, or an 'hf:NAME' string."""
    if baseline is None:
        return
    if isinstance(baseline, str):
        if not baseline.startswith(HF_PREFIX) or not baseline[len(HF_PREFIX) :].strip():
            raise ValueError(
                f"baseline={baseline!r}: a string baseline must be 'hf:NAME' (a Hugging Face model in the local "
                "cache, e.g. 'hf:gpt2', or a local folder 'hf:/path'); pass baseline=None for the built-in GPT"
            )
        return
    if isinstance(baseline, nn.Module):
        raise TypeError("baseline must be a (module, config) tuple, not a bare module; pass baseline=(module, config)")
    if not isinstance(baseline, (tuple, list)) or len(baseline) != 2 or not isinstance(baseline[0], nn.Module):
        raise TypeError(
            f"baseline must be None, a (module, config) tuple or 'hf:NAME', got {type(baseline).__name__}; "
            "e.g. baseline=tiny_gpt(d_model=64)"
        )


def _check_arguments(
    n_samples: Any, train_steps: Any, options: dict[str, Any], **explicit: Any
) -> loop.TrainingSettings:
    """Every number and option, checked before any work; returns the settings both models share."""
    check_positive_int(n_samples, "n_samples")
    check_positive_int(train_steps, "train_steps")
    for name, why in _RESERVED_OPTIONS.items():
        if name in options:
            raise TypeError(f"test_benchmark_comparison does not take {name}=: {why}")
    known = {f.name for f in dataclasses.fields(loop.TrainingSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        accepted = sorted(known - set(_RESERVED_OPTIONS) - set(explicit))
        raise TypeError(f"test_benchmark_comparison got unknown option(s) {unknown}; it passes on {accepted}")
    options = {"learning_rate": DEFAULT_LEARNING_RATE, **options}
    settings = loop.TrainingSettings(max_steps=train_steps, max_val_batches=None, **explicit, **options)
    if settings.warmup_steps is not None and settings.warmup_steps > train_steps:
        raise ValueError(f"warmup_steps={settings.warmup_steps} exceeds train_steps={train_steps}; lower it")
    return settings


def _read_your_sizes(model: nn.Module, config: Any, settings: loop.TrainingSettings) -> tuple[int, int]:
    """Your model's vocabulary and the sequence length both models train at."""
    vocab_size, seq_len, _ = loop.read_model_sizes(model, config, settings)  # the engine's own reading
    if vocab_size < ByteTokenizer.vocab_size:
        raise ValueError(
            f"your model's vocab_size is {vocab_size}, but the comparison trains on the built-in byte-level "
            f"corpus, which needs vocab_size >= {ByteTokenizer.vocab_size}; build the model with vocab_size=256 "
            "(or more) to compare it"
        )
    return vocab_size, int(seq_len)


def _evaluation_data(
    test_data: Any, n_samples: int, vocab_size: int, settings: loop.TrainingSettings
) -> tuple[torch.utils.data.Dataset, int]:
    """The first ``n_samples`` held-out sequences (the corpus tail, or ``test_data``), and the train set's size."""
    try:
        data = prepare_lm_data(
            None, test_data, vocab_size=vocab_size, seq_len=settings.seq_len, max_corpus_bytes=settings.max_corpus_bytes
        )
    except (TypeError, ValueError) as err:
        if test_data is None:
            raise
        # The data layer names what it was given by its own parameter, val_data; the caller passed test_data.
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(str(err).replace("val_data", "test_data")) from err
    if len(data.val) < n_samples:
        if test_data is not None:
            where, more = "test_data holds", "more text"
        else:
            where, more = "the corpus tail holds", "a larger max_corpus_bytes"
        raise ValueError(
            f"n_samples={n_samples}, but {where} {len(data.val)} sequences of up to {settings.seq_len} tokens; "
            f"pass n_samples<={len(data.val)}, or {more}"
        )
    return torch.utils.data.Subset(data.val, range(n_samples)), len(data.train)


def _epochs_for(train_steps: int, n_train: int, settings: loop.TrainingSettings) -> int:
    """Enough passes over the training set for ``train_steps`` steps; validation runs once per pass."""
    steps_per_epoch = math.ceil(math.ceil(n_train / settings.batch_size) / settings.gradient_accumulation_steps)
    return max(1, math.ceil(train_steps / steps_per_epoch))


def _training_copy(module: nn.Module, name: str) -> nn.Module:
    """A deep copy to train, so the caller's module keeps its weights, gradients, mode and device."""
    try:
        return copy.deepcopy(module)
    except Exception as err:  # a module holding a lock, a file or a generator, say
        raise TypeError(
            f"{name} could not be deep-copied ({type(err).__name__}: {err}); the comparison trains a copy so "
            "that yours stays as it is. Make the module copyable (copy.deepcopy) to compare it"
        ) from err


# -- the baseline ----------------------------------------------------------------


def _resolve_baseline(
    baseline: Any, your_model: nn.Module, your_config: Any, your_vocab: int, seq_len: int, seed: int
) -> Contender | str:
    """The baseline to train, or the reason it cannot be compared (the same rule for modules and 'hf:' names)."""
    if baseline is None:
        # The user's max_seq_len when the config gives one: position embeddings are part of its count.
        max_seq_len = config_size(your_config, "max_seq_len") or seq_len
        model, config = default_baseline(your_model, your_config, max_seq_len=max_seq_len, seed=seed)
        description = {"kind": "default", "name": "tiny_gpt", **dataclasses.asdict(config)}
        return Contender(model, config, your_vocab, description)
    if isinstance(baseline, str):
        name = baseline[len(HF_PREFIX) :].strip()
        loaded = _load_hf_baseline(name, seed)
        if isinstance(loaded, str):
            return loaded
        (model, config), kind = loaded, "hf"
    else:
        (model, config), kind, name = baseline, "module", type(baseline[0]).__name__
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, seq_len))
    misfit = _baseline_misfit(vocab_size, config_size(config, "max_seq_len"), your_vocab, seq_len)
    if misfit is not None:
        return f"the {kind} baseline {name!r} cannot be compared: {misfit}"
    if kind == "module":  # built by the caller: train a copy, as for your model
        model = _training_copy(model, "the baseline module")
    description = {"kind": kind, "name": name, "class": type(model).__name__, "vocab_size": vocab_size}
    if kind == "hf":
        description["weights"] = "fresh, drawn under seed from the cached config (pretrained weights unused)"
    return Contender(model, config, vocab_size, description)


def _baseline_misfit(vocab_size: int, max_seq_len: int | None, your_vocab: int, seq_len: int) -> str | None:
    """Why the baseline cannot train on the same token ids at the same length, or None when it can."""
    if vocab_size < your_vocab:
        return (
            f"its vocabulary ({vocab_size}) is smaller than your model's ({your_vocab}), so it cannot read the "
            f"same token ids; pass a baseline with vocab_size >= {your_vocab}, or baseline=None"
        )
    if max_seq_len is not None and max_seq_len < seq_len:
        return (
            f"it takes at most {max_seq_len} positions, fewer than seq_len={seq_len}; pass seq_len<={max_seq_len} "
            "or a baseline with more positions"
        )
    return None


def default_baseline(
    model: nn.Module, config: Any, *, max_seq_len: int | None = None, seed: int = 0
) -> tuple[TinyTransformer, ModelConfig]:
    """The built-in GPT with ``model``'s vocabulary and sequence length, sized to its parameter count.

    Every shape with ``d_model`` in ``BASELINE_D_MODELS`` and ``n_layers`` in ``BASELINE_LAYERS`` is
    counted (exactly, without building it). The closest count wins; among shapes within
    ``SHAPE_SLACK`` of it, the one nearest the config's ``d_model`` and ``n_layers`` (or, when it
    gives neither, nearest tiny_gpt's 32 channels per layer). The count does not depend on
    ``n_heads``: the config's head count is kept where it divides ``d_model``, else heads of 32
    (or 16) channels. The weights are drawn under ``seed``; the global RNG is left as it was.

    Args:
        model: the model to match; its total parameter count (shared weights once) is the target.
        config: its config: ``vocab_size`` (else the output width), ``max_seq_len``, and the
            optional ``d_model``, ``n_layers`` and ``n_heads`` the shape leans towards.
        max_seq_len: the baseline's ``max_seq_len``; default the config's.
        seed: seeds the baseline's initial weights.

    Example:
        >>> baseline, baseline_config = default_baseline(model, config)
        >>> count_parameters(baseline)["total"] / count_parameters(model)["total"]
    """
    validate_model(model)
    check_positive_int(max_seq_len, "max_seq_len", allow_none=True)
    max_seq_len = max_seq_len or config_size(config, "max_seq_len")
    if max_seq_len is None:
        raise ValueError("config has no max_seq_len (or n_positions/max_position_embeddings); pass max_seq_len=")
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, max_seq_len))
    preferred = (config_size(config, "d_model"), config_size(config, "n_layers"))
    d_model, n_layers = _closest_shape(count_parameters(model)["total"], vocab_size, max_seq_len, preferred)
    n_heads = config_size(config, "n_heads")
    if not n_heads or d_model % n_heads:
        n_heads = d_model // 32 if d_model % 32 == 0 else d_model // 16
    sizes = ModelConfig(
        vocab_size=vocab_size, max_seq_len=max_seq_len, d_model=d_model, n_layers=n_layers, n_heads=n_heads
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyTransformer(sizes), sizes


def gpt_parameter_count(vocab_size: int, max_seq_len: int, d_model: int, n_layers: int) -> int:
    """Parameters of ``tiny_gpt`` with these sizes (the LM head shares the token embedding)."""
    # Per block: two LayerNorms (4d), qkv (3d^2 + 3d), proj (d^2 + d), MLP (8d^2 + 5d).
    block = 12 * d_model**2 + 13 * d_model
    return (vocab_size + max_seq_len) * d_model + n_layers * block + 2 * d_model  # + the final LayerNorm


def _closest_shape(
    target: int, vocab_size: int, max_seq_len: int, preferred: tuple[int | None, int | None]
) -> tuple[int, int]:
    """(d_model, n_layers) with the count closest to ``target``, nearest the preferred shape among near-ties."""
    counts = {
        (d, n): gpt_parameter_count(vocab_size, max_seq_len, d, n) for d in BASELINE_D_MODELS for n in BASELINE_LAYERS
    }
    errors = {shape: abs(count - target) / target for shape, count in counts.items()}
    best = min(errors.values())
    near = [shape for shape, error in errors.items() if error <= best + SHAPE_SLACK]
    return min(near, key=lambda shape: (_shape_distance(shape, preferred), errors[shape]))


def _shape_distance(shape: tuple[int, int], preferred: tuple[int | None, int | None]) -> float:
    """How far (d_model, n_layers) is from the preferred one, on a log scale."""
    (d_model, n_layers), (want_d, want_n) = shape, preferred
    if want_d is None and want_n is None:
        return abs(math.log(d_model / n_layers / DEFAULT_WIDTH_PER_LAYER))
    return sum(abs(math.log(have / want)) for have, want in ((d_model, want_d), (n_layers, want_n)) if want)


def _load_hf_baseline(name: str, seed: int) -> tuple[nn.Module, Any] | str:
    """A causal LM built from a locally cached Hugging Face config, or the reason it cannot be."""
    try:
        import transformers
    except ImportError:
        return f"'hf:{name}' needs the 'transformers' package; install it with `pip install transformers`"
    with hub_offline():
        try:
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as err:
            return (
                f"'hf:{name}' is not in the local Hugging Face cache ({type(err).__name__}), and this comparison "
                f"never downloads. Fetch it once where there is a network (`hf download {name} config.json`), "
                "pass a local folder as 'hf:/path/to/folder', or baseline=None for the built-in GPT"
            )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return transformers.AutoModelForCausalLM.from_config(config), config
    except (ValueError, KeyError) as err:
        return f"'hf:{name}' ({type(config).__name__}) has no causal-LM head to train: {err}"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hold the Hugging Face Hub offline for a block, then restore what was set.

    ``local_files_only=True`` alone is not enough: ``huggingface_hub`` still fetches a registry
    for its user-agent header unless its ``constants.HF_HUB_OFFLINE`` is set, and that constant is
    read from the environment once, at import. So both the environment and the constant are set
    here (the one place this module touches ``huggingface_hub``'s internals).
    """
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _skipped(reason: str, baseline: Any, settings: loop.TrainingSettings) -> dict[str, Any]:
    """The result of a comparison that could not run: the reason, as data and as a warning."""
    warnings.warn(f"test_benchmark_comparison skipped: {reason}", stacklevel=3)
    if isinstance(baseline, str):
        kind, name = "hf", baseline[len(HF_PREFIX) :].strip()
    else:
        kind, name = "module", type(baseline[0]).__name__
    return {
        "status": "skipped",
        "reason": reason,
        "verdict": f"skipped: {reason}",
        "judgement": None,
        "summary": None,
        "figure": None,
        "yours": None,
        "baseline": None,
        "baseline_description": {"kind": kind, "name": name},
        "loss_comparable": None,
        "loss_note": None,
        "notes": [reason],
        "settings": _settings_record(settings, resolve_device(settings.device), None),
    }


# -- training and measuring --------------------------------------------------------


def _train_and_measure(
    arm: Contender, settings: loop.TrainingSettings, eval_data: torch.utils.data.Dataset
) -> dict[str, Any]:
    """Train one model through the engine and read its training memory."""
    trained: dict[str, Any] = {}

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trained.update(loop.train(arm.model, arm.config, settings, None, eval_data))
        # Kept as data (the engine's "not causal" warning changes how to read the verdict), and passed on.
        trained["training_warnings"] = [str(w.message) for w in caught]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    device = resolve_device(settings.device)
    memory = _train_measuring_memory(run, arm, settings, device)
    return {**trained, **memory, "step_time_ms": _median_step_ms(trained["step_times_s"])}


def _train_measuring_memory(
    run: Any, arm: Contender, settings: loop.TrainingSettings, device: torch.device
) -> dict[str, Any]:
    """Run the training; on CUDA its allocator peak, elsewhere Tier 1's estimate for one training step."""
    if device.type == "cuda":
        # The peak is taken above what was allocated before the run; weights already on the GPU
        # (a copy of a model that lives there) are training memory too, so they are added back.
        tensors = (*arm.model.parameters(), *arm.model.buffers())
        resident = sum(t.numel() * t.element_size() for t in tensors if t.is_cuda)
        reset_peak_memory(device)
        peak_bytes = tier1._cuda_peak_bytes(run, device) + resident
        return {"peak_memory_mb": peak_bytes / MB, "memory_method": "cuda_allocator"}
    run()
    footprint = tier1.test_memory_footprint(
        arm.model, _sizes_config(arm, settings), batch_sizes=(settings.batch_size,), optimizer="adamw", progress=False
    )
    row = footprint["table"].query("mode == 'forward_backward'").iloc[0]
    return {"peak_memory_mb": float(row["total_mb"]), "memory_method": str(row["method"])}


def _time_inference(
    arms: dict[str, Contender], settings: loop.TrainingSettings, precision: str
) -> dict[str, dict[str, Any]]:
    """Tier 1's forward latency for both trained models, median and p95, at the training batch shape.

    The models take turns, ``LATENCY_ROUNDS`` times (each turn warms up, then times), so a burst
    of load on a shared machine falls on both rather than on whichever model ran then.
    """
    samples_ms: dict[str, list[float]] = {name: [] for name in arms}
    errors: dict[str, str] = {}
    for _ in range(LATENCY_ROUNDS):
        for name, arm in arms.items():
            speed = tier1.test_inference_speed(
                arm.model,
                _sizes_config(arm, settings),
                batch_size=settings.batch_size,
                seq_len=settings.seq_len,
                n_warmup=LATENCY_WARMUP,
                n_iters=LATENCY_ITERS_PER_ROUND,
                precisions=(precision,),
                progress=False,
            )
            samples_ms[name].extend(speed["latencies_ms"].get(precision, []))
            errors[name] = errors.get(name) or speed["table"].iloc[0].get("error", "")
    return {name: _latency_fields(samples_ms[name], errors[name], settings) for name in arms}


def _latency_fields(samples_ms: list[float], error: str, settings: loop.TrainingSettings) -> dict[str, Any]:
    if not samples_ms:  # this precision could not run a forward pass; Tier 1 says why
        return {"latency_median_ms": None, "latency_p95_ms": None, "latency_error": error}
    stats = tier1._latency_stats(samples_ms, settings.batch_size * settings.seq_len)
    return {"latency_median_ms": stats["median_ms"], "latency_p95_ms": stats["p95_ms"], "latency_error": ""}


def _sizes_config(arm: Contender, settings: loop.TrainingSettings) -> dict[str, int]:
    """The sizes Tier 1 needs, read once here: any config kind, any vocabulary source."""
    return {"vocab_size": arm.vocab_size, "max_seq_len": settings.seq_len}


def _median_step_ms(step_times_s: list[float]) -> float | None:
    """Median optimizer-step time, the engine's warm-up steps left out (as its throughput does)."""
    skip = min(loop.THROUGHPUT_WARMUP_STEPS, max(0, len(step_times_s) - 1))
    timed = step_times_s[skip:]
    return 1000 * statistics.median(timed) if timed else None


# -- the comparison -----------------------------------------------------------------


def _compare(
    arms: dict[str, Contender], results: dict[str, dict[str, Any]], settings: loop.TrainingSettings, evaluated: str
) -> dict[str, Any]:
    """The summary table, the verdict, the notes and the figure, from both models' results."""
    yours, base = results["yours"], results["baseline"]
    comparable, loss_note = _loss_comparability(arms["yours"].vocab_size, arms["baseline"].vocab_size)
    summary = _summary_table(yours, base, loss_note)
    judgement, verdict = _verdict(summary, comparable)
    if _sees_future_tokens(yours):
        verdict += "; but your model sees the tokens it predicts (not causal), so this flatters it"
    device = resolve_device(settings.device)
    record = _settings_record(settings, device, yours["precision"])
    return {
        "status": "ok",
        "verdict": verdict,
        "judgement": judgement,
        "summary": summary,
        "figure": _comparison_figure(summary, yours, base, verdict),
        "yours": yours,
        "baseline": base,
        "baseline_description": {**arms["baseline"].description, "parameters": base["parameters"]},
        "loss_comparable": comparable,
        "loss_note": loss_note or None,
        "notes": _notes(arms["baseline"].description, yours, base, device, loss_note),
        "settings": {**record, "evaluated_on": evaluated},
    }


def _loss_comparability(your_vocab: int, baseline_vocab: int) -> tuple[bool, str]:
    """Losses compare only over one vocabulary: then both models score the same ids with the same softmax."""
    if your_vocab == baseline_vocab:
        return True, ""
    return False, (
        f"val loss and perplexity not compared: the vocabularies differ ({your_vocab} vs {baseline_vocab}), and a "
        "softmax over more ids starts higher and spends capacity on ids the data never uses"
    )


# The summary's rows: (metric, how to read it from one model's results, note).
_SUMMARY_ROWS = (
    ("parameters", lambda r: r["parameters"], ""),
    ("val loss", lambda r: r["val_loss"], ""),
    ("val perplexity", lambda r: math.exp(min(r["val_loss"], 50.0)), "exp(val loss)"),  # capped: exp overflows
    ("next-token accuracy", lambda r: r["val_accuracy"], ""),
    ("training tokens/s", lambda r: r["throughput"]["tokens_per_second"], "steady state, warm-up steps left out"),
    ("median step time (ms)", lambda r: r["step_time_ms"], "per optimizer step, warm-up steps left out"),
    ("inference latency median (ms)", lambda r: r["latency_median_ms"], "Tier 1 timing, after warm-up"),
    ("inference latency p95 (ms)", lambda r: r["latency_p95_ms"], "Tier 1 timing, after warm-up"),
    ("peak training memory (MB)", lambda r: r["peak_memory_mb"], ""),
)
_LOSS_METRICS = ("val loss", "val perplexity")


def _summary_table(yours: dict[str, Any], base: dict[str, Any], loss_note: str) -> Any:
    """One row per metric: metric, yours, baseline, ratio (yours / baseline) and a note; None where not compared."""
    import pandas as pd

    rows = []
    for metric, read, note in _SUMMARY_ROWS:
        if loss_note and metric in _LOSS_METRICS:
            rows.append((metric, None, None, None, loss_note))
            continue
        if metric.startswith("peak training memory"):
            note = _memory_label(yours["memory_method"])
        mine, theirs = read(yours), read(base)
        rows.append((metric, mine, theirs, _ratio(mine, theirs), note))
    # object columns keep None as None (not NaN) and the parameter counts as integers
    return pd.DataFrame(rows, columns=["metric", "yours", "baseline", "ratio", "note"], dtype=object)


def _memory_label(method: str) -> str:
    """How the peak memory figure was found, in words."""
    if method == "cuda_allocator":
        return "measured: the CUDA allocator's peak while training"
    return "estimate (Tier 1): parameters, gradients, AdamW state and saved activations of one step"


def _ratio(yours: Any, baseline: Any) -> float | None:
    if yours is None or baseline is None or not baseline:
        return None
    return float(yours) / float(baseline)


def _verdict(summary: Any, comparable: bool) -> tuple[str, str]:
    """('better' | 'worse' | 'about equal', the one-line verdict): by val loss, else by accuracy."""
    value = summary.set_index("metric")
    metric = "val loss" if comparable else "next-token accuracy"
    mine, theirs, ratio = (value.at[metric, key] for key in ("yours", "baseline", "ratio"))
    gain = (1 - ratio) if comparable else (ratio - 1)  # > 0: yours is better
    judgement = "better" if gain > EQUAL_MARGIN else "worse" if gain < -EQUAL_MARGIN else "about equal"
    shown = (f"{mine:.2f}", f"{theirs:.2f}") if comparable else (f"{mine:.1%}", f"{theirs:.1%}")
    step = value.at["median step time (ms)", "ratio"]
    step_text = f"{step:.2f}x its step time" if step is not None else "an unmeasured step time"
    params = value.at["parameters", "ratio"]
    line = f"your model reaches {metric} {shown[0]} vs the baseline's {shown[1]} at {params:.2f}x its parameters"
    if judgement == "about equal":
        detail = f"within {EQUAL_MARGIN:.0%}"
    else:
        detail = f"{abs(1 - ratio):.0%} {'lower' if ratio < 1 else 'higher'} {metric}"
    unlike = "" if comparable else "; val loss not compared across vocabularies"
    return judgement, f"{line} and {step_text}: {judgement} ({detail}, one seed{unlike})"


def _notes(
    description: dict[str, Any], yours: dict[str, Any], base: dict[str, Any], device: torch.device, loss_note: str
) -> list[str]:
    """What to keep in mind when reading the table."""
    notes = []
    ratio = yours["parameters"] / base["parameters"]
    if description["kind"] == "default" and abs(ratio - 1) > PARAMETER_TOLERANCE:
        notes.append(
            f"No shape of the built-in GPT comes within {PARAMETER_TOLERANCE:.0%} of your parameter count: "
            f"the closest has {base['parameters']:,} against your {yours['parameters']:,} ({ratio:.2f}x)."
        )
    if loss_note:
        notes.append(f"{loss_note}; the verdict uses next-token accuracy instead.")
    for name, results in (("Your model", yours), ("The baseline", base)):
        if _sees_future_tokens(results):
            notes.append(
                f"{name} is not causal (the engine's warning): each target is visible in its input, so its loss "
                "and accuracy are upper bounds, not a fair language-modelling score."
            )
    for name, results in (("Your model", yours), ("The baseline", base)):
        if not _learned(results):
            notes.append(
                f"{name} barely learned (val loss {results['val_loss']:.3f} against {results['initial_loss']:.3f} "
                "in its first steps); raise train_steps or learning_rate before trusting the verdict."
            )
    if yours["memory_method"] != "cuda_allocator":
        notes.append(
            f"Peak memory on {device.type} is an {_memory_label(yours['memory_method'])}; there is no allocator "
            "to measure here, so read it as a size comparison, not a measurement."
        )
    if device.type == "cpu":
        threads = torch.get_num_threads()
        advice = (
            f" With {threads} intra-op threads and fewer idle cores, steps can slow several-fold; "
            "torch.set_num_threads(1) steadies them."
        )
        notes.append(
            "Timings on a CPU are noisy, on a shared one above all: read ratios near 1 as equal."
            + (advice if threads > 1 else "")
        )
    return notes


def _sees_future_tokens(results: dict[str, Any]) -> bool:
    """Whether the engine warned, before training, that the model's earlier logits depend on later tokens."""
    return any("not causal" in message for message in results["training_warnings"])


def _learned(results: dict[str, Any]) -> bool:
    initial, final = results["initial_loss"], results["val_loss"]
    return initial is not None and final is not None and final < (1 - LEARNED_MARGIN) * initial


def _settings_record(settings: loop.TrainingSettings, device: torch.device, precision: str | None) -> dict[str, Any]:
    """The environment record plus the settings both models shared."""
    return {
        **environment_record(device, precision=precision, compile=settings.compile),
        "train_steps": settings.max_steps,
        "n_epochs": settings.n_epochs,
        "batch_size": settings.batch_size,
        "seq_len": settings.seq_len,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "max_corpus_bytes": settings.max_corpus_bytes,
    }


# Bars under the loss curves: (summary metric, axis title).
_BAR_METRICS = (
    ("parameters", "Parameters"),
    ("next-token accuracy", "Next-token accuracy"),
    ("training tokens/s", "Training tokens/s"),
    ("inference latency median (ms)", "Inference latency (ms, median)"),
    ("peak training memory (MB)", "Peak training memory (MB)"),
)


def _comparison_figure(summary: Any, yours: dict[str, Any], base: dict[str, Any], verdict: str) -> Any:
    """Both training-loss curves (with the final val loss), and one pair of bars per other metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, len(_BAR_METRICS))
    ax_loss = fig.add_subplot(grid[0, :])
    for label, results, color, style in (("yours", yours, "tab:blue", "-"), ("baseline", base, "tab:gray", "--")):
        steps = range(1, len(results["loss_history"]) + 1)
        ax_loss.plot(steps, results["loss_history"], style, lw=1, color=color, label=f"{label} (train)")
        ax_loss.plot([len(steps)], [results["val_loss"]], "o", color=color, label=f"{label} (val)")
    ax_loss.set(title="Training loss per optimizer step", xlabel="optimizer step", ylabel="cross-entropy")
    ax_loss.legend()
    value = summary.set_index("metric")
    for column, (metric, title) in enumerate(_BAR_METRICS):
        ax = fig.add_subplot(grid[1, column])
        pair = [value.at[metric, "yours"], value.at[metric, "baseline"]]
        if any(v is None for v in pair):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center")
            ax.set(title=title, xticks=[], yticks=[])
            continue
        ax.bar(["yours", "baseline"], pair, color=["tab:blue", "tab:gray"])
        ax.set_title(f"{title}\n{value.at[metric, 'ratio']:.2f}x", fontsize=9)
    fig.suptitle(verdict if len(verdict) < 140 else verdict[:137] + "...", fontsize=10)
    return fig


__all__ = [
    "DEFAULT_N_SAMPLES",
    "DEFAULT_TRAIN_STEPS",
    "PARAMETER_TOLERANCE",
    "Contender",
    "default_baseline",
    "gpt_parameter_count",
    "hub_offline",
    "test_benchmark_comparison",
]
