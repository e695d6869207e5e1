"""Tests for utils.training.data: the default corpus split, user data kinds, collation and loaders."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, Subset

from utils.training import data
from utils.training.data import IGNORE_INDEX

SEQ_LEN = 16
CORPUS_BYTES = 20_000


class ListDataset(Dataset):
    """A user Dataset of 1-D id tensors (or of any items), counting reads per index."""

    def __init__(self, sequences):
        self.sequences = sequences
        self.reads = [0] * len(sequences)

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.sequences[index]


def _ids(*shape, high=256, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# -- the default corpus ----------------------------------------------------------------------


def test_default_split_is_deterministic_disjoint_and_in_corpus_order():
    corpus = torch.tensor(list(data.load_stdlib_corpus(CORPUS_BYTES)))
    first = data.prepare_lm_data(None, None, vocab_size=256, seq_len=SEQ_LEN, max_corpus_bytes=CORPUS_BYTES)
    second = data.prepare_lm_data(None, None, vocab_size=256, seq_len=SEQ_LEN, max_corpus_bytes=CORPUS_BYTES)
    assert first.source == "python-stdlib"
    assert torch.equal(first.train.blocks, second.train.blocks)
    assert torch.equal(first.val.blocks, second.val.blocks)

    train_stream, val_stream = first.train.blocks.flatten(), first.val.blocks.flatten()
    n_val = int(CORPUS_BYTES * 0.1)  # val_fraction=0.1, held out from the end
    # Train comes from the front, validation from the held-out tail: no byte is in both.
    assert torch.equal(train_stream, corpus[: train_stream.numel()])
    assert train_stream.numel() <= CORPUS_BYTES - n_val
    assert torch.equal(val_stream, corpus[CORPUS_BYTES - n_val :][: val_stream.numel()])
    assert first.train.blocks.shape[1] == first.val.blocks.shape[1] == SEQ_LEN
    assert len(first.val) == n_val // SEQ_LEN


def test_default_corpus_with_explicit_val_data_uses_it():
    val = _ids(3, SEQ_LEN)
    lm = data.prepare_lm_data(None, val, vocab_size=256, seq_len=SEQ_LEN, max_corpus_bytes=CORPUS_BYTES)
    assert len(lm.val) == 3 and torch.equal(lm.val[1], val[1])
    assert len(lm.train) > 0


# -- user data kinds ------------------------------------------------------------------------


def test_one_dimensional_tensor_becomes_blocks():
    ids = _ids(100)
    lm = data.prepare_lm_data(ids, ids[:40], vocab_size=256, seq_len=SEQ_LEN)
    assert lm.source == "user"
    assert len(lm.train) == 100 // SEQ_LEN
    assert torch.equal(lm.train[1], ids[SEQ_LEN : 2 * SEQ_LEN])
    assert len(lm.val) == 40 // SEQ_LEN


def test_two_dimensional_tensor_is_rows():
    rows = _ids(5, 12)
    lm = data.prepare_lm_data(rows, rows[:2], vocab_size=256, seq_len=SEQ_LEN)
    assert len(lm.train) == 5 and torch.equal(lm.train[4], rows[4])


def test_rows_longer_than_seq_len_are_rejected():
    with pytest.raises(ValueError, match=r"train_data rows have 20 tokens.*at most 16"):
        data.prepare_lm_data(_ids(3, 20), None, vocab_size=256, seq_len=SEQ_LEN)


def test_three_dimensional_tensor_is_rejected():
    with pytest.raises(ValueError, match=r"train_data must be 1-D .* or 2-D"):
        data.prepare_lm_data(_ids(2, 2, 4), None, vocab_size=256, seq_len=SEQ_LEN)


def test_list_of_strings_is_byte_tokenized_chunked_and_empties_dropped():
    texts = ["hi", "", "x" * 40]
    lm = data.prepare_lm_data(texts, ["val text"], vocab_size=256, seq_len=SEQ_LEN)
    lengths = [len(lm.train[i]) for i in range(len(lm.train))]
    assert lengths == [2, 16, 16, 8]  # 40 bytes cut into 16 + 16 + 8, nothing lost
    assert lm.train[0].tolist() == list(b"hi")
    assert lm.val[0].tolist() == list(b"val text")


def test_list_of_id_sequences_is_accepted():
    lm = data.prepare_lm_data([[1, 2, 3], torch.tensor([4, 5])], [[7, 8]], vocab_size=10, seq_len=SEQ_LEN)
    assert [t.tolist() for t in (lm.train[0], lm.train[1])] == [[1, 2, 3], [4, 5]]


@pytest.mark.parametrize("as_path", [str, lambda p: p], ids=["str", "Path"])
def test_text_file_path_becomes_blocks_of_its_bytes(tmp_path, as_path):
    text = "print('hello world')\n" * 10
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    lm = data.prepare_lm_data(as_path(path), None, vocab_size=256, seq_len=SEQ_LEN)
    n_blocks = len(text) // SEQ_LEN
    assert len(lm.train) + len(lm.val) == n_blocks
    assert lm.train[0].tolist() == list(text.encode()[:SEQ_LEN])


def test_dataset_passes_through_and_user_split_is_deterministic_tail():
    dataset = ListDataset([torch.tensor([i, i + 1, i + 2]) for i in range(20)])
    lm = data.prepare_lm_data(dataset, None, vocab_size=256, seq_len=SEQ_LEN)
    assert isinstance(lm.train, Subset) and lm.train.dataset is dataset
    assert lm.train.indices == list(range(18))  # 10% held out from the end
    assert lm.val.indices == [18, 19]
    again = data.prepare_lm_data(dataset, None, vocab_size=256, seq_len=SEQ_LEN)
    assert again.train.indices == lm.train.indices and again.val.indices == lm.val.indices


def test_too_little_data_to_split_says_so():
    with pytest.raises(ValueError, match="pass val_data or more data"):
        data.prepare_lm_data(_ids(1, 8), None, vocab_size=256, seq_len=SEQ_LEN)


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.rand(4, 8), TypeError),
        (5, TypeError),
        ("no/such/file.txt", ValueError),
        ([], TypeError),
    ],
    ids=["float-tensor", "int", "missing-path", "empty-list"],
)
def test_bad_data_kinds_name_the_argument(arg, bad, error):
    kwargs = {"train_data": _ids(4, 8), "val_data": _ids(2, 8), arg: bad}
    with pytest.raises(error, match=arg):
        data.prepare_lm_data(kwargs["train_data"], kwargs["val_data"], vocab_size=256, seq_len=SEQ_LEN)


@pytest.mark.parametrize("bad_id", [300, -1])
def test_ids_outside_the_vocabulary_are_rejected(bad_id):
    ids = _ids(40, high=100)
    ids[7] = bad_id
    with pytest.raises(ValueError, match=r"train_data holds token ids .* outside the vocabulary \[0, 99\]"):
        data.prepare_lm_data(ids, None, vocab_size=100, seq_len=SEQ_LEN)


def test_id_equal_to_vocab_size_is_rejected_in_id_lists():
    with pytest.raises(ValueError, match="val_data"):
        data.prepare_lm_data([[1, 2]], [[3, 100]], vocab_size=100, seq_len=SEQ_LEN)


@pytest.mark.parametrize("kind", ["corpus", "strings", "file"])
def test_text_needs_a_vocabulary_of_at_least_256(kind, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("some text " * 10)
    train = {"corpus": None, "strings": ["some text"], "file": path}[kind]
    with pytest.raises(ValueError, match=r"vocab_size=100.*vocab_size >= 256"):
        data.prepare_lm_data(train, None, vocab_size=100, seq_len=SEQ_LEN, max_corpus_bytes=CORPUS_BYTES)


@pytest.mark.parametrize("val_fraction", [1.0, 0.0, float("nan"), True, "0.1"])
def test_val_fraction_must_be_a_fraction(val_fraction):
    with pytest.raises(ValueError, match="val_fraction must be a number in"):
        data.prepare_lm_data(_ids(100), None, vocab_size=256, seq_len=SEQ_LEN, val_fraction=val_fraction)


@pytest.mark.parametrize(
    "setting, value",
    [("vocab_size", 0), ("vocab_size", True), ("seq_len", 0), ("seq_len", 8.0), ("max_corpus_bytes", 0)],
)
def test_sizes_must_be_positive_integers(setting, value):
    kwargs = {"vocab_size": 256, "seq_len": SEQ_LEN, setting: value}
    with pytest.raises(ValueError, match=f"{setting} must be a positive integer"):
        data.prepare_lm_data(_ids(100), None, **kwargs)


# -- raw text passed as one string ----------------------------------------------------------


def _raw_texts():
    return {
        "long": "x" * 300,
        "long-multibyte": "é" * 200,  # 200 characters but 400 bytes: the OS limits count bytes
        "newline": "line one\nline two",
        "nul": "a\0b",
        "long-name-in-path": "folder/" + "b" * 300,
        "over-path-max": "a/" * 3000,
    }


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
@pytest.mark.parametrize("kind", list(_raw_texts()))
def test_raw_text_string_says_pass_a_list_without_touching_the_filesystem(arg, kind, monkeypatch):
    text = _raw_texts()[kind]

    def no_filesystem(self):
        raise AssertionError(f"is_file was called on {str(self)[:30]!r}")

    monkeypatch.setattr(Path, "is_file", no_filesystem)
    kwargs = {"train_data": _ids(100), "val_data": None, arg: text}
    pattern = (
        rf"{arg} is a string of {len(text)} characters .*pass raw text as a list of strings, e\.g\. {arg}=\[text\]"
    )
    with pytest.raises(ValueError, match=pattern):
        data.prepare_lm_data(kwargs["train_data"], kwargs["val_data"], vocab_size=256, seq_len=SEQ_LEN)


def test_raw_text_is_told_apart_without_pathconf(monkeypatch):
    monkeypatch.delattr(os, "pathconf")  # as on Windows: the 4096 / 255 defaults apply
    with pytest.raises(ValueError, match="longer than the 255-byte limit"):
        data.prepare_lm_data("x" * 300, None, vocab_size=256, seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match="over the 4095-byte path limit"):
        data.prepare_lm_data("a/" * 3000, None, vocab_size=256, seq_len=SEQ_LEN)


def test_short_missing_path_is_still_not_an_existing_file():
    with pytest.raises(ValueError, match=r"train_data='no/such/file\.txt' is not an existing file"):
        data.prepare_lm_data("no/such/file.txt", None, vocab_size=256, seq_len=SEQ_LEN)


def test_os_error_from_is_file_reads_as_a_missing_file(monkeypatch):
    def too_long(self):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(Path, "is_file", too_long)
    with pytest.raises(ValueError, match="train_data='short.txt' is not an existing file"):
        data.prepare_lm_data("short.txt", None, vocab_size=256, seq_len=SEQ_LEN)


# -- text files must be UTF-8 text ----------------------------------------------------------


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
@pytest.mark.parametrize(
    "content, found",
    [
        (b"hello\0world" * 10, "NUL byte at offset 5"),
        ("café au lait ".encode("latin-1") * 10, "invalid UTF-8 at byte 3"),
        (bytes(range(128, 256)), "invalid UTF-8 at byte 0"),
    ],
    ids=["nul", "latin-1", "high-bytes"],
)
def test_binary_file_is_not_a_text_file(tmp_path, arg, content, found):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    kwargs = {"train_data": _ids(100), "val_data": None, arg: path}
    pattern = (
        re.escape(f"{arg}={str(path)!r} is not a text file ({found}); ")
        + "pass a UTF-8 text file, or token ids as a tensor"
    )
    with pytest.raises(ValueError, match=pattern):
        data.prepare_lm_data(kwargs["train_data"], kwargs["val_data"], vocab_size=256, seq_len=SEQ_LEN)


def test_utf8_text_file_with_multibyte_characters_is_accepted(tmp_path):
    text = "héllo wörld ✓\n" * 10
    path = tmp_path / "unicode.txt"
    path.write_text(text, encoding="utf-8")
    lm = data.prepare_lm_data(path, path, vocab_size=256, seq_len=SEQ_LEN)
    assert lm.train[1].tolist() == list(text.encode("utf-8")[SEQ_LEN : 2 * SEQ_LEN])


@pytest.mark.parametrize("content", [b"", b"short"], ids=["empty", "short"])
def test_file_shorter_than_one_block_says_so(tmp_path, content):
    path = tmp_path / "tiny.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"train_data=.* holds {len(content)} bytes, too few for one block of 16"):
        data.prepare_lm_data(path, None, vocab_size=256, seq_len=SEQ_LEN)


def test_one_dimensional_tensor_shorter_than_one_block_names_the_argument():
    with pytest.raises(ValueError, match="val_data holds 5 tokens, too few for one block of 16"):
        data.prepare_lm_data(_ids(100), _ids(5), vocab_size=256, seq_len=SEQ_LEN)


# -- datasets and lists of texts ------------------------------------------------------------

TEXTS = ["hi", "", "x" * 40, "héllo ✓ " * 3]


def _contents(dataset):
    return [dataset[i].tolist() for i in range(len(dataset))]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ListDataset(list(TEXTS)),
        lambda: ListDataset([{"text": t, "label": i} for i, t in enumerate(TEXTS)]),
        lambda: [{"text": t} for t in TEXTS],
        lambda: tuple({"text": t} for t in TEXTS),
    ],
    ids=["dataset-of-strings", "dataset-of-text-rows", "list-of-text-dicts", "tuple-of-text-dicts"],
)
def test_texts_are_tokenized_exactly_like_a_list_of_strings(make):
    expected = data.prepare_lm_data(list(TEXTS), None, vocab_size=256, seq_len=SEQ_LEN)
    lm = data.prepare_lm_data(make(), None, vocab_size=256, seq_len=SEQ_LEN)
    assert _contents(lm.train) == _contents(expected.train)
    assert _contents(lm.val) == _contents(expected.val)
    assert _contents(lm.train)[0] == list(b"hi")  # empty text dropped, 40 x's cut into 16 + 16 + 8
    assert [len(s) for s in _contents(lm.train)][:4] == [2, 16, 16, 8]


def test_dataset_of_texts_is_read_once_per_item():
    dataset = ListDataset(list(TEXTS))
    data.prepare_lm_data(["train text"], dataset, vocab_size=256, seq_len=SEQ_LEN)
    assert dataset.reads == [1, 1, 1, 1]  # item 0 is peeked at and reused, not read again


def test_dataset_of_input_id_dicts_passes_through():
    dataset = ListDataset([{"input_ids": [i, i + 1], "text": "ignored"} for i in range(10)])
    lm = data.prepare_lm_data(dataset, None, vocab_size=256, seq_len=SEQ_LEN)
    assert lm.train.dataset is dataset and lm.train.indices == list(range(9))
    batch = data.collate_lm_batch([lm.train[2]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[2, 3]]


def test_list_of_input_id_dicts_is_accepted():
    lm = data.prepare_lm_data(
        [{"input_ids": [1, 2, 3]}, {"input_ids": torch.tensor([4])}], [[5, 6]], vocab_size=10, seq_len=SEQ_LEN
    )
    assert _contents(lm.train) == [[1, 2, 3], [4]]


@pytest.mark.parametrize("kind", ["dataset", "text-dicts"])
def test_texts_in_a_dataset_need_a_vocabulary_of_at_least_256(kind):
    train = ListDataset(["some text"] * 3) if kind == "dataset" else [{"text": "some text"}]
    with pytest.raises(ValueError, match=r"train_data \(a .*\) is tokenized as bytes.*vocab_size >= 256"):
        data.prepare_lm_data(train, None, vocab_size=100, seq_len=SEQ_LEN)


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
@pytest.mark.parametrize(
    "items, found",
    [
        ([1, 2, 3], "item 0 is of type int"),
        ([torch.rand(3)], r"item 0 is of type Tensor \(shape \(3,\), dtype torch.float32\)"),
        ([torch.zeros(2, 2, dtype=torch.long)], r"item 0 is of type Tensor \(shape \(2, 2\)"),
        ([{"sentence": "hi", "label": 1}], r"item 0 is of type dict \(keys 'sentence': str, 'label': int\)"),
        ([None], "item 0 is of type NoneType"),
        ([b"bytes"], "item 0 is of type bytes"),
    ],
    ids=["int", "float-tensor", "2-d", "dict-without-text", "none", "bytes"],
)
@pytest.mark.parametrize("container", [ListDataset, list], ids=["dataset", "list"])
def test_unusable_items_name_the_argument_the_type_and_what_to_pass(arg, items, found, container):
    kwargs = {"train_data": _ids(100), "val_data": None, arg: container(items)}
    expected = "1-D integer token ids, a dict with 'input_ids', a string, or a dict with 'text'"
    with pytest.raises(TypeError, match=rf"{arg} {found}.*; each item must be {expected}"):
        data.prepare_lm_data(kwargs["train_data"], kwargs["val_data"], vocab_size=256, seq_len=SEQ_LEN)


@pytest.mark.parametrize("container", [ListDataset, list], ids=["dataset", "list"])
def test_mixed_items_name_the_index_and_type(container):
    with pytest.raises(TypeError, match=r"train_data item 2 is of type Tensor .*, but item 0 is text"):
        data.prepare_lm_data(container(["a", {"text": "b"}, torch.tensor([1])]), None, vocab_size=256, seq_len=4)
    with pytest.raises(TypeError, match=r"train_data item 1 is text of type str \('abc'\), but item 0 is token ids"):
        data.prepare_lm_data([[1, 2], "abc"], None, vocab_size=256, seq_len=4)


def test_text_row_whose_text_is_not_a_string_says_so():
    with pytest.raises(TypeError, match="val_data item 1 has a 'text' of type NoneType; pass it a string"):
        data.prepare_lm_data(_ids(100), ListDataset([{"text": "a"}, {"text": None}]), vocab_size=256, seq_len=4)


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.tensor([1, 2])


class _NoLength(Dataset):
    def __getitem__(self, index):
        return torch.tensor([1, 2])


@pytest.mark.parametrize("dataset", [_Stream(), _NoLength()], ids=["iterable", "no-len"])
def test_dataset_without_len_and_indexing_says_what_to_pass(dataset):
    with pytest.raises(TypeError, match=r"train_data of type _\w+ has no len\(\) or indexing; pass a map-style"):
        data.prepare_lm_data(dataset, None, vocab_size=256, seq_len=SEQ_LEN)


# -- collation -----------------------------------------------------------------------------


def test_collate_pads_masks_and_counts():
    batch = data.collate_lm_batch([torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 8], [9, 10, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["n_tokens"] == 6
    assert batch["n_targets"] == 3 + 1  # each sequence predicts all but its first token


def test_collate_without_padding_has_no_mask():
    batch = data.collate_lm_batch([torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])], pad_token_id=0)
    assert batch["attention_mask"] is None
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert (batch["n_tokens"], batch["n_targets"]) == (6, 4)


def test_collate_uses_pad_token_id_and_accepts_dict_items():
    batch = data.collate_lm_batch([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 99, 99]]
    assert batch["labels"][1].tolist() == [4, IGNORE_INDEX, IGNORE_INDEX]
    assert (batch["n_tokens"], batch["n_targets"]) == (4, 2)


@pytest.mark.parametrize(
    "item, found",
    [
        (torch.rand(4), "of type Tensor"),
        (torch.zeros(2, 2, dtype=torch.long), r"shape \(2, 2\)"),
        ("abc", r"of type str \('abc'\)"),
        ({"text": "abc"}, r"of type dict \(keys 'text': str\)"),
        (torch.tensor([1 + 0j]), "dtype torch.complex64"),
    ],
    ids=["float", "2-d", "str", "dict-without-input-ids", "complex"],
)
def test_collate_rejects_items_that_are_not_token_ids(item, found):
    with pytest.raises(TypeError, match=rf"1-D sequence of integer token ids.*got an item.*{found}"):
        data.collate_lm_batch([item], pad_token_id=0)


def test_collate_checks_the_vocabulary_when_given():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        data.collate_lm_batch([torch.tensor([1, 50])], pad_token_id=0, vocab_size=50)


# -- loaders ---------------------------------------------------------------------------------


def _order(loader):
    return [row[0].item() for batch in loader for row in batch["input_ids"]]


def test_loader_order_depends_only_on_seed():
    dataset = ListDataset([torch.tensor([i, i]) for i in range(32)])

    def make(seed):
        return data.make_loader(dataset, 4, shuffle=True, seed=seed, pad_token_id=0)

    assert _order(make(0)) == _order(make(0))
    assert sorted(_order(make(0))) == list(range(32))
    assert _order(make(0)) != _order(make(1))


def test_loader_without_shuffle_keeps_order_and_collates():
    dataset = ListDataset([torch.tensor([i, i, i]) for i in range(5)])
    loader = data.make_loader(dataset, 2, shuffle=False, seed=0, pad_token_id=0, vocab_size=10)
    assert _order(loader) == [0, 1, 2, 3, 4]
    assert [b["n_targets"] for b in loader] == [4, 4, 2]


def test_dataset_items_longer_than_seq_len_are_an_error_not_a_silent_cut():
    loader = data.make_loader(
        data.SequenceDataset([torch.arange(24)]), batch_size=1, shuffle=False, seed=0, pad_token_id=0, max_len=16
    )
    with pytest.raises(ValueError, match="24 tokens, more than seq_len=16"):
        next(iter(loader))


def test_ranks_together_see_what_one_process_sees_with_the_bigger_batch():
    """N ranks with batch B give, step by step, the rows one process gets with N * B (DDP equivalence)."""
    dataset = data.SequenceDataset([torch.full((3,), i) for i in range(12)])

    def make(batch, rank, world):
        return data.make_loader(dataset, batch, shuffle=True, seed=5, pad_token_id=0, rank=rank, world_size=world)

    for epoch in (0, 1):
        single, ranks = make(4, 0, 1), [make(2, r, 2) for r in range(2)]
        for loader in (single, *ranks):
            loader.sampler.set_epoch(epoch)
        one = [sorted(b["input_ids"][:, 0].tolist()) for b in single]
        two = [sorted(a["input_ids"][:, 0].tolist() + b["input_ids"][:, 0].tolist()) for a, b in zip(*ranks)]
        assert one == two
    assert one != [sorted(b["input_ids"][:, 0].tolist()) for b in make(4, 0, 1)]  # set_epoch(1) reshuffled


def test_unshuffled_rank_shards_cover_every_item_once_without_padding():
    dataset = data.SequenceDataset([torch.full((3,), i) for i in range(5)])
    shards = [
        data.make_loader(dataset, 2, shuffle=False, seed=0, pad_token_id=0, rank=r, world_size=2) for r in range(2)
    ]
    seen = [[row[0] for b in loader for row in b["input_ids"].tolist()] for loader in shards]
    assert seen == [[0, 2, 4], [1, 3]]
