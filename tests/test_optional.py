"""Tests for utils.optional: the one seam for optional packages."""

from __future__ import annotations

import sys

import pytest

from utils.optional import import_optional


def test_an_installed_module_is_returned():
    assert import_optional("json", "a test").dumps([1]) == "[1]"


def test_a_missing_package_names_itself_what_needed_it_and_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    with pytest.raises(
        ImportError, match=r"^the search needs the 'optuna' package; install it with `pip install optuna`, or skip it$"
    ):
        import_optional("optuna", "the search", alternative="or skip it")


def test_the_package_name_may_differ_from_the_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="`pip install safetensors`"):
        import_optional("safetensors.torch", "exports", package="safetensors")
