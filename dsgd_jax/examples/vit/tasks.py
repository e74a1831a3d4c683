"""The ViT example's task types: labelled images and an image classification task.

The loaders of :mod:`dsgd_jax.examples.vit.data` and
:mod:`dsgd_jax.examples.vit.tfds_images` return an :class:`ImageTask`;
:func:`~dsgd_jax.examples.vit.data.to_task_data` turns it into the
:class:`~dsgd_jax.examples.data.TaskData` the training loop reads.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dsgd_jax.examples.data import ClassificationTask

__all__ = ["ImageSet", "ImageTask"]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images: ``images[i]`` (``[H, W]`` grey or ``[H, W, C]``) has label ``labels[i]``."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.ndim not in (3, 4) or not np.issubdtype(images.dtype, np.number):
            raise ValueError(f"images must be numeric [N, H, W] or [N, H, W, C]: {images.shape}.")
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be {images.shape[0]} integers (one class index per image), got "
                f"dtype {labels.dtype} and shape {labels.shape}."
            )
        if labels.size == 0:
            raise ValueError("The image set is empty (0 examples): check the source and splits.")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32))

    def __len__(self) -> int:
        return int(self.labels.size)

    def take(self, index: np.ndarray) -> ImageSet:
        """The examples at ``index`` (an integer array), as a new set."""
        return ImageSet(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTask(ClassificationTask):
    """An image classification task: train and test :class:`ImageSet` and class names.

    ``max_value`` is the largest possible pixel value (255, or 16 for ``digits``):
    :func:`to_task_data` divides by it to scale images to ``[0, 1]``.
    """

    name: str
    train: ImageSet
    test: ImageSet
    class_names: tuple[str, ...]
    max_value: float = 255.0

    def __post_init__(self):
        self._check_classes(f"{self.name}: ")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images are {self.train.images.shape[1:]} but test images "
                f"are {self.test.images.shape[1:]}; they must have the same shape."
            )
