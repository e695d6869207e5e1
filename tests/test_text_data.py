"""Tests for utils.training.text_data and prepare_lm_data's tokenizers: HF datasets, data files, the token cache."""

from __future__ import annotations

import json

import pytest
import torch

from utils.training import data as lm_data
from utils.training import text_data
from utils.training.text_data import TextOptions

datasets = pytest.importorskip("datasets")
pytest.importorskip("tokenizers")

TEXTS = [f"def f{i}(x):\n    return x * {i}\n" for i in range(40)]


def _dataset(**columns):
    return datasets.Dataset.from_dict(columns)


# -- Hugging Face datasets --------------------------------------------------------------------


def test_an_hf_dataset_trains_like_list_of_its_rows():
    ds = _dataset(text=TEXTS)
    from_dataset = lm_data.prepare_lm_data(ds, None, vocab_size=256, seq_len=16)
    from_rows = lm_data.prepare_lm_data(list(ds), None, vocab_size=256, seq_len=16)
    assert [t.tolist() for t in from_dataset.train] == [t.tolist() for t in from_rows.train]
    assert [t.tolist() for t in from_dataset.val] == [t.tolist() for t in from_rows.val]


def test_the_text_column_is_text_the_only_string_column_or_the_named_one():
    assert text_data.read_text_source(_dataset(body=TEXTS, n=list(range(40))), "d").texts == TEXTS
    two = _dataset(title=TEXTS, body=TEXTS[::-1])
    assert text_data.read_text_source(two, "d", text_column="body").texts == TEXTS[::-1]
    with pytest.raises(ValueError, match=r"no 'text' column and 2 string columns .* text_column="):
        text_data.read_text_source(two, "train_data")
    with pytest.raises(ValueError, match=r"no column text_column='nope'; its columns are \['title', 'body'\]"):
        text_data.read_text_source(two, "train_data", text_column="nope")


def test_an_iterable_dataset_is_read_once_in_order():
    iterable = _dataset(text=TEXTS).to_iterable_dataset()
    data = lm_data.prepare_lm_data(iterable, None, vocab_size=256, seq_len=64)
    assert len(data.train) + len(data.val) == len(TEXTS)


def test_a_dataset_of_input_ids_gives_its_rows():
    ds = _dataset(input_ids=[[1, 2, 3], [4, 5, 6, 7]], attention_mask=[[1, 1, 1], [1, 1, 1, 0]])
    data = lm_data.prepare_lm_data(ds, ds, vocab_size=16, seq_len=4)
    assert [t.tolist() for t in data.val] == [[1, 2, 3], [4, 5, 6]]  # the padded position is dropped
    assert lm_data.text_token_bytes(data.val) is None  # ids, not text: no bits per byte


def test_the_engine_takes_a_dataset_through_test_fine_tuning(tiny_gpt):
    from utils import tier3_training_utilities as tier3

    model, config = tiny_gpt
    ds = _dataset(content=TEXTS)
    results = tier3.test_fine_tuning(model, config, ds, max_steps=2, batch_size=4, progress=False)
    assert results["optimizer_steps"] == 2 and results["val_bits_per_byte"] is not None


# -- data files and folders ----------------------------------------------------------------------


@pytest.fixture
def data_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    (tmp_path / "b.json").write_text(json.dumps([{"text": t} for t in TEXTS]))
    (tmp_path / "c.csv").write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    _dataset(text=TEXTS).to_parquet(str(tmp_path / "d.parquet"))
    return tmp_path


@pytest.mark.parametrize("name, column", [("a.jsonl", "body"), ("b.json", None), ("c.csv", None), ("d.parquet", None)])
def test_a_data_file_is_read_with_datasets_own_loader(data_files, name, column):
    source = text_data.read_text_source(data_files / name, "train_data", text_column=column)
    assert source.texts == TEXTS and not source.stream


def test_a_folder_of_one_kind_of_data_file_is_read_in_order(tmp_path):
    for part in (0, 1):
        rows = TEXTS[20 * part : 20 * (part + 1)]
        (tmp_path / f"part{part}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    assert text_data.read_text_source(tmp_path, "train_data").texts == TEXTS
    data = lm_data.prepare_lm_data(str(tmp_path), None, vocab_size=256, seq_len=32)
    assert len(data.train) > len(data.val) > 0


def test_a_folder_of_text_files_gives_one_text_per_file(tmp_path):
    for i, text in enumerate(TEXTS[:3]):
        (tmp_path / f"{i}.txt").write_text(text)
    assert text_data.read_text_source(tmp_path, "train_data").texts == TEXTS[:3]


def test_a_folder_that_mixes_kinds_or_holds_none_is_explained(data_files, tmp_path_factory):
    with pytest.raises(ValueError, match=r"mixes kinds of data files \(csv, json, parquet\)"):
        text_data.read_text_source(data_files, "train_data")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="is a folder with no .jsonl"):
        text_data.read_text_source(empty, "train_data")


