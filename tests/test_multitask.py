"""Several tasks in one batch, one head per task: the DSGD gradient of the whole batch
against a two-pass reference (the paper's Appendix F)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dsgd_jax

CE = optax.losses.softmax_cross_entropy_with_integer_labels


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "encoder": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
        "heads": [
            jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),  # task 0: 3 classes
            jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),  # task 1: 2 classes
        ],
    }


def _batch(seed=1):
    rng = np.random.default_rng(seed)
    task = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    labels = np.array([rng.integers(3) if t == 0 else rng.integers(2) for t in task])
    valid = np.array([True] * 7 + [False])  # the last row is padding
    return rng.normal(size=(8, 4)).astype(np.float32), labels, task, valid


def _dsgd_loss(params, x, labels, task, valid, scale):
    """The doctested pattern of :func:`dsgd_jax.scaled_mean`: each row's loss and flag
    under its own task's head, one reduction over the batch."""
    h = jnp.tanh(x @ params["encoder"])
    losses, correct = 0.0, False
    for k, head in enumerate(params["heads"]):
        own = task == k
        y = jnp.where(own, labels, 0)
        logits = h @ head
        losses = losses + jnp.where(own, CE(logits, y), 0.0)
        correct = correct | (dsgd_jax.argmax_correct(logits, y) & own)
    return dsgd_jax.scaled_mean(losses, correct, scale, where=valid)


def _reference(params, x, labels, task, valid, scale):
    """Two passes: the gradient of the wrong rows' summed losses and of the correct rows'
    (each row under its own head, rows picked by index), then (g_W + scale g_C) / n."""

    def row_loss(p, i):
        h = jnp.tanh(x[i] @ p["encoder"])
        return CE(h @ p["heads"][task[i]], labels[i])

    rows = [i for i in range(len(x)) if valid[i]]
    h = np.tanh(x @ np.asarray(params["encoder"]))
    right = [i for i in rows if np.argmax(h[i] @ np.asarray(params["heads"][task[i]])) == labels[i]]
    wrong = [i for i in rows if i not in right]
    assert right and wrong  # both groups present, so both passes matter

    def summed(p, group):
        return sum(row_loss(p, i) for i in group)

    g_wrong = jax.grad(summed)(params, wrong)
    g_right = jax.grad(summed)(params, right)
    return jax.tree.map(lambda w, c: (w + scale * c) / len(rows), g_wrong, g_right)


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_two_task_dsgd_gradient_equals_the_two_pass_reference(scale):
    params, batch = _params(), _batch()
    got = jax.jit(jax.grad(_dsgd_loss))(params, *batch, scale)
    want = _reference(params, *batch, scale)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # The padded row's label never reaches the gradient, even one that fits no head.
    x, labels, task, valid = batch
    odd = labels.copy()
    odd[7] = 99  # padding
    again = jax.jit(jax.grad(_dsgd_loss))(params, x, odd, task, valid, scale)
    for g, w in zip(jax.tree.leaves(again), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(g, w)
