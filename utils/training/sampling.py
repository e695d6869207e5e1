"""Samples while a run trains (``sample_every=N``): hear the model before, during and after training.

With ``sample_every`` set, the engine takes a short sample (``generate``) before the
first step, every N optimizer steps and once more at the end (after the best weights
are loaded, when they are), prints each, returns them in ``results['samples']`` and,
with W&B on, logs them as one table. The prompt is ``sample_prompt``, or the first
tokens of the validation data. Only rank 0 samples; sampling draws from its own
generator in eval mode, so the training's random stream and losses are unchanged.

Example:
    >>> results = test_fine_tuning(model, config, tokenizer="bpe", sample_every=50, sample_prompt="def ")
    >>> results["samples"][-1]["text"]
"""

from __future__ import annotations

from typing import Any

from utils.training.generation import generate
from utils.training.items import item_ids
from utils.training.parts import TrainingOutputs, TrainingParts, TrainingState

SAMPLE_TOKENS = 48  # a short sample: a line or two of text
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40
PROMPT_TOKENS = 8  # the default prompt: this many tokens from the start of the validation data


class Sampler:
    """Takes the samples of one run; ``samples`` holds them as rows (step, prompt, text, completion)."""

    def __init__(self, parts: TrainingParts, config: Any) -> None:
        self.every = parts.settings.sample_every
        self.config = config
        prompt = parts.settings.sample_prompt
        self.prompt = prompt if prompt is not None else item_ids(parts.val_loader.dataset[0])[:PROMPT_TOKENS].tolist()
        self.samples: list[dict[str, Any]] = []

    def after_step(self, parts: TrainingParts, state: TrainingState) -> None:
        """Sample when the optimizer step is a multiple of ``sample_every``."""
        if state.optimizer_step % self.every == 0:
            self.take(parts, state.optimizer_step)

    def take(self, parts: TrainingParts, step: int, label: str = "") -> dict[str, Any]:
        """Generate, print and keep one sample of the model as it is now."""
        out = generate(
            parts.model,
            self.prompt,
            tokenizer=parts.tokenizer,
            max_new_tokens=SAMPLE_TOKENS,
            temperature=SAMPLE_TEMPERATURE,
            top_k=SAMPLE_TOP_K,
            seed=parts.settings.seed,
            config=self.config,
        )
        prompt = self.prompt if isinstance(self.prompt, str) else parts.tokenizer.decode(self.prompt)
        row = {"step": step, "label": label, "prompt": prompt, "text": out.text, "completion": out.completion}
        self.samples.append(row)
        print(f"--- sample at step {step}{f' ({label})' if label else ''} ---\n{out.text}", flush=True)
        return row


def start_sampling(parts: TrainingParts, config: Any, state: TrainingState) -> Sampler | None:
    """The run's sampler, after its first sample (before training), or None without ``sample_every`` or off rank 0."""
    if parts.settings.sample_every is None or not parts.dist.is_main:
        return None
    sampler = Sampler(parts, config)
    sampler.take(parts, state.optimizer_step, "before training" if state.optimizer_step == 0 else "resumed")
    return sampler


def finish_sampling(
    parts: TrainingParts, state: TrainingState, outputs: TrainingOutputs, best_loaded: bool = False
) -> dict[str, Any]:
    """What a run adds to its results for text: its tokenizer, its last val/bits_per_byte and its samples.

    The last sample is of the final model (the best weights, when they were loaded).
    """
    rows = outputs.tracker.epoch_rows
    text = {"tokenizer": parts.tokenizer, "val_bits_per_byte": rows[-1].get("val/bits_per_byte") if rows else None}
    sampler = outputs.sampler
    if sampler is None:
        return {**text, "samples": []}
    last = sampler.samples[-1]
    if last["step"] == state.optimizer_step and not last["label"] and not best_loaded:
        last["label"] = "after training"  # the model has not changed since: no second sample of it
    else:
        sampler.take(parts, state.optimizer_step, "after training" + (", best weights" if best_loaded else ""))
    if outputs.tracker.use_wandb:
        _log_samples_table(sampler.samples, parts.settings.wandb_prefix)
    return {**text, "samples": list(sampler.samples)}


def _log_samples_table(samples: list[dict[str, Any]], prefix: str) -> None:
    """All of a run's samples as one W&B table (when a run is active)."""
    from utils.training.wandb_run import active_run, import_wandb

    run = active_run()
    if run is None:
        return
    wandb = import_wandb()
    columns = ["step", "label", "prompt", "text"]
    table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in samples])
    run.log({f"{prefix}samples": table})


__all__ = ["PROMPT_TOKENS", "SAMPLE_TOKENS", "Sampler", "finish_sampling", "start_sampling"]
