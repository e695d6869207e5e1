"""Tests for utils.folders: the one folder swap (``replacing``), its recovery, and the atomic JSON writer.

The report's and the run folder's kill tests (tests/test_report.py, tests/test_run_folder.py)
exercise these through their users; these pin the rules themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from utils import folders


def _folder(path: Path, note: str) -> Path:
    path.mkdir(parents=True)
    (path / "note.txt").write_text(note)
    return path


def _is_done(path: Path) -> bool:
    return (path / "done").is_file()


def test_replacing_deletes_the_old_folder_once_the_block_ends(tmp_path):
    target = _folder(tmp_path / "t", "old")
    with folders.replacing(target, is_complete=_is_done):
        assert not target.exists() and len(list(tmp_path.iterdir())) == 1  # the old one, aside
        _folder(target, "new")
    assert (target / "note.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_replacing_puts_the_old_folder_back_when_the_new_one_fails_before_it_is_complete(tmp_path):
    target = _folder(tmp_path / "t", "old")
    with pytest.raises(RuntimeError, match="boom"), folders.replacing(target, is_complete=_is_done):
        _folder(target, "new")
        raise RuntimeError("boom")
    assert (target / "note.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_replacing_keeps_a_new_folder_that_is_complete_when_it_fails(tmp_path):
    target = _folder(tmp_path / "t", "old")
    with pytest.raises(KeyboardInterrupt), folders.replacing(target, is_complete=_is_done):
        _folder(target, "new")
        (target / "done").write_text("")
        raise KeyboardInterrupt
    assert (target / "note.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_replacing_a_missing_folder_deletes_a_failed_new_one(tmp_path):
    target = tmp_path / "t"
    with pytest.raises(RuntimeError), folders.replacing(target, is_complete=_is_done):
        _folder(target, "new")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("new", "is_complete", "kept"),
    [
        (None, None, "old"),  # killed between the renames
        ("new", None, "new"),  # a staged folder in place is whole
        ("new", _is_done, "old"),  # a folder made in place that never became complete
        ("new+done", _is_done, "new"),  # ... and one that did
    ],
)
def test_recover_leftovers_keeps_the_new_folder_only_when_it_is_complete(tmp_path, new, is_complete, kept):
    target = _folder(tmp_path / "t", "old")
    folders.set_aside(target)
    if new is not None:
        _folder(target, "new")
        if new.endswith("+done"):
            (target / "done").write_text("")
    folders.recover_leftovers(target, is_complete=is_complete)
    assert (target / "note.txt").read_text() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_set_aside_names_the_folder_as_recovery_finds_it(tmp_path):
    aside = folders.set_aside(_folder(tmp_path / "run.1", "old"))
    assert aside.parent == tmp_path and aside.name.startswith(".run.1.replaced-") and len(aside.name) == 24
    assert folders.set_aside(tmp_path / "missing") is None


def test_write_json_atomic_writes_indented_json_and_leaves_no_partial(tmp_path):
    path = tmp_path / "results.json"
    folders.write_json_atomic(path, {"loss": 1.5, "nan": math.nan})
    assert path.read_text() == '{\n  "loss": 1.5,\n  "nan": NaN\n}\n'
    with pytest.raises(ValueError, match="Out of range float"):
        folders.write_json_atomic(path, {"loss": math.nan}, allow_nan=False)
    with pytest.raises(TypeError, match="not JSON serializable"):
        folders.write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text().replace("NaN", "null")) == {"loss": 1.5, "nan": None}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_json_atomic_removes_its_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        Path.write_bytes(self, b"{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        folders.write_json_atomic(tmp_path / "config.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
