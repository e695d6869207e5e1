"""``TextTokenizer``: one tokenizer of any kind behind one small interface, and its ``tokenizer.json``.

Bytes (UTF-8 bytes as ids 0..255) run in plain Python and need no package; every
other kind is a Hugging Face ``tokenizers.Tokenizer`` underneath. Each saves as a
``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` loads, the bytes tokenizer
too (a byte-level BPE with no merges whose ids are the bytes), and loads back from it.
How ``tokenizer=`` becomes one is ``utils.training.tokenization``'s.

Example:
    >>> tokenizer = TextTokenizer("bytes")
    >>> tokenizer.encode("hé"), tokenizer.token_bytes.sum()
    ([104, 195, 169], tensor(256))
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.optional import import_optional

TOKENIZER_FILE = "tokenizer.json"
BYTE_ALPHABET_SIZE = 256


class TextTokenizer:
    """One tokenizer of any kind: ``encode``, ``decode``, ``vocab_size``, ``token_bytes`` and ``to_json``.

    Args:
        kind: 'bytes', 'bpe', 'gpt2' or 'custom' (a tokenizer the user brought).
        backend: the ``tokenizers.Tokenizer`` doing the work; None for bytes.
        name: how messages and records name it.
    """

    def __init__(self, kind: str, backend: Any = None, *, name: str | None = None) -> None:
        if (backend is None) != (kind == "bytes"):
            raise ValueError(f"a {kind!r} TextTokenizer needs {'no' if kind == 'bytes' else 'a'} tokenizers backend")
        self.kind = kind
        self.backend = backend
        self.name = name or kind
        self.note = ""  # how it was chosen, when 'auto' chose it

    @functools.cached_property
    def vocab_size(self) -> int:
        """One more than the largest id it can produce (added tokens included)."""
        if self.backend is None:
            return BYTE_ALPHABET_SIZE
        return max(self.backend.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, with no special tokens added."""
        if self.backend is None:
            return list(text.encode("utf-8"))
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text (in parallel threads for a ``tokenizers`` backend)."""
        if self.backend is None:
            return [list(text.encode("utf-8")) for text in texts]
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""
        ids = [int(i) for i in ids]
        if self.backend is None:
            return bytes(i for i in ids if 0 <= i < BYTE_ALPHABET_SIZE).decode("utf-8", errors="replace")
        return self.backend.decode(ids, skip_special_tokens=False)

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """The UTF-8 bytes each id stands for, as an int64 tensor of ``vocab_size`` entries.

        Exact for byte-level tokenizers (bytes, 'bpe', 'gpt2' and any byte-level BPE), whose
        tokens are byte strings; special tokens count 0. For other tokenizers it is the byte
        length of each token's own decoded text, which is close but not exact.
        """
        if self.backend is None:
            return torch.ones(BYTE_ALPHABET_SIZE, dtype=torch.long)
        lengths = torch.zeros(self.vocab_size, dtype=torch.long)
        special = {token.content for token in self.backend.get_added_tokens_decoder().values() if token.special}
        alphabet = {char: byte for byte, char in byte_alphabet().items()}
        byte_level = _is_byte_level(self.backend)
        for token, index in self.backend.get_vocab(with_added_tokens=True).items():
            if token in special:
                continue
            if byte_level and all(char in alphabet for char in token):
                lengths[index] = len(token)  # one alphabet character per byte
            else:
                lengths[index] = len(self.backend.decode([index]).encode("utf-8"))
        return lengths

    def to_json(self) -> str:
        """The tokenizer as the JSON text of a ``tokenizer.json``."""
        if self.backend is None:
            return json.dumps(_bytes_tokenizer_json(), ensure_ascii=False)
        return self.backend.to_str()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` at ``path`` (a file, or a folder to put it in), atomically. Returns the file."""
        path = Path(path)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.to_json(), encoding="utf-8")
        os.replace(partial, path)
        return path

    @classmethod
    def from_json(cls, text: str, *, kind: str | None = None, name: str | None = None) -> TextTokenizer:
        """A tokenizer from ``to_json``'s text; the bytes tokenizer comes back as plain Python.

        Its kind is read from what it is: GPT-2's (50257 ids ending in '<|endoftext|>'), a byte-level
        BPE with no special tokens (what 'bpe' trains), or 'custom'; ``kind`` and ``name`` override.
        """
        data = json.loads(text)
        if _is_bytes_tokenizer_json(data):
            return cls("bytes")
        tokenizers = import_tokenizers("reading a tokenizer.json")
        backend = tokenizers.Tokenizer.from_str(text)
        found = kind or _kind_of(data, backend)
        default_name = {"bpe": f"bpe-{backend.get_vocab_size()}", "gpt2": "gpt2"}.get(found, found)
        return cls(found, backend, name=name or default_name)

    def describe(self) -> dict[str, Any]:
        """What records and model cards say about it: kind, name and vocab_size."""
        return {"kind": self.kind, "name": self.name, "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def _kind_of(data: dict[str, Any], backend: Any) -> str:
    """'gpt2', 'bpe' (a byte-level BPE with no special tokens) or 'custom', from a tokenizer.json's content."""
    if (data.get("model") or {}).get("type") != "BPE" or not _is_byte_level(backend):
        return "custom"
    added = [token.get("content") for token in data.get("added_tokens") or []]
    if backend.get_vocab_size() == 50257 and added == ["<|endoftext|>"] and backend.token_to_id(added[0]) == 50256:
        return "gpt2"
    return "bpe" if not added else "custom"


def saved_tokenizer(checkpoint: dict[str, Any] | None) -> TextTokenizer | None:
    """The tokenizer a ``last.pt`` saved (its ``tokenizer.json`` text), or None for none or a run from before."""
    saved = checkpoint.get("tokenizer") if isinstance(checkpoint, dict) else None
    return TextTokenizer.from_json(saved) if isinstance(saved, str) else None


def _is_byte_level(backend: Any) -> bool:
    """Whether a backend decodes through the byte alphabet (a byte-level BPE): its tokens are byte strings."""
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable bytes keep theirs, the rest get 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(BYTE_ALPHABET_SIZE, 2 * BYTE_ALPHABET_SIZE))
    return {byte: chr(byte) if byte in printable else chr(next(extra)) for byte in range(BYTE_ALPHABET_SIZE)}


def _bytes_tokenizer_json() -> dict[str, Any]:
    """The bytes tokenizer as a ``tokenizer.json``: a byte-level BPE with no merges, whose ids are the bytes."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": {char: byte for byte, char in byte_alphabet().items()},
        "merges": [],
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": model,
    }


def _is_bytes_tokenizer_json(data: Any) -> bool:
    model = data.get("model") if isinstance(data, dict) else None
    bytes_vocab = {char: byte for byte, char in byte_alphabet().items()}
    return (
        isinstance(model, dict)
        and model.get("type") == "BPE"
        and not model.get("merges")
        and model.get("vocab") == bytes_vocab
        and not data.get("added_tokens")
    )


def import_tokenizers(purpose: str) -> Any:
    """The ``tokenizers`` package, or an ImportError saying how to install it."""
    return import_optional("tokenizers", purpose, alternative="or pass tokenizer='bytes'")


__all__ = [
    "BYTE_ALPHABET_SIZE",
    "TOKENIZER_FILE",
    "TextTokenizer",
    "byte_alphabet",
    "import_tokenizers",
    "saved_tokenizer",
]
