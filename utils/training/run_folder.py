"""A training run's folder: its name, its ``config.json``, the one resume rule, and replacing it safely.

``TrainingCoordinator`` (``utils.training.training_core``) and ``python -m utils
train`` both check run folders here, so a rule is written once:

- ``check_run_name``: what a run folder may be called;
- ``check_run_folder`` / ``check_run_dir``: the folder a new, resumed or replacing run
  gets, before any work (the CLI names its flags through ``RunFlags``);
- ``read_run_config`` / ``write_run_config``: ``config.json``, the exact settings of a run;
- ``RESUME_MAY_CHANGE`` and ``resume_changes``: THE resume rule, the settings that may
  differ when a run is resumed (nothing it computes depends on them);
- ``check_resumable``: a resume keeps every other setting, both against ``config.json``
  and against the copy of the settings that ``last.pt`` carries (``SettingsRecord``);
- ``prepared_run_dir``: make the folder, replacing an old run through
  ``utils.folders.replacing``, so a kill never loses the old run.

Example:
    >>> run_dir = check_run_dir(Path("runs"), "baseline", resume=False, overwrite=True)
    >>> with prepared_run_dir(run_dir, replace=True, keep=False):
    ...     train_into(run_dir)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils import folders
from utils.checks import check_bool, check_path
from utils.records import to_jsonable
from utils.training import checkpoint as ckpt
from utils.training import loop
from utils.training.model_card import config_to_dict, qualified_name
from utils.training.tokenization import describe_tokenizer_spec

CONFIG_FILE = "config.json"
RUN_FORMAT_VERSION = 1
# Settings that change nothing a resumed run computes, so they may differ when resuming.
RESUME_MAY_CHANGE = (
    "n_epochs",
    "max_steps",
    "progress",
    "use_wandb",
    "wandb_project",
    "device",
    "load_best",
    "sample_every",  # samples draw from their own generator in eval mode: the training is the same
    "sample_prompt",
)
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONFIG_SECTIONS = ("settings", "lifecycle", "data")  # what resume_training reads from config.json
_MISSING = "<missing>"


# -- names and folders ------------------------------------------------------------


def check_run_name(run_name: Any, name: str = "run_name") -> None:
    """A run folder's name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128."""
    if not isinstance(run_name, str) or not _RUN_NAME.fullmatch(run_name):
        raise ValueError(
            f"{name} must be a folder name of letters, digits, '.', '_' and '-', starting with a letter or digit "
            f"(at most 128), got {run_name!r}"
        )


@dataclass(frozen=True)
class RunFlags:
    """How the messages name the run folder's options: the library's keywords, or a front end's flags."""

    run_name: str = "run_name"
    resume: str = "resume=True"
    overwrite: str = "overwrite=True"

    def named(self, run_name: str) -> str:
        """``run_name='x'`` for a keyword, ``--run-name x`` for a flag."""
        return f"{self.run_name} {run_name}" if self.run_name.startswith("--") else f"{self.run_name}={run_name!r}"


def check_run_folder(output_dir: Path, run_name: Any, *, resume: bool, overwrite: bool, flags: RunFlags) -> Path:
    """``output_dir/run_name``: a good name, no file, and an existing run only continued or replaced when asked.

    What a killed overwrite left beside it is first sorted out (``recover_run_dir``), so the
    checks see the run as it really is.

    Raises:
        ValueError: naming the option (``flags``) and the fix.
    """
    check_run_name(run_name, flags.run_name)
    run_dir = output_dir / run_name
    recover_run_dir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{flags.named(run_name)}: {run_dir} is a file; pick another {flags.run_name}")
    if run_dir.exists() and not (resume or overwrite):
        raise ValueError(
            f"{flags.named(run_name)}: {run_dir} already exists; pass {flags.resume} to continue it, "
            f"{flags.overwrite} to replace it, or another {flags.run_name}"
        )
    return run_dir


def check_run_dir(output_dir: Path, run_name: str | None, resume: bool, overwrite: bool) -> Path:
    """The run folder for ``run_name``, checked against ``resume``/``overwrite`` before any work.

    Raises:
        ValueError: naming ``run_name``, ``resume`` or ``overwrite``.
    """
    check_bool(resume, "resume")
    check_bool(overwrite, "overwrite")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; pass one of them")
    if run_name is None:
        if resume:
            raise ValueError("resume=True needs the run_name of the run to continue")
        return output_dir / default_run_name(output_dir, "run")
    run_dir = check_run_folder(output_dir, run_name, resume=resume, overwrite=overwrite, flags=RunFlags())
    if resume and not has_checkpoint(run_dir):
        raise ValueError(
            f"resume=True, but {run_dir} holds no checkpoint to resume (checkpoints/{ckpt.CHECKPOINT_FILE}); "
            "train it first, or drop resume=True"
        )
    return run_dir


