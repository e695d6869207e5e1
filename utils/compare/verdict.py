"""The comparison's verdict: the summary table, the one-line judgement, the notes and the figure.

From both models' measured results (``utils.compare.measure``) this builds the report that
``test_benchmark_comparison`` returns: one row per metric with the ratio yours / baseline,
a judgement by validation loss (by next-token accuracy when the vocabularies differ), the
notes to read it by, and one Figure. "Did it learn?" is the engine's ``learned``.

Example:
    >>> summary = summary_table(yours, base, loss_note="")
    >>> judgement, line = judge(summary, comparable=True)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from utils.compare.baseline import HF_PREFIX, PARAMETER_TOLERANCE, Contender
from utils.compare.text import same_tokenizer
from utils.device import resolve_device
from utils.records import environment_record
from utils.training import loop
from utils.training.results import learned

# One seed, a short run: a loss (or accuracy) within this share of the baseline's is "about equal".
EQUAL_MARGIN = 0.02


def comparison_report(
    arms: dict[str, Contender], results: dict[str, dict[str, Any]], settings: loop.TrainingSettings, evaluated: str
) -> dict[str, Any]:
    """The summary table, the verdict, the notes and the figure, from both models' results."""
    yours, base = results["yours"], results["baseline"]
    comparable, loss_note = _loss_comparability(arms["yours"].vocab_size, arms["baseline"].vocab_size)
    if comparable and not same_tokenizer(yours.get("tokenizer"), base.get("tokenizer")):
        comparable, loss_note = (
            False,
            "val loss and perplexity not compared: the two read the text through different tokenizers",
        )
    summary = summary_table(yours, base, loss_note)
    judgement, verdict = judge(summary, comparable)
    if yours["causal"] is False:
        verdict += "; but your model sees the tokens it predicts (not causal), so this flatters it"
    device = resolve_device(settings.device)
    record = _settings_record(settings, device, yours["precision"])
    return {
        "status": "ok",
        "verdict": verdict,
        "judgement": judgement,
        "summary": summary,
        "figure": _comparison_figure(summary, yours, base, verdict),
        "yours": yours,
        "baseline": base,
        "baseline_description": {**arms["baseline"].description, "parameters": base["parameters"]},
        "loss_comparable": comparable,
        "loss_note": loss_note or None,
        "notes": _notes(arms["baseline"].description, yours, base, device, loss_note),
        "settings": {**record, "evaluated_on": evaluated},
    }


def _loss_comparability(your_vocab: int, baseline_vocab: int) -> tuple[bool, str]:
    """Losses compare only over one vocabulary: then both models score the same ids with the same softmax."""
    if your_vocab == baseline_vocab:
        return True, ""
    return False, (
        f"val loss and perplexity not compared: the vocabularies differ ({your_vocab} vs {baseline_vocab}), and a "
        "softmax over more ids starts higher and spends capacity on ids the data never uses"
    )


# The summary's rows: (metric, how to read it from one model's results, note).
_SUMMARY_ROWS = (
    ("parameters", lambda r: r["parameters"], ""),
    ("val loss", lambda r: r["val_loss"], ""),
    ("val perplexity", lambda r: math.exp(min(r["val_loss"], 50.0)), "exp(val loss)"),  # capped: exp overflows
    ("next-token accuracy", lambda r: r["val_accuracy"], ""),
    ("training tokens/s", lambda r: r["throughput"]["tokens_per_second"], "steady state, warm-up steps left out"),
    ("median step time (ms)", lambda r: r["step_time_ms"], "per optimizer step, warm-up steps left out"),
    ("inference latency median (ms)", lambda r: r["latency_median_ms"], "Tier 1 timing, after warm-up"),
    ("inference latency p95 (ms)", lambda r: r["latency_p95_ms"], "Tier 1 timing, after warm-up"),
    ("peak training memory (MB)", lambda r: r["peak_memory_mb"], ""),
    # Compares across vocabularies and tokenizers: the verdict's measure when val loss does not.
    ("val bits per byte", lambda r: r.get("val_bits_per_byte"), "loss per UTF-8 byte of the held-out text"),
)
_LOSS_METRICS = ("val loss", "val perplexity")


