"""The report folder: complete or absent, never half-written."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from utils import report


def _figure():
    fig = Figure()
    fig.add_subplot().plot([1, 2, 3])
    return fig


def test_write_report_writes_every_file(tmp_path):
    out = tmp_path / "rep"
    folder = report.write_report(
        out, figures={"curves": _figure()}, tables={"metrics": pd.DataFrame({"a": [1, 2]})},
        results={"loss": 1.5, "nan": math.nan, "t": torch.tensor(2.0)}, summary_md="# hi\n",
    )  # fmt: skip
    assert folder == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv", "results.json", "summary.md"]
    assert json.loads((out / "results.json").read_text()) == {"loss": 1.5, "nan": None, "t": 2.0}
    assert pd.read_csv(out / "metrics.csv")["a"].tolist() == [1, 2]


def test_failure_leaves_nothing_behind(tmp_path):
    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        report.write_report(tmp_path / "rep", figures={"x": Broken()}, tables={}, results={}, summary_md="")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        report.check_report_folder(out, overwrite=False)
    report.write_report(out, figures={}, tables={}, results={}, summary_md="", overwrite=True)
    assert not (out / "old.txt").exists() and (out / "summary.md").exists()


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
