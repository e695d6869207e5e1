"""The report folder: complete or absent, never half-written, and never half-deleted."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from tiny_models import run_until_killed

from utils import folders, records, report


def _figure() -> Figure:
    fig = Figure()
    fig.add_subplot().plot([1, 2, 3])
    return fig


def _write(out: Path, run: str, *, overwrite: bool = False) -> Path:
    """A small report whose every file says which ``run`` wrote it."""
    return report.write_report(
        out,
        figures={},
        tables={"metrics": pd.DataFrame({"run": [run] * 3})},
        results={"run": run},
        summary_md=f"# {run}\n",
        overwrite=overwrite,
    )


def _contents(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


def _expected(tmp_path: Path, run: str) -> dict[str, str]:
    return _contents(_write(tmp_path / "expected" / run, run))


def test_write_report_writes_every_file(tmp_path):
    out = tmp_path / "rep"
    folder = report.write_report(
        out,
        figures={"curves": _figure()},
        tables={"metrics": pd.DataFrame({"a": [1, 2]})},
        results={"loss": 1.5, "nan": math.nan, "t": torch.tensor(2.0)},
        summary_md="# hi\n",
    )
    assert folder == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv", "results.json", "summary.md"]
    assert json.loads((out / "results.json").read_text()) == {"loss": 1.5, "nan": None, "t": 2.0}
    assert pd.read_csv(out / "metrics.csv")["a"].tolist() == [1, 2]


def test_report_folder_gets_the_umask_permissions_not_private_ones(tmp_path):
    out = _write(tmp_path / "rep", "new")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_to_jsonable_is_the_one_in_records():
    assert report.to_jsonable is records.to_jsonable  # benchmarks import it from report


def test_failure_leaves_nothing_behind(tmp_path):
    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        report.write_report(tmp_path / "rep", figures={"x": Broken()}, tables={}, results={}, summary_md="")
    assert list(tmp_path.iterdir()) == []


def test_existing_report_needs_overwrite(tmp_path):
    out = _write(tmp_path / "rep", "old")
    (out / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        report.check_report_folder(out, overwrite=False)
    _write(out, "new", overwrite=True)
    assert not (out / "old.txt").exists() and (out / "summary.md").read_text() == "# new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_overwrite_never_replaces_a_folder_that_holds_no_report(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="only replaces a report folder"):
        _write(out, "new", overwrite=True)
    assert _contents(out) == {"thesis.tex": "years of work"}


def test_markdown_table_formats_floats_and_blanks():
    text = report.markdown_table([{"a": 1.23456, "b": None}, {"a": "x", "b": 3}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.235 |  |", "| x | 3 |"]


def test_missing_parent_folders_are_made_at_write_time(tmp_path):
    out = tmp_path / "reports" / "nested" / "run-1"
    report.check_report_folder(out, overwrite=False)
    assert not (tmp_path / "reports").exists()  # checking writes nothing
    report.write_report(out, figures={}, tables={}, results={}, summary_md="x")
    assert (out / "summary.md").read_text() == "x"


def test_out_below_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        report.check_report_folder(tmp_path / "afile" / "run", overwrite=False)


def test_unwritable_place_is_refused_before_any_work(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Patched, not chmod-ed: root ignores permission bits, so a chmod test would pass for the wrong reason.
    monkeypatch.setattr(folders.tempfile, "mkdtemp", refuse)
    with pytest.raises(ValueError, match=r"--out .*cannot write in .*Permission denied"):
        report.check_report_folder(tmp_path / "rep", overwrite=False)
    assert list(tmp_path.iterdir()) == []


# -- an interrupted overwrite ------------------------------------------------
# Each kill point below is installed in a forked child, which then SIGKILLs
# itself there: no except or finally block runs, as after a real kill -9 or a
# power cut. The parent then checks what is on disk and that the next run
# recovers.


def _kill(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_before_the_swap() -> None:
    """The staging folder is complete; nothing has moved yet."""
    folders.swap_into_place = _kill


def _kill_between_the_renames() -> None:
    """The old report is aside; the new one is not yet in place, so ``out`` is missing."""
    rename = Path.rename
    done = []

    def rename_once_then_kill(self, target):
        if done:
            _kill()
        done.append(target)
        return rename(self, target)

    Path.rename = rename_once_then_kill


def _kill_before_deleting_the_old_report() -> None:
    folders.shutil.rmtree = _kill


def _kill_while_deleting_the_old_report() -> None:
    def delete_one_file_then_kill(path, *args, **kwargs):
        os.remove(next(Path(path).iterdir()))
        _kill()

    folders.shutil.rmtree = delete_one_file_then_kill


def _write_killed(out: Path, kill_point: Callable[[], None]) -> None:
    """Overwrite ``out`` in a forked child that is killed at ``kill_point``."""

    def overwrite() -> None:
        kill_point()
        _write(out, "new", overwrite=True)

    run_until_killed(overwrite)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("kill_point", "out_holds"),
    [
        (_kill_before_the_swap, "old"),
        (_kill_between_the_renames, None),
        (_kill_before_deleting_the_old_report, "new"),
        (_kill_while_deleting_the_old_report, "new"),
    ],
)
def test_a_kill_during_overwrite_never_half_deletes_and_the_next_run_recovers(tmp_path, kill_point, out_holds):
    old, new = _expected(tmp_path, "old"), _expected(tmp_path, "new")
    out = tmp_path / "runs" / "rep"
    _write(out, "old")
    _write_killed(out, kill_point)
    # (a) out is the whole old report, the whole new one, or missing with the old one whole beside it.
    if out_holds is None:
        assert not out.exists()
        (aside,) = [p for p in out.parent.iterdir() if ".replaced-" in p.name]
        assert _contents(aside) == old
    else:
        assert _contents(out) == {"old": old, "new": new}[out_holds]
    # (b) the next check recovers: the old report is restored, or the one left aside deleted ...
    report.check_report_folder(out, overwrite=True)
    assert _contents(out) == (old if out_holds is None else {"old": old, "new": new}[out_holds])
    # ... then writes; (c) no hidden leftovers remain.
    _write(out, "newer", overwrite=True)
    assert _contents(out)["summary.md"] == "# newer\n"
    assert [p.name for p in out.parent.iterdir()] == ["rep"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_report_restored_after_a_kill_still_needs_overwrite(tmp_path):
    out = tmp_path / "rep"
    _write(out, "old")
    _write_killed(out, _kill_between_the_renames)
    with pytest.raises(ValueError, match="--overwrite"):
        report.check_report_folder(out, overwrite=False)
    assert (out / "summary.md").read_text() == "# old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_ctrl_c_between_the_renames_puts_the_old_report_back_at_once(tmp_path, monkeypatch):
    out = _write(tmp_path / "rep", "old")
    old = _contents(out)
    rename = Path.rename

    def interrupt_the_move_in(self, target):
        if ".staging-" in self.name:
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupt_the_move_in)
    with pytest.raises(KeyboardInterrupt):
        _write(out, "new", overwrite=True)
    assert _contents(out) == old
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_ctrl_c_while_deleting_the_old_report_keeps_the_new_one(tmp_path, monkeypatch):
    out = _write(tmp_path / "rep", "old")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders.shutil, "rmtree", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _write(out, "new", overwrite=True)
    monkeypatch.undo()
    assert (out / "summary.md").read_text() == "# new\n"
    report.check_report_folder(out, overwrite=True)  # the next run deletes the old one left aside
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_recovery_leaves_other_reports_leftovers_alone(tmp_path):
    for name in (".rep-2.staging-0123abcd", ".rep.staging-0123abcd.txt", ".rep.replaced-xyz"):
        (tmp_path / name).mkdir()
    (tmp_path / ".rep.staging-0123abcd").mkdir()  # rep's own stale staging folder
    report.recover_report_folder(tmp_path / "rep")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".rep-2.staging-0123abcd",
        ".rep.replaced-xyz",
        ".rep.staging-0123abcd.txt",
    ]
