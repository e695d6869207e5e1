"""How much faster and leaner does mixed precision make this model? Measured fairly.

``test_amp_speedup_benchmark`` trains the same model twice, in FP32 and in
bf16/fp16, from the same initial weights, with the same data, seed and batch
order, and compares median step time, peak memory and final accuracy.

Example:
    >>> model, config = tiny_gpt()
    >>> report = test_amp_speedup_benchmark(model, config, max_steps=60, learning_rate=1e-3)
    >>> report["speedup"], report["requirements_met"]
"""

from __future__ import annotations

import copy
import statistics
import warnings
from typing import Any

import torch
import torch.nn as nn

from utils.causality import refuse_encoder_decoder
from utils.checks import check_bool, check_non_negative_int
from utils.device import MB, device_name, peak_memory_mb, reset_peak_memory, resolve_device, tf32_allowed
from utils.model_copy import private_copy
from utils.model_helpers import validate_model
from utils.records import environment_record
from utils.training import loop
from utils.training.precision import AMP_PRECISIONS, resolve_precision
from utils.training.results import LEARNED_MARGIN, learned
from utils.training.settings import TrainingSettings, from_options

# The documented targets for mixed precision against FP32.
TARGET_SPEEDUP = 1.5
TARGET_MEMORY_REDUCTION_PCT = 40.0
TARGET_MAX_ACCURACY_DIFF = 0.01
# Set per arm by the benchmark itself, so not accepted in **fine_tuning_options.
_RESERVED_OPTIONS = dict.fromkeys(("use_amp", "val_data", "callbacks", "wandb_prefix"), "it sets it for each arm")


def test_amp_speedup_benchmark(
    model: nn.Module,
    config: Any,
    train_data: Any = None,
    n_epochs: int = TrainingSettings.n_epochs,
    learning_rate: float = TrainingSettings.learning_rate,
    batch_size: int = TrainingSettings.batch_size,
    use_wandb: bool = TrainingSettings.use_wandb,
    *,
    precision: str = TrainingSettings.precision,
    device: str | torch.device | None = TrainingSettings.device,
    max_steps: int | None = TrainingSettings.max_steps,
    timing_warmup_steps: int = 3,
    allow_tf32: bool = False,
    seed: int = TrainingSettings.seed,
    progress: bool = TrainingSettings.progress,
    **fine_tuning_options: Any,
) -> dict[str, Any]:
    """Train in FP32 and in mixed precision and compare speed, peak memory and accuracy.

    Both arms train one private copy of the model (``utils.model_copy.private_copy``),
    each from the model's current weights, so the model itself keeps its weights,
    gradients, mode and device. A copy that would still share parts with the model
    is refused with a warning, and the model itself trains, its state restored at
    the end. Step times are CUDA-event (or clock) times per optimizer step, with the
    first ``timing_warmup_steps`` of each arm and all validation left out; the
    speedup is the ratio of median step times.

    Args:
        model, config, train_data, n_epochs, learning_rate, batch_size: as for
            ``test_fine_tuning``; validation data is held out of ``train_data``.
        use_wandb: log both arms to one W&B run, under 'fp32/' and '<amp>/' keys.
        precision: the mixed-precision arm: 'auto' (bf16 where native, else
            fp16 on GPUs), 'fp16' or 'bf16'.
        device: 'auto', 'cpu', 'cuda' or a torch.device.
        max_steps: optimizer steps per arm.
        timing_warmup_steps: steps per arm left out of the timing.
        allow_tf32: let the FP32 arm use TF32 matmuls on GPUs. Off by default,
            so the baseline is strict FP32; the setting is recorded.
        seed: the same seed drives both arms.
        progress: show progress bars.
        **fine_tuning_options: ``test_fine_tuning`` keywords for both arms (e.g.
            ``gradient_accumulation_steps``, ``seq_len``, ``max_val_batches``);
            an unknown name is an error.

    Returns:
        A dict with ``fp32_time_s``, ``amp_time_s``, ``fp32_step_time_ms``,
        ``amp_step_time_ms``, ``speedup``, ``fp32_memory_mb``,
        ``amp_memory_mb``, ``memory_reduction_pct`` (None on CPU, where no
        allocator peak exists), ``fp32_accuracy``, ``amp_accuracy``,
        ``accuracy_diff``, ``loss_diff``, each arm's steady-state
        ``*_tokens_per_second`` and ``*_mfu`` (None on CPU), ``amp_precision``, ``device``,
        ``requirements_met`` (the accuracy verdict is None, with a note, when
        the FP32 arm did not learn), ``notes``, ``settings``, ``summary``
        (DataFrame) and ``figure``. When no reduced precision exists on the
        device, ``status`` is 'skipped' and ``notes`` says why.
    """
    validate_model(model)
    refuse_encoder_decoder(model, config, "test_amp_speedup_benchmark")
    base = _check_arguments(
        precision,
        timing_warmup_steps,
        allow_tf32,
        fine_tuning_options,
        n_epochs=n_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        use_wandb=use_wandb,
        device=device,
        max_steps=max_steps,
        seed=seed,
        progress=progress,
    )
    device = resolve_device(device)
    amp_plan = _amp_arm_plan(precision, device)
    if amp_plan is None:
        return _skipped(device)

    run = _start_benchmark_run(model, config, amp_plan.name) if use_wandb else None
    try:
        arms = _run_both_arms(model, config, train_data, base, amp_plan.name, allow_tf32)
    finally:
        if run is not None:
            run.finish()
    report = _compare_arms(arms["fp32"], arms[amp_plan.name], amp_plan.name, device, timing_warmup_steps)
    report["settings"] = _record_settings(device, allow_tf32, amp_plan.name, timing_warmup_steps, base)
    report["figure"] = _create_benchmark_figure(report, arms["fp32"], arms[amp_plan.name])
    return report


