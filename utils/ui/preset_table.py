"""The presets and the goals, as data: what each preset is for, the hardware it is sized for, and its settings.

A preset holds training settings only (``WizardConfig`` fields: sequence
length, batch, learning rate, epochs, warm-up, accumulation and the data
source); the user brings the model. Nothing is ever downloaded: the built-in
presets train on Python's standard library source, and ``chat`` and
``summarization`` train on the user's own text (``dataset_path``).
``utils.ui.presets.ConfigPresets`` turns them into configs and recommends one.

Example:
    >>> PRESETS["tiny"].settings["seq_len"]
    64
    >>> GOALS["research"]
    ('largest', ('tiny', 'small', 'medium', 'large'))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One preset: what it is for, the hardware it is sized for, and its settings (``WizardConfig`` fields)."""

    name: str
    description: str
    hardware: str  # 'cpu': runs anywhere; 'gpu': sized for one GPU, and not measured without one
    settings: Mapping[str, Any]


def _preset(name: str, description: str, hardware: str, **settings: Any) -> Preset:
    return Preset(name, description, hardware, MappingProxyType(settings))


# The built-in corpus (Python's standard library source) is about 4.7 MB, so 5_000_000 bytes means all of it.
PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            _preset(
                "tiny",
                "a CPU smoke run, under a minute: 88 steps of batch 8 x 64 on 50 kB of the built-in corpus",
                "cpu",
                seq_len=64,
                batch_size=8,
                learning_rate=1e-3,
                n_epochs=1,
                warmup_steps=10,
                max_corpus_bytes=50_000,
                max_val_batches=4,
            ),
            _preset(
                "small",
                "a laptop-CPU run of a few minutes: 2 epochs of batch 16 x 128 on 500 kB of the built-in corpus",
                "cpu",
                seq_len=128,
                batch_size=16,
                learning_rate=6e-4,
                n_epochs=2,
                warmup_steps=30,
                max_corpus_bytes=500_000,
                max_val_batches=10,
            ),
            _preset(
                "medium",
                "a single-GPU run: 3 epochs of 32 x 512 tokens per step over the whole built-in corpus",
                "gpu",
                seq_len=512,
                batch_size=16,
                gradient_accumulation_steps=2,
                learning_rate=3e-4,
                n_epochs=3,
                warmup_steps=50,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "large",
                "a GPT-2-small-shape run on one H100: seq 1024, 64 sequences (65k tokens) per step, "
                "5 epochs over the whole built-in corpus (pass dataset_path for more text)",
                "gpu",
                seq_len=1024,
                batch_size=16,
                gradient_accumulation_steps=4,
                learning_rate=6e-4,
                n_epochs=5,
                warmup_steps=30,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "code_generation",
                "code completion: 2 epochs of batch 16 x 256 over the built-in corpus, which is Python code",
                "cpu",
                seq_len=256,
                batch_size=16,
                learning_rate=5e-4,
                n_epochs=2,
                warmup_steps=50,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "chat",
                "dialogue on your own text (dataset_path): seq 512 holds a few turns; a gentler lr 2e-4",
                "cpu",
                data_source="file",
                seq_len=512,
                batch_size=8,
                learning_rate=2e-4,
                n_epochs=3,
                warmup_steps=None,  # 10% of the run: the user's data sets its length
                max_val_batches=20,
            ),
            _preset(
                "summarization",
                "summaries of your own documents (dataset_path): seq 1024 holds a document and its summary; lr 1e-4",
                "cpu",
                data_source="file",
                seq_len=1024,
                batch_size=4,
                gradient_accumulation_steps=2,
                learning_rate=1e-4,
                n_epochs=3,
                warmup_steps=None,  # 10% of the run: the user's data sets its length
                max_val_batches=20,
            ),
        )
    }
)

# Goal -> (how to choose, candidate presets). 'largest': the largest that fits (candidates from small to
# large, measured in that order until one does not fit); 'first': the first that fits, in order of preference.
GOALS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        "research": ("largest", ("tiny", "small", "medium", "large")),
        "experiment": ("largest", ("tiny", "small", "medium", "large")),
        "learning": ("largest", ("tiny", "small")),
        "quick": ("first", ("tiny",)),
        "smoke_test": ("first", ("tiny",)),
        "code": ("first", ("code_generation", "small", "tiny")),  # small and tiny train on the same Python code
        "code_generation": ("first", ("code_generation", "small", "tiny")),
        "chat": ("first", ("chat",)),
        "summarization": ("first", ("summarization",)),
        **{name: ("first", (name,)) for name in PRESETS if name not in ("code_generation", "chat", "summarization")},
    }
)


__all__ = ["GOALS", "PRESETS", "Preset"]
