"""Text from where users keep it, and its token ids: Hugging Face datasets, data files and folders, and a cache.

``train_data``/``val_data`` may be a Hugging Face ``datasets.Dataset`` or
``IterableDataset`` (its text column: 'text', the only string column, or the one
``text_column=`` names), a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file, or a
folder of them (read with ``datasets``' local loaders, offline), or a folder of
``.txt`` files (each file one text). ``datasets`` is imported only where one is read.

``encode_texts`` tokenizes texts in pieces with a progress bar when there is much of it,
and keeps the ids of a large source in a cache file (keyed by the files, the column and
the tokenizer), so a second run, or a resumed one, does not tokenize it again.

Example:
    >>> source = read_text_source("reviews.jsonl", "train_data", text_column="body")
    >>> ids = encode_texts(tokenizer, source, progress=True, cache_dir=Path("runs/a/checkpoints/tokens"))
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.optional import import_optional
from utils.training.corpus import check_text_bytes, load_stdlib_corpus, text_file_path
from utils.training.items import is_text_item, item_text, rows_of_batch
from utils.training.tokenization import TextTokenizer, split_at_lines

# File suffix -> the datasets loader that reads it.
DATA_FILE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_FILE_SUFFIX = ".txt"  # in a folder, each such file is one text
# A source of at least this much text shows a progress bar while it is tokenized, and is cached.
LARGE_TEXT_BYTES = 2**20
_ENCODE_PIECE_CHARS = 2**18  # a long text is encoded in pieces of about this size (in parallel threads)
_CACHE_FORMAT = 1
_STRING_DTYPES = ("string", "large_string")


@dataclass(frozen=True)
class TextSource:
    """Texts read from one source, before tokenization.

    Attributes:
        texts: the texts, in order.
        stream: one running text to cut into blocks (a text file, the corpus), else separate texts.
        what: the source in words, for messages.
        key: what identifies the source for the token cache (files with their sizes and times, or a
            dataset's fingerprint); None when it cannot be cached.
    """

    texts: list[str]
    stream: bool
    what: str
    key: str | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(text.encode("utf-8")) for text in self.texts)


@dataclass(frozen=True)
class TextOptions:
    """How text is read and tokenized: the column, the progress bar and the token cache folder."""

    text_column: str | None = None
    progress: bool = False
    cache_dir: Path | None = None


# --------------------------------------------------------------------------- what the data is


def is_hf_dataset(data: Any) -> bool:
    """A Hugging Face ``datasets.Dataset`` or ``IterableDataset`` (told apart without importing ``datasets``)."""
    return type(data).__module__.startswith("datasets.") and hasattr(data, "column_names")


def is_data_path(data: Any) -> bool:
    """A path to a .jsonl/.json/.csv/.parquet file, or to a folder (read by ``read_folder``)."""
    if not isinstance(data, (str, os.PathLike)):
        return False
    text = os.fspath(data)
    if not text or "\n" in text or "\0" in text or len(text) > 4096:
        return False  # raw text, not a path: the text-file check explains it
    path = Path(text)
    try:
        return path.is_dir() or (path.suffix.lower() in DATA_FILE_LOADERS and path.is_file())
    except (OSError, ValueError):  # a name the OS rejects is no path we read
        return False


def read_text_source(data: Any, arg: str, text_column: str | None = None) -> TextSource | list[dict[str, Any]]:
    """The texts of a Hugging Face dataset or of data files; a dataset of ``input_ids`` gives its rows instead.

    Raises:
        ValueError: no usable text column (naming the columns and ``text_column=``), no data files.
        ImportError: ``datasets`` is needed and not installed.
    """
    if is_hf_dataset(data):
        return _dataset_texts(data, arg, text_column, f"a Hugging Face {type(data).__name__}", _fingerprint(data))
    path = Path(data)
    files = _data_files(path, arg)
    if files[0].suffix.lower() == TEXT_FILE_SUFFIX:
        texts = [_read_text_file(file, arg) for file in files]
        return TextSource(texts, stream=False, what=f"{len(files)} text files in {path}", key=_files_key(files))
    dataset = _load_files(files, arg)
    return _dataset_texts(dataset, arg, text_column, f"{path}", _files_key(files, text_column))


def _data_files(path: Path, arg: str) -> list[Path]:
    """The file itself, or a folder's data files (one kind, sorted; hidden ones left out)."""
    if path.is_file():
        return [path]
    suffixes = (*DATA_FILE_LOADERS, TEXT_FILE_SUFFIX)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not files:
        raise ValueError(f"{arg}={os.fspath(path)!r} is a folder with no {', '.join(suffixes)} files; put data there")
    loaders = {DATA_FILE_LOADERS.get(p.suffix.lower(), "text") for p in files}
    if len(loaders) > 1:
        raise ValueError(
            f"{arg}={os.fspath(path)!r} mixes kinds of data files ({', '.join(sorted(loaders))}); "
            "keep one kind in a folder, or pass the files' folders one at a time"
        )
    return files


def _read_text_file(path: Path, arg: str) -> str:
    raw = path.read_bytes()
    check_text_bytes(raw, arg, path)
    return raw.decode("utf-8")


def _load_files(files: list[Path], arg: str) -> Any:
    """The files as one ``datasets.Dataset``, read by datasets' own local loader, in memory and offline."""
    loader = DATA_FILE_LOADERS[files[0].suffix.lower()]
    datasets = import_optional("datasets", f"{arg} from {loader} files", package="datasets")
    with _quiet_datasets(datasets), tempfile.TemporaryDirectory() as scratch:
        try:
            return datasets.load_dataset(
                loader, data_files=[str(f) for f in files], split="train", cache_dir=scratch, keep_in_memory=True
            )
        except Exception as err:  # pyarrow and datasets raise many kinds for a malformed file
            raise ValueError(f"{arg}: datasets could not read {files[0]} as {loader} ({err})") from err


@contextlib.contextmanager
def _quiet_datasets(datasets: Any) -> Iterator[None]:
    """No 'Generating train split' bars and no network for a block; what was set is restored."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    saved = {name: os.environ.get(name) for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(dict.fromkeys(saved, "1"))
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _dataset_texts(
    dataset: Any, arg: str, text_column: str | None, what: str, key: str | None
) -> TextSource | list[dict[str, Any]]:
    """A dataset's text column as texts, or its id rows when it holds ``input_ids`` and no column was named."""
    columns = list(dataset.column_names or [])
    if text_column is None and "input_ids" in columns:
        keep = [c for c in ("input_ids", "attention_mask") if c in columns]
        return [{c: row[c] for c in keep} for row in dataset]
    column = _text_column(dataset, columns, arg, text_column)
    rows = dataset[column] if hasattr(dataset, "__len__") else (row[column] for row in dataset)
    texts = []
    for index, text in enumerate(rows):
        if not isinstance(text, str):
            raise TypeError(f"{arg} row {index} has a {column!r} of type {type(text).__name__}; it must be a string")
        texts.append(text)
    return TextSource(texts, stream=False, what=f"{what} (column {column!r})", key=key and f"{key}|{column}")


def _text_column(dataset: Any, columns: list[str], arg: str, text_column: str | None) -> str:
    """``text_column``, else 'text', else the one string column; otherwise say which to name."""
    if text_column is not None:
        if text_column not in columns:
            raise ValueError(f"{arg} has no column text_column={text_column!r}; its columns are {columns}")
        return text_column
    if "text" in columns:
        return "text"
    features = getattr(dataset, "features", None) or {}
    strings = [c for c in columns if getattr(features.get(c), "dtype", None) in _STRING_DTYPES]
    if len(strings) == 1:
        return strings[0]
    raise ValueError(
        f"{arg} has no 'text' column and {len(strings)} string columns ({strings}) among {columns}; "
        "name the one to train on with text_column="
    )


def _fingerprint(dataset: Any) -> str | None:
    fingerprint = getattr(dataset, "_fingerprint", None)
    return f"dataset {fingerprint}" if isinstance(fingerprint, str) else None


def _files_key(files: list[Path], text_column: str | None = None) -> str:
    stats = [(os.fspath(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return f"files {stats} column {text_column}"


def text_source_of(data: Any, arg: str, options: TextOptions) -> TextSource | Any:
    """The texts of any text kind of ``data`` (a text file is one stream); token ids come back as they are.

    Hugging Face datasets and data files of ``input_ids`` give their rows (ids too).
    """
    if rows_of_batch(data) is not None or isinstance(data, torch.Tensor):
        return data
    if is_hf_dataset(data) or is_data_path(data):
        return read_text_source(data, arg, options.text_column)
    if isinstance(data, (str, os.PathLike)):
        path = text_file_path(data, arg)
        return TextSource(
            [_read_text_file(path, arg)], stream=True, what=f"the text file {path}", key=_files_key([path])
        )
    if isinstance(data, (list, tuple)) and data and is_text_item(data[0]):
        return TextSource([item_text(item, arg, i) for i, item in enumerate(data)], stream=False, what="texts")
    if _is_text_dataset(data):
        texts = [item_text(data[i], arg, i) for i in range(len(data))]
        return TextSource(texts, stream=False, what="a Dataset of texts")
    return data


def _is_text_dataset(data: Any) -> bool:
    if not isinstance(data, torch.utils.data.Dataset) or isinstance(data, torch.utils.data.IterableDataset):
        return False
    return hasattr(data, "__len__") and len(data) > 0 and is_text_item(data[0])


def held_out_size(n: int, seq_len: int, val_fraction: float) -> int:
    """How much of a stream of ``n`` tokens (or bytes) the built-in corpus holds out: its tail."""
    return max(seq_len, int(n * val_fraction))


def corpus_sources(max_corpus_bytes: int, seq_len: int, val_fraction: float) -> tuple[TextSource, TextSource]:
    """The built-in corpus as training text and its held-out tail: the same bytes the bytes tokenizer holds out.

    So models with different tokenizers are scored on the same text.
    """
    raw = load_stdlib_corpus(max_corpus_bytes)
    cut = len(raw) - held_out_size(len(raw), seq_len, val_fraction)
    if cut < seq_len:
        raise ValueError(f"{len(raw)} bytes of corpus are too few to hold out validation data; pass more text")
    while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # never inside a UTF-8 character
        cut += 1
    train, tail = (part.decode("utf-8", errors="ignore") for part in (raw[:cut], raw[cut:]))
    return TextSource([train], True, "the built-in corpus"), TextSource([tail], True, "the corpus tail")


def training_texts(source: TextSource, share: float) -> list[str]:
    """The first ``share`` of a source's text (by characters): what a BPE trains on when the rest is held out."""
    if share >= 1:
        return source.texts
    budget = int(sum(len(text) for text in source.texts) * share)
    texts = []
    for text in source.texts:
        if budget <= 0:
            break
        texts.append(text[:budget])
        budget -= len(text)
    return texts


# --------------------------------------------------------------------------- tokenizing, once


def encode_texts(tokenizer: TextTokenizer, source: TextSource, options: TextOptions) -> list[torch.Tensor]:
    """The ids of each text (of the one stream, for a stream), read from the token cache when it has them.

    A source of ``LARGE_TEXT_BYTES`` or more shows a progress bar and, with a cache folder, is
    kept there for the next run with the same files, column and tokenizer.
    """
    large = source.n_bytes >= LARGE_TEXT_BYTES
    cache = _cache_path(options.cache_dir, source, tokenizer) if large else None
    if cache is not None and cache.is_file():
        cached = _read_cache(cache)
        if cached is not None:
            return cached
    ids = _encode_in_pieces(tokenizer, source.texts, progress=options.progress and large)
    if cache is not None:
        _write_cache(cache, ids)
    return ids


def _encode_in_pieces(tokenizer: TextTokenizer, texts: Sequence[str], *, progress: bool) -> list[torch.Tensor]:
    """Each text's ids; long texts of a byte-level tokenizer are cut at clean line breaks (the same ids)."""
    from utils.progress import progress_bar

    cut = tokenizer.kind in ("bpe", "gpt2")  # cutting is exact only for GPT-2's pre-tokenizer pattern
    pieces = [
        (i, p) for i, text in enumerate(texts) for p in (split_at_lines(text, _ENCODE_PIECE_CHARS) if cut else [text])
    ]
    per_text: list[list[int]] = [[] for _ in texts]
    bar = progress_bar(total=len(pieces), desc=f"tokenizing ({tokenizer.name})", unit="piece", enabled=progress)
    try:
        for start in range(0, len(pieces), 64):
            batch = pieces[start : start + 64]
            for (index, _), ids in zip(batch, tokenizer.encode_batch([p for _, p in batch])):
                per_text[index].extend(ids)
            bar.update(len(batch))
    finally:
        bar.close()
    return [torch.tensor(ids, dtype=torch.long) for ids in per_text]


def _cache_path(cache_dir: Path | None, source: TextSource, tokenizer: TextTokenizer) -> Path | None:
    if cache_dir is None or source.key is None:
        return None
    tokenizer_hash = hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()
    key = hashlib.sha256(f"{source.key}|{source.stream}|{tokenizer_hash}".encode()).hexdigest()
    return Path(cache_dir) / f"tokens-{key[:24]}.pt"


def _read_cache(path: Path) -> list[torch.Tensor] | None:
    """The cached ids (data only: ``weights_only=True``), or None for a damaged or foreign file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != _CACHE_FORMAT:
            return None
        return [piece.long() for piece in saved["ids"].split(saved["lengths"].tolist())]
    except Exception:  # a torn or foreign file: tokenize again and rewrite it
        return None


def _write_cache(path: Path, ids: list[torch.Tensor]) -> None:
    """Write the ids atomically (int32 where they fit); a cache that cannot be written is simply skipped."""
    lengths = torch.tensor([t.numel() for t in ids], dtype=torch.long)
    flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    if flat.numel() and int(flat.max()) < 2**31:
        flat = flat.int()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # ranks under torchrun write apart
        torch.save({"format": _CACHE_FORMAT, "ids": flat, "lengths": lengths}, partial)
        os.replace(partial, path)
    except OSError:  # a full disk or a read-only folder costs only the cache
        return


__all__ = [
    "DATA_FILE_LOADERS",
    "LARGE_TEXT_BYTES",
    "TextOptions",
    "TextSource",
    "corpus_sources",
    "encode_texts",
    "held_out_size",
    "is_data_path",
    "is_hf_dataset",
    "read_text_source",
    "text_source_of",
    "training_texts",
]
