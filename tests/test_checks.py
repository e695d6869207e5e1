"""Tests for utils.checks: the one set of argument checks every public function uses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils import checks

BAD_NUMBERS = [True, False, "1.0", None, [1.0], math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", [0, -1, 1.0, True, False, "2", None, np.float64(2.0), math.nan])
def test_check_positive_int_rejects_and_names_the_argument(value):
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got "):
        checks.check_positive_int(value, "batch_size")


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_check_positive_int_accepts_ints(value):
    checks.check_positive_int(value, "batch_size")


def test_allow_none_is_explicit():
    checks.check_positive_int(None, "max_steps", allow_none=True)
    with pytest.raises(ValueError, match="max_steps must be a positive integer or None, got 0"):
        checks.check_positive_int(0, "max_steps", allow_none=True)


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 0, -0.5])
def test_check_positive_number_rejects_bools_strings_nan_and_inf(value):
    with pytest.raises(ValueError, match=r"^learning_rate must be a positive finite number, got "):
        checks.check_positive_number(value, "learning_rate")


@pytest.mark.parametrize("value", [1e-9, 3, np.float32(0.5)])
def test_check_positive_number_accepts_numbers(value):
    checks.check_positive_number(value, "learning_rate")


@pytest.mark.parametrize("value", [*BAD_NUMBERS, -1e-9])
def test_check_non_negative_number(value):
    with pytest.raises(ValueError, match="weight_decay must be a non-negative finite number"):
        checks.check_non_negative_number(value, "weight_decay")
    checks.check_non_negative_number(0, "weight_decay")


def test_messages_spell_out_the_usual_mistakes():
    with pytest.raises(ValueError, match="got the string '1.0'; pass the value itself, not text"):
        checks.check_positive_number("1.0", "grad_clip")
    with pytest.raises(ValueError, match=r"got True \(a bool is not a number here\)"):
        checks.check_positive_number(True, "learning_rate")


@pytest.mark.parametrize("value", [-1, 1.5, True, "0"])
def test_check_non_negative_int(value):
    with pytest.raises(ValueError, match="warmup_steps must be a non-negative integer"):
        checks.check_non_negative_int(value, "warmup_steps")
    checks.check_non_negative_int(0, "warmup_steps")


@pytest.mark.parametrize("value", [1.5, True, "3", None])
def test_check_int(value):
    with pytest.raises(ValueError, match="seed must be an integer"):
        checks.check_int(value, "seed")
    checks.check_int(-3, "seed")


@pytest.mark.parametrize("value", [-0.1, 1.1, math.nan, True, "0.5"])
def test_check_number_in_range(value):
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\)"):
        checks.check_number_in_range(value, "val_fraction", 0, 1, low_inclusive=False, high_inclusive=False)
    checks.check_number_in_range(0.5, "val_fraction", 0, 1)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_check_bool(value):
    with pytest.raises(ValueError, match="progress must be True or False"):
        checks.check_bool(value, "progress")
    checks.check_bool(False, "progress")
    checks.check_bool(None, "use_amp", allow_none=True)


def test_check_choice_str_and_path():
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp8'"):
        checks.check_choice("fp8", "precision", ("fp32", "bf16"))
    with pytest.raises(ValueError, match="precision must be one of"):
        checks.check_choice(True, "precision", (True, False, 1))  # a bool is never a choice by accident
    with pytest.raises(ValueError, match="project must be a non-empty string"):
        checks.check_str("  ", "project")
    with pytest.raises(ValueError, match="out must be a file or folder path"):
        checks.check_path(3, "out")
    checks.check_path("reports/x", "out")


@pytest.mark.parametrize(
    "value, expected",
    [([1], True), ((1,), True), ({1}, True), ("ab", False), (b"a", False), ({"a": 1}, False), (3, False)],
)
def test_is_collection_takes_lists_not_strings_mappings_or_scalars(value, expected):
    assert checks.is_collection(value) is expected
