"""Write a run's report folder: PNG plots, CSV metrics, a results JSON and a markdown summary.

The folder is written under a temporary name and moved into place at the
end, so a failed run never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot receive a report."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} already holds files; choose a new folder or pass --overwrite")
    existing = next(p for p in out.resolve().parents if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so the folder cannot be made there")


def write_report(
    out: Path,
    *,
    figures: dict[str, Any],
    tables: dict[str, Any],
    results: dict[str, Any],
    summary_md: str,
    overwrite: bool = False,
) -> Path:
    """Write every file into a temporary sibling folder, then move it to ``out``.

    Args:
        out: the report folder.
        figures: file stem -> matplotlib Figure, saved as PNG.
        tables: file stem -> pandas DataFrame, saved as CSV.
        results: written as results.json (non-JSON values become strings).
        summary_md: written as summary.md.
        overwrite: replace an existing folder.

    Returns:
        The report folder.
    """
    check_report_folder(out, overwrite)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)  # e.g. the default reports/ on a fresh clone
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; a report is not
        for stem, fig in figures.items():
            fig.savefig(staging / f"{stem}.png", dpi=110)
        for stem, table in tables.items():
            table.to_csv(staging / f"{stem}.csv", index=False)
        (staging / "results.json").write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
        (staging / "summary.md").write_text(summary_md)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from nested results: NaN/inf become None, objects their string form."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy or torch scalars
        return to_jsonable(value.item())
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; floats get 4 significant digits."""
    if not rows:
        return "_(empty)_\n"
    columns = columns or list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
