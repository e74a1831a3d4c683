"""The correctness predicates against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import dsgd_jax


def test_argmax_correct_integer_onehot_and_soft_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=32)
    expected = logits.argmax(-1) == labels
    assert 0 < expected.sum() < 32
    got_int = jax.jit(dsgd_jax.argmax_correct)(logits, labels.astype(np.int32))
    np.testing.assert_array_equal(got_int, expected)
    assert got_int.dtype == jnp.bool_
    onehot = np.eye(5, dtype=np.float32)[labels]
    np.testing.assert_array_equal(dsgd_jax.argmax_correct(logits, onehot), expected)
    soft = 0.7 * onehot + 0.3 / 5  # label smoothing keeps the argmax
    np.testing.assert_array_equal(dsgd_jax.argmax_correct(logits, soft), expected)
    np.testing.assert_array_equal(
        dsgd_jax.argmax_correct(logits, labels.astype(np.uint8)), expected
    )


def test_argmax_correct_other_axis_and_batch_shapes():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 6)).astype(np.float32)  # classes on axis 1
    labels = rng.integers(0, 3, size=(4, 6)).astype(np.int32)
    np.testing.assert_array_equal(
        dsgd_jax.argmax_correct(logits, labels, axis=1), logits.argmax(1) == labels
    )


def test_sigmoid_correct_binary_and_multilabel():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 4)).astype(np.float32)
    labels = (rng.random((16, 4)) > 0.5).astype(np.float32)
    expected = (logits > 0) == (labels > 0.5)
    np.testing.assert_array_equal(jax.jit(dsgd_jax.sigmoid_correct)(logits, labels), expected)
    np.testing.assert_array_equal(dsgd_jax.sigmoid_correct(logits, labels > 0.5), expected)
    np.testing.assert_array_equal(
        dsgd_jax.sigmoid_correct(logits[:, 0], labels[:, 0]), expected[:, 0]
    )


def test_predicates_pass_no_gradient():
    logits = jnp.array([[1.0, 2.0], [3.0, -1.0]])

    def f(z):
        c = dsgd_jax.argmax_correct(z, jnp.array([1, 1]))
        s = dsgd_jax.sigmoid_correct(z, jnp.ones((2, 2)))
        return jnp.sum(dsgd_jax.dsgd_weights(c, 0.5)) + jnp.sum(dsgd_jax.dsgd_weights(s, 0.5))

    np.testing.assert_array_equal(jax.grad(f)(logits), np.zeros((2, 2)))