def default_run_name(output_dir: Path, prefix: str) -> str:
    """``<prefix>-<date>-<time>``, with ``-2``, ``-3`` ... added until no folder of that name exists."""
    stamp = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stamp, 2
    while (output_dir / name).exists():
        name, n = f"{stamp}-{n}", n + 1
    return name


def find_run_dir(run_dir_or_checkpoint: Any) -> Path:
    """The run folder itself, given it or a file in its ``checkpoints/``; recovered first after a killed overwrite."""
    check_path(run_dir_or_checkpoint, "run_dir_or_checkpoint")
    path = Path(run_dir_or_checkpoint)
    in_checkpoints = path.parent.name == "checkpoints" and not path.is_dir()  # .../<run>/checkpoints/last.pt
    recover_run_dir(path.parent.parent if in_checkpoints else path)
    if in_checkpoints and path.is_file():
        path = path.parent.parent
    if not path.is_dir():
        raise FileNotFoundError(f"run_dir_or_checkpoint={str(run_dir_or_checkpoint)!r}: no run folder there")
    return path


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds its ``checkpoints/last.pt``: from then on it is a run worth keeping."""
    return ckpt.checkpoint_path(Path(run_dir) / "checkpoints").is_file()


def recover_run_dir(run_dir: Path) -> None:
    """Sort out what a killed overwrite of ``run_dir`` left: the old run comes back unless the new one checkpointed."""
    folders.recover_leftovers(Path(run_dir), is_complete=has_checkpoint)


@contextlib.contextmanager
def prepared_run_dir(run_dir: Path, *, replace: bool, keep: bool) -> Iterator[Path]:
    """Make the run folder (replacing an old one safely); undo it if training fails before any checkpoint.

    With ``keep`` (a resume) the folder is used as it is. With ``replace`` the old
    folder is renamed aside by ``utils.folders.replacing``, deleted once the new
    run has a checkpoint, and put back if the new run fails, or is killed, before
    writing one. A new run that fails that early leaves no folder.
    """
    if keep:
        run_dir.mkdir(parents=True, exist_ok=True)
        yield run_dir
    elif replace:
        with folders.replacing(run_dir, is_complete=has_checkpoint):
            run_dir.mkdir(parents=True)
            yield run_dir
    else:
        run_dir.mkdir(parents=True)  # a new run: never into a folder that appeared since the checks
        try:
            yield run_dir
        except BaseException:
            if not has_checkpoint(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: leave no half-made run
            raise


# -- config.json ------------------------------------------------------------------


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``config.json``, checked.

    Raises:
        FileNotFoundError: no ``config.json``.
        ValueError: not JSON, not a run config of this library, or missing a section.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is damaged") from err
    if not isinstance(saved, dict) or saved.get("format_version") != RUN_FORMAT_VERSION:
        raise ValueError(f"{path} is not a run config of this library (format {RUN_FORMAT_VERSION})")
    missing = [key for key in _CONFIG_SECTIONS if not isinstance(saved.get(key), dict)]
    if not missing and "train_data" not in saved["data"]:
        missing = ["data.train_data"]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(key) for key in missing)}: it was edited or damaged, so the run cannot "
            "be resumed exactly; put the entries back, or start a new run"
        )
    return saved


def write_run_config(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Write ``config.json`` atomically: a crash never leaves a torn file."""
    folders.write_json_atomic(run_dir / CONFIG_FILE, to_jsonable(record))


def run_config(
    run_dir: Path,
    settings: loop.TrainingSettings,
    lifecycle: dict[str, Any],
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any,
) -> dict[str, Any]:
    """What ``config.json`` records: the settings, the lifecycle options, the data and the model."""
    from utils._version import __version__

    return {
        "format_version": RUN_FORMAT_VERSION,
        "utils_version": __version__,
        "run_name": run_dir.name,
        "settings": settings_record(settings),
        "lifecycle": {k: lifecycle[k] for k in ("early_stopping_patience", "early_stopping_min_delta")},
        "data": {"train_data": _describe_data(train_data), "val_data": _describe_data(val_data)},
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": _config_record(config),
            "config_class": qualified_name(type(config)),  # with the class, what rebuilds the model to generate
        },
    }


