"""The BERT example's task types: raw text splits and a text classification task.

The loaders of :mod:`dsgd_jax.examples.bert.data` and
:mod:`dsgd_jax.examples.bert.tfds_tasks` return a :class:`TextTask`;
``tokenization.tokenize_task`` turns it into the
:class:`~dsgd_jax.examples.data.TaskData` the training loop reads.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dsgd_jax.examples.data import ClassificationTask

__all__ = ["TextSplit", "TextTask"]


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit:
    """One split of raw text: ``text[i]`` (and ``text_pair[i]``) has label ``labels[i]``."""

    text: tuple[str, ...]
    labels: np.ndarray
    text_pair: tuple[str, ...] | None = None

    def __post_init__(self):
        text = tuple(self.text)
        labels = np.asarray(self.labels)
        if not text:
            raise ValueError("The dataset is empty (0 examples): check the source and its filters.")
        if not all(isinstance(t, str) for t in text):
            raise TypeError("text must hold strings (decode bytes first).")
        if labels.shape != (len(text),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be {len(text)} integers (one per text), got dtype {labels.dtype} "
                f"and shape {labels.shape}."
            )
        if self.text_pair is not None:
            pair = tuple(self.text_pair)
            if len(pair) != len(text) or not all(isinstance(t, str) for t in pair):
                raise ValueError(f"text_pair must hold {len(text)} strings, like text.")
            object.__setattr__(self, "text_pair", pair)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "labels", labels.astype(np.int32))

    def __len__(self) -> int:
        return len(self.text)


@dataclasses.dataclass(frozen=True, eq=False)
class TextTask(ClassificationTask):
    """A text classification task: train and test :class:`TextSplit` and class names."""

    name: str
    train: TextSplit
    test: TextSplit
    class_names: tuple[str, ...]

    def __post_init__(self):
        self._check_classes(f"{self.name}: ")
        if (self.train.text_pair is None) != (self.test.text_pair is None):
            raise ValueError(f"{self.name}: train and test must both have text_pair, or neither.")

    @property
    def is_pair(self) -> bool:
        """Whether each example has two segments (``text`` and ``text_pair``)."""
        return self.train.text_pair is not None
