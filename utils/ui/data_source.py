"""Where a wizard run's text comes from, and reading it as training will.

A ``WizardConfig``'s ``data_source`` is one of ``DATA_SOURCES``: 'builtin'
(Python's standard library source code), 'file' (one UTF-8 text file),
'folder' (its text files, sorted) or 'strings' (the texts themselves).

Example:
    >>> train_data, n_bytes = read_train_data(WizardConfig(data_source="folder", dataset_path="notes"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from utils.training.data import check_text_bytes, load_stdlib_corpus

DATA_SOURCES = ("builtin", "file", "folder", "strings")
# A folder's files that are read as text; anything else in it is left alone.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".html", ".xml", ".yaml", ".yml")


def read_train_data(wizard_config: Any) -> tuple[Any, int]:
    """``train_data`` for the engine from a checked ``WizardConfig``, and its size in bytes.

    'builtin' gives None (the engine reads the corpus itself), 'file' the path,
    'folder' the text of its files and 'strings' the texts, as a list.
    """
    cfg = wizard_config
    if cfg.data_source == "builtin":
        return None, len(load_stdlib_corpus(cfg.max_corpus_bytes))
    if cfg.data_source == "file":
        return os.fspath(cfg.dataset_path), Path(cfg.dataset_path).stat().st_size
    texts = read_text_folder(cfg.dataset_path) if cfg.data_source == "folder" else list(cfg.texts)
    return texts, sum(len(t.encode("utf-8")) for t in texts)


def read_text_folder(folder: str | os.PathLike) -> list[str]:
    """The text of every file in ``folder`` (and below) whose suffix is in ``TEXT_SUFFIXES``, sorted by path.

    Hidden files and folders (names starting with '.') are left out.

    Raises:
        ValueError: no text file there, or one that is not UTF-8 text (a NUL byte, invalid UTF-8), named.
    """
    root = Path(folder)
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise ValueError(
            f"{os.fspath(root)!r} holds no text files ({', '.join('*' + s for s in TEXT_SUFFIXES)}); "
            "put your text there, or pass data_source='file' with one file"
        )
    texts = []
    for path in files:
        raw = path.read_bytes()
        check_text_bytes(raw, "a file in dataset_path", path)
        texts.append(raw.decode("utf-8"))
    return texts


__all__ = ["DATA_SOURCES", "TEXT_SUFFIXES", "read_text_folder", "read_train_data"]
