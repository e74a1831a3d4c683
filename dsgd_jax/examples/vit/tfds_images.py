"""CIFAR-10 and CIFAR-100, read from prepared tensorflow-datasets data.

Reading goes through ``tfds.data_source`` (random access to ``array_record`` files),
which needs neither TensorFlow nor a network; install it with
``pip install "dsgd-jax[tfds]"``. Nothing is downloaded here: prepare the data once
where a network is available, in the ``array_record`` format::

    tfds build cifar10 --file_format=array_record --data_dir=DIR

then pass ``data_dir=DIR``. The ``train`` and ``test`` splits (50,000 and 10,000 images
of 32x32x3 uint8, balanced) become an :class:`~dsgd_jax.examples.vit.tasks.ImageTask`;
CIFAR-100 uses its 100 fine labels. Class names come from the prepared data set's
``label`` feature. Images are decoded with Pillow (``pip install pillow``); preparing
the data (encoding) needs TensorFlow, reading it does not. tfds stores the examples
in its own shuffled order.
"""

from __future__ import annotations

import numpy as np

from dsgd_jax.examples import tfds_source
from dsgd_jax.examples.vit.tasks import ImageSet, ImageTask

__all__ = ["NUM_CLASSES", "load_tfds_images"]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
"""Supported tfds image data sets and their number of classes."""

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
"""CIFAR-10's class names (tfds knows them only once the data is prepared)."""


def _split(source, where: str) -> ImageSet:
    """Every example of one tfds data source (``image`` and ``label``) as an :class:`ImageSet`."""
    images, labels = [], []
    for i in range(len(source)):
        example = source[i]
        images.append(np.asarray(example["image"], dtype=np.uint8))
        labels.append(int(np.asarray(example["label"])))
    if not images:
        raise ValueError(f"{where} is empty (0 examples).")
    return ImageSet(np.stack(images), np.array(labels, dtype=np.int32))


def load_tfds_images(name: str, *, data_dir=None) -> ImageTask:
    """CIFAR-10 or CIFAR-100 (``name``) from prepared tfds data; see the module docstring.

    Args:
      name: ``"cifar10"`` or ``"cifar100"``.
      data_dir: the tfds ``data_dir`` holding the prepared data (None: tfds' default,
        ``~/tensorflow_datasets``).

    Raises:
      ValueError: ``name`` is not supported.
      ImportError: tensorflow-datasets (or its reader dependencies) is missing.
      FileNotFoundError: the data is not prepared under ``data_dir``; nothing is downloaded.
    """
    if name not in NUM_CLASSES:
        raise ValueError(f"Unknown tfds image data set {name!r}; supported: {sorted(NUM_CLASSES)}.")
    tfds = tfds_source.import_tfds()
    sources = tfds_source.open_splits(tfds, name, ["train", "test"], data_dir)
    names = list(tfds.builder(name, data_dir=data_dir).info.features["label"].names)
    if name == "cifar10" and names == [str(i) for i in range(10)]:
        names = list(CIFAR10_CLASSES)  # not prepared (mocked): tfds has no names yet
    train = _split(sources[0], f"{name} split 'train'")
    test = _split(sources[1], f"{name} split 'test'")
    return ImageTask(name, train, test, tuple(names))