def summary_table(yours: dict[str, Any], base: dict[str, Any], loss_note: str) -> Any:
    """One row per metric: metric, yours, baseline, ratio (yours / baseline) and a note; None where not compared."""
    import pandas as pd

    rows = []
    for metric, read, note in _SUMMARY_ROWS:
        if loss_note and metric in _LOSS_METRICS:
            rows.append((metric, None, None, None, loss_note))
            continue
        if metric.startswith("peak training memory"):
            note = _memory_label(yours["memory_method"])
        mine, theirs = read(yours), read(base)
        rows.append((metric, mine, theirs, _ratio(mine, theirs), note))
    # object columns keep None as None (not NaN) and the parameter counts as integers
    return pd.DataFrame(rows, columns=["metric", "yours", "baseline", "ratio", "note"], dtype=object)


def _memory_label(method: str) -> str:
    """How the peak memory figure was found, in words."""
    if method == "cuda_allocator":
        return "measured: the CUDA allocator's peak while training"
    return "estimate (Tier 1): parameters, gradients, AdamW state and saved activations of one step"


def _ratio(yours: Any, baseline: Any) -> float | None:
    if yours is None or baseline is None or not baseline:
        return None
    return float(yours) / float(baseline)


def judge(summary: Any, comparable: bool) -> tuple[str, str]:
    """('better' | 'worse' | 'about equal', the one-line verdict): by val loss, else bits per byte, else accuracy.

    Losses over different vocabularies or tokenizations do not compare; bits per byte of the same
    text do, whenever both were scored on text.
    """
    value = summary.set_index("metric")
    metric = judged_metric(value, comparable)
    mine, theirs, ratio = (value.at[metric, key] for key in ("yours", "baseline", "ratio"))
    lower_is_better = metric != "next-token accuracy"
    gain = (1 - ratio) if lower_is_better else (ratio - 1)  # > 0: yours is better
    judgement = "better" if gain > EQUAL_MARGIN else "worse" if gain < -EQUAL_MARGIN else "about equal"
    shown = (f"{mine:.2f}", f"{theirs:.2f}") if lower_is_better else (f"{mine:.1%}", f"{theirs:.1%}")
    step = value.at["median step time (ms)", "ratio"]
    step_text = f"{step:.2f}x its step time" if step is not None else "an unmeasured step time"
    params = value.at["parameters", "ratio"]
    line = f"your model reaches {metric} {shown[0]} vs the baseline's {shown[1]} at {params:.2f}x its parameters"
    if judgement == "about equal":
        detail = f"within {EQUAL_MARGIN:.0%}"
    else:
        detail = f"{abs(1 - ratio):.0%} {'lower' if ratio < 1 else 'higher'} {metric}"
    unlike = "" if comparable else "; val loss not compared across vocabularies or tokenizers"
    return judgement, f"{line} and {step_text}: {judgement} ({detail}, one seed{unlike})"


def judged_metric(value: Any, comparable: bool) -> str:
    """The summary row the verdict goes by: val loss, else val bits per byte (when both have it), else accuracy."""
    if comparable:
        return "val loss"
    has_bits = "val bits per byte" in value.index and value.at["val bits per byte", "ratio"] is not None
    return "val bits per byte" if has_bits else "next-token accuracy"


def _notes(
    description: dict[str, Any], yours: dict[str, Any], base: dict[str, Any], device: torch.device, loss_note: str
) -> list[str]:
    """What to keep in mind when reading the table."""
    notes = []
    ratio = yours["parameters"] / base["parameters"]
    if description["kind"] == "default" and abs(ratio - 1) > PARAMETER_TOLERANCE:
        notes.append(
            f"No shape of the built-in GPT comes within {PARAMETER_TOLERANCE:.0%} of your parameter count: "
            f"the closest has {base['parameters']:,} against your {yours['parameters']:,} ({ratio:.2f}x)."
        )
    if loss_note:
        bits = yours.get("val_bits_per_byte") is not None and base.get("val_bits_per_byte") is not None
        instead = "val bits per byte (the same held-out text)" if bits else "next-token accuracy"
        notes.append(f"{loss_note}; the verdict uses {instead} instead.")
    if not same_tokenizer(yours.get("tokenizer"), base.get("tokenizer")):
        notes.append(
            f"Your model reads the text through {yours['tokenizer']} and the baseline through {base['tokenizer']}: "
            "each scored the same held-out text through its own tokenizer, so only bits per byte compare."
        )
    for name, results in (("Your model", yours), ("The baseline", base)):
        if results["causal"] is False:
            notes.append(
                f"{name} is not causal (the engine's probe): each target is visible in its input, so its loss "
                "and accuracy are upper bounds, not a fair language-modelling score."
            )
        elif results["causal"] is None and results.get("causal_note"):
            notes.append(f"Whether {name.lower()} is causal was not judged: {results['causal_note']}.")
    for name, results in (("Your model", yours), ("The baseline", base)):
        if not learned(results):
            notes.append(
                f"{name} barely learned (val loss {results['val_loss']:.3f} against {results['initial_loss']:.3f} "
                "in its first steps); raise train_steps or learning_rate before trusting the verdict."
            )
    if yours["memory_method"] != "cuda_allocator":
        notes.append(
            f"Peak memory on {device.type} is an {_memory_label(yours['memory_method'])}; there is no allocator "
            "to measure here, so read it as a size comparison, not a measurement."
        )
    if device.type == "cpu":
        threads = torch.get_num_threads()
        advice = (
            f" With {threads} intra-op threads and fewer idle cores, steps can slow several-fold; "
            "torch.set_num_threads(1) steadies them."
        )
        notes.append(
            "Timings on a CPU are noisy, on a shared one above all: read ratios near 1 as equal."
            + (advice if threads > 1 else "")
        )
    return notes


