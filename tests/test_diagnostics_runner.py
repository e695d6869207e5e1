"""Tests for utils.diagnostics.runner: seq_len= reaches every check that takes it, as for test_fine_tuning."""

from __future__ import annotations

import pytest

from utils.diagnostics import runner
from utils.diagnostics.shapes import test_shape_robustness as shape_check


def _seen(name, takes_seq_len=True):
    """A check that records the keywords it was called with."""
    calls = []

    def check(model, config, seq_len=None):
        calls.append(seq_len)
        return {"status": "pass", "summary": f"seq_len={seq_len}"}

    def check_without(model, config):
        calls.append("none")
        return {"status": "pass", "summary": ""}

    chosen = check if takes_seq_len else check_without
    chosen.__name__ = name
    return chosen, calls


def test_seq_len_reaches_the_checks_that_take_it_and_an_option_wins(tiny_gpt):
    model, config = tiny_gpt
    first, first_calls = _seen("first")
    second, second_calls = _seen("second")
    other, other_calls = _seen("other", takes_seq_len=False)
    runner.run_checks(
        model, config, (first, second, other), seq_len=8, options={"second": {"seq_len": 4}}, progress=False
    )
    assert (first_calls, second_calls, other_calls) == ([8], [4], ["none"])


def test_a_config_without_max_seq_len_needs_seq_len(tiny_gpt):
    model, _ = tiny_gpt
    config = {"vocab_size": 256}
    with pytest.raises(ValueError, match="max_seq_len.*or pass seq_len="):
        runner.run_checks(model, config, (shape_check,), progress=False)
    summary = runner.run_checks(model, config, (shape_check,), seq_len=8, progress=False)
    assert list(summary["status"]) == ["pass"]
    assert sorted(set(summary.attrs["results"]["test_shape_robustness"]["table"]["seq_len"])) == [1, 4, 8]


@pytest.mark.parametrize("seq_len", [0, 2.5, "8", True])
def test_a_bad_seq_len_is_named(tiny_gpt, seq_len):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="seq_len"):
        runner.run_checks(model, config, (shape_check,), seq_len=seq_len, progress=False)
