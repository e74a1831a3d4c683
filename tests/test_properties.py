"""Property-based tests: random shapes, masks and scales against NumPy's closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _helpers import np_log_softmax
from hypothesis import given
from hypothesis import strategies as st

import dsgd_jax

SOFTMAX = dsgd_jax.make_dsgd_loss(
    optax.losses.softmax_cross_entropy_with_integer_labels, has_aux=True
)
SIGMOID = dsgd_jax.make_dsgd_loss(
    optax.losses.sigmoid_binary_cross_entropy, dsgd_jax.sigmoid_correct, has_aux=True
)

cases = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 12),
        "classes": st.integers(2, 6),
        "seed": st.integers(0, 2**31 - 1),
        "scale": st.floats(0.0, 1.0, allow_nan=False),
        "valid_rate": st.sampled_from([0.0, 0.3, 0.7, 1.0]),
        "logit_scale": st.sampled_from([0.1, 1.0, 10.0, 100.0]),
    }
)


def _draw(case, label_shape_fn):
    rng = np.random.default_rng(case["seed"])
    b, c = case["batch"], case["classes"]
    logits = (case["logit_scale"] * rng.normal(size=(b, c))).astype(np.float32)
    labels = label_shape_fn(rng, b, c)
    valid = rng.random(b) < case["valid_rate"]
    return logits, labels, valid


def _check_common(value, aux, valid, scale):
    assert np.isfinite(float(value))
    weights = np.asarray(aux.weights)[valid]
    lo, hi = min(scale, 1.0), max(scale, 1.0)
    assert np.all((weights >= np.float32(lo)) & (weights <= np.float32(hi)))
    assert np.all(np.asarray(aux.weights)[~valid] == 0)


@given(cases)
def test_softmax_gradient_matches_closed_form(case):
    logits, labels, valid = _draw(
        case, lambda rng, b, c: rng.integers(0, c, size=b).astype(np.int32)
    )
    scale = case["scale"]

    def objective(z):
        return SOFTMAX(z, labels, scale=scale, where=jnp.asarray(valid))

    (value, aux), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(jnp.asarray(logits))
    _check_common(value, aux, valid, scale)

    # reference: d/dz_i of w_i * CE_i / n is w_i * (softmax(z_i) - onehot(y_i)) / n
    n = max(valid.sum(), 1)
    probs = np.exp(np_log_softmax(logits))
    correct = logits.argmax(-1) == labels
    w = np.where(correct, scale, 1.0) * valid
    expected = w[:, None] * (probs - np.eye(logits.shape[1])[labels]) / n
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    ce = -np.take_along_axis(np_log_softmax(logits), labels[:, None], -1)[:, 0]
    np.testing.assert_allclose(value, (w * ce).sum() / n, rtol=1e-5, atol=1e-6)


@given(cases)
def test_sigmoid_multilabel_gradient_matches_closed_form(case):
    logits, labels, valid = _draw(
        case, lambda rng, b, c: (rng.random((b, c)) > 0.5).astype(np.float32)
    )
    scale = case["scale"]

    def objective(z):
        return SIGMOID(z, labels, scale=scale, where=jnp.asarray(valid))

    (value, aux), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(jnp.asarray(logits))
    valid_entries = np.repeat(valid[:, None], logits.shape[1], axis=1)
    _check_common(value, aux, valid_entries, scale)

    n = max(valid_entries.sum(), 1)
    z = logits.astype(np.float64)
    sig = 1.0 / (1.0 + np.exp(-z))
    correct = (logits > 0) == (labels > 0.5)
    w = np.where(correct, scale, 1.0) * valid_entries
    np.testing.assert_allclose(grad, w * (sig - labels) / n, rtol=1e-4, atol=1e-6)
