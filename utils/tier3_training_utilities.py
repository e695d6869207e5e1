"""Tier 3: does the model learn? ``test_fine_tuning``, the notebook-facing facade over the training engine.

``test_fine_tuning`` checks its arguments (by building a ``TrainingSettings``),
calls the engine (``utils.training.loop.train``), and adds the figure to the
results. The engine itself, its settings and its state live in
``utils/training/loop.py``; their names are re-exported here.

Example:
    >>> from utils.models import tiny_gpt
    >>> from utils.tier3_training_utilities import test_fine_tuning
    >>> model, config = tiny_gpt()
    >>> results = test_fine_tuning(model, config, use_amp=True, max_steps=100, learning_rate=1e-3)
    >>> results["metrics_summary"]        # one row per epoch
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

# Re-exported: Tier 3's search and baseline comparison live in their own modules, and the engine's
# names and the figure in utils.training; the seed API documents them all here.
from utils.tier3_benchmark_comparison import test_benchmark_comparison
from utils.tier3_hyperparameter_search import test_hyperparameter_search
from utils.training import loop
from utils.training.loop import (
    CALLBACK_HOOKS,
    THROUGHPUT_WARMUP_STEPS,
    NonFiniteLossError,
    TrainingSettings,
    TrainingState,
    seed_everything,
)
from utils.training.plots import create_training_figure

__all__ = [
    "test_benchmark_comparison",
    "test_hyperparameter_search",
    "CALLBACK_HOOKS",
    "THROUGHPUT_WARMUP_STEPS",
    "NonFiniteLossError",
    "TrainingSettings",
    "TrainingState",
    "create_training_figure",
    "seed_everything",
    "test_fine_tuning",
]


def test_fine_tuning(
    model: nn.Module,
    config: Any,
    train_data: Any = None,
    val_data: Any = None,
    n_epochs: int = TrainingSettings.n_epochs,
    learning_rate: float = TrainingSettings.learning_rate,
    batch_size: int = TrainingSettings.batch_size,
    use_wandb: bool = TrainingSettings.use_wandb,
    use_amp: bool | None = TrainingSettings.use_amp,
    gradient_accumulation_steps: int = TrainingSettings.gradient_accumulation_steps,
    *,
    precision: str = TrainingSettings.precision,
    device: str | torch.device | None = TrainingSettings.device,
    max_steps: int | None = TrainingSettings.max_steps,
    seed: int = TrainingSettings.seed,
    grad_clip: float | None = TrainingSettings.grad_clip,
    warmup_steps: int | None = TrainingSettings.warmup_steps,
    weight_decay: float = TrainingSettings.weight_decay,
    log_every: int = TrainingSettings.log_every,
    callbacks: Sequence[Any] = (),
    seq_len: int | None = TrainingSettings.seq_len,
    max_val_batches: int | None = TrainingSettings.max_val_batches,
    max_corpus_bytes: int = TrainingSettings.max_corpus_bytes,
    init_loss_scale: float = TrainingSettings.init_loss_scale,
    wandb_project: str = TrainingSettings.wandb_project,
    progress: bool = TrainingSettings.progress,
    compile: bool | dict[str, Any] = TrainingSettings.compile,
    checkpoint_dir: str | os.PathLike | None = TrainingSettings.checkpoint_dir,
    resume_from: str | os.PathLike | None = TrainingSettings.resume_from,
    monitor: str = TrainingSettings.monitor,
    mode: str = TrainingSettings.mode,
    load_best: bool = TrainingSettings.load_best,
    tokenizer: Any = TrainingSettings.tokenizer,
    text_column: str | None = TrainingSettings.text_column,
    sample_every: int | None = TrainingSettings.sample_every,
    sample_prompt: str | None = TrainingSettings.sample_prompt,
    strategy: str = TrainingSettings.strategy,
    fsdp_wrap: str | type | tuple | None = TrainingSettings.fsdp_wrap,
    activation_checkpointing: bool = TrainingSettings.activation_checkpointing,
) -> dict[str, Any]:
    """Train ``model`` as a next-token language model and report how it learned.

    Args:
        model: any ``nn.Module`` whose forward takes ``input_ids`` (B, T) and
            returns logits (B, T, V): a tensor, a tuple/list with logits
            first, a dict with 'logits', or an object with ``.logits``.
        config: the model's config (dataclass, dict, namespace or HF config);
            ``vocab_size`` and ``max_seq_len`` are read from it when present.
        train_data: None for the built-in Python-stdlib corpus, or token ids
            (tensor), a list of strings, a text file path, a ``Dataset``, a
            Hugging Face ``datasets.Dataset``/``IterableDataset``, or a
            .jsonl/.json/.csv/.parquet file or a folder of them.
        val_data: the same kinds, or None to hold out part of ``train_data``.
        n_epochs: passes over the training data.
        learning_rate: peak AdamW learning rate.
        batch_size: sequences per micro-batch.
        use_wandb: log to Weights & Biases (offline without an API key).
        use_amp: with ``precision='auto'``, train in bf16 or fp16 where the
            hardware supports it.
        gradient_accumulation_steps: micro-batches per optimizer step.
        precision: 'auto', 'fp32', 'fp16' or 'bf16'. An explicit 'fp16' or
            'bf16' wins over ``use_amp``.
        device: 'auto' (CUDA if available), 'cpu', 'cuda', or a torch.device.
        max_steps: stop after this many optimizer steps.
        seed: seeds data order, dropout and every RNG; same seed, same losses.
        grad_clip: max gradient norm, or None for no clipping.
        warmup_steps: linear warmup length in optimizer steps (None: 10%).
        weight_decay: AdamW decay for weight matrices (biases and norms get none).
        log_every: optimizer steps between host reads of the running metrics.
        callbacks: objects with any of ``on_train_begin(state)``,
            ``on_log(state, row)``, ``on_epoch_end(state, row)``,
            ``on_train_end(state, results)``.
        seq_len: tokens per sequence (default: ``config.max_seq_len``).
        max_val_batches: cap on validation batches per epoch (None: all).
        max_corpus_bytes: size cap on the built-in corpus.
        init_loss_scale: the GradScaler's starting scale (fp16 only).
        wandb_project: W&B project for a run started here.
        progress: show a tqdm progress bar.
        compile: ``True`` to train through ``torch.compile(model)``, or a dict
            of ``torch.compile`` keyword arguments (``{"mode": "max-autotune"}``).
            The first steps then include compilation; throughput and MFU
            leave them out.
        checkpoint_dir: write ``last.pt`` there at each epoch end (model,
            optimizer, schedule, scaler, histories and RNG states), atomically.
        monitor: the epoch-row metric ('val/loss', 'val/accuracy', ...) that
            picks the best epoch; with ``checkpoint_dir``, its weights are kept
            in ``best.pt`` beside ``last.pt``, written atomically on each improvement.
        mode: 'min' (lower is better) or 'max'.
        load_best: load ``best.pt``'s weights into the model at the end
            (needs ``checkpoint_dir``); ``results['best_loaded']`` says whether it did.
        resume_from: a checkpoint file (or its folder) to continue from, at
            the epoch after the one it saved; ``n_epochs`` counts from the
            start of the original run. With the same settings, the resumed run
            continues exactly as the uninterrupted one would have (on one
            process; under DDP the data order is exact and dropout is re-seeded).
            It encodes its text with the tokenizer ``last.pt`` saved.
        tokenizer: how text becomes token ids: 'bytes' (UTF-8 bytes, ids 0-255), 'bpe'
            (a byte-level BPE trained on the training text with the model's vocabulary;
            'bpe:N' for N ids), 'gpt2' (GPT-2's own, offline), 'auto' ('gpt2' for a
            vocabulary of 50257, 'bpe' from 512, else 'bytes'), a tokenizer.json or a
            tokenizer folder, a ``tokenizers.Tokenizer`` or a transformers tokenizer.
            One with more ids than the model is refused before any work.
        text_column: the column of a Hugging Face dataset or data file to train on
            (default 'text', or its only string column).
        sample_every: print a short sample of the model every N optimizer steps (and
            before and after training); the samples are in ``results['samples']``
            and, with W&B, in a table.
        sample_prompt: the samples' prompt (default: the start of the validation text).
        strategy: 'auto' (DDP under torchrun with more than one process, else
            one process), 'ddp', or 'fsdp': FSDP2 shards of the parameters,
            gradients and AdamW state over the ranks, each block gathered in
            turn (see "When the model outgrows one GPU" in the README). 'fsdp'
            also runs in one process, on a 1-rank mesh; it refuses fp16.
        fsdp_wrap: the block class to shard and checkpoint, by class or name
            ('GPT2Block'), or a tuple of them. None: a Hugging Face model's
            ``_no_split_modules``, else the largest ``nn.ModuleList`` of blocks.
        activation_checkpointing: recompute each block's activations in the
            backward pass instead of storing them (any strategy): less memory,
            about one more forward of compute, the same losses.

    Under ``torchrun --nproc_per_node=N`` the same call trains with
    DistributedDataParallel: ``batch_size`` is per rank, each rank reads its
    share of every epoch, gradients are all-reduced once per optimizer step,
    the reported metrics are over all ranks, and only rank 0 shows progress
    and logs to W&B. With ``strategy='fsdp'`` the model stays sharded after
    training; ``utils.training.fsdp.full_state_dict(model)`` gathers its whole
    weights (on rank 0) for an export or a plain copy.

    Returns:
        A dict: ``loss_history``, ``grad_norm_history``, ``loss_scale_history``
        and ``lr_history`` (one entry per optimizer step), ``initial_loss`` and
        ``final_loss`` (mean train loss of the first and last logging windows),
        ``val_loss``, ``val_accuracy``, ``best_epoch`` and ``best_value`` (of
        ``monitor``), ``best_checkpoint_path`` (None without ``checkpoint_dir``),
        ``best_loaded``, ``stopped_early`` (a callback stopped it with steps
        left), ``environment`` (the environment record), ``metrics_summary``
        (DataFrame, one row per epoch), ``step_history`` (DataFrame, one row per
        logging step), ``training_time_seconds`` (training steps only, no
        validation), ``step_times_s``, ``samples_per_second``,
        ``tokens_per_second``, ``amp_enabled``, ``precision``,
        ``skipped_steps``, ``final_loss_scale``, ``optimizer_steps``,
        ``device``, ``world_size``, ``strategy`` ('single', 'ddp' or 'fsdp'),
        ``fsdp`` (None, or the sharded modules, block classes, mesh and
        dtypes), ``activation_checkpointing`` (the blocks that recompute),
        ``compiled``, ``mfu`` (a fraction, None on
        CPU or an unknown GPU), ``throughput`` (steady-state tokens/s after
        the first steps, FLOPs per token, achieved and peak TFLOP/s, MFU and
        how each was found), ``causal`` (the setup probe's verdict: True, False,
        or None when it cannot tell, e.g. an output that changes between
        identical calls) with ``causal_note``, ``tokenizer`` (the ``TextTokenizer``
        the text was encoded with: pass it to ``utils.generate``), ``samples`` and
        ``figure``. With text data each epoch row also has ``val/bits_per_byte``.
        ``samples_per_second`` and ``tokens_per_second`` are over all ranks and every training step.

    Raises:
        TypeError, ValueError: on bad arguments, before any work starts.
        NonFiniteLossError: the loss became NaN/Inf (fp32/bf16), or every fp16
            step of a logging window was skipped with the loss scale below 1.
            The message names the step; the last good checkpoint is kept.
    """
    settings = loop.TrainingSettings(
        n_epochs=n_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_steps=max_steps,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        weight_decay=weight_decay,
        log_every=log_every,
        seed=seed,
        seq_len=seq_len,
        max_val_batches=max_val_batches,
        max_corpus_bytes=max_corpus_bytes,
        init_loss_scale=init_loss_scale,
        precision=precision,
        use_amp=use_amp,
        device=device,
        compile=compile,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        use_wandb=use_wandb,
        wandb_project=wandb_project,
        progress=progress,
        monitor=monitor,
        mode=mode,
        load_best=load_best,
        tokenizer=tokenizer,
        text_column=text_column,
        sample_every=sample_every,
        sample_prompt=sample_prompt,
        strategy=strategy,
        fsdp_wrap=fsdp_wrap,
        activation_checkpointing=activation_checkpointing,
    )
    results = loop.train(model, config, settings, train_data, val_data, callbacks=callbacks)
    results["figure"] = create_training_figure(results)
    return results


test_fine_tuning.__test__ = False  # a library function, not a pytest test
