"""The built-in text corpus, the byte tokenizer, and reading user text files.

The default corpus is the source of Python's own standard library, read at
run time from ``sysconfig``: real text that ships with every Python, so
nothing is downloaded. Text (the corpus, strings, files) becomes token ids
as UTF-8 bytes, so any model with ``vocab_size >= 256`` can train on it.

Example:
    >>> ids = ByteTokenizer().encode(load_stdlib_corpus(10_000).decode())
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from utils.checks import check_positive_int

DEFAULT_CORPUS_BYTES = 1_000_000


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255. Fits any model with ``vocab_size >= 256``."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_source_files() -> list[Path]:
    """The corpus files: the standard library's top-level ``*.py`` files, sorted by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no Python source found in the standard library folder {stdlib}")
    return files


def load_stdlib_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> bytes:
    """The standard library's source as one byte string, at most ``max_bytes`` long.

    The same interpreter always gives the same bytes: the file list is fixed
    and sorted, and each file is introduced by a one-line header.
    """
    check_positive_int(max_bytes, "max_bytes")
    chunks, size = [], 0
    for path in stdlib_source_files():
        chunk = f"# ---- {path.name} ----\n".encode() + path.read_bytes() + b"\n"
        chunks.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def text_file_path(data: str | os.PathLike, arg: str) -> Path:
    """``data`` as the path of an existing file, or a ValueError saying how to pass raw text instead."""
    reason = _why_not_a_path(data) if isinstance(data, str) else None
    if reason is not None:
        raise ValueError(
            f"{arg} is a string of {len(data)} characters that cannot be a file path ({reason}); "
            f"pass raw text as a list of strings, e.g. {arg}=[text]"
        )
    path = Path(data)
    if not _is_file(path):
        raise ValueError(f"{arg}={str(data)[:60]!r} is not an existing file; pass raw text as a list of strings")
    return path


def _why_not_a_path(text: str) -> str | None:
    """Why ``text`` cannot name a file, or None; decided without touching the filesystem.

    ``Path.is_file`` raises ``OSError`` on a name over the OS limits, so raw
    text must be told apart before it is ever used as a path.
    """
    if "\n" in text:
        return "it holds a newline"
    if "\0" in text:
        return "it holds a NUL character"
    n_bytes = len(text.encode("utf-8", "surrogatepass"))  # the OS limits count bytes, not characters
    path_max = _os_path_limit("PC_PATH_MAX", 4096)
    if n_bytes >= path_max:  # PATH_MAX counts the terminating NUL
        return f"{n_bytes} bytes, over the {path_max - 1}-byte path limit"
    name_max = _os_path_limit("PC_NAME_MAX", 255)
    if any(len(part.encode("utf-8", "surrogatepass")) > name_max for part in Path(text).parts):
        return f"a name in it is longer than the {name_max}-byte limit"
    return None


def _os_path_limit(name: str, default: int) -> int:
    """``os.pathconf`` of the root folder, or ``default`` where the OS does not say (Windows has no pathconf)."""
    try:
        limit = os.pathconf("/", name)
    except (AttributeError, OSError, ValueError):
        return default
    return limit if limit > 0 else default  # -1 means "no limit", which we do not trust


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False instead of raising for a name the OS rejects."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name the OS rejects cannot be a file we read
        return False


def check_text_bytes(raw: bytes, arg: str, path: Path) -> None:
    """Reject a binary file (a NUL byte, or invalid UTF-8): its bytes would train the model on noise."""
    nul = raw.find(b"\0")
    if nul >= 0:
        found = f"NUL byte at offset {nul}"
    else:
        try:
            raw.decode("utf-8")
            return
        except UnicodeDecodeError as err:
            found = f"invalid UTF-8 at byte {err.start}"
    raise ValueError(
        f"{arg}={str(path)!r} is not a text file ({found}); pass a UTF-8 text file, or token ids as a tensor"
    )
