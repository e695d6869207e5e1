"""WizardConfig's file (utils/ui/config.py): a save refuses a folder before writing, and leaves no partial file."""

from __future__ import annotations

import json
import os

import pytest

from utils.ui.config import FORMAT_VERSION, WizardConfig


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_save_to_a_folder_refuses_before_writing_anything(tmp_path):
    folder = tmp_path / "cfg.json"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        WizardConfig().save(folder)
    message = str(info.value)
    assert repr(str(folder)) in message and "is a folder; pass a file path" in message
    assert _names(tmp_path) == ["cfg.json"] and _names(folder) == []  # no cfg.json.partial, nothing inside


def test_a_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "wizard.json"
    WizardConfig(n_epochs=1).save(path)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        WizardConfig(n_epochs=2).save(path)
    assert _names(tmp_path) == ["wizard.json"]
    assert json.loads(path.read_text())["n_epochs"] == 1  # the old file is whole


def test_a_save_into_a_missing_folder_fails_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        WizardConfig().save(tmp_path / "missing" / "wizard.json")
    assert _names(tmp_path) == []


def test_save_writes_the_format_version(tmp_path):
    path = WizardConfig().save(tmp_path / "wizard.json")
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION
    assert _names(tmp_path) == ["wizard.json"]