def settings_record(settings: loop.TrainingSettings) -> dict[str, Any]:
    """The engine settings as JSON, without the run folder's own paths (they follow the folder)."""
    record = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    for name in ("checkpoint_dir", "resume_from", "wandb_prefix"):
        record.pop(name)
    record["device"] = str(record["device"]) if record["device"] is not None else None
    # The name or path as given; a tokenizer object as its kind (the run keeps the tokenizer itself).
    record["tokenizer"] = describe_tokenizer_spec(record["tokenizer"])
    # Block classes as their names, which is how fsdp_wrap= also takes them back.
    wrap = record["fsdp_wrap"]
    if wrap is not None:
        record["fsdp_wrap"] = [
            w if isinstance(w, str) else w.__name__ for w in (wrap if isinstance(wrap, tuple) else (wrap,))
        ]
    return to_jsonable(record)


def _describe_data(data: Any) -> str | None:
    if data is None:
        return "python-stdlib"
    if isinstance(data, (str, os.PathLike)) and len(str(data)) < 4096 and "\n" not in str(data):
        return f"file {data}"
    size = f" of {len(data)}" if hasattr(data, "__len__") else ""
    return f"user {type(data).__name__}{size}"


def _config_record(config: Any) -> Any:
    """The model config as JSON for config.json (the export's converter); other kinds as text."""
    try:
        return config_to_dict(config)
    except TypeError:
        return None if config is None else str(config)


# -- the resume rule --------------------------------------------------------------


def resume_changes(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """The settings in ``asked`` that differ from the run's ``recorded`` ones and may not: the one resume rule.

    Only ``RESUME_MAY_CHANGE`` may differ; any other change would not continue the run exactly.

    Example:
        >>> resume_changes({"learning_rate": 1e-3, "device": "cpu"}, {"learning_rate": 0.5, "device": "cuda"})
        ['learning_rate']
    """
    return sorted(k for k in asked if k not in RESUME_MAY_CHANGE and k in recorded and recorded[k] != asked[k])


class SettingsRecord:
    """A callback whose saved state is the run's settings record, so that every ``last.pt`` carries a copy.

    The engine stores each callback's ``state_dict()`` in ``last.pt`` with the
    rest of the checkpoint, atomically; ``check_resumable`` compares it with
    ``config.json``, so an edited ``config.json`` cannot resume silently.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_train_begin(self, state: Any) -> None:
        """Nothing to do: the record is only saved (the engine needs one hook to accept a callback)."""

    def state_dict(self) -> dict[str, Any]:
        """The settings record, as plain data."""
        return self.record


def trained_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings record a ``last.pt`` carries (``SettingsRecord``); None for a run from before it did."""
    record = checkpoint.get("callbacks", {}).get(SettingsRecord.__name__)
    return record if isinstance(record, dict) else None


def check_resumable(run_dir: Path, settings: loop.TrainingSettings) -> None:
    """Resuming exactly needs the run's own settings: refuse ones that would change what it computes.

    Raises:
        ValueError: ``config.json`` no longer matches ``last.pt``, or ``settings`` differ from it.
    """
    saved = read_run_config(run_dir)["settings"]
    trained = _read_trained_settings(run_dir)
    if trained is not None:
        check_config_matches_checkpoint(run_dir, saved, trained)
    now = settings_record(settings)
    changed = resume_changes(saved, now)
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"resume=True with settings that differ from run {run_dir.name!r} ({detail}); it would not continue "
            "exactly. Use resume_training(run_dir, ...), which reads them from config.json, or start a new run_name"
        )


def check_config_matches_checkpoint(run_dir: Path, saved: Mapping[str, Any], trained: Mapping[str, Any]) -> None:
    """``config.json``'s settings must be those ``last.pt`` was trained with, but for ``RESUME_MAY_CHANGE``.

    Raises:
        ValueError: naming each changed setting, its value in config.json and in last.pt.
    """
    in_config = {k: saved.get(k, _MISSING) for k in trained}
    changed = resume_changes(trained, in_config)
    if changed:
        detail = ", ".join(f"{k}: {in_config[k]!r} in {CONFIG_FILE}, {trained[k]!r} in last.pt" for k in changed)
        raise ValueError(
            f"{Path(run_dir) / CONFIG_FILE} no longer matches the run's checkpoints/{ckpt.CHECKPOINT_FILE} "
            f"({detail}): it was edited, and resuming with it would not continue the run exactly; put the "
            "values last.pt was trained with back, or start a new run with the new settings"
        )


def _read_trained_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings record in ``last.pt``, read without loading its tensors (memory-mapped, data only)."""
    path = ckpt.checkpoint_path(Path(run_dir) / "checkpoints")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged or foreign file: the engine's own read names the problem, before any work
        return None
    return trained_settings(checkpoint) if isinstance(checkpoint, dict) else None
