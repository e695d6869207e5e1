"""One import for every check, and runners that return a summary table.

``run_all_tier1_tests``, ``run_all_tier2_tests`` and ``run_all_tests`` run
their checks one after another and return a summary DataFrame with the
columns ``test``, ``status`` ('pass', 'warn', 'fail' or 'error'),
``key_figure`` and ``time_s``. An exception inside one check becomes an
'error' row carrying the message, and the other checks still run.

The detailed result of each check (its tables and figures) is in
``summary.attrs['results']``, a dict keyed by test name; for an 'error' row
it holds ``{'status': 'error', 'error': ..., 'traceback': ...}``.

Tier 3 (``test_fine_tuning``, ``test_amp_speedup_benchmark``) is
re-exported too; it is not part of the runners (it trains).

Example:
    >>> from utils import test_functions as tf
    >>> summary = tf.run_all_tier1_tests(model, config)
    >>> summary
    >>> summary.attrs["results"]["test_gradient_flow"]["figure"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from utils.diagnostics.attention import test_attention_patterns
from utils.diagnostics.attribution import test_attribution_analysis
from utils.diagnostics.gradients import test_gradient_flow
from utils.diagnostics.initialization import test_parameter_initialization
from utils.diagnostics.memory import test_memory_footprint
from utils.diagnostics.robustness import test_robustness
from utils.diagnostics.runner import STATUSES, SUMMARY_COLUMNS, CheckResults, run_checks  # noqa: F401
from utils.diagnostics.shapes import test_shape_robustness
from utils.diagnostics.speed import test_inference_speed
from utils.diagnostics.stability import test_output_stability
from utils.diagnostics.tiers import TIER1_TESTS, TIER2_TESTS
from utils.tier3_training_utilities import test_benchmark_comparison, test_fine_tuning, test_hyperparameter_search
from utils.training.amp_benchmark import test_amp_speedup_benchmark


def run_all_tier1_tests(
    model: nn.Module,
    config: Any,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seq_len: int | None = None,
    progress: bool = True,
) -> Any:
    """Run every Tier 1 check and return the summary DataFrame (details in ``.attrs['results']``).

    Args:
        model: the model to check.
        config: its config; needs ``vocab_size``, and ``max_seq_len`` unless ``seq_len`` is given.
        options: keyword arguments per check, e.g.
            ``{'test_inference_speed': {'n_iters': 5}}``.
        seq_len: tokens per sequence for every check that takes it, as for ``test_fine_tuning``.
        progress: show a progress bar over the checks.

    Returns:
        DataFrame with columns test, status, key_figure, time_s.

    Raises:
        TypeError, ValueError, RuntimeError: bad model, config or options, before any check runs.
    """
    return run_checks(model, config, TIER1_TESTS, options=options, seq_len=seq_len, progress=progress, desc="Tier 1")


def run_all_tier2_tests(
    model: nn.Module,
    config: Any,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seq_len: int | None = None,
    progress: bool = True,
) -> Any:
    """Run every Tier 2 check; same arguments and result as ``run_all_tier1_tests``."""
    return run_checks(model, config, TIER2_TESTS, options=options, seq_len=seq_len, progress=progress, desc="Tier 2")


def run_all_tests(
    model: nn.Module,
    config: Any,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seq_len: int | None = None,
    progress: bool = True,
) -> Any:
    """Run Tier 1 and Tier 2 (not the Tier 3 training run) in one table.

    Same arguments and result as ``run_all_tier1_tests``. Train with
    ``test_fine_tuning`` separately: it needs data and takes much longer.
    """
    return run_checks(
        model, config, TIER1_TESTS + TIER2_TESTS, options=options, seq_len=seq_len, progress=progress, desc="Tier 1+2"
    )


__all__ = [
    "SUMMARY_COLUMNS",
    "run_all_tests",
    "run_all_tier1_tests",
    "run_all_tier2_tests",
    "run_checks",
    "test_amp_speedup_benchmark",
    "test_benchmark_comparison",
    "test_hyperparameter_search",
    "test_attention_patterns",
    "test_attribution_analysis",
    "test_fine_tuning",
    "test_gradient_flow",
    "test_inference_speed",
    "test_memory_footprint",
    "test_output_stability",
    "test_parameter_initialization",
    "test_robustness",
    "test_shape_robustness",
]
