"""``python -m utils wizard``: the setup wizard in a terminal, its settings file, and on request the training."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils import __version__
from utils.checks import check_path
from utils.cli.common import _add_model_option, _add_seq_len_option, _check_seq_len, _naming, _parse_and_check
from utils.cli.model_loading import BuiltModel, _check_model
from utils.cli.train import train_main
from utils.folders import check_writable

DEFAULT_CONFIG_FILE = "wizard_config.json"
MAX_ANSWERS = 3  # a question about the settings file is asked again after a bad answer, at most this many times


@dataclass(frozen=True)
class WizardJob:
    """What the ``wizard`` checks built before any work."""

    built: BuiltModel
    overrides: dict[str, Any]  # WizardConfig fields over the preset's, from --set and --seq-len
    config_out: Path | None
    asks: bool  # stdin is a terminal and --no-input was not given: someone can answer


def build_wizard_parser() -> argparse.ArgumentParser:
    """The ``python -m utils wizard`` parser."""
    from utils.ui.preset_table import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m utils wizard",
        description="Choose the training settings from a preset in five checked steps (data, tokenizer, model, "
        "settings, and a summary with a time measured on this machine). In a terminal it asks each setting "
        "(Enter keeps it); then it writes the settings to a file and offers to start "
        "python -m utils train --config FILE. Without a terminal it asks nothing.",
    )
    group = parser.add_argument_group("the model and the settings")
    _add_model_option(group)
    _add_seq_len_option(group, "the preset's; a model file without a config gets it as max_seq_len")
    group.add_argument(
        "--preset", default="tiny", choices=list(PRESETS), help="settings to start from (default: %(default)s)"
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one setting of the preset, as the terminal questions read it, e.g. --set n_epochs=2 "
        "--set max_steps=50 (repeatable)",
    )
    group.add_argument("--no-input", action="store_true", help="ask nothing, even in a terminal")
    group = parser.add_argument_group("the settings file")
    group.add_argument(
        "--config-out",
        metavar="FILE",
        help=f"write the settings there (default: in a terminal, ask where, offering {DEFAULT_CONFIG_FILE}; "
        "otherwise write no file)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing --config-out file")
    return parser


def wizard_main(argv: list[str]) -> int:
    """``python -m utils wizard``: the setup wizard, its settings file, and on request the training.

    In a terminal it asks the settings, then where to write them and whether to start training;
    without one (a pipe, CI) it asks nothing, writes the file only when ``--config-out`` names it,
    and never starts training.

    Returns:
        0; 1 when the answers left problems (nothing is written); or the training's exit status.

    Example:
        >>> wizard_main(["--preset", "tiny", "--set", "n_epochs=2", "--config-out", "tiny.json", "--no-input"])
    """
    parser = build_wizard_parser()
    args, job = _parse_and_check(parser, argv, check_wizard_args)
    return _run_wizard(args, job)


def check_wizard_args(args: argparse.Namespace) -> WizardJob:
    """Check every ``wizard`` flag and build the model; without anyone to ask, the settings must fit it too.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    from utils.ui.presets import ConfigPresets
    from utils.ui.setup_wizard import interaction_mode

    _check_seq_len(args.seq_len)
    overrides = _parse_settings(args.set)
    if args.seq_len is not None:
        overrides.setdefault("seq_len", args.seq_len)
    config_out = _check_config_out(args.config_out, args.overwrite) if args.config_out is not None else None
    built = _check_model(args)
    asks = not args.no_input and interaction_mode(None) == "terminal"
    if not asks:  # nobody can fix a problem by answering, so it is the flags'
        problems = ConfigPresets.customize(args.preset, **overrides).validate(built.model, built.config)
        if problems:
            changed = [flag for flag, given in (("--set", args.set), ("--seq-len", args.seq_len)) if given]
            raise ValueError(
                f"--preset {args.preset}{' with ' + ' and '.join(changed) if changed else ''} does not fit the model: "
                f"{'; '.join(problems)}; change those settings with --set FIELD=VALUE"
            )
    return WizardJob(built, overrides, config_out, asks)


def _parse_settings(items: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE, each value read as the terminal questions read an answer."""
    from utils.ui import terminal

    fields = terminal.editable_fields()
    settings = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name.strip() not in fields:
            raise ValueError(f"--set {item!r} must be FIELD=VALUE with FIELD one of: {', '.join(fields)}")
        with _naming("--set"):
            settings[name.strip()] = terminal.parse_answer(name.strip(), text)
    return settings


def _check_config_out(text: str, overwrite: bool, name: str = "--config-out") -> Path:
    """A settings file to write: not a folder, not an existing file unless ``overwrite``, in a writable place."""
    check_path(text, name)
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; pass a file path such as {path / DEFAULT_CONFIG_FILE}")
    if path.exists() and not overwrite:
        raise ValueError(f"{name} {path} already exists; pass --overwrite to replace it, or another path")
    check_writable(path.resolve().parent, name, path)  # a real write: permission bits miss root and special mounts
    return path


def _run_wizard(args: argparse.Namespace, job: WizardJob) -> int:
    """Walk the wizard, write its settings file, and start training when the person at the terminal says so."""
    from utils.ui.setup_wizard import SetupWizard

    print(f"utils {__version__} wizard: {job.built.label}, preset {args.preset}", flush=True)
    try:
        settings = SetupWizard().run(
            job.built.model, job.built.config, preset=args.preset, interactive=job.asks, **job.overrides
        )
    except ValueError as err:  # problems the answers left: nothing is written
        print(f"error: {err}\nNo settings file written; run the wizard again.", file=sys.stderr)
        return 1
    path = job.config_out or (_ask_config_path() if job.asks else None)
    if path is None:
        why = "" if job.asks else " (no terminal to ask in; pass --config-out FILE to write one)"
        print(f"No settings file written{why}.")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    settings.save(path)
    train_argv = ["train", "--config", str(path), *(["--model", args.model] if args.model else [])]
    command = shlex.join(["python", "-m", "utils", *train_argv])
    print(f"Settings written to {path}; to train with them: {command}")
    if job.asks and _ask_yes_no("start training now? [y/N]: "):
        return train_main(train_argv[1:])
    return 0


def _ask_config_path() -> Path | None:
    """Ask where to write the settings (Enter: the default file; 'none': no file); a bad path is asked again."""
    for _ in range(MAX_ANSWERS):
        answer = _answer(f"settings file [{DEFAULT_CONFIG_FILE}] ('none': no file): ")
        if answer is None or answer.lower() == "none":
            return None
        text = answer or DEFAULT_CONFIG_FILE
        if Path(text).is_file() and not _ask_yes_no(f"{text} exists; replace it? [y/N]: "):
            print("  kept it; type another path")
            continue
        try:
            return _check_config_out(text, overwrite=True, name="settings file")
        except ValueError as err:
            print(f"  {err}")
    return None


def _ask_yes_no(prompt: str) -> bool:
    """True only for 'y' or 'yes': Enter, anything else and the end of input mean no."""
    answer = _answer(prompt)
    return answer is not None and answer.lower() in ("y", "yes")


def _answer(prompt: str) -> str | None:
    """One answer, stripped; None when input has ended (Ctrl-D, a closed stdin): never wait for more."""
    try:
        return input(prompt).strip()
    except EOFError:
        print()
        return None
