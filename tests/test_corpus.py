"""Tests for utils.training.corpus: the byte tokenizer and the built-in standard-library corpus."""

from __future__ import annotations

import pytest

from utils.training import corpus, data

CORPUS_BYTES = 20_000


def test_byte_tokenizer_round_trips_unicode():
    tokenizer = corpus.ByteTokenizer()
    text = "def f(x):\n    return 'héllo ✓'"
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_stdlib_source_files_are_sorted_python_files():
    files = corpus.stdlib_source_files()
    assert len(files) > 10
    names = [f.name for f in files]
    assert names == sorted(names)
    assert all(name.endswith(".py") for name in names)


def test_default_corpus_is_deterministic_capped_and_starts_with_first_file():
    first = corpus.load_stdlib_corpus(CORPUS_BYTES)
    second = corpus.load_stdlib_corpus(CORPUS_BYTES)
    assert first == second
    assert len(first) == CORPUS_BYTES
    first_file = corpus.stdlib_source_files()[0]
    header = f"# ---- {first_file.name} ----\n".encode()
    assert first.startswith(header + first_file.read_bytes()[:100])
    # A smaller cap is a prefix of a larger one: the order never changes.
    assert corpus.load_stdlib_corpus(1_000) == first[:1_000]


def test_default_corpus_rejects_non_positive_cap():
    with pytest.raises(ValueError, match="max_bytes"):
        corpus.load_stdlib_corpus(0)


def test_the_corpus_names_are_still_importable_from_data():
    for name in (
        "DEFAULT_CORPUS_BYTES",
        "ByteTokenizer",
        "check_text_bytes",
        "load_stdlib_corpus",
        "stdlib_source_files",
    ):
        assert getattr(data, name) is getattr(corpus, name), name
