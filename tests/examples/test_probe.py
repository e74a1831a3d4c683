"""Frozen-feature linear probes (benchmarks/_lib/probe.py, benchmarks/frozen_probe.py)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _helpers import load_benchmark
from flax import nnx

from _lib import probe
from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.bert.model import BertClassifier, BertConfig
from dsgd_jax.examples.vit.config import ResizeInputs
from dsgd_jax.examples.vit.model import ViT, ViTConfig


def _objective_gradient(x, y, k, weights, bias, l2):
    """Gradient of mean CE + l2/2 ||W||^2 on standardised x, written out by hand."""
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    logits = z @ weights + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(k)[y]
    return z.T @ residual / len(x) + l2 * weights, residual.mean(0)


def test_probe_reaches_the_regularised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)) * [1.0, 5.0, 0.2, 1.0] + [0.0, 3.0, -1.0, 0.0]
    y = rng.integers(0, 3, size=60)
    predict = probe.fit_softmax_probe(x, y, 3, l2=0.1, tolerance=1e-9)
    grad_w, grad_b = _objective_gradient(x, y, 3, predict.weights, predict.bias, 0.1)
    assert np.abs(grad_w).max() < 1e-8 and np.abs(grad_b).max() < 1e-8
    assert predict.converged and predict.gradient < 1e-9  # stopped on the tolerance
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    np.testing.assert_array_equal(predict(x), (z @ predict.weights + predict.bias).argmax(1))


def test_probe_says_when_the_step_cap_stopped_it():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    predict = probe.fit_softmax_probe(x, y, 2, l2=0.1, max_steps=3)
    assert predict.steps == 3 and not predict.converged
    # The reported gradient is the one at the returned weights, written out by hand.
    grad_w, grad_b = _objective_gradient(x, y, 2, predict.weights, predict.bias, 0.1)
    assert predict.gradient == pytest.approx(max(np.abs(grad_w).max(), np.abs(grad_b).max()))
    assert predict.gradient > 1e-6


def test_probe_separates_linearly_separable_classes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 5))
    y = (x @ rng.normal(size=(5, 3))).argmax(1)  # classes are linear regions
    predict = probe.fit_softmax_probe(x, y, 3, l2=0.0, max_steps=20000)
    assert np.mean(predict(x) == y) == 1.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((0, 2)), np.zeros(0, int), 2), "features must be"),
        ((np.zeros((3, 2)), np.zeros(2, int), 2), "labels must be"),
        ((np.zeros((3, 2)), np.array([0, 1, 2]), 2), "num_classes-1 = 0..1"),
    ],
)
def test_probe_names_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        probe.fit_softmax_probe(*args)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"l2": -0.1}, "l2 must be >= 0, got -0.1"),
        ({"tolerance": 0.0}, "tolerance must be > 0, got 0.0"),
        ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
    ],
)
def test_probe_names_a_bad_option(option, match):
    with pytest.raises(ValueError, match=match):
        probe.fit_softmax_probe(np.zeros((3, 2)), np.array([0, 1, 0]), 2, **option)


def _bert_inputs(n=5, length=7):
    rng = np.random.default_rng(2)
    return {
        "input_ids": rng.integers(0, 100, size=(n, length)).astype(np.int32),
        "token_type_ids": np.zeros((n, length), np.int32),
        "attention_mask": np.ones((n, length), np.int32),
    }


def test_bert_head_input_is_the_pooler_output():
    model = BertClassifier(BertConfig.preset("tiny"), 3, rngs=nnx.Rngs(0))
    inputs = _bert_inputs()
    reps = probe.frozen_representations(model, inputs, batch_size=2)  # 3 batches, last short
    cls = np.asarray(model.features({k: jax.numpy.asarray(v) for k, v in inputs.items()}))
    np.testing.assert_allclose(reps["features"], cls, rtol=1e-6, atol=1e-6)
    kernel = np.asarray(model.pooler.kernel[...], np.float64)
    bias = np.asarray(model.pooler.bias[...], np.float64)
    np.testing.assert_allclose(reps["head_input"], np.tanh(cls @ kernel + bias), atol=1e-5)
    assert isinstance(model.classifier, nnx.Linear)  # the caller's model keeps its head


def test_vit_head_input_is_the_encoder_norm_output():
    model = ResizeInputs(ViT(ViTConfig.preset("tiny"), 4, rngs=nnx.Rngs(0)))
    images = np.random.default_rng(3).uniform(size=(3, 14, 14, 1)).astype(np.float32)
    reps = probe.frozen_representations(model, {"image": images})
    x = reps["features"]
    norm = model.model.encoder_norm
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-6) * np.asarray(norm.scale[...]) + np.asarray(
        norm.bias[...]
    )
    np.testing.assert_allclose(reps["head_input"], want, atol=1e-4)
    assert isinstance(model.model.head, nnx.Linear)


def test_frozen_representations_names_a_model_without_a_head_split():
    with pytest.raises(ValueError, match="features, classify, head_name"):
        probe.frozen_representations(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {"x": np.zeros((1, 2))})


def test_frozen_probe_script_on_the_tiny_bert(tmp_path, capsys):
    out = tmp_path / "probe.json"
    script = load_benchmark("frozen_probe")
    argv = ["--example=bert", "--model=tiny", "--task=synthetic", f"--out={out}"]
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    data = BertExampleConfig(model="tiny", task="synthetic").load_data()
    train, test = np.asarray(data.train.labels), np.asarray(data.test.labels)
    majority = np.bincount(train).argmax()
    assert report["majority_rate"] == pytest.approx(np.mean(test == majority))
    assert report["majority_class"] == data.class_names[majority]
    assert set(report["probes"]) == {"features", "head_input"}
    for result in report["probes"].values():
        assert sum(result["test_prediction_counts"].values()) == len(test)
        assert 0.0 <= result["test_accuracy"] <= 1.0
        assert result["converged"] and result["final_gradient"] < 1e-6
    printed = capsys.readouterr().out
    assert "majority class" in printed and "warning" not in printed
    # Capped at one step, the probes stop short, and the script says so.
    assert script.main([*argv, "--max_steps=1"]) == 0
    report = json.loads(out.read_text())
    assert not any(result["converged"] for result in report["probes"].values())
    assert capsys.readouterr().out.count("stopped after 1 iterations") == 2


def test_frozen_probe_script_names_a_bad_setting(tmp_path, capsys):
    script = load_benchmark("frozen_probe")
    argv = ["--example=bert", "--model=tiny", "--task=synthetic", "--max_length=100000",
            f"--out={tmp_path / 'probe.json'}"]  # fmt: skip
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("python benchmarks/frozen_probe.py: error: ") and "max_length=100000" in err
    )
    assert not (tmp_path / "probe.json").exists()
    with pytest.raises(SystemExit) as e:
        script.main(["--example=gpt"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--example='gpt' is not one of bert, vit" in err, err
