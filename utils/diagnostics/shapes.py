"""Tier 1: does the output have the right shape for edge-case batch sizes and sequence lengths?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_positive_int
from utils.diagnostics.common import check_positive_ints
from utils.model_helpers import (
    ModelProbe,
    get_config_value,
    model_mode,
    model_output_tensor,
    probe_model,
    random_input_ids,
    result_status,
)
from utils.progress import progress_bar


def test_shape_robustness(
    model: nn.Module,
    config: Any,
    batch_sizes: Sequence[int] | None = None,
    seq_lengths: Sequence[int] | None = None,
    *,
    seq_len: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model on edge-case batch sizes and sequence lengths and check the output shape.

    The default sweep is batch sizes ``(1, 4, config.batch_size or 8)`` and
    sequence lengths ``(1, L // 2, L)``, where ``L`` is ``seq_len`` or else ``max_seq_len``. The expected shape
    is ``(B, T, V)`` for language models and ``(B, T, H)`` for encoders, as
    found by a probe pass. A failing case keeps the model's real error.

    Args:
        model: the model to check.
        config: its config; needs ``vocab_size``, and ``max_seq_len`` unless
            ``seq_lengths`` or ``seq_len`` is given.
        batch_sizes: batch sizes to try.
        seq_lengths: sequence lengths to try.
        seq_len: the longest length of the default sweep (instead of ``max_seq_len``).
        progress: show a progress bar.

    Returns:
        dict with ``table`` (one row per case: batch_size, seq_len,
        expected_shape, output_shape, status 'pass'/'fail', error), ``status``,
        ``summary`` and ``output_kind``.

    Raises:
        TypeError, ValueError, RuntimeError: bad model or config (see ``probe_model``).
        ValueError: a sweep is not a non-empty sequence of positive ints, or ``progress`` is not a bool.
    """
    check_bool(progress, "progress")
    batch_sizes = None if batch_sizes is None else check_positive_ints(batch_sizes, "batch_sizes")
    seq_lengths = None if seq_lengths is None else check_positive_ints(seq_lengths, "seq_lengths")
    check_positive_int(seq_len, "seq_len", allow_none=True)
    given_length = seq_lengths is not None or seq_len is not None
    required = ("vocab_size",) if given_length else ("vocab_size", "max_seq_len")
    probe = probe_model(model, config, "test_shape_robustness", required)
    if batch_sizes is None:
        config_batch_size = get_config_value(config, "batch_size", 8)
        check_positive_int(config_batch_size, "config.batch_size (or pass batch_sizes=...)")
        batch_sizes = check_positive_ints((1, 4, config_batch_size), "batch_sizes")
    if seq_lengths is None:
        longest = seq_len or probe.max_seq_len
        seq_lengths = check_positive_ints((1, max(1, longest // 2), longest), "seq_lengths")

    cases = [(b, t) for b in batch_sizes for t in seq_lengths]
    with model_mode(model, False), torch.no_grad():
        bar = progress_bar(cases, desc="shapes", unit="case", enabled=progress)
        rows = [_check_one_shape(probe, b, t) for b, t in bar]
    import pandas as pd

    table = pd.DataFrame(rows)
    n_ok = int((table["status"] == "pass").sum())
    return {
        "table": table,
        "status": result_status(n_ok < len(table)),
        "summary": f"{n_ok}/{len(table)} shapes ok ({probe.output_kind})",
        "output_kind": probe.output_kind,
    }


def _check_one_shape(probe: ModelProbe, batch_size: int, seq_len: int) -> dict[str, Any]:
    expected = (batch_size, seq_len, probe.output_dim)
    row = {"batch_size": batch_size, "seq_len": seq_len, "expected_shape": expected, "output_shape": None}
    try:
        input_ids = random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device, seed=batch_size + seq_len)
        output, _ = model_output_tensor(probe.forward(input_ids))
        row["output_shape"] = tuple(output.shape)
        ok = row["output_shape"] == expected
        error = "" if ok else f"expected shape {expected}, got {row['output_shape']}"
    except Exception as err:  # the report keeps the model's real error
        ok, error = False, f"{type(err).__name__}: {err}"
    return {**row, "status": "pass" if ok else "fail", "error": error}


test_shape_robustness.__test__ = False
