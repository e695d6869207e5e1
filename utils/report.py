"""Write a run's report folder: PNG plots, CSV metrics, a results JSON and a markdown summary.

The folder is written under a hidden staging name beside ``out`` and swapped
into place at the end, so a failed or killed run never leaves a half-written
report, and never a half-deleted old one:

1. write every file into ``.{name}.staging-XXXXXXXX``;
2. rename an existing ``out`` aside to ``.{name}.replaced-XXXXXXXX``;
3. rename the staging folder to ``out``;
4. delete the replaced folder.

A kill between two steps leaves hidden leftovers that the next
``check_report_folder`` (and so the next ``write_report``) for the same
``out`` cleans up: staging folders are deleted, and a replaced folder is
deleted when ``out`` exists or renamed back to ``out`` when it is missing.

Example:
    >>> write_report(Path("reports/run-1"), figures={}, tables={}, results={"loss": 1.0}, summary_md="# run\\n")
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from utils.records import to_jsonable as to_jsonable  # re-exported: benchmarks import it from here

_STAGING = "staging"  # the new report while it is being written
_REPLACED = "replaced"  # the old report between the swap and its deletion
# Every report has these; --overwrite replaces only a folder that holds them, never any other folder.
_REPORT_FILES = ("results.json", "summary.md")


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot receive a report.

    First cleans up or recovers what an interrupted ``write_report`` left beside
    ``out`` (see the module docstring), so the checks see the folder as it really is.

    Raises:
        ValueError: naming ``--out``: ``out`` is a file, holds files (without
            ``overwrite``, or that are not a report), or cannot be made or written.
    """
    recover_report_folder(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out} already holds files; choose a new folder or pass --overwrite")
        if not all((out / name).is_file() for name in _REPORT_FILES):
            raise ValueError(
                f"--out {out} holds files but no earlier report (no {' and '.join(_REPORT_FILES)}); "
                "--overwrite only replaces a report folder, so choose a new folder"
            )
    check_writable(out.resolve().parent, "--out", out)


def check_writable(folder: Path, flag: str, given: Path | None = None) -> None:
    """Fail unless files can be made in ``folder``, or in the nearest existing folder above it.

    A throwaway folder is made and removed there: permission bits alone miss
    read-only or special filesystems and root's rights.

    Raises:
        ValueError: naming ``flag`` and the path the user gave (``given``, default ``folder``).
    """
    given = folder if given is None else given
    folder = folder.resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() and existing == given.resolve():
        raise ValueError(f"{flag} {given} is a file; pass a folder path")
    if not existing.is_dir():
        raise ValueError(f"{flag} {given}: {existing} is a file, so the folder cannot be made there")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{flag} {given}: cannot write in {existing} ({err.strerror}); choose a folder you can write to"
        ) from err


def recover_report_folder(out: Path) -> None:
    """Clean up or restore what an interrupted ``write_report`` left beside ``out``.

    Staging folders are deleted. A replaced report is deleted when ``out``
    exists, and renamed back to ``out`` when ``out`` is missing (the old report
    is restored, never lost).
    """
    out = out.resolve()
    if not out.parent.is_dir():
        return
    for staging in _leftovers(out, _STAGING):
        shutil.rmtree(staging, ignore_errors=True)
    try:
        replaced = sorted(_leftovers(out, _REPLACED), key=os.path.getctime)
        if replaced and not out.exists():
            replaced.pop().rename(out)  # the newest: the report the interrupted run was replacing
    except FileNotFoundError:
        return  # another process (a DDP rank) is recovering the same folder right now
    for folder in replaced:
        shutil.rmtree(folder, ignore_errors=True)


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
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)  # e.g. the default reports/ on a fresh clone
    staging = _make_sibling(out, _STAGING)
    try:
        for stem, fig in figures.items():
            fig.savefig(staging / f"{stem}.png", dpi=110)
        for stem, table in tables.items():
            table.to_csv(staging / f"{stem}.csv", index=False)
        (staging / "results.json").write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
        (staging / "summary.md").write_text(summary_md)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename an old ``out`` aside, move ``staging`` in, then delete the old one.

    At every instant ``out`` is the whole old report, the whole new one, or
    missing with the old one whole beside it (restored by the next run).
    """
    replaced = None
    if out.exists():
        replaced = _sibling_name(out, _REPLACED)
        out.rename(replaced)
    try:
        staging.rename(out)
    except BaseException:
        if replaced is not None and not out.exists():
            replaced.rename(out)  # put the old report back before reporting the error
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)  # the new report is in place; the next run cleans up the rest


def _make_sibling(out: Path, kind: str) -> Path:
    """Make an empty hidden folder beside ``out``; plain ``mkdir`` gives it the user's umask permissions."""
    for _ in range(10):
        folder = _sibling_name(out, kind)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue  # a 1-in-4-billion name clash; draw again
    raise FileExistsError(f"could not make a {kind} folder beside {out}")


def _sibling_name(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{secrets.token_hex(4)}")


def _leftovers(out: Path, kind: str) -> list[Path]:
    """The ``kind`` folders left beside ``out``; the full-name match never takes another report's."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{kind}-[0-9a-f]{{8}}")
    return [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]


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
