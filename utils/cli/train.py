"""``python -m utils train``: train in a run folder through the training coordinator, resume it, export the model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from utils import __version__, report
from utils.checks import check_path, check_positive_int
from utils.cli.common import (
    SETTING_FLAGS,
    RunProfile,
    _add_budget_options,
    _add_model_options,
    _add_strategy_options,
    _check_export_dir,
    _check_hardware,
    _check_seq_len_and_seed,
    _check_single_process,
    _naming,
    _parse_and_check,
    _profile_from_args,
    _strategy_options,
    flag_dest,
)
from utils.cli.model_loading import _check_model
from utils.cli.reporting import _exit_status, _export_model, _export_rows, _text_rows
from utils.folders import check_writable
from utils.training import checkpoint, run_folder, training_core

if TYPE_CHECKING:  # the wizard loads with the subcommands that use it, never with the main job
    from utils.ui.setup_wizard import WizardConfig


# train --config FILE: the flags that override a setting of the file, as dest -> WizardConfig field.
CONFIG_FLAGS = {
    flag_dest(SETTING_FLAGS[field]): field
    for field in (
        "n_epochs",
        "max_steps",
        "batch_size",
        "learning_rate",
        "seq_len",
        "seed",
        "device",
        "precision",
        "run_name",
        "early_stopping_patience",
        "tokenizer",
    )
}
# With --resume, each flag that sets a run setting -> that setting's config.json entry. A typed flag may differ
# from the run's value only where the library's one resume rule (run_folder.RESUME_MAY_CHANGE) allows it, and
# then it is passed on to resume_training; any other must match, since the run keeps its own settings.
RESUME_FLAGS = {flag_dest(flag): (flag, setting) for setting, flag in SETTING_FLAGS.items() if setting != "run_name"}


RUN_FLAGS = run_folder.RunFlags(run_name="--run-name", resume="--resume", overwrite="--overwrite")


@dataclass(frozen=True)
class TrainPlan:
    """What the ``train`` checks built before any work."""

    coordinator: training_core.TrainingCoordinator
    model: nn.Module
    config: Any
    label: str
    run_dir: Path | None  # None: the coordinator names a new run run-<date>-<time>
    export_dir: Path | None
    options: dict[str, Any]  # TrainingCoordinator.train keywords, for a new run
    resume_options: dict[str, Any]  # resume_training keywords, with --resume: the typed settings that may change


def build_train_parser() -> argparse.ArgumentParser:
    """The ``python -m utils train`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m utils train",
        description="Train in a run folder (checkpoints, metrics.csv, config.json): keep the best epoch's weights, "
        "stop early, resume a run by name, and export the model with a reload check. --config FILE trains with "
        "the settings the wizard wrote (python -m utils wizard).",
    )
    _add_model_options(parser)
    _add_strategy_options(parser)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="train with the settings in this wizard file; a flag typed beside it overrides the file's value "
        f"({', '.join('--' + dest.replace('_', '-') for dest in CONFIG_FLAGS)}); not with --quick or --resume",
    )
    _add_budget_options(group)
    _add_run_options(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """``train``'s group 'the run folder and the export'."""
    group = parser.add_argument_group("the run folder and the export")
    group.add_argument(
        "--output-dir", default="training_output", metavar="DIR", help="where run folders go (default: %(default)s)"
    )
    group.add_argument(
        "--run-name",
        metavar="NAME",
        help="the run's folder in --output-dir: letters, digits, '.', '_', '-' (default: run-<date>-<time>)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --run-name from its last epoch, with the settings in its config.json; "
        "raise --epochs or --max-steps (counted from the run's start) to train on",
    )
    group.add_argument(
        "--early-stopping",
        type=int,
        metavar="N",
        help="stop after N epochs without a better val/loss (default: train every epoch)",
    )
    group.add_argument(
        "--export",
        metavar="DIR",
        help="export the trained (best) model there and check that it reloads to the same logits; "
        "exit status 1 if that check fails",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --export, and without --resume an earlier run of that --run-name",
    )
    group.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without an API key)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def train_main(argv: list[str]) -> int:
    """``python -m utils train``: train in a run folder, print a summary; bad flags are usage errors (exit 2).

    Returns:
        0, or 1 when the export failed its reload check.

    Example:
        >>> train_main(["--quick", "--run-name", "try", "--early-stopping", "2", "--export", "exports/try"])
        >>> train_main(["--run-name", "try", "--resume", "--epochs", "5"])
    """
    parser = build_train_parser()
    args, plan = _parse_and_check(parser, argv, lambda args: check_train_args(args, _typed_options(parser, argv)))
    return _run_train(args, plan)


def _typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options the user typed, as dests: argparse leaves a value it finds in the namespace unless typed."""
    unset = object()
    probe = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args(argv)), unset))
    return {dest for dest, value in vars(parser.parse_args(argv, namespace=probe)).items() if value is not unset}


def check_train_args(args: argparse.Namespace, typed: set[str]) -> TrainPlan:
    """Check every ``train`` flag, cheapest first, and build the model and the coordinator; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    profile = _profile_from_args(args)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    if args.early_stopping is not None:
        check_positive_int(args.early_stopping, "--early-stopping")
    _check_hardware(args)  # the typed (or default) --device and --precision; the file's are checked with it
    wizard_config = _read_train_config(args, typed) if args.config is not None else None
    _check_single_process("train", "for DDP run the main job under torchrun (python -m utils)")
    output_dir = _check_output_dir(args.output_dir)
    run_dir = _check_run_name(args, output_dir)
    export_dir = _check_train_export(args, run_dir or output_dir)
    built = _check_model(args, wizard_config)
    resume_options = _check_resumable(run_dir, args, typed, built.model) if args.resume else {}
    coordinator = training_core.TrainingCoordinator(
        output_dir, args.precision, args.device, args.wandb, progress=not args.no_progress
    )
    if wizard_config is None:
        options = _train_options(args, profile)
    else:
        options = {**wizard_config.to_train_kwargs(), "compile": args.compile, "overwrite": args.overwrite}
    return TrainPlan(coordinator, built.model, built.config, built.label, run_dir, export_dir, options, resume_options)


def _read_train_config(args: argparse.Namespace, typed: set[str]) -> WizardConfig:
    """Read --config FILE, put the typed flags over it, check it, and make its settings the flags' values.

    The checks that follow (run name, device, precision, the model) then see the settings the run will use.
    """
    from utils.ui.setup_wizard import WizardConfig

    if "quick" in typed:
        raise ValueError("--quick sets a run's budget, and --config sets its own; drop one of them")
    if "resume" in typed:
        raise ValueError(
            "--resume continues a run with the settings in its own config.json, not --config's; "
            "drop --config to resume, or drop --resume to start a new run with the file"
        )
    path = args.config
    check_path(path, "--config")
    if not Path(path).is_file():
        raise ValueError(f"--config {path}: no file there; write one with python -m utils wizard --config-out {path}")
    overrides = {field: getattr(args, dest) for dest, field in CONFIG_FLAGS.items() if dest in typed}
    with _naming(f"--config {path}"):
        wizard_config = WizardConfig.load(path).replace(**overrides)
    problems = wizard_config.validate()
    if problems:
        raise ValueError(f"--config {path}: {'; '.join(problems)}; fix the file, or override the setting with its flag")
    for dest, field in CONFIG_FLAGS.items():
        setattr(args, dest, getattr(wizard_config, field))
    return wizard_config


def _check_output_dir(output_dir: str) -> Path:
    """--output-dir must be a folder that can be made and written to."""
    check_path(output_dir, "--output-dir")
    checkpoint.check_checkpoint_dir(output_dir, name="--output-dir")
    check_writable(Path(output_dir), "--output-dir")  # a real write: permission bits miss root and special mounts
    return Path(output_dir)


def _check_run_name(args: argparse.Namespace, output_dir: Path) -> Path | None:
    """The run folder --run-name names: new unless --resume (or --overwrite); None for a default name."""
    if args.run_name is None:
        if args.resume:
            raise ValueError("--resume needs --run-name NAME: the run to continue, a folder in --output-dir")
        return None
    run_dir = run_folder.check_run_folder(
        output_dir, args.run_name, resume=args.resume, overwrite=args.overwrite, flags=RUN_FLAGS
    )
    if args.resume and not run_dir.exists():
        raise ValueError(
            f"--resume: there is no run {args.run_name!r} in --output-dir {output_dir} (no {run_dir}); "
            "check --run-name and --output-dir, or drop --resume to start that run"
        )
    return run_dir


def _check_train_export(args: argparse.Namespace, run_or_output_dir: Path) -> Path | None:
    """--export may sit inside the run folder (as the coordinator's default does), never be it or hold it."""
    if args.export is None:
        return None
    check_path(args.export, "--export")
    export_dir = _check_export_dir(args.export, args.overwrite)
    run = run_or_output_dir.resolve()
    if export_dir.resolve() == run or export_dir.resolve() in run.parents:
        raise ValueError(
            f"--export {export_dir} is, or holds, the run folder {run_or_output_dir}, and an export is written as "
            f"a whole folder; pass a folder beside it or inside it, e.g. --export {run_or_output_dir / 'export'}"
        )
    return export_dir


def _check_resumable(run_dir: Path, args: argparse.Namespace, typed: set[str], model: nn.Module) -> dict[str, Any]:
    """--resume: a run folder with a checkpoint of this model, flags that agree with it, and training left.

    Returns:
        The ``resume_training`` keywords: the typed flags' settings that the resume rule lets change.
    """
    with _naming("--resume"):
        saved = run_folder.read_run_config(run_dir)
    last = checkpoint.checkpoint_path(run_dir / "checkpoints")
    if not last.is_file():
        raise ValueError(
            f"--resume: run {run_dir.name!r} has no checkpoint ({last}): it stopped before its first epoch "
            "ended; start it again with --overwrite"
        )
    asked = _check_kept_settings(saved, args, typed, run_dir.name)
    settings = saved["settings"]
    n_epochs = args.epochs if args.epochs is not None else settings["n_epochs"]
    state = checkpoint.load_for_resume(last, model, n_epochs, name="--resume", epochs_name="--epochs")
    trained = run_folder.trained_settings(state)
    if trained is not None:
        with _naming("--resume"):
            run_folder.check_config_matches_checkpoint(run_dir, settings, trained)
    max_steps = args.max_steps if args.max_steps is not None else settings["max_steps"]
    if max_steps is not None and state["optimizer_step"] >= max_steps:
        raise ValueError(
            f"--max-steps: run {run_dir.name!r} already took {state['optimizer_step']} optimizer steps, its cap "
            f"of {max_steps}; pass --max-steps > {state['optimizer_step']} to train on"
        )
    return {key: value for key, value in asked.items() if key in run_folder.RESUME_MAY_CHANGE}


def _check_kept_settings(saved: dict[str, Any], args: argparse.Namespace, typed: set[str], name: str) -> dict[str, Any]:
    """A flag typed with --resume must agree with the run's config.json, unless the resume rule lets it change.

    Returns:
        The typed flags as settings (config.json entry -> value).
    """
    if "quick" in typed:
        raise ValueError(
            f"--quick sets a new run's budget; --resume continues run {name!r} with its own, so drop --quick "
            "(raise --epochs or --max-steps to train on)"
        )
    recorded = {**saved["settings"], **saved["lifecycle"]}
    asked = {key: getattr(args, dest) for dest, (flag, key) in RESUME_FLAGS.items() if dest in typed}
    if "progress" in asked:
        asked["progress"] = not asked["progress"]  # the flag is --no-progress
    flags = {key: flag for flag, key in RESUME_FLAGS.values()}
    changed = run_folder.resume_changes(recorded, asked)
    if changed:
        key = next(key for key in asked if key in changed)  # the first in the flag table's order
        raise ValueError(
            f"{flags[key]} asks for {key}={asked[key]!r}, but run {name!r} trained with {key}={recorded[key]!r} "
            "(its config.json), which --resume keeps; drop the flag, or start a new --run-name"
        )
    return asked


def _train_options(args: argparse.Namespace, profile: RunProfile) -> dict[str, Any]:
    """``TrainingCoordinator.train`` keywords for a new run: the profile, the seed, and the lifecycle flags."""
    return dict(
        run_name=args.run_name,
        n_epochs=profile.n_epochs,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        max_steps=profile.max_steps,
        max_corpus_bytes=profile.max_corpus_bytes,
        max_val_batches=profile.max_val_batches,
        seed=args.seed,
        seq_len=args.seq_len,
        compile=args.compile,
        early_stopping_patience=args.early_stopping,
        overwrite=args.overwrite,
        tokenizer=args.tokenizer,
        **_strategy_options(args),
    )


def _run_train(args: argparse.Namespace, plan: TrainPlan) -> int:
    """Train (or resume), export when asked, and print the summary table."""
    how = f"resuming {plan.run_dir}" if args.resume else f"device={args.device}, precision={args.precision}"
    how += f", settings from {args.config}" if args.config is not None else ""
    print(f"utils {__version__} train: {plan.label}, {how}", flush=True)
    if args.resume:
        results = plan.coordinator.resume_training(plan.run_dir, plan.model, plan.config, **plan.resume_options)
    else:
        results = plan.coordinator.train(plan.model, plan.config, **plan.options)
    record = _export_model(results, plan.export_dir, args.overwrite) if plan.export_dir is not None else None
    rows = [{"metric": metric, "value": value} for metric, value in _train_summary(results, record)]
    print()
    print(report.markdown_table(rows, ["metric", "value"]))
    return _exit_status(record)


def _train_summary(results: dict[str, Any], record: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Where the run is, how it went, and where its export is."""
    best, epoch = results["best_value"], results["best_epoch"]
    return [
        ("run folder", results["run_dir"]),
        ("precision", results["precision"]),
        ("optimizer steps", results["optimizer_steps"]),
        (f"best {results['monitor']}", f"{best:.4f} at epoch {epoch + 1}" if best is not None else "n/a"),
        ("stopped early", "yes" if results["stopped_early"] else "no"),
        *_text_rows(results),
        *_export_rows(record),
    ]
