"""Tier 3: is my design better than a standard transformer of the same size, trained the same way?

``test_benchmark_comparison`` trains the user's model and a baseline through
the one engine (``utils.training.loop.train``) with the same settings: the
same built-in corpus, the same number of optimizer steps, the same seed and
precision. Both are then evaluated on the same held-out text and compared
side by side: parameters, validation loss and perplexity, next-token accuracy,
training tokens/s and step time, inference latency (Tier 1's timing) and peak
training memory (the CUDA allocator, or Tier 1's labelled estimate on CPU).

The default baseline is the built-in decoder-only GPT (``utils.models.tiny_gpt``)
with the user's vocabulary and sequence length, in the shape whose parameter count
is closest to the user's model. The parts live in ``utils.compare``: ``baseline``
(what the model is compared with), ``measure`` (training and measuring both) and
``verdict`` (the table, the judgement and the figure).

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt()
    >>> report = test_benchmark_comparison(model, config)
    >>> report["verdict"]
    "your model reaches val loss 2.43 vs the baseline's 2.43 at 1.00x its parameters and 1.00x its step time: ..."
    >>> report["summary"]                   # metric, yours, baseline, ratio, note
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

# noqa: F401 below: besides what it calls, this path re-exports the names it has always offered
# (the baseline's sizes and helpers, the margins, the latency rounds, MB), defined in utils.compare now.
from utils.causality import refuse_encoder_decoder
from utils.checks import check_positive_int
from utils.compare.baseline import (  # noqa: F401
    BASELINE_D_MODELS,
    BASELINE_LAYERS,
    DEFAULT_WIDTH_PER_LAYER,
    HF_PREFIX,
    PARAMETER_TOLERANCE,
    SHAPE_SLACK,
    Contender,
    check_baseline_argument,
    default_baseline,
    gpt_parameter_count,
    hub_offline,
    resolve_baseline,
    training_arms,
    training_copy,
)
from utils.compare.measure import (  # noqa: F401
    LATENCY_ITERS_PER_ROUND,
    LATENCY_ROUNDS,
    LATENCY_WARMUP,
    epochs_for,
    evaluation_data,
    time_inference,
    train_and_measure,
)
from utils.compare.text import baseline_text, with_resolved_tokenizer
from utils.compare.verdict import EQUAL_MARGIN, comparison_report, skipped_report  # noqa: F401
from utils.device import MB  # noqa: F401
from utils.model_helpers import validate_model
from utils.training import loop
from utils.training.data import ByteTokenizer
from utils.training.results import LEARNED_MARGIN  # noqa: F401  (re-exported: it used to live here)
from utils.training.settings import FROM_SCRATCH, from_options

DEFAULT_TRAIN_STEPS = 200
DEFAULT_N_SAMPLES = 64
# Both models train from scratch, so the comparison's default learning rate is the from-scratch one
# (test_fine_tuning's 5e-5 suits a pretrained model and would leave both near chance).
DEFAULT_LEARNING_RATE = FROM_SCRATCH["learning_rate"]


# TrainingSettings fields the comparison sets itself, and why.
_RESERVED_OPTIONS = {
    "n_epochs": "train_steps= sets the budget in optimizer steps",
    "max_steps": "train_steps= sets the budget in optimizer steps",
    "max_val_batches": "n_samples= sets how many held-out sequences are evaluated",
    "checkpoint_dir": "each model trains once, from its own initial weights, without checkpoints",
    "resume_from": "each model trains once, from its own initial weights, without checkpoints",
    "load_best": "each model trains once, from its own initial weights, without checkpoints",
    "monitor": "each model trains once, from its own initial weights, without checkpoints",
    "mode": "each model trains once, from its own initial weights, without checkpoints",
    "use_wandb": "the comparison does not log to W&B; log each model with test_fine_tuning",
    "wandb_project": "the comparison does not log to W&B; log each model with test_fine_tuning",
    "wandb_prefix": "the comparison does not log to W&B; log each model with test_fine_tuning",
}


def test_benchmark_comparison(
    model: nn.Module,
    config: Any,
    baseline: Any = None,
    test_data: Any = None,
    n_samples: int = DEFAULT_N_SAMPLES,
    *,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    seed: int = 0,
    progress: bool = True,
    **training_options: Any,
) -> dict[str, Any]:
    """Train your model and a standard transformer the same way, and compare them side by side.

    Your model is never changed: a private copy of it is trained (and so is a copy of a baseline
    module you pass), so your weights, gradients, mode and device stay as they were. A copy that
    would still share parts with yours (a closure over your submodules, as in minGPT) is refused
    with a warning, and your model itself trains, its state restored afterwards. Both models
    train on the built-in corpus (Python's standard-library source, byte tokenized) for
    ``train_steps`` optimizer steps, with the same seed, data order, precision and settings, then
    are evaluated on the same ``n_samples`` held-out sequences (the corpus tail, never trained on,
    or ``test_data``). The baseline gets the same seed but, being a different design, its own
    initial weights. ``tokenizer=`` (a training option) is resolved for each side's vocabulary: when
    the two read the text differently ('auto' against a GPT-2-sized baseline, say), each is scored
    on the same held-out text through its own tokenizer and the verdict compares bits per byte.

    Args:
        model: your ``nn.Module``; forward takes ``input_ids`` (B, T) and returns logits (B, T, V).
        config: its config; ``vocab_size`` and ``max_seq_len`` are read from it when present.
        baseline: None for the built-in GPT sized to your model (see ``default_baseline``); a
            ``(module, config)`` tuple; or ``'hf:NAME'``, a Hugging Face causal LM whose config is
            in the local cache (or a local folder, ``'hf:/path'``). 'hf:' models are read offline
            only (``local_files_only=True`` with the Hub in offline mode, so nothing is ever
            downloaded) and built from their config with fresh weights under ``seed``: a pretrained
            baseline would not be trained the same way. A baseline that cannot be compared (not
            cached, not a causal LM, a vocabulary smaller than yours, fewer positions than
            ``seq_len``; the same rule for modules and 'hf:' names) gives ``status='skipped'`` with
            the reason, and a warning, before any training.
        test_data: the evaluation text: None for the built-in corpus's held-out tail, or what
            ``test_fine_tuning`` takes as ``val_data`` (strings, a text file, token ids, a
            Dataset). Text is byte tokenized, as the training corpus is.
        n_samples: held-out sequences evaluated (at most as many as the evaluation data holds).
        train_steps: optimizer steps for each model.
        precision: as for ``test_fine_tuning`` ('auto' follows ``use_amp``: fp32 unless it is True).
        device: 'auto', 'cpu', 'cuda' or a torch.device; both models train there.
        seed: seeds both runs, and the baseline's initial weights.
        progress: show the engine's progress bars.
        **training_options: other ``TrainingSettings`` fields, the same for both models:
            ``learning_rate`` (default 1e-3 here), ``batch_size``, ``seq_len`` (default: your
            config's ``max_seq_len``), ``max_corpus_bytes``, ``gradient_accumulation_steps``,
            ``warmup_steps``, ``grad_clip``, ``weight_decay``, ``log_every``, ``init_loss_scale``,
            ``use_amp``, ``compile``. An unknown name is an error.

    Returns:
        A dict: ``status`` ('ok' or 'skipped'), ``verdict`` (one line), ``judgement`` ('better',
        'worse', 'about equal', or None when skipped), ``summary`` (DataFrame: metric, yours,
        baseline, ratio = yours / baseline, note), ``figure`` (both loss curves and bars for the
        rest), ``yours`` and ``baseline`` (each model's engine results plus ``step_time_ms``,
        ``latency_median_ms``, ``latency_p95_ms``, ``peak_memory_mb``, ``memory_method`` and
        ``training_warnings``), ``baseline_description``, ``loss_comparable`` and ``loss_note``
        (val loss and perplexity are compared only over the same vocabulary), ``notes``,
        ``settings`` (the environment record and the comparison's settings) and, when skipped,
        ``reason``.

    Raises:
        TypeError, ValueError: on a bad argument, an unknown option, an encoder-decoder model, or a
            model whose vocabulary cannot read the byte-level corpus, before any work starts.
        NonFiniteLossError: when either model's loss turns NaN/Inf.
    """
    validate_model(model)
    refuse_encoder_decoder(model, config, "test_benchmark_comparison")
    check_baseline_argument(baseline)
    settings = _check_arguments(
        n_samples, train_steps, training_options, precision=precision, device=device, seed=seed, progress=progress
    )
    your_vocab, seq_len = _read_your_sizes(model, config, settings)
    spec = settings.tokenizer
    settings = with_resolved_tokenizer(settings.replace(seq_len=seq_len), your_vocab)  # a 'bpe' is trained once
    eval_data, n_train = evaluation_data(test_data, n_samples, your_vocab, settings)
    settings = settings.replace(n_epochs=epochs_for(train_steps, n_train, settings))
    rival = resolve_baseline(baseline, model, config, your_vocab, seq_len, seed)
    if isinstance(rival, str):
        return skipped_report(rival, baseline, settings)
    evaluated = f"{n_samples} sequences of " + ("test_data" if test_data is not None else "the held-out corpus tail")
    # Each side reads the text through its own tokenizer: the same one unless their vocabularies call for others.
    plans = {
        "yours": (settings, eval_data),
        "baseline": baseline_text(settings, spec, (your_vocab, rival.vocab_size), test_data, eval_data),
    }
    with training_arms(model, config, your_vocab, rival, seq_len) as arms:
        results = {name: train_and_measure(arm, *plans[name]) for name, arm in arms.items()}
        for name, latency in time_inference(arms, settings, results["yours"]["precision"]).items():
            results[name].update(latency)
        return comparison_report(arms, results, settings, evaluated)


test_benchmark_comparison.__test__ = False  # a library function, not a pytest test


# -- arguments -----------------------------------------------------------------


def _check_arguments(
    n_samples: Any, train_steps: Any, options: dict[str, Any], **explicit: Any
) -> loop.TrainingSettings:
    """Every number and option, checked before any work; returns the settings both models share."""
    check_positive_int(n_samples, "n_samples")
    check_positive_int(train_steps, "train_steps")
    settings = from_options(
        "test_benchmark_comparison",
        options,
        reserved=_RESERVED_OPTIONS,
        defaults={"learning_rate": DEFAULT_LEARNING_RATE},
        max_steps=train_steps,
        max_val_batches=None,
        **explicit,
    )
    if settings.warmup_steps is not None and settings.warmup_steps > train_steps:
        raise ValueError(f"warmup_steps={settings.warmup_steps} exceeds train_steps={train_steps}; lower it")
    return settings


def _read_your_sizes(model: nn.Module, config: Any, settings: loop.TrainingSettings) -> tuple[int, int]:
    """Your model's vocabulary and the sequence length both models train at."""
    vocab_size, seq_len, _ = loop.read_model_sizes(model, config, settings)  # the engine's own reading
    if vocab_size < ByteTokenizer.vocab_size:
        raise ValueError(
            f"your model's vocab_size is {vocab_size}, but the comparison trains on the built-in byte-level "
            f"corpus, which needs vocab_size >= {ByteTokenizer.vocab_size}; build the model with vocab_size=256 "
            "(or more) to compare it"
        )
    return vocab_size, int(seq_len)


__all__ = [
    "DEFAULT_N_SAMPLES",
    "DEFAULT_TRAIN_STEPS",
    "PARAMETER_TOLERANCE",
    "Contender",
    "default_baseline",
    "gpt_parameter_count",
    "hub_offline",
    "test_benchmark_comparison",
]
