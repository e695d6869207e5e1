"""The main job, ``python -m utils``, and its subcommands.

With no arguments it trains the built-in tiny GPT on the Python standard
library's source with mixed precision, runs the AMP speedup benchmark, the
comparison with a standard GPT of the same size and the Tier 1 and Tier 2
checks, writes a report folder and prints a summary.
``--model path/to/file.py:ClassName`` runs the same on your model.

Under ``torchrun --nproc_per_node=N -m utils`` it trains with DDP on N
processes and rank 0 writes the report; the AMP benchmark, the comparison and
the tiers, which are single-device measurements, are left out and the report
says so. ``--export DIR`` also exports the fine-tuned model there, checks that
it reloads to the same logits, and puts the export and that check in the report.

The subcommands, each with ``--help``:

- ``train`` trains in a run folder through the training coordinator: it keeps
  the best epoch's weights, stops early, resumes a run by name, exports the
  model, and takes its settings from a wizard's file with ``--config``
  (see ``train_main``);
- ``search`` searches the training settings with optuna (``search_main``);
- ``compare`` compares the model with a standard GPT of the same size
  (``compare_main``);
- ``wizard`` walks the setup wizard in a terminal and writes its settings file
  (``wizard_main``);
- ``generate`` lets a trained model (a run folder's or an export's) continue a
  prompt, with the tokenizer it was trained with (``generate_main``).

Every subcommand checks all its flags before any work and writes nothing when
one is wrong: a bad flag is a usage error (exit 2) that names it and the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.cli.common import FULL, QUICK, RunProfile, _parse_and_check
from utils.cli.compare import build_compare_parser, check_compare_args, compare_main
from utils.cli.generate import build_generate_parser, check_generate_args, generate_main
from utils.cli.main_job import CheckedInputs, _run_job, build_parser, check_args
from utils.cli.model_loading import BuiltModel, load_model, model_builder
from utils.cli.search import build_search_parser, check_search_args, search_main
from utils.cli.train import build_train_parser, check_train_args, train_main
from utils.cli.wizard import _ask_config_path as _ask_config_path
from utils.cli.wizard import _ask_yes_no as _ask_yes_no
from utils.cli.wizard import build_wizard_parser, check_wizard_args, wizard_main

# What callers import from utils.cli. The wizard's _ask_config_path and _ask_yes_no are re-exported by alias
# above, for the tests that answer them from a closed stdin.
__all__ = [
    "FULL",
    "QUICK",
    "SUBCOMMANDS",
    "BuiltModel",
    "CheckedInputs",
    "RunProfile",
    "build_compare_parser",
    "build_generate_parser",
    "build_parser",
    "build_search_parser",
    "build_train_parser",
    "build_wizard_parser",
    "check_args",
    "check_compare_args",
    "check_generate_args",
    "check_search_args",
    "check_train_args",
    "check_wizard_args",
    "compare_main",
    "generate_main",
    "load_model",
    "main",
    "model_builder",
    "search_main",
    "train_main",
    "wizard_main",
]


def main(argv: list[str] | None = None) -> int:
    """Run the main job, or the subcommand that comes first; a bad argument is a usage error (exit 2) before any work.

    Returns:
        0, or 1 when ``--export`` wrote an export that failed its reload check.

    Example:
        >>> main(["--quick", "--out", "reports/try"])
        >>> main(["train", "--quick", "--run-name", "try", "--export", "exports/try"])
        >>> main(["search", "--trials", "20", "--storage", "sqlite:///search.db", "--study-name", "lr"])
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args, inputs = _parse_and_check(parser, argv, check_args)
    return _run_job(args, inputs)


# The subcommands main() runs: the first argument -> its entry point.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_main,
    "search": search_main,
    "compare": compare_main,
    "wizard": wizard_main,
    "generate": generate_main,
}
