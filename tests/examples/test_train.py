"""The shared fine-tuning loop on a toy model: logging, lambda, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _toy import ToyConfig, saved_tree
from _toy import config as _config

from dsgd_jax.examples import checkpoint
from dsgd_jax.examples import metrics as metrics_lib
from dsgd_jax.examples.data import ArraySplit, batches
from dsgd_jax.examples.train import train_and_evaluate


def _records(workdir, kind):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_every_step_logged_with_lambda_on_the_linear_ramp(tmp_path):
    summary = train_and_evaluate(_config(), tmp_path)
    steps = _records(tmp_path, "step")
    # 50 examples in batches of 8: 7 steps per epoch, 14 updates in all.
    assert [r["step"] for r in steps] == list(range(1, 15))
    # lambda at step s is read before the update: t = s - 1, T = 14.
    np.testing.assert_allclose([r["lambda"] for r in steps], np.arange(14) / 14, rtol=1e-6)
    assert all(0.0 <= r["fraction_correct"] <= 1.0 for r in steps)
    epochs = _records(tmp_path, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert summary["finished"] and summary["epochs"] == 2
    # The summary's accuracy is what its own predictions give on the test labels.
    labels = ToyConfig().load_data().test.labels
    predictions = np.array(summary["predictions"])
    assert summary["accuracy"] == pytest.approx(np.mean(predictions == labels))
    assert summary["num_params"] == 4 * 16 + 16 + 16 * 3 + 3
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"] == summary["accuracy"]


def test_fft_keeps_lambda_at_one(tmp_path):
    train_and_evaluate(_config(method="fft"), tmp_path)
    assert {r["lambda"] for r in _records(tmp_path, "step")} == {1.0}


def test_accumulation_counts_lambda_per_update(tmp_path):
    train_and_evaluate(_config(grad_accum_steps=2), tmp_path)
    lam = [r["lambda"] for r in _records(tmp_path, "step")]
    # 14 micro-batches, 7 updates: lambda = floor((s - 1) / 2) / 7, constant per window.
    expected = (np.arange(14) // 2) / 7
    np.testing.assert_allclose(lam, expected, rtol=1e-6)


def test_conflict_records(tmp_path):
    train_and_evaluate(_config(conflict_every=5, num_epochs=1), tmp_path)
    conflicts = _records(tmp_path, "conflict")
    assert [r["step"] for r in conflicts] == [5]
    assert -1.0 <= conflicts[0]["cosine"] <= 1.0
    assert conflicts[0]["wrong_norm"] >= 0.0


@pytest.mark.parametrize("accum", [1, 2])
def test_stopped_and_resumed_run_is_bitwise_identical(tmp_path, accum):
    config = _config(num_epochs=3, grad_accum_steps=accum)
    full = train_and_evaluate(config, tmp_path / "full")
    first = train_and_evaluate(dataclasses.replace(config, stop_after_epochs=1), tmp_path / "split")
    assert not first["finished"] and first["epochs"] == 1
    resumed = train_and_evaluate(dataclasses.replace(config, resume=True), tmp_path / "split")
    assert resumed["finished"]
    a, b = saved_tree(tmp_path / "full", 3), saved_tree(tmp_path / "split", 3)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert resumed["predictions"] == full["predictions"]
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == full_log


def test_latest_model_tree_reads_the_newest_epoch_quietly(tmp_path, caplog):
    train_and_evaluate(_config(num_epochs=2), tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tree = checkpoint.latest_model_tree(tmp_path / "checkpoints")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # The newest epoch (2), read back the way orbax saved it; epoch 1 differs.
    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    raw = [manager.restore(e, args=ocp.args.StandardRestore())["model"] for e in (1, 2)]
    manager.close()
    expected = jax.tree.leaves(raw[1])
    assert len(jax.tree.leaves(tree)) == len(expected) > 0
    for x, y in zip(jax.tree.leaves(tree), expected, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(raw[0]), expected, strict=True)
    )
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        checkpoint.latest_model_tree(tmp_path / "empty")


def test_existing_run_needs_resume(tmp_path):
    train_and_evaluate(_config(num_epochs=1), tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(_config(num_epochs=1), tmp_path)
    with pytest.raises(ValueError, match=r"learning_rate: 0.01 -> 0.02"):
        train_and_evaluate(_config(num_epochs=1, learning_rate=2e-2, resume=True), tmp_path)


def test_nan_loss_stops_training_without_a_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="--learning_rate"):
        train_and_evaluate(_config(poison=True), tmp_path)
    assert not list((tmp_path / "checkpoints").iterdir())
    log = tmp_path / "metrics.jsonl"
    assert "NaN" not in (log.read_text() if log.exists() else "")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"method": "sgd"}, r"method='sgd' is unknown; choose one of \('fft', 'dsgd', 'focal', "),
        ({"scaler": "exp"}, "scaler='exp' is unknown"),
        ({"beta": 1.5}, "beta must be in"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"grad_accum_steps": 100}, "grad_accum_steps=100 exceeds"),
    ],
)
def test_bad_settings(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(_config(**overrides), tmp_path)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ArraySplit({"x": np.zeros((0, 4))}, np.zeros(0, np.int32))


def test_batches_pad_the_last_batch_and_cover_every_example():
    split = ArraySplit({"x": np.arange(10.0)[:, None]}, np.arange(10) % 2)
    order = np.random.default_rng(0).permutation(10)
    seen = []
    for inputs, labels, valid in batches(split, 4, order=order):
        assert inputs["x"].shape == (4, 1) and labels.shape == valid.shape == (4,)
        seen.extend(inputs["x"][valid, 0].tolist())
    assert seen == order.astype(float).tolist()


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 0, 0])
    m = metrics_lib.classification_metrics(labels, predictions, ["x", "y", "z"])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # x: precision 2/4, recall 2/3 -> F1 4/7; y: precision 1/2, recall 1/2 -> 1/2; z: 0.
    assert m["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)
    assert m["per_class_recall"] == pytest.approx({"x": 2 / 3, "y": 1 / 2, "z": 0.0})
    assert m["top_class"] == "x" and m["top_share"] == pytest.approx(4 / 6)
    # 3 right of 6 equals the majority rate (3 of the labels are x): failed, not collapsed.
    assert m["majority_rate"] == pytest.approx(3 / 6)
    assert m["failed"] and not m["collapsed"] and not m["mostly_one_class"]
    collapsed = metrics_lib.classification_metrics(labels, np.zeros(6, int), ["x", "y", "z"])
    assert collapsed["collapsed"] and collapsed["failed"] and collapsed["mostly_one_class"]
    assert collapsed["macro_f1"] == pytest.approx((2 * 0.5 / 1.5) / 3)
    better = metrics_lib.classification_metrics(labels, np.array([0, 0, 0, 1, 0, 0]), "xyz")
    assert not better["failed"] and not better["collapsed"]  # 4 right of 6 beats 3 of 6


@pytest.mark.parametrize(
    ("labels", "predictions", "expected"),
    [
        # (collapsed, failed, mostly_one_class at 0.95)
        ([0] * 19 + [1], [0] * 20, (True, True, True)),  # one class for every input
        ([0] * 19 + [1], [0] * 19 + [1], (False, False, True)),  # perfect, yet 95% class 0
        ([0] * 10 + [1] * 10, [1] * 19 + [0], (False, True, True)),  # 9 right of 20 < 10
        ([0] * 10 + [1] * 10, [0] * 10 + [0] * 5 + [1] * 5, (False, False, False)),  # 15 > 10
        ([0] * 6 + [1] * 4, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0], (False, True, False)),  # 0 right
    ],
)
def test_failure_flags_on_hand_made_predictions(labels, predictions, expected):
    flags = metrics_lib.failure_flags(np.array(labels), np.array(predictions))
    assert (flags["collapsed"], flags["failed"], flags["mostly_one_class"]) == expected


def test_failure_flags_reject_bad_shapes():
    with pytest.raises(ValueError, match="same non-empty"):
        metrics_lib.failure_flags(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="one_class_share"):
        metrics_lib.failure_flags(np.array([0]), np.array([0]), one_class_share=0)


def test_mean_pairwise_cosine_against_every_pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    x[3] = 0.0  # a zero row counts as orthogonal to the others
    pairs = [
        0.0 if i == 3 or j == 3 else x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        for i in range(7)
        for j in range(7)
        if i != j
    ]
    assert metrics_lib.mean_pairwise_cosine(x) == pytest.approx(np.mean(pairs), abs=1e-12)
    same = np.tile(rng.normal(size=(1, 5)), (4, 1)) * np.array([[1.0], [2.0], [3.0], [0.5]])
    assert metrics_lib.mean_pairwise_cosine(same) == pytest.approx(1.0)


def test_conflict_logging_does_not_change_training(tmp_path):
    plain = train_and_evaluate(_config(), tmp_path / "plain")
    traced = train_and_evaluate(_config(conflict_every=2), tmp_path / "traced")
    assert _records(tmp_path / "traced", "conflict")
    assert traced["predictions"] == plain["predictions"]
    for x, y in zip(
        jax.tree.leaves(saved_tree(tmp_path / "plain", 2)),
        jax.tree.leaves(saved_tree(tmp_path / "traced", 2)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


class _Step:
    """A fake step output that records when the loop waits for it."""

    def __init__(self, index, waited):
        self.index, self.waited = index, waited

    def block_until_ready(self):
        self.waited.append(self.index)
        return self


class _Bar:
    def __init__(self, waited):
        self.n, self.waited, self.seen = 0, waited, []

    def update(self, k):
        self.n += k
        self.seen.append(list(self.waited))


def test_progress_counts_completed_steps_with_one_in_flight():
    from dsgd_jax.examples.loop import CompletedSteps

    waited: list[int] = []
    bar = _Bar(waited)
    done = CompletedSteps(bar)
    for i in range(5):
        done.dispatched({"loss": _Step(i, waited)})
        # The bar stands at the steps before the newest: that one may still run.
        assert bar.n == i and waited == list(range(i))
    done.finish()
    assert bar.n == 5 and waited == [0, 1, 2, 3, 4]
    # Each advance came after the step it counts was waited for.
    assert bar.seen == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    done.finish()  # nothing in flight: no more advances
    assert bar.n == 5


def test_progress_bar_of_a_real_run_ends_at_the_epochs_steps(tmp_path, monkeypatch):
    from dsgd_jax.examples import loop

    bars = []

    class Recording:
        def __init__(self, config, total, epoch, show=True):
            self.total, self.n = total, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            self.n += k

        def set_postfix(self, **kwargs):
            pass

    monkeypatch.setattr(loop, "progress_bar", Recording)
    config = _config(num_epochs=2)
    train_and_evaluate(config, tmp_path / "run")
    assert [b.n for b in bars] == [b.total for b in bars] and len(bars) == 2
    assert bars[0].total > 1
