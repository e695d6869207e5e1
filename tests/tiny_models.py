"""Tiny models of every kind the Tier 1 and Tier 2 checks must handle, shared by their tests.

There is no ``tests/__init__.py``: pytest's default ("prepend") import mode puts
``tests/`` on ``sys.path``, so test files import this as ``from tiny_models import ...``.
Every model is 2 layers and 32 wide, so the suite stays fast on CPU.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from utils import models

TINY = dict(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)  # the sizes every tiny test model uses


class TorchEncoderLM(nn.Module):
    """Embeddings + nn.TransformerEncoder(batch_first=True) + a linear head.

    The position embedding is registered first on purpose: code that takes the
    first nn.Embedding it finds gets the wrong one. ``causal=True`` adds a
    causal mask, for the attention checks.
    """

    def __init__(
        self, vocab_size: int = 64, d_model: int = 32, n_heads: int = 2, max_seq_len: int = 32, causal: bool = False
    ) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_seq_len, d_model)
        self.tok = nn.Embedding(vocab_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab_size)
        self.causal = causal

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(seq_len, device=input_ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(seq_len) if self.causal else None
        return self.head(self.encoder(x, mask=mask, is_causal=self.causal))


def hf_model(kind: str):
    """A tiny Hugging Face model built from a config (no download): 'hf_gpt2', 'hf_bert_mlm' or 'hf_bert'.

    Skips the calling test when transformers is not installed.
    """
    transformers = pytest.importorskip("transformers")
    if kind == "hf_gpt2":  # default attention (SDPA): a check that needs weights must switch to eager itself
        config = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return transformers.GPT2LMHeadModel(config), config
    config = transformers.BertConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = transformers.BertForMaskedLM(config) if kind == "hf_bert_mlm" else transformers.BertModel(config)
    return model, config


def build_model(kind: str):
    """(model, config) with fixed initial weights for each kind of model the checks must handle.

    Kinds: 'gpt', 'encoder' (the built-in models), 'torch_encoder', 'torch_causal'
    (``TorchEncoderLM``), 'hf_gpt2', 'hf_bert_mlm', 'hf_bert' (``hf_model``).
    """
    torch.manual_seed(0)
    if kind == "gpt":
        return models.tiny_gpt(**TINY)
    if kind == "encoder":
        return models.tiny_encoder(**TINY)
    if kind in ("torch_encoder", "torch_causal"):
        config = {"vocab_size": 64, "max_seq_len": 32, "d_model": 32}
        return TorchEncoderLM(causal=kind == "torch_causal"), config
    return hf_model(kind)


def token_ids(*shape, high=256, seed=0):
    """Reproducible random token ids of ``shape``."""
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def weights_of(model):
    """A detached copy of the model's state dict."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def weights_changed(before, model):
    """True when any tensor of ``model`` differs from ``before``."""
    after = model.state_dict()
    return any(not torch.equal(before[name], after[name]) for name in before)


def per_sequence_loss_sums(model, sequences):
    """(loss sum, target count) of each sequence on its own, no padding: the hand-computed reference."""
    from utils.training.losses import next_token_loss_sums

    out = []
    with torch.no_grad():
        for seq in sequences:
            loss_sum, _ = next_token_loss_sums(model(seq[None]), seq[None])
            out.append((loss_sum.item(), seq.numel() - 1))
    return out


# A guard against a hung child process in the pseudo-terminal tests, not a timing check.
TERMINAL_GIVE_UP_S = 300


def read_terminal(leader: int, child) -> str | None:
    """A pseudo-terminal child's next output, or None once it has closed the terminal.

    Raises AssertionError when the child writes nothing for ``TERMINAL_GIVE_UP_S``:
    it is waiting for input that cannot come.
    """
    import os
    import select
    import time

    deadline = time.monotonic() + TERMINAL_GIVE_UP_S
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return None
            return data.decode(errors="replace") if data else None
        if child.poll() is not None:
            return None
    raise AssertionError(f"nothing written for {TERMINAL_GIVE_UP_S} s: waiting for input that cannot come")


def run_until_killed(job: Callable[[], None]) -> None:
    """Run ``job`` in a forked child that must die of SIGKILL (a kill point inside the job sends it)."""
    pid = os.fork()
    if pid == 0:
        try:
            job()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)  # reached only when the kill point never came
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the child was not killed"


def lifecycle_model(seed: int = 0):
    """The coordinator tests' model: the tiny GPT at 16 tokens, with seeded initial weights."""
    torch.manual_seed(seed)
    return models.tiny_gpt(**{**TINY, "max_seq_len": 16})


def cpu_coordinator(path):
    """A TrainingCoordinator writing under ``path``, on the CPU, without progress bars."""
    from utils.training.training_core import TrainingCoordinator

    return TrainingCoordinator(output_dir=path, device="cpu", progress=False)
