"""``python -m utils search``: search the training settings with optuna, optionally in a kept study."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils import __version__
from utils.checks import check_positive_int, check_positive_number
from utils.cli.common import (
    _add_model_options,
    _add_report_options,
    _add_seed_option,
    _add_seq_len_option,
    _check_hardware,
    _check_seq_len_and_seed,
    _check_single_process,
    _parse_and_check,
)
from utils.cli.model_loading import BuiltModel, _check_model
from utils.cli.reporting import _check_optional_out, _print_rows, _write_section_report
from utils.training.settings import amp_by_default


@dataclass(frozen=True)
class SearchJob:
    """What the ``search`` checks built before any work."""

    built: BuiltModel
    storage: Any  # an opened optuna storage, or None: the study lives in memory
    n_done: int  # finished trials the stored study already holds
    out: Path | None


def build_search_parser() -> argparse.ArgumentParser:
    """The ``python -m utils search`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m utils search",
        description="Search the training settings (learning rate, weight decay, warm-up, batch size, clipping, "
        "accumulation) with optuna: each trial trains a new model on the built-in corpus and is scored by its "
        "validation loss; a poor trial is pruned after an epoch. --storage keeps the study, to resume it.",
    )
    _add_model_options(parser)
    group = parser.add_argument_group("the search")
    for flag, default, text in (
        ("--trials", 10, "trials the study holds at the end, counting those --storage already keeps"),
        ("--epochs", 3, "epochs per trial; the pruner judges each epoch's validation loss"),
        ("--max-steps-per-trial", 200, "cap on one trial's optimizer steps"),
    ):
        group.add_argument(flag, type=int, default=default, metavar="N", help=f"{text} (default: %(default)s)")
    group.add_argument(
        "--pruner",
        choices=["median", "none"],
        default="median",
        help="median stops a trial whose validation loss is worse than the median of earlier trials at the "
        "same epoch (default: %(default)s)",
    )
    group.add_argument(
        "--timeout", type=float, metavar="S", help="start no new trial after S seconds (default: no limit)"
    )
    _add_seq_len_option(group)
    _add_seed_option(group)
    group = parser.add_argument_group("keeping the study")
    group.add_argument(
        "--storage",
        metavar="URL",
        help="an optuna storage such as sqlite:///search.db: the study is kept there, and the same command "
        "resumes it after a crash (default: in memory)",
    )
    group.add_argument("--study-name", metavar="NAME", help="the study's name in --storage (needed with it)")
    _add_report_options(parser)
    return parser


def search_main(argv: list[str]) -> int:
    """``python -m utils search``: run an optuna search and print the best settings; bad flags are usage errors.

    Returns:
        0, or 1 when no trial completed (each one failed or was pruned).

    Example:
        >>> search_main(["--trials", "20", "--storage", "sqlite:///search.db", "--study-name", "tiny-gpt"])
    """
    parser = build_search_parser()
    args, job = _parse_and_check(parser, argv, check_search_args)
    return _run_search(args, job)


def check_search_args(args: argparse.Namespace) -> SearchJob:
    """Check every ``search`` flag and build the model; the storage is opened last, as it may create its file.

    Raises:
        ValueError, TypeError, FileNotFoundError, ImportError: naming the flag and the fix.
    """
    for flag, value in (
        ("--trials", args.trials),
        ("--epochs", args.epochs),
        ("--max-steps-per-trial", args.max_steps_per_trial),
    ):
        check_positive_int(value, flag)
    check_positive_number(args.timeout, "--timeout", allow_none=True)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    _check_study_flags(args.storage, args.study_name)
    out = _check_optional_out(args.out, args.overwrite)
    _check_single_process("search", "run it without torchrun")
    _check_hardware(args)
    built = _check_model(args)
    storage, n_done = _open_storage(args.storage, args.study_name) if args.storage is not None else (None, 0)
    return SearchJob(built, storage, n_done, out)


def _check_study_flags(storage: str | None, study_name: str | None) -> None:
    """--storage and --study-name go together: a kept study is found again by its name."""
    if storage is not None and not storage.strip():
        raise ValueError("--storage must be a database URL such as sqlite:///search.db")
    if study_name is not None and not study_name.strip():
        raise ValueError("--study-name must not be empty; pass a name such as --study-name tiny-gpt")
    if storage is not None and study_name is None:
        raise ValueError(
            "--storage needs --study-name NAME too: the study to create, or to resume after a crash; "
            "e.g. --study-name my-search"
        )
    if storage is None and study_name is not None:
        raise ValueError(
            "--study-name names a study kept in --storage, and without --storage the study lives in memory; "
            "pass --storage sqlite:///search.db too, or drop --study-name"
        )


def _open_storage(url: str, study_name: str) -> tuple[Any, int]:
    """Open the optuna storage; return it and the finished trials its study ``study_name`` already holds."""
    from utils.search.study import import_optuna

    optuna = import_optuna()
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as err:  # SQLAlchemy's errors for a bad URL, driver or folder share no base class with ours
        cause = getattr(err, "orig", None) or err  # the database's own words, without SQLAlchemy's wrapping
        why = str(cause).splitlines()[0] if str(cause) else ""
        raise ValueError(
            f"--storage {_shown_url(url)} cannot be opened ({type(err).__name__}: {why}); pass a URL such as "
            "sqlite:///search.db whose folder exists, or leave --storage out to keep the study in memory"
        ) from err
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return storage, 0  # a new study
    if storage.get_study_directions(study_id) != [optuna.study.StudyDirection.MINIMIZE]:
        raise ValueError(
            f"--study-name {study_name!r}: that study in --storage maximises its objective, so it is not a search "
            "of this tool's; pick another --study-name"
        )
    return storage, sum(t.state.is_finished() for t in storage.get_all_trials(study_id, deepcopy=False))


def _shown_url(url: str) -> str:
    """A storage URL fit to print or keep in a report: its password, if any, masked (the search's own rule)."""
    from utils.search.study import mask_password

    return mask_password(url)


def _run_search(args: argparse.Namespace, job: SearchJob) -> int:
    """Run the trials, print the best settings, and write the report folder when --out asks for one."""
    from utils.tier3_hyperparameter_search import test_hyperparameter_search

    _say_search_plan(args, job)
    search = test_hyperparameter_search(
        lambda: job.built.build()[0],  # a new model per trial, from the file imported once
        job.built.config,
        n_trials=args.trials,
        n_epochs=args.epochs,
        max_steps_per_trial=args.max_steps_per_trial,
        seed=args.seed,
        pruner=args.pruner,
        timeout_s=args.timeout,
        storage=job.storage,
        study_name=args.study_name,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
        use_amp=amp_by_default(None, args.precision),
        seq_len=args.seq_len,
        compile=args.compile,
        tokenizer=args.tokenizer,
    )
    section = _search_section(search, args)
    _print_rows(section["summary"])
    _write_section_report(job.out, "utils search", job.built.label, section, args.overwrite)
    return 0 if search["best_value"] is not None else _nothing_completed(search["trials"])


def _say_search_plan(args: argparse.Namespace, job: SearchJob) -> None:
    """What the search will do, and, for a kept study, how much of it is done."""
    budget = f"up to {args.epochs} epochs / {args.max_steps_per_trial} steps each"
    print(
        f"utils {__version__} search: {job.built.label}, {args.trials} trials of {budget}, device={args.device}, "
        f"precision={args.precision}",
        flush=True,
    )
    if job.storage is not None:
        to_run = max(0, args.trials - job.n_done)
        print(
            f"study {args.study_name!r} in {_shown_url(args.storage)}: {job.n_done} finished trial(s) kept, "
            f"{to_run} to run" + ("" if to_run else f"; pass --trials > {job.n_done} to run more"),
            flush=True,
        )


def _search_section(search: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A report section from ``test_hyperparameter_search``'s results: the trials table, the figure, the best."""
    trials = search["trials"]
    keep = ("best_params", "best_value", "best_trial", "n_pruned", "n_failed", "timed_out", "importances")
    settings = {k: getattr(args, k) for k in ("epochs", "max_steps_per_trial", "pruner", "seed", "device")}
    results = {k: search[k] for k in keep} | {
        "n_trials": len(trials),
        "parameters": search["parameters"],
        "storage": _shown_url(args.storage) if args.storage is not None else None,
        "study_name": args.study_name,
        "settings": settings | {"precision": args.precision},
    }
    n_completed = int((trials["state"] == "COMPLETE").sum())
    counts = f"{n_completed} completed, {search['n_pruned']} pruned, {search['n_failed']} failed"
    best = search["best_value"]
    rows = [
        ("trials", f"{len(trials)}: {counts}" + (" (stopped by --timeout)" if search["timed_out"] else "")),
        ("best val/loss", f"{best:.4f} (trial {search['best_trial']})" if best is not None else "none completed"),
        *((f"best {name}", _format_param(value)) for name, value in (search["best_params"] or {}).items()),
    ]
    return {
        "results": {"search": results},
        "figures": {"search": search["figure"]},
        "tables": {"trials": trials},
        "summary": rows,
    }


def _format_param(value: Any) -> str:
    """A hyperparameter's value for the summary: a float to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _nothing_completed(trials: Any) -> int:
    """1, with the reasons: a search that completed no trial has no best settings for a script to use."""
    reasons = sorted(set(trials["fail_reason"].dropna()))[:3]
    why = f"; failure reasons: {' | '.join(reasons)}" if reasons else ""
    print(f"error: no trial completed, so there are no best settings{why} (see the trials table)", file=sys.stderr)
    return 1
