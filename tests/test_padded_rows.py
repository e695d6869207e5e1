"""Rows from a real Hugging Face tokenizer: padded or not, the same text trains and scores the same.

The tokenizer is a real ``transformers.PreTrainedTokenizerFast`` over a word-level
``tokenizers`` model trained here on the test sentences (nothing is downloaded).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from utils import models
from utils import tier3_training_utilities as tier3
from utils.training import data as lm_data

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park and the cat ran too",
    "my model learns to predict the next word",
    "padding must never be a target",
    "the park is green and the mat is red",
    "short one",
] * 4
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    word_level = Tokenizer(tok_models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]")


def _rows(encoding) -> list[dict]:
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoding["input_ids"], encoding["attention_mask"])
    ]


def _train(rows, **options):
    torch.manual_seed(0)
    model, config = models.tiny_gpt(vocab_size=64, max_seq_len=MAX_LENGTH, d_model=32, n_layers=2, n_heads=2)
    settings = dict(n_epochs=2, batch_size=4, learning_rate=3e-3, seed=0, progress=False, log_every=2)
    return tier3.test_fine_tuning(model, config, train_data=rows, val_data=rows, **{**settings, **options})


def test_the_tokenizer_really_pads(tokenizer):
    padded = tokenizer(SENTENCES, padding="max_length", max_length=MAX_LENGTH)
    pads = sum(mask.count(0) for mask in padded["attention_mask"])
    assert pads / (len(SENTENCES) * MAX_LENGTH) > 0.5  # most positions are padding: the case that went wrong


def test_padded_rows_train_and_score_exactly_like_the_same_text_unpadded(tokenizer):
    padded = _train(_rows(tokenizer(SENTENCES, padding="max_length", max_length=MAX_LENGTH)))
    unpadded = _train(_rows(tokenizer(SENTENCES)))
    assert padded["loss_history"] == pytest.approx(unpadded["loss_history"], rel=1e-6)
    assert padded["val_loss"] == pytest.approx(unpadded["val_loss"], rel=1e-6)
    assert padded["val_accuracy"] == pytest.approx(unpadded["val_accuracy"], rel=1e-6)


def test_a_padded_row_keeps_only_its_real_tokens():
    row = {"input_ids": [7, 8, 9, 0, 0], "attention_mask": [1, 1, 1, 0, 0]}
    assert lm_data.item_ids(row).tolist() == [7, 8, 9]
    left_padded = {"input_ids": torch.tensor([0, 0, 7, 8]), "attention_mask": torch.tensor([0, 0, 1, 1])}
    assert lm_data.item_ids(left_padded).tolist() == [7, 8]
    batch = lm_data.collate_lm_batch([row, {"input_ids": [5, 6]}], pad_token_id=0)
    assert batch["labels"].tolist() == [[7, 8, 9], [5, 6, -100]]  # the pad is never a target
    assert batch["n_targets"] == 3


def test_a_mask_of_another_shape_is_named():
    with pytest.raises(TypeError, match=r"attention_mask has shape \(2,\) but its input_ids \(3,\)"):
        lm_data.item_ids({"input_ids": [1, 2, 3], "attention_mask": [1, 1]})


@pytest.mark.parametrize("return_tensors", ["pt", None])
def test_a_batch_encoding_is_taken_as_its_rows(tokenizer, return_tensors):
    encoding = tokenizer(SENTENCES, padding="max_length", max_length=MAX_LENGTH, return_tensors=return_tensors)
    assert type(encoding).__name__ == "BatchEncoding" and not isinstance(encoding, dict)
    from_encoding = _train(encoding, max_steps=4)
    from_rows = _train(_rows(tokenizer(SENTENCES)), max_steps=4)
    assert from_encoding["loss_history"] == pytest.approx(from_rows["loss_history"], rel=1e-6)


def test_text_for_a_large_vocabulary_says_once_that_only_bytes_are_used():
    torch.manual_seed(0)
    model, config = models.tiny_gpt(vocab_size=32000, max_seq_len=16, d_model=16, n_layers=1, n_heads=2)
    with pytest.warns(UserWarning, match=r"only 256 of the model's 32000 token ids are used") as caught:
        tier3.test_fine_tuning(model, config, train_data=["some text " * 20], max_steps=1, batch_size=2, progress=False)
    assert sum("only 256" in str(w.message) for w in caught) == 1


def test_text_for_a_byte_vocabulary_is_not_warned_about(tiny_gpt):
    model, config = tiny_gpt
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        lm_data.prepare_lm_data(["some text " * 20], None, vocab_size=256, seq_len=16)