test_amp_speedup_benchmark.__test__ = False  # a library function, not a pytest test


def _check_arguments(
    precision: Any, timing_warmup_steps: Any, allow_tf32: Any, options: dict[str, Any], **arm: Any
) -> loop.TrainingSettings:
    """Check every argument before any work; returns the settings both arms share."""
    if precision not in ("auto", *AMP_PRECISIONS):
        raise ValueError(
            f"precision={precision!r}: the mixed-precision arm must be one of {('auto', *AMP_PRECISIONS)}; "
            "the FP32 arm always runs"
        )
    check_non_negative_int(timing_warmup_steps, "timing_warmup_steps")
    check_bool(allow_tf32, "allow_tf32")
    # Checks every training setting (max_steps='5' included) and every option's name.
    settings = from_options("test_amp_speedup_benchmark", options, reserved=_RESERVED_OPTIONS, **arm)
    max_steps = settings.max_steps
    if max_steps is not None and max_steps <= timing_warmup_steps:
        raise ValueError(
            f"max_steps={max_steps} leaves no timed steps after timing_warmup_steps={timing_warmup_steps}; "
            "raise max_steps or lower timing_warmup_steps"
        )
    return settings


def _amp_arm_plan(precision: str, device: torch.device):
    """The mixed-precision arm's plan, or None when this device has no reduced precision worth timing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 'falls back to FP32' warning is replaced by the report's notes
        plan = resolve_precision(precision, use_amp=True, device=device)
    return plan if plan.amp_enabled else None


def _skipped(device: torch.device) -> dict[str, Any]:
    note = (
        f"No reduced precision is available on this {device_name(device)}: it has no native bf16, "
        "and fp16 autocast on a CPU is emulated. Comparing FP32 with itself would say nothing, so "
        "nothing was run. Pass precision='fp16' to time the emulated path anyway, or use a GPU."
    )
    warnings.warn(note, stacklevel=3)
    return {"status": "skipped", "notes": [note], "device": device_name(device), "amp_precision": None}


def _run_both_arms(
    model: nn.Module, config: Any, train_data: Any, base: loop.TrainingSettings, amp_name: str, allow_tf32: bool
) -> dict[str, dict[str, Any]]:
    """FP32, then the mixed-precision arm, each training one private copy from the same initial weights."""
    with private_copy(model, "model") as trainee, tf32_allowed(allow_tf32):
        # The model's own GPU tensors stay resident beside the copy; they are not this training's memory.
        idle_mb = 0.0 if trainee is model else sum(t.numel() * t.element_size() for t in _cuda_tensors(model)) / MB
        initial_state = copy.deepcopy(trainee.state_dict())
        return {
            name: _run_arm(
                trainee,
                config,
                train_data,
                initial_state,
                base.replace(precision=name, wandb_prefix=f"{name}/"),
                idle_mb,
            )
            for name in ("fp32", amp_name)
        }


def _cuda_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in (*model.parameters(), *model.buffers()) if t.is_cuda]


def _run_arm(
    model: nn.Module,
    config: Any,
    train_data: Any,
    initial_state: dict,
    settings: loop.TrainingSettings,
    idle_mb: float = 0.0,
) -> dict[str, Any]:
    """One arm: same weights, same seed and data; peak memory measured around training alone.

    ``idle_mb`` (resident memory that is not this arm's, the original beside its copy) is left out of the peak.
    """
    model.load_state_dict(initial_state)
    device = resolve_device(settings.device)
    reset_peak_memory(device)
    results = loop.train(model, config, settings, train_data)
    peak_mb = peak_memory_mb(device)
    results["peak_memory_mb"] = peak_mb - idle_mb if peak_mb is not None else None
    return results


def _compare_arms(
    fp32: dict[str, Any], amp: dict[str, Any], amp_name: str, device: torch.device, warmup: int
) -> dict[str, Any]:
    fp32_times, amp_times = fp32["step_times_s"][warmup:], amp["step_times_s"][warmup:]
    if not fp32_times or not amp_times:
        raise ValueError(
            f"only {len(fp32['step_times_s'])} steps ran, none left after {warmup} warm-up steps; "
            "pass more data, more epochs or a larger max_steps"
        )
    fp32_step_s, amp_step_s = statistics.median(fp32_times), statistics.median(amp_times)
    fp32_mem, amp_mem = fp32["peak_memory_mb"], amp["peak_memory_mb"]
    memory_reduction = 100.0 * (1.0 - amp_mem / fp32_mem) if fp32_mem and amp_mem is not None else None
    speedup = fp32_step_s / amp_step_s
    accuracy_diff = abs(fp32["val_accuracy"] - amp["val_accuracy"])
    learned, learned_note = fp32_arm_learned(fp32)
    met = {
        "speedup": speedup >= TARGET_SPEEDUP,
        "memory": memory_reduction >= TARGET_MEMORY_REDUCTION_PCT if memory_reduction is not None else None,
        "accuracy": accuracy_diff < TARGET_MAX_ACCURACY_DIFF if learned else None,
    }
    met["all"] = all(v is not False for v in met.values()) and None not in met.values()
    report = {
        "status": "ok",
        "fp32_time_s": sum(fp32_times),
        "amp_time_s": sum(amp_times),
        "fp32_step_time_ms": 1000 * fp32_step_s,
        "amp_step_time_ms": 1000 * amp_step_s,
        "speedup": speedup,
        "fp32_memory_mb": fp32_mem,
        "amp_memory_mb": amp_mem,
        "memory_reduction_pct": memory_reduction,
        "fp32_accuracy": fp32["val_accuracy"],
        "amp_accuracy": amp["val_accuracy"],
        "accuracy_diff": accuracy_diff,
        "fp32_loss": fp32["val_loss"],
        "amp_loss": amp["val_loss"],
        "loss_diff": amp["val_loss"] - fp32["val_loss"],
        "timed_steps": len(fp32_times),
        "amp_precision": amp_name,
        "amp_skipped_steps": amp["skipped_steps"],
        "fp32_tokens_per_second": fp32["throughput"]["tokens_per_second"],
        "amp_tokens_per_second": amp["throughput"]["tokens_per_second"],
        "fp32_mfu": fp32["mfu"],
        "amp_mfu": amp["mfu"],
        "device": device_name(device),
        "requirements_met": met,
        "notes": _notes(device, amp_name, memory_reduction) + ([] if learned else [learned_note]),
    }
    report["summary"] = _summary_table(report)
    return report


def fp32_arm_learned(fp32: dict[str, Any]) -> tuple[bool, str]:
    """Whether the FP32 arm learned enough for an accuracy comparison to mean anything, and why not.

    Two arms that never left chance agree on accuracy trivially; "parity" would then be vacuous.
    """
    untrained, val_loss = fp32["initial_loss"], fp32["val_loss"]
    if untrained is None or val_loss is None:
        return False, "Accuracy parity not judged: the FP32 arm has no loss to compare."
    if learned(fp32):
        return True, ""
    return False, (
        f"Accuracy parity not judged: the FP32 arm did not learn (validation loss {val_loss:.3f} against "
        f"{untrained:.3f} in its first logging window; it must be at least {100 * LEARNED_MARGIN:.0f}% lower). "
        "Give the arms more steps or a larger learning_rate."
    )


def _notes(device: torch.device, amp_name: str, memory_reduction: float | None) -> list[str]:
    notes = [f"Compared strict FP32 with {amp_name} autocast on {device_name(device)}."]
    if device.type == "cpu":
        notes.append(
            f"CPU run: the mixed-precision arm is CPU {amp_name} autocast. The speed and memory targets are "
            "written for GPUs; a CPU speedup says little about one."
        )
    if memory_reduction is None:
        notes.append(
            "Peak memory is measured from the CUDA allocator; there is none on this device, so it is left empty."
        )
    return notes


def _summary_table(report: dict[str, Any]):
    import pandas as pd

    amp = report["amp_precision"]
    rows = [
        (
            "median step time (ms)",
            report["fp32_step_time_ms"],
            report["amp_step_time_ms"],
            f"{report['speedup']:.2f}x faster",
        ),
        (
            "peak memory (MB)",
            report["fp32_memory_mb"],
            report["amp_memory_mb"],
            f"{report['memory_reduction_pct']:.1f}% less"
            if report["memory_reduction_pct"] is not None
            else "not measured",
        ),
        ("val accuracy", report["fp32_accuracy"], report["amp_accuracy"], f"diff {report['accuracy_diff']:.4f}"),
        ("val loss", report["fp32_loss"], report["amp_loss"], f"diff {report['loss_diff']:+.4f}"),
    ]
    return pd.DataFrame(rows, columns=["metric", "fp32", amp, "comparison"])


def _record_settings(
    device: torch.device, allow_tf32: bool, amp_name: str, warmup: int, settings: loop.TrainingSettings
) -> dict[str, Any]:
    """The settings that change the result, kept with it: the one environment record, plus the benchmark's own."""
    return {
        **environment_record(device, precision=amp_name, compile=settings.compile),
        "amp_dtype": amp_name,
        "tf32": allow_tf32 if device.type == "cuda" else None,  # the FP32 arm's TF32 setting
        "timing_warmup_steps": warmup,
        "batch_size": settings.batch_size,
        "max_steps": settings.max_steps,
        "seed": settings.seed,
    }


def _start_benchmark_run(model: nn.Module, config: Any, amp_name: str) -> Any:
    """One W&B run for both arms (keys prefixed per arm), unless a run is already active."""
    from utils.training import wandb_run

    return wandb_run.start_run_unless_active(
        model, config, precision=amp_name, name=f"amp-benchmark-{amp_name}", benchmark="amp_speedup"
    )


def _create_benchmark_figure(report: dict[str, Any], fp32: dict[str, Any], amp: dict[str, Any]) -> Any:
    """Step time, peak memory and accuracy side by side, plus both loss curves."""
    from matplotlib.figure import Figure

    amp_name = report["amp_precision"]
    fig = Figure(figsize=(12, 7), layout="constrained")
    ax_time, ax_mem, ax_acc, ax_loss = fig.subplots(2, 2).flat
    labels, colors = ["fp32", amp_name], ["tab:gray", "tab:green"]
    ax_time.bar(labels, [report["fp32_step_time_ms"], report["amp_step_time_ms"]], color=colors)
    ax_time.set(title=f"Median step time (ms): {report['speedup']:.2f}x", ylabel="ms")
    if report["memory_reduction_pct"] is not None:
        ax_mem.bar(labels, [report["fp32_memory_mb"], report["amp_memory_mb"]], color=colors)
        ax_mem.set(title=f"Peak memory (MB): {report['memory_reduction_pct']:.1f}% less", ylabel="MB")
    else:
        ax_mem.text(0.5, 0.5, "peak memory not measured\n(no CUDA allocator)", ha="center", va="center")
        ax_mem.set(title="Peak memory", xticks=[], yticks=[])
    ax_acc.bar(labels, [report["fp32_accuracy"], report["amp_accuracy"]], color=colors)
    ax_acc.set(title=f"Validation accuracy: diff {report['accuracy_diff']:.4f}", ylim=(0, 1))
    for name, arm, color, style in zip(labels, (fp32, amp), colors, ("-", "--")):
        steps = range(1, len(arm["loss_history"]) + 1)
        ax_loss.plot(steps, arm["loss_history"], style, label=name, color=color, lw=1)
    ax_loss.set(title="Training loss", xlabel="optimizer step")
    ax_loss.legend()
    fig.suptitle(f"AMP benchmark on {report['device']}")
    return fig
