"""Write a run's report folder: PNG plots, CSV metrics, a results JSON and a markdown summary.

The folder is written all at once through ``utils.folders``: under a hidden
staging name beside ``out``, then swapped into place, so a failed or killed
run never leaves a half-written report, and never a half-deleted old one.
The next ``check_report_folder`` (and so the next ``write_report``) for the
same ``out`` cleans up what a killed run left (see ``utils.folders``).

Example:
    >>> write_report(Path("reports/run-1"), figures={}, tables={}, results={"loss": 1.0}, summary_md="# run\\n")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.folders import check_target_folder, recover_leftovers, staged_folder, write_json_atomic
from utils.folders import check_writable as check_writable  # re-exported: the CLI checks --checkpoint-dir with it
from utils.records import to_jsonable as to_jsonable  # re-exported: benchmarks import it from here

# Every report has these; --overwrite replaces only a folder that holds them, never any other folder.
_REPORT_FILES = ("results.json", "summary.md")


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot receive a report.

    First cleans up or recovers what an interrupted ``write_report`` left beside
    ``out`` (see ``utils.folders``), so the checks see the folder as it really is.

    Raises:
        ValueError: naming ``--out``: ``out`` is a file, holds files (without
            ``overwrite``, or that are not a report), or cannot be made or written.
    """
    check_target_folder(
        out, overwrite=overwrite, flag="--out", overwrite_flag="--overwrite", kind="report", marker_files=_REPORT_FILES
    )


def recover_report_folder(out: Path) -> None:
    """Clean up or restore what an interrupted ``write_report`` left beside ``out``.

    Staging folders are deleted. A replaced report is deleted when ``out``
    exists, and renamed back to ``out`` when ``out`` is missing (the old report
    is restored, never lost).
    """
    recover_leftovers(out)


def write_report(
    out: Path,
    *,
    figures: dict[str, Any],
    tables: dict[str, Any],
    results: dict[str, Any],
    summary_md: str,
    overwrite: bool = False,
) -> Path:
    """Write every file into a hidden staging folder beside ``out``, then swap it into place.

    Args:
        out: the report folder.
        figures: file stem -> matplotlib Figure, saved as PNG.
        tables: file stem -> pandas DataFrame, saved as CSV.
        results: written as results.json (non-JSON values become strings).
        summary_md: written as summary.md.
        overwrite: replace an existing report folder.

    Returns:
        The report folder.
    """
    check_report_folder(out, overwrite)
    with staged_folder(out) as staging:
        for stem, fig in figures.items():
            fig.savefig(staging / f"{stem}.png", dpi=110)
        for stem, table in tables.items():
            table.to_csv(staging / f"{stem}.csv", index=False)
        write_json_atomic(staging / "results.json", to_jsonable(results))
        (staging / "summary.md").write_text(summary_md)
    return out.resolve()


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; floats get 4 significant digits.

    Example:
        >>> markdown_table([{"a": 1.23456, "b": None}])
        '| a | b |\\n|---|---|\\n| 1.235 |  |\\n'
    """
    if not rows:
        return "_(empty)_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
