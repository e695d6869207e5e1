"""diagnostics.common: the sweep and input checks the checks share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.checks import check_non_negative_number, check_sequence
from utils.diagnostics import common
from utils.model_helpers import probe_model


def test_check_positive_ints_names_a_bad_item_by_index():
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] must be a positive integer, got True \(a bool"):
        common.check_positive_ints((2, True), "batch_sizes")
    with pytest.raises(ValueError, match=r"seq_lengths\[0\] must be a positive integer, got the string '4'"):
        common.check_positive_ints(["4"], "seq_lengths")
    with pytest.raises(ValueError, match=r"batch_sizes must be a non-empty sequence of positive ints such as \(1, 4\)"):
        common.check_positive_ints((), "batch_sizes")


def test_check_positive_ints_gives_python_ints():
    values = common.check_positive_ints(np.array([3, 1, 3]), "batch_sizes")
    assert values == (1, 3) and all(type(v) is int for v in values)


def test_check_sequence_of_numbers_sorts_converts_and_names_the_item():
    levels = check_sequence(
        [1, 0.1, 1],
        "noise_levels",
        check_non_negative_number,
        items="numbers >= 0",
        example="(0.0, 0.1)",
        convert=float,
    )
    assert levels == (0.1, 1.0) and all(type(v) is float for v in levels)
    with pytest.raises(ValueError, match=r"noise_levels\[1\] must be a non-negative finite number, got nan"):
        check_sequence(
            (0.0, float("nan")), "noise_levels", check_non_negative_number, items="x", example="y", convert=float
        )
    with pytest.raises(ValueError, match=r"noise_levels must be a non-empty sequence of numbers >= 0 such as \(0.0, "):
        check_sequence(
            "0.1", "noise_levels", check_non_negative_number, items="numbers >= 0", example="(0.0, 0.1)", convert=float
        )


def test_precision_names_keep_order_and_drop_repeats():
    names = common.check_precision_names(["bf16", "fp16", "bf16"], "amp_precisions", common.AUTOCAST_PRECISIONS)
    assert names == ("bf16", "fp16")
    assert "fp32" not in common.AUTOCAST_PRECISIONS
    with pytest.raises(ValueError, match="precisions must name at least one of"):
        common.check_precision_names((), "precisions", ("fp32",), allow_empty=False)


def test_amp_plans_keep_a_precision_that_cannot_be_resolved_as_its_error():
    plans = dict(common.amp_plans(torch.device("cpu"), ["bf16", "fp8"]))
    assert plans["bf16"].dtype == torch.bfloat16
    assert isinstance(plans["fp8"], ValueError) and "fp8" in str(plans["fp8"])


def test_resolve_input_ids_checks_given_ids_and_makes_random_ones(tiny_gpt):
    model, config = tiny_gpt
    probe = probe_model(model, config, "the test")
    given = torch.tensor([[1, 2, 3]])
    assert torch.equal(common.resolve_input_ids(probe, given, 4, 8), given)
    assert common.resolve_input_ids(probe, None, 4, 8).shape == (4, 8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        common.resolve_input_ids(probe, torch.tensor([[config.vocab_size]]), 4, 8)