def _settings_record(settings: loop.TrainingSettings, device: torch.device, precision: str | None) -> dict[str, Any]:
    """The environment record plus the settings both models shared."""
    return {
        **environment_record(device, precision=precision, compile=settings.compile),
        "train_steps": settings.max_steps,
        "n_epochs": settings.n_epochs,
        "batch_size": settings.batch_size,
        "seq_len": settings.seq_len,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "max_corpus_bytes": settings.max_corpus_bytes,
    }


# Bars under the loss curves: (summary metric, axis title).
BAR_METRICS = (
    ("parameters", "Parameters"),
    ("next-token accuracy", "Next-token accuracy"),
    ("training tokens/s", "Training tokens/s"),
    ("inference latency median (ms)", "Inference latency (ms, median)"),
    ("peak training memory (MB)", "Peak training memory (MB)"),
)


def _comparison_figure(summary: Any, yours: dict[str, Any], base: dict[str, Any], verdict: str) -> Any:
    """Both training-loss curves (with the final val loss), and one pair of bars per other metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, len(BAR_METRICS))
    ax_loss = fig.add_subplot(grid[0, :])
    for label, results, color, style in (("yours", yours, "tab:blue", "-"), ("baseline", base, "tab:gray", "--")):
        steps = range(1, len(results["loss_history"]) + 1)
        ax_loss.plot(steps, results["loss_history"], style, lw=1, color=color, label=f"{label} (train)")
        ax_loss.plot([len(steps)], [results["val_loss"]], "o", color=color, label=f"{label} (val)")
    ax_loss.set(title="Training loss per optimizer step", xlabel="optimizer step", ylabel="cross-entropy")
    ax_loss.legend()
    value = summary.set_index("metric")
    for column, (metric, title) in enumerate(BAR_METRICS):
        ax = fig.add_subplot(grid[1, column])
        pair = [value.at[metric, "yours"], value.at[metric, "baseline"]]
        if any(v is None for v in pair):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center")
            ax.set(title=title, xticks=[], yticks=[])
            continue
        ax.bar(["yours", "baseline"], pair, color=["tab:blue", "tab:gray"])
        ratio = value.at[metric, "ratio"]  # None when the baseline's value is 0 (an accuracy, early on)
        ax.set_title(f"{title}\n{ratio:.2f}x" if ratio is not None else f"{title}\nratio n/a", fontsize=9)
    fig.suptitle(verdict if len(verdict) < 140 else verdict[:137] + "...", fontsize=10)
    return fig


def skipped_report(reason: str, baseline: Any, settings: loop.TrainingSettings) -> dict[str, Any]:
    """The result of a comparison that could not run: the reason, as data and as a warning."""
    warnings.warn(f"test_benchmark_comparison skipped: {reason}", stacklevel=3)
    if isinstance(baseline, str):
        kind, name = "hf", baseline[len(HF_PREFIX) :].strip()
    else:
        kind, name = "module", type(baseline[0]).__name__
    return {
        "status": "skipped",
        "reason": reason,
        "verdict": f"skipped: {reason}",
        "judgement": None,
        "summary": None,
        "figure": None,
        "yours": None,
        "baseline": None,
        "baseline_description": {"kind": kind, "name": name},
        "loss_comparable": None,
        "loss_note": None,
        "notes": [reason],
        "settings": _settings_record(settings, resolve_device(settings.device), None),
    }
