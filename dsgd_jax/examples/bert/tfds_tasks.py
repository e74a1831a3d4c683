"""The paper's GLUE and SuperGLUE tasks, read from prepared tensorflow-datasets data.

Reading goes through ``tfds.data_source`` (random access to ``array_record``
files), which needs neither TensorFlow nor a network; install it with
``pip install "dsgd-jax[tfds]"``. Nothing is downloaded here: prepare the data once
where a network is available, in the ``array_record`` format::

    tfds build glue/rte --file_format=array_record --data_dir=DIR

then pass ``data_dir=DIR``. Each task becomes a
:class:`~dsgd_jax.examples.bert.tasks.TextTask` with ``text`` / ``text_pair``:

- ``glue/rte``, ``glue/mrpc``: sentence1 / sentence2.
- ``glue/cola``: sentence / none.
- ``super_glue/boolq``: question / passage.
- ``super_glue/copa``: "{premise} What was the {question}?" / "{choice1} or {choice2}".
- ``super_glue/multirc``: paragraph / "{question} {answer}".

COPA's label says which choice is right (classes ``choice1``, ``choice2``). Class
names come from the tfds ``label`` feature, e.g. ``("entailment", "not_entailment")``.
GLUE test splits have no labels, hence the default ``test_split="validation"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from collections.abc import Callable, Mapping

import numpy as np

from dsgd_jax.examples import tfds_source
from dsgd_jax.examples.bert.tasks import TextSplit, TextTask

__all__ = ["TASKS", "load_tfds"]

_Format = Callable[[Mapping[str, str]], tuple[str, str | None]]

TASKS: dict[str, _Format] = {
    "glue/rte": lambda ex: (ex["sentence1"], ex["sentence2"]),
    "glue/mrpc": lambda ex: (ex["sentence1"], ex["sentence2"]),
    "glue/cola": lambda ex: (ex["sentence"], None),
    "super_glue/boolq": lambda ex: (ex["question"], ex["passage"]),
    "super_glue/copa": lambda ex: (
        f"{ex['premise']} What was the {ex['question']}?",
        f"{ex['choice1']} or {ex['choice2']}",
    ),
    "super_glue/multirc": lambda ex: (ex["paragraph"], f"{ex['question']} {ex['answer']}"),
}
"""Supported task names, each with its ``example -> (text, text_pair)`` formatting."""


def _import_tfds(family: str):
    """``tensorflow_datasets``, with the builder module of ``family`` registered."""
    tfds = tfds_source.import_tfds()

    # TFDS imports its dataset builders lazily: import GLUE's or SuperGLUE's to register it.
    try:
        builders = importlib.import_module(f"tensorflow_datasets.text.{family}")
    except ImportError:  # moved in another tfds version: leave the lookup to tfds
        return tfds
    if family == "super_glue" and importlib.util.find_spec("tensorflow") is None:
        # SuperGLUE's feature spec names `tf.int32` (its only TensorFlow use), which
        # fails without TensorFlow; NumPy's int32 is the same dtype to tfds.
        builders.tf = types.SimpleNamespace(int32=np.int32)
    return tfds


def _text(value) -> str:
    """A tfds text feature (``str``, ``bytes`` or a 0-d array of either) as ``str``."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _split(source, fmt: _Format, where: str) -> TextSplit:
    """Every example of one tfds data source, formatted as a :class:`TextSplit`."""
    text, pair, labels = [], [], []
    for i in range(len(source)):
        example = source[i]
        label = int(np.asarray(example["label"]))
        if label < 0:
            raise ValueError(
                f"{where} has no labels (label -1 at index {i}): GLUE / SuperGLUE test splits "
                "are unlabelled; evaluate on test_split='validation'."
            )
        first, second = fmt({k: _text(v) for k, v in example.items() if k not in ("idx", "label")})
        text.append(first)
        pair.append(second)
        labels.append(label)
    pair = tuple(pair) if pair and pair[0] is not None else None
    return TextSplit(tuple(text), np.array(labels, dtype=np.int32), pair)


def load_tfds(
    name: str, *, data_dir=None, train_split: str = "train", test_split: str = "validation"
) -> TextTask:
    """A GLUE / SuperGLUE task from prepared tfds data; see the module docstring.

    Args:
      name: one of :data:`TASKS` (``"glue/rte"``, ``"super_glue/boolq"``...).
      data_dir: the tfds ``data_dir`` holding the prepared data (None: tfds' default,
        ``~/tensorflow_datasets``).
      train_split, test_split: tfds split names (slices such as ``"train[:10%]"`` work).

    Raises:
      ValueError: ``name`` is not supported.
      ImportError: tensorflow-datasets (or its reader dependencies) is missing.
      FileNotFoundError: the data is not prepared under ``data_dir``; nothing is
        downloaded.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown tfds task {name!r}; supported: {sorted(TASKS)}.")
    tfds = _import_tfds(name.split("/")[0])
    sources = tfds_source.open_splits(tfds, name, [train_split, test_split], data_dir)
    label = tfds.builder(name, data_dir=data_dir).info.features["label"]
    names = getattr(label, "names", None) or ["0", "1"]
    fmt = TASKS[name]
    train = _split(sources[0], fmt, f"{name} split {train_split!r}")
    test = _split(sources[1], fmt, f"{name} split {test_split!r}")
    return TextTask(name.replace("/", "-"), train, test, tuple(names))
