"""What the jobs print and write besides their own sections: summary tables, report folders and exports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from utils import __version__, report
from utils.checks import check_path
from utils.training.export import export_state_dict

# The main job hears the model before and after fine-tuning: a sample at both ends and none between.
SAMPLES_BEFORE_AND_AFTER = 10**9
SAMPLE_PROMPT = "def "  # the built-in corpus is Python source


def _export_model(results: dict[str, Any], folder: Path, overwrite: bool) -> dict[str, Any]:
    """Export ``results['model']`` to ``folder`` with the reload check; return what the report keeps of it."""
    exported = export_state_dict(results, folder, overwrite=overwrite)
    return {"export_dir": str(exported["export_dir"]), "files": exported["files"], "parity": exported["parity"]}


def _export_rows(record: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The summary rows of an export: where it is and whether it reloads to the same logits."""
    if record is None:
        return [("export", "none (pass --export DIR)")]
    parity = record["parity"]
    if parity["status"] == "ok":
        verdict = f"ok (max abs diff {parity['max_abs_diff']:.3g})"
    else:
        verdict = f"FAIL: {parity['reason']}"
    return [("export", record["export_dir"]), ("export parity", verdict)]


def _exit_status(record: dict[str, Any] | None) -> int:
    """1 when an export failed its reload check: a script must not take those weights for good ones."""
    if record is None or record["parity"]["status"] == "ok":
        return 0
    print(
        f"error: the export in {record['export_dir']} does not reload to the same model "
        f"({record['parity']['reason']}); do not use those weights until you know why",
        file=sys.stderr,
    )
    return 1


def _check_optional_out(out: str | None, overwrite: bool) -> Path | None:
    """--out of a subcommand whose report folder is optional: None, or a folder that can receive a report."""
    if out is None:
        return None
    check_path(out, "--out")  # an empty path would silently mean the current folder
    report.check_report_folder(Path(out), overwrite)
    return Path(out)


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    """Print (metric, value) pairs as a markdown table."""
    print()
    print(report.markdown_table([{"metric": metric, "value": value} for metric, value in rows], ["metric", "value"]))


def _write_section_report(out: Path | None, title: str, label: str, section: dict, overwrite: bool) -> None:
    """Write one section (results, figures, tables, summary rows) as a report folder, when --out asks for one."""
    if out is None:
        return
    rows = [{"metric": metric, "value": value} for metric, value in section["summary"]]
    folder = report.write_report(
        out,
        figures=section["figures"],
        tables=section["tables"],
        results={"model": label, "version": __version__, **section["results"]},
        summary_md=f"# {title}: {label}\n\n" + report.markdown_table(rows, ["metric", "value"]),
        overwrite=overwrite,
    )
    print(f"Report written to {folder}")


def _format(value: float | None, spec: str) -> str:
    """``value`` in ``spec``, or 'n/a' where there is none."""
    return spec.format(value) if value is not None else "n/a"


def _text_rows(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The summary rows of what a run did with text: its tokenizer, bits per byte, and its samples."""
    tokenizer = results.get("tokenizer")
    rows = [("tokenizer", f"{tokenizer.name} ({tokenizer.vocab_size} ids)" if tokenizer is not None else "n/a")]
    summary = results.get("metrics_summary")
    if summary is not None and "val/bits_per_byte" in summary:
        rows.append(("val bits per byte", _format(summary["val/bits_per_byte"].iloc[-1], "{:.3f}")))
    for sample in results.get("samples", [])[:1] + results.get("samples", [])[-1:]:
        rows.append((f"sample {sample['label'] or 'at step ' + str(sample['step'])}", repr(sample["text"][:80])))
    return rows
