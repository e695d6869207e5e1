"""What one data item is: text, token ids, or a tokenizer's row; and a tokenizer's batch as rows.

A row from a Hugging Face tokenizer (``{"input_ids": ..., "attention_mask": ...}``),
padded to a fixed length or not, trains exactly like the same text unpadded: its
``attention_mask`` decides which positions are real, so padding is never a target,
never scored, and the batch is padded again by the collate (with its own mask).

Example:
    >>> item_ids({"input_ids": [5, 6, 0, 0], "attention_mask": [1, 1, 0, 0]})
    tensor([5, 6])
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

import torch

ITEM_KINDS = "1-D integer token ids, a dict with 'input_ids', a string, or a dict with 'text'"


def rows_of_batch(data: Any) -> list[dict[str, Any]] | None:
    """A tokenizer's batch (a ``BatchEncoding`` or any mapping of equal-length columns) as one dict per row.

    None when ``data`` is not such a batch. ``tokenizer(texts, return_tensors="pt")`` and
    ``tokenizer(texts)`` (lists) both qualify; a row keeps ``input_ids`` and ``attention_mask``.
    """
    if not isinstance(data, Mapping) or "input_ids" not in data:
        return None
    ids = data["input_ids"]
    if not (ids.ndim == 2 if isinstance(ids, torch.Tensor) else _is_rows(ids)):
        return None
    masks = data.get("attention_mask")
    rows = []
    for index, row_ids in enumerate(ids):
        row = {"input_ids": row_ids}
        if masks is not None:
            row["attention_mask"] = masks[index]
        rows.append(row)
    return rows


def longest_item(data: Any) -> int | None:
    """The token count of the longest sequence in ``data``, for a config that names no ``max_seq_len``.

    Only for data whose items are token ids (a 2-D tensor, a list of id sequences or
    rows, a tokenizer's batch); None for text, files, streams or datasets, whose
    length the model must say.
    """
    rows = rows_of_batch(data)
    if rows is not None:
        data = rows
    if isinstance(data, torch.Tensor):
        return int(data.size(1)) if data.ndim == 2 and data.size(1) > 0 else None
    if not isinstance(data, (list, tuple)) or not data or is_text_item(data[0]):
        return None
    try:
        return max(item_ids(item).numel() for item in data)
    except TypeError:
        return None  # an unusable item: the data builder reports it, with its index


def _is_rows(ids: Any) -> bool:
    return isinstance(ids, (list, tuple)) and bool(ids) and all(isinstance(r, (list, tuple, torch.Tensor)) for r in ids)


def is_text_item(item: Any) -> bool:
    """A string, or a dict with 'text' (a Hugging Face row); a dict with 'input_ids' counts as ids."""
    return isinstance(item, str) or (isinstance(item, dict) and "text" in item and "input_ids" not in item)


def item_text(item: Any, arg: str, index: int) -> str:
    """The text of a text item, or a TypeError naming the item when it is not one."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and is_text_item(item):
        if isinstance(item["text"], str):
            return item["text"]
        raise TypeError(f"{arg} item {index} has a 'text' of type {type(item['text']).__name__}; pass it a string")
    raise TypeError(
        f"{arg} item {index} is {describe_item(item)}, but item 0 is text; pass every item as a string "
        "or a dict with a string 'text' (or every item as token ids)"
    )


def item_ids_of(item: Any, arg: str, index: int) -> torch.Tensor:
    """``item_ids`` with an error that names the argument and the item's index."""
    if is_text_item(item):  # only reached after item 0 was taken as ids
        raise TypeError(
            f"{arg} item {index} is text {describe_item(item)}, but item 0 is token ids; "
            "pass every item as token ids, or every item as text"
        )
    try:
        return item_ids(item)
    except TypeError as err:
        raise TypeError(f"{arg} item {index} is {describe_item(item)}; each item must be {ITEM_KINDS}") from err


def item_ids(item: Any) -> torch.Tensor:
    """One item's token ids as a 1-D long tensor; the item may be a dict with 'input_ids'."""
    ids = item.get("input_ids") if isinstance(item, dict) else item
    try:
        tensor = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):  # a string, None, ragged nesting: reported below
        tensor = None
    if tensor is None or tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(
            "each data item must be a 1-D sequence of integer token ids (or a dict with 'input_ids'), "
            f"got an item {describe_item(item)}"
        )
    return _without_padding(tensor.long(), item)


def _without_padding(ids: torch.Tensor, item: Any) -> torch.Tensor:
    """A row's real tokens: the positions its ``attention_mask`` marks, as if it had never been padded."""
    mask = item.get("attention_mask") if isinstance(item, dict) else None
    if mask is None:
        return ids
    mask = torch.as_tensor(mask)
    if mask.shape != ids.shape:
        raise TypeError(
            f"a data item's attention_mask has shape {tuple(mask.shape)} but its input_ids {tuple(ids.shape)}; "
            "pass the tokenizer's rows unchanged"
        )
    return ids[mask != 0]


def describe_item(item: Any) -> str:
    """A data item's type with its keys, shape or value, short enough for an error message."""
    if isinstance(item, dict):
        fields = ", ".join(f"{key!r}: {type(value).__name__}" for key, value in list(item.items())[:8])
        return f"of type dict (keys {fields or 'none'})"
    if hasattr(item, "shape") and hasattr(item, "dtype"):
        return f"of type {type(item).__name__} (shape {tuple(item.shape)}, dtype {item.dtype})"
    return f"of type {type(item).__name__} ({reprlib.repr(item)})"