def test_a_data_file_without_datasets_says_how_to_install_it(data_files, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        text_data.read_text_source(data_files / "c.csv", "train_data")


# -- other tokenizers through prepare_lm_data -------------------------------------------------------


def test_bpe_on_the_corpus_trains_on_its_training_part_and_holds_out_the_same_bytes():
    with_bytes = lm_data.prepare_lm_data(None, None, vocab_size=512, seq_len=32, max_corpus_bytes=40_000)
    with_bpe = lm_data.prepare_lm_data(None, None, vocab_size=512, seq_len=32, max_corpus_bytes=40_000, tokenizer="bpe")
    assert with_bpe.tokenizer.kind == "bpe" and with_bpe.tokenizer.vocab_size == 512
    held_out_bytes = len(with_bytes.val) * 32
    bpe_bytes = sum(int(with_bpe.tokenizer.token_bytes[block].sum()) for block in with_bpe.val)
    assert abs(bpe_bytes - held_out_bytes) < 32 * 8  # the same tail, less each side's last partial block
    assert len(with_bpe.train) < len(with_bytes.train) / 2  # about 3 bytes per BPE token on code


def test_bpe_on_user_text_without_val_data_never_trains_on_the_held_out_share(monkeypatch):
    seen = []
    real = lm_data.resolve_tokenizer

    def watching(spec, vocab_size, *, training_text=None, seed=0):
        seen.extend(training_text())
        return real(spec, vocab_size, training_text=training_text, seed=seed)

    monkeypatch.setattr(lm_data, "resolve_tokenizer", watching)
    lm_data.prepare_lm_data(["".join(TEXTS) * 20], None, vocab_size=300, seq_len=32, tokenizer="bpe")
    assert len("".join(seen)) == int(len("".join(TEXTS) * 20) * 0.9)


def test_token_ids_with_another_tokenizer_stay_as_they_are_and_a_bpe_needs_text():
    ids = torch.arange(64) % 50
    bpe = lm_data.prepare_lm_data(TEXTS, None, vocab_size=300, seq_len=16, tokenizer="bpe").tokenizer
    data = lm_data.prepare_lm_data(ids, None, vocab_size=300, seq_len=16, tokenizer=bpe)
    assert data.train[0].tolist() == list(range(16)) and data.tokenizer is bpe
    with pytest.raises(ValueError, match="trains a BPE on the training text, and there is none here"):
        lm_data.prepare_lm_data(ids, None, vocab_size=300, seq_len=16, tokenizer="bpe")


def test_auto_below_512_is_bytes_and_says_so(capsys):
    data = lm_data.prepare_lm_data(TEXTS, None, vocab_size=256, seq_len=16, tokenizer="auto", progress=True)
    assert data.tokenizer.kind == "bytes"
    assert "tokenizer='auto' chose 'bytes' for the model's vocab_size=256" in capsys.readouterr().out


# -- the token cache --------------------------------------------------------------------------------


def test_a_large_file_is_tokenized_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "LARGE_TEXT_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text("".join(TEXTS) * 5)
    cache = tmp_path / "tokens"
    tokenizer = lm_data.prepare_lm_data(path, None, vocab_size=300, seq_len=32, tokenizer="bpe").tokenizer
    first = lm_data.prepare_lm_data(path, None, vocab_size=300, seq_len=32, tokenizer=tokenizer, cache_dir=cache)
    assert len(list(cache.glob("tokens-*.pt"))) == 1
    monkeypatch.setattr(text_data, "_encode_in_pieces", lambda *a, **k: pytest.fail("tokenized again"))
    again = lm_data.prepare_lm_data(path, None, vocab_size=300, seq_len=32, tokenizer=tokenizer, cache_dir=cache)
    assert torch.equal(again.train.dataset.blocks, first.train.dataset.blocks)


def test_a_changed_file_or_a_damaged_cache_is_tokenized_again(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "LARGE_TEXT_BYTES", 100)
    path = tmp_path / "big.txt"
    path.write_text("".join(TEXTS))
    tokenizer = lm_data.prepare_lm_data(path, None, vocab_size=300, seq_len=16, tokenizer="bpe").tokenizer
    options = TextOptions(cache_dir=tmp_path / "tokens")
    source = text_data.text_source_of(path, "train_data", options)
    first = text_data.encode_texts(tokenizer, source, options)
    (cached,) = (tmp_path / "tokens").glob("tokens-*.pt")
    cached.write_bytes(b"torn")
    assert [t.tolist() for t in text_data.encode_texts(tokenizer, source, options)] == [t.tolist() for t in first]
    path.write_text("".join(TEXTS) + "# more\n")
    changed = text_data.text_source_of(path, "train_data", options)
    text_data.encode_texts(tokenizer, changed, options)
    assert len(list((tmp_path / "tokens").glob("tokens-*.pt"))) == 2  # another file, another key


def test_a_large_text_shows_a_progress_bar_while_it_is_tokenized(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(text_data, "LARGE_TEXT_BYTES", 100)
    tokenizer = lm_data.prepare_lm_data(TEXTS, None, vocab_size=300, seq_len=16, tokenizer="bpe").tokenizer
    source = text_data.TextSource(["".join(TEXTS)], stream=True, what="text")
    text_data.encode_texts(tokenizer, source, TextOptions(progress=True))
    assert "tokenizing (bpe-" in capsys.readouterr().err
