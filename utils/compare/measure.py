"""Train both models of a comparison the same way, and measure them: step time, latency and memory.

Both models train through the one engine (``utils.training.loop.train``) on the same data
(``evaluation_data``) for the same budget (``epochs_for``). Tier 1 measures the rest: forward
latency, taken in turns so that load on a shared machine falls on both, and peak training
memory (the CUDA allocator, or Tier 1's labelled estimate elsewhere). This is the only module
of the comparison that calls Tier 1.

Example:
    >>> results = train_and_measure(arm, settings, eval_data)
    >>> results["step_time_ms"], results["peak_memory_mb"], results["memory_method"]
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import torch

from utils.compare.baseline import Contender
from utils.device import MB, reset_peak_memory, resolve_device

# Every call the comparison makes into the diagnostics (Tier 1's memory and speed) is in this module.
from utils.diagnostics import speed as diagnostics_speed
from utils.diagnostics.memory import cuda_peak_bytes, measure_training_memory
from utils.training import loop
from utils.training.data import prepare_lm_data

# Inference timing: the two models take turns, this many rounds, each a warm-up then timed passes.
LATENCY_ROUNDS, LATENCY_WARMUP, LATENCY_ITERS_PER_ROUND = 4, 3, 5


def held_out_data(test_data: Any, vocab_size: int, settings: loop.TrainingSettings) -> Any:
    """The built-in corpus split (``test_data``, when given, as its validation part) as ``settings`` reads it."""
    return prepare_lm_data(
        None,
        test_data,
        vocab_size=vocab_size,
        seq_len=settings.seq_len,
        max_corpus_bytes=settings.max_corpus_bytes,
        tokenizer=settings.tokenizer,
        text_column=settings.text_column,
    )


def evaluation_data(
    test_data: Any, n_samples: int, vocab_size: int, settings: loop.TrainingSettings
) -> tuple[torch.utils.data.Dataset, int]:
    """The first ``n_samples`` held-out sequences (the corpus tail, or ``test_data``), and the train set's size."""
    try:
        data = held_out_data(test_data, vocab_size, settings)
    except (TypeError, ValueError) as err:
        if test_data is None:
            raise
        # The data layer names what it was given by its own parameter, val_data; the caller passed test_data.
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(str(err).replace("val_data", "test_data")) from err
    if len(data.val) < n_samples:
        if test_data is not None:
            where, more = "test_data holds", "more text"
        else:
            where, more = "the corpus tail holds", "a larger max_corpus_bytes"
        raise ValueError(
            f"n_samples={n_samples}, but {where} {len(data.val)} sequences of up to {settings.seq_len} tokens; "
            f"pass n_samples<={len(data.val)}, or {more}"
        )
    return torch.utils.data.Subset(data.val, range(n_samples)), len(data.train)


def epochs_for(train_steps: int, n_train: int, settings: loop.TrainingSettings) -> int:
    """Enough passes over the training set for ``train_steps`` steps; validation runs once per pass."""
    steps_per_epoch = math.ceil(math.ceil(n_train / settings.batch_size) / settings.gradient_accumulation_steps)
    return max(1, math.ceil(train_steps / steps_per_epoch))


def train_and_measure(
    arm: Contender, settings: loop.TrainingSettings, eval_data: torch.utils.data.Dataset
) -> dict[str, Any]:
    """Train one model through the engine and read its training memory."""
    trained: dict[str, Any] = {}

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trained.update(loop.train(arm.model, arm.config, settings, None, eval_data))
        # Kept as data for the report, and passed on (the causal verdict is the engine's "causal" field).
        trained["training_warnings"] = [str(w.message) for w in caught]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    device = resolve_device(settings.device)
    memory = _train_measuring_memory(run, arm, settings, device)
    return {**trained, **memory, "step_time_ms": _median_step_ms(trained["step_times_s"])}


def _train_measuring_memory(
    run: Any, arm: Contender, settings: loop.TrainingSettings, device: torch.device
) -> dict[str, Any]:
    """Run the training; on CUDA its allocator peak, elsewhere Tier 1's estimate for one training step."""
    if device.type == "cuda":
        # The peak is taken above what was allocated before the run; weights already on the GPU
        # (a copy of a model that lives there) are training memory too, so they are added back.
        tensors = (*arm.model.parameters(), *arm.model.buffers())
        resident = sum(t.numel() * t.element_size() for t in tensors if t.is_cuda)
        reset_peak_memory(device)
        peak_bytes = cuda_peak_bytes(run, device) + resident
        return {"peak_memory_mb": peak_bytes / MB, "memory_method": "cuda_allocator"}
    run()
    memory = measure_training_memory(arm.model, _sizes_config(arm, settings), batch_size=settings.batch_size)
    return {"peak_memory_mb": float(memory["total_mb"]), "memory_method": str(memory["method"])}


def time_inference(
    arms: dict[str, Contender], settings: loop.TrainingSettings, precision: str
) -> dict[str, dict[str, Any]]:
    """Tier 1's forward latency for both trained models, median and p95, at the training batch shape.

    The models take turns, ``LATENCY_ROUNDS`` times (each turn warms up, then times), so a burst
    of load on a shared machine falls on both rather than on whichever model ran then.
    """
    samples_ms: dict[str, list[float]] = {name: [] for name in arms}
    errors: dict[str, str] = {}
    for _ in range(LATENCY_ROUNDS):
        for name, arm in arms.items():
            speed = diagnostics_speed.test_inference_speed(
                arm.model,
                _sizes_config(arm, settings),
                batch_size=settings.batch_size,
                seq_len=settings.seq_len,
                n_warmup=LATENCY_WARMUP,
                n_iters=LATENCY_ITERS_PER_ROUND,
                precisions=(precision,),
                progress=False,
            )
            samples_ms[name].extend(speed["latencies_ms"].get(precision, []))
            errors[name] = errors.get(name) or speed["table"].iloc[0].get("error", "")
    return {name: _latency_fields(samples_ms[name], errors[name], settings) for name in arms}


def _latency_fields(samples_ms: list[float], error: str, settings: loop.TrainingSettings) -> dict[str, Any]:
    if not samples_ms:  # this precision could not run a forward pass; Tier 1 says why
        return {"latency_median_ms": None, "latency_p95_ms": None, "latency_error": error}
    stats = diagnostics_speed.latency_stats(samples_ms, settings.batch_size * settings.seq_len)
    return {"latency_median_ms": stats["median_ms"], "latency_p95_ms": stats["p95_ms"], "latency_error": ""}


def _sizes_config(arm: Contender, settings: loop.TrainingSettings) -> dict[str, int]:
    """The sizes Tier 1 needs, read once here: any config kind, any vocabulary source."""
    return {"vocab_size": arm.vocab_size, "max_seq_len": settings.seq_len}


def _median_step_ms(step_times_s: list[float]) -> float | None:
    """Median optimizer-step time, the engine's warm-up steps left out (as its throughput does)."""
    skip = min(loop.THROUGHPUT_WARMUP_STEPS, max(0, len(step_times_s) - 1))
    timed = step_times_s[skip:]
    return 1000 * statistics.median(timed) if timed else None
