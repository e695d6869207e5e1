"""Tests for utils.training.data: the built-in corpus, user data kinds, collation and loaders."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

import pytest

from utils.training import data
from utils.training.data import IGNORE_INDEX

SEQ_LEN = 16
CORPUS_BYTES = 20_000


class ListDataset(Dataset):
    """A user Dataset of 1-D id tensors."""

    def __init__(self, sequences):
        self.sequences = sequences

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        return self.sequences[index]


def _ids(*shape, high=256, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# -- tokenizer and default corpus ---------------------------------------------------------


def test_byte_tokenizer_round_trips_unicode():
    tokenizer = data.ByteTokenizer()
    text = "def f(x):\n    return 'héllo ✓'"
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_stdlib_source_files_are_sorted_python_files():
    files = data.stdlib_source_files()
    assert len(files) > 10
    names = [f.name for f in files]
    assert names == sorted(names)
    assert all(name.endswith(".py") for name in names)


def test_default_corpus_is_deterministic_capped_and_starts_with_first_file():
    first = data.load_stdlib_corpus(CORPUS_BYTES)
    second = data.load_stdlib_corpus(CORPUS_BYTES)
    assert first == second
    assert len(first) == CORPUS_BYTES
    first_file = data.stdlib_source_files()[0]
    header = f"# ---- {first_file.name} ----\n".encode()
    assert first.startswith(header + first_file.read_bytes()[:100])
    # A smaller cap is a prefix of a larger one: the order never changes.
    assert data.load_stdlib_corpus(1_000) == first[:1_000]


def test_default_corpus_rejects_non_positive_cap():
    with pytest.raises(ValueError, match="max_bytes"):
        data.load_stdlib_corpus(0)


def test_describe_stdlib_corpus_names_the_source():
    info = data.describe_stdlib_corpus(123)
    assert info["max_bytes"] == 123 and "standard library" in info["source"]


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


def test_val_fraction_must_be_a_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        data.prepare_lm_data(_ids(100), None, vocab_size=256, seq_len=SEQ_LEN, val_fraction=1.0)


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


def test_collate_rejects_float_and_two_dimensional_items():
    with pytest.raises(TypeError, match="1-D sequence of integer token ids"):
        data.collate_lm_batch([torch.rand(4)], pad_token_id=0)
    with pytest.raises(TypeError, match="1-D sequence of integer token ids"):
        data.collate_lm_batch([torch.zeros(2, 2, dtype=torch.long)], pad_token_id=0)


def test_collate_checks_the_vocabulary_when_given():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        data.collate_lm_batch([torch.tensor([1, 50])], pad_token_id=0, vocab_size=50)


# -- loaders ---------------------------------------------------------------------------------


def _order(loader):
    return [row[0].item() for batch in loader for row in batch["input_ids"]]


def test_loader_order_depends_only_on_seed():
    dataset = ListDataset([torch.tensor([i, i]) for i in range(32)])
    make = lambda seed: data.make_loader(dataset, 4, shuffle=True, seed=seed, pad_token_id=0)  # noqa: E731
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
    make = lambda batch, rank, world: data.make_loader(  # noqa: E731
        dataset, batch, shuffle=True, seed=5, pad_token_id=0, rank=rank, world_size=world
    )
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
    shards = [data.make_loader(dataset, 2, shuffle=False, seed=0, pad_token_id=0, rank=r, world_size=2) for r in range(2)]
    seen = [[row[0] for b in loader for row in b["input_ids"].tolist()] for loader in shards]
    assert seen == [[0, 2, 4], [1, 3]]
