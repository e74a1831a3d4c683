"""The DSGD loss against two-pass gradients, hand-computed values and NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import (
    init_mlp,
    mlp,
    np_sigmoid_bce,
    np_softmax_ce,
    standard_promotion,
    two_pass_grad,
)
from absl.testing import parameterized

import dsgd_jax

B, D, C = 24, 5, 3


def _problem(kind: str, seed: int = 0):
    """An MLP, a batch and the plain per-example loss of one label format."""
    k_p, k_x, k_y, k_m = jax.random.split(jax.random.key(seed), 4)
    params = init_mlp(k_p, (D, 16, C))
    x = jax.random.normal(k_x, (B, D))
    y = jax.random.randint(k_y, (B,), 0, C)
    where = None
    if kind in ("int", "int_masked"):
        labels, plain = y, optax.losses.softmax_cross_entropy_with_integer_labels
        correct_fn = dsgd_jax.argmax_correct
    elif kind == "onehot":
        labels, plain = jax.nn.one_hot(y, C), optax.losses.softmax_cross_entropy
        correct_fn = dsgd_jax.argmax_correct
    elif kind in ("sigmoid", "sigmoid_masked"):
        labels = jax.random.bernoulli(k_y, 0.5, (B, C)).astype(jnp.float32)
        plain, correct_fn = optax.losses.sigmoid_binary_cross_entropy, dsgd_jax.sigmoid_correct
    else:
        raise AssertionError(kind)
    if kind == "int_masked":
        where = jax.random.bernoulli(k_m, 0.7, (B,))
    if kind == "sigmoid_masked":  # one flag per example for a per-entry loss
        where = jax.random.bernoulli(k_m, 0.7, (B,))
    return params, x, labels, plain, correct_fn, where


def _np_correct(kind, logits, labels):
    logits = np.asarray(logits)
    if kind.startswith("sigmoid"):
        return (logits > 0) == (np.asarray(labels) > 0.5)
    target = np.asarray(labels)
    if target.ndim == logits.ndim:
        target = target.argmax(-1)
    return logits.argmax(-1) == target


class GradientContract(chex.TestCase):
    """The DSGD gradient against the two-pass reference, eagerly, under ``jit`` and under
    ``pmap`` (each device computing the same batch's gradient)."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    @parameterized.product(
        kind=["int", "onehot", "sigmoid", "int_masked", "sigmoid_masked"],
        scale=[0.0, 0.3, 1.0],
    )
    def test_gradient_equals_two_pass_reference(self, kind, scale):
        params, x, labels, plain, correct_fn, where = _problem(kind)
        dsgd_loss = dsgd_jax.make_dsgd_loss(plain, correct_fn)

        @self.variant
        def grad_fn(p, scale):
            return jax.grad(lambda p: dsgd_loss(mlp(p, x), labels, scale=scale, where=where))(p)

        logits = mlp(params, x)
        correct = _np_correct(kind, logits, labels)
        valid = np.ones(correct.shape, bool)
        if where is not None:
            valid = np.broadcast_to(
                np.asarray(where).reshape(B, *([1] * (correct.ndim - 1))), valid.shape
            )
        wrong_v, correct_v = valid & ~correct, valid & correct
        assert wrong_v.any() and correct_v.any(), "the batch must hold both groups"
        expected = two_pass_grad(
            lambda p: plain(mlp(p, x), labels), params, wrong_v, correct_v, valid.sum(), scale
        )
        with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
            actual = grad_fn(params, jnp.float32(scale))
        chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["int", "onehot", "sigmoid"])
def test_scale_one_is_plain_fine_tuning(kind):
    params, x, labels, plain, correct_fn, _ = _problem(kind, seed=1)
    dsgd_loss = dsgd_jax.make_dsgd_loss(plain, correct_fn)

    def dsgd_obj(p):
        return dsgd_loss(mlp(p, x), labels, scale=1.0)

    def plain_obj(p):
        return jnp.mean(plain(mlp(p, x), labels))

    np.testing.assert_allclose(dsgd_obj(params), plain_obj(params), rtol=1e-6)
    chex.assert_trees_all_close(jax.grad(dsgd_obj)(params), jax.grad(plain_obj)(params), rtol=1e-6)


def test_scale_zero_is_wrong_examples_over_batch_size():
    params, x, labels, plain, correct_fn, _ = _problem("int", seed=2)
    logits = mlp(params, x)
    wrong = np.asarray(logits).argmax(-1) != np.asarray(labels)
    expected = np_softmax_ce(np.asarray(logits), np.asarray(labels))[wrong].sum() / B
    dsgd_loss = dsgd_jax.make_dsgd_loss(plain, correct_fn)
    np.testing.assert_allclose(dsgd_loss(logits, labels, scale=0.0), expected, rtol=1e-6)


def test_value_against_numpy_with_mask():
    params, x, labels, plain, correct_fn, where = _problem("int_masked", seed=3)
    logits = np.asarray(mlp(params, x))
    lam = 0.37
    ce = np_softmax_ce(logits, np.asarray(labels))
    correct = logits.argmax(-1) == np.asarray(labels)
    w = np.where(correct, lam, 1.0)
    valid = np.asarray(where)
    expected = (w * ce)[valid].sum() / valid.sum()
    loss_fn = dsgd_jax.make_dsgd_loss(plain, correct_fn, has_aux=True)
    value, aux = jax.jit(lambda z, s: loss_fn(z, labels, scale=s, where=where))(
        jnp.asarray(logits), jnp.float32(lam)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_array_equal(aux.correct, correct & valid)  # False where masked
    np.testing.assert_allclose(aux.weights, np.where(valid, w, 0.0), rtol=1e-7)
    np.testing.assert_allclose(aux.fraction_correct, (correct & valid).sum() / valid.sum())
    assert float(aux.num_valid) == valid.sum()


def test_sigmoid_multilabel_value_against_numpy():
    params, x, labels, plain, correct_fn, where = _problem("sigmoid_masked", seed=4)
    logits = np.asarray(mlp(params, x))
    y = np.asarray(labels)
    lam = 0.6
    bce = np_sigmoid_bce(logits, y)
    correct = (logits > 0) == (y > 0.5)
    valid = np.repeat(np.asarray(where)[:, None], C, axis=1)
    expected = (np.where(correct, lam, 1.0) * bce)[valid].sum() / valid.sum()
    loss_fn = dsgd_jax.make_dsgd_loss(plain, correct_fn)
    np.testing.assert_allclose(
        loss_fn(jnp.asarray(logits), labels, scale=lam, where=where), expected, rtol=1e-6
    )


def test_scaled_mean_hand_computed():
    losses = jnp.array([0.2, 1.5, 0.1, 2.0])
    correct = jnp.array([True, False, True, False])
    # (0.5*0.2 + 1.5 + 0.5*0.1 + 2.0) / 4 = 3.65 / 4
    np.testing.assert_allclose(dsgd_jax.scaled_mean(losses, correct, 0.5), 0.9125, rtol=1e-6)
    # never normalised by sum(w) = 3: all-correct batch at scale 0.5 halves the mean
    all_correct = jnp.ones(4, bool)
    np.testing.assert_allclose(dsgd_jax.scaled_mean(losses, all_correct, 0.5), 0.475, rtol=1e-6)
    # masked: (0.5*0.2 + 1.5) / 2
    mask = jnp.array([True, True, False, False])
    np.testing.assert_allclose(
        dsgd_jax.scaled_mean(losses, correct, 0.5, where=mask), 0.8, rtol=1e-6
    )


def test_fully_masked_batch_gives_zero_not_nan():
    losses = jnp.array([jnp.nan, 1.0, 2.0])
    correct = jnp.array([True, False, True])
    none = jnp.zeros(3, bool)
    assert float(dsgd_jax.scaled_mean(losses, correct, 0.5, where=none)) == 0.0
    loss_fn = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy_with_integer_labels)
    logits = jnp.ones((3, 4))
    grads = jax.grad(lambda z: loss_fn(z, jnp.array([0, 1, 2]), scale=0.5, where=none))(logits)
    np.testing.assert_array_equal(grads, np.zeros((3, 4)))


def test_masked_entries_do_not_leak_nan():
    losses = jnp.array([jnp.nan, 1.0, 2.0])
    correct = jnp.array([True, False, True])
    valid = jnp.array([False, True, True])
    np.testing.assert_allclose(
        dsgd_jax.scaled_mean(losses, correct, 0.5, where=valid), (1.0 + 1.0) / 2
    )


def test_dsgd_weights_values_and_no_gradient():
    correct = jnp.array([True, False, False, True])
    np.testing.assert_array_equal(dsgd_jax.dsgd_weights(correct, 0.25), [0.25, 1.0, 1.0, 0.25])
    grad = jax.grad(lambda s: jnp.sum(dsgd_jax.dsgd_weights(correct, s)))(jnp.float32(0.25))
    assert float(grad) == 0.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_logits(dtype):
    params, x, labels, plain, correct_fn, _ = _problem("int", seed=5)
    loss_fn = dsgd_jax.make_dsgd_loss(plain, correct_fn)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def objective(p):
            return loss_fn((mlp(p, x) * 30.0).astype(dtype), labels, scale=jnp.float32(0.5))

        loss, grads = jax.value_and_grad(objective)(params)
        with standard_promotion():
            updates, opt_state = tx.update(grads, opt_state, params)
        return loss, grads, updates

    loss, grads, updates = step(params, opt_state)
    assert loss.dtype == dtype
    assert np.isfinite(np.asarray(loss, np.float32))
    for tree in (grads, updates):
        for leaf in jax.tree.leaves(tree):
            assert leaf.dtype == jnp.float32
            assert np.all(np.isfinite(leaf))
    # the half-precision value agrees with the float32 one to its precision
    ref = loss_fn((mlp(params, x) * 30.0), labels, scale=0.5)
    np.testing.assert_allclose(float(loss), float(ref), rtol=2e-2)


def test_changing_scale_or_step_does_not_retrace():
    traces = []
    scaler = dsgd_jax.linear_scaler(1.0, total_steps=10)
    loss_fn = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy_with_integer_labels)
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = jnp.array([0, 0, 1])

    @jax.jit
    def f(step):
        traces.append(1)
        return loss_fn(logits, labels, scale=scaler(step))

    @jax.jit
    def g(scale):
        traces.append(2)
        return loss_fn(logits, labels, scale=scale)

    values = [float(f(jnp.int32(t))) for t in range(0, 12, 3)]
    values += [float(g(s)) for s in (0.0, 0.25, 0.5, 1.0)]
    assert traces == [1, 2]
    assert len(set(values[:4])) == 4  # the scale did change the value


def test_plain_mean_reference_with_any_optax_schedule():
    """An optax schedule works as a scaler."""
    loss_fn = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy_with_integer_labels)
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 0])
    ce = np_softmax_ce(np.asarray(logits), np.asarray(labels))
    with standard_promotion():
        scale = schedule(2)
    np.testing.assert_allclose(loss_fn(logits, labels, scale=scale), (0.5 * ce[0] + ce[1]) / 2)


# ----------------------------------------------------------------------------- bad input

_LOGITS = jnp.zeros((4, 3))
_LABELS = jnp.array([0, 1, 2, 0])
_CE = optax.losses.softmax_cross_entropy_with_integer_labels


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: dsgd_jax.argmax_correct(jnp.zeros((4, 3), jnp.int32), _LABELS),
            TypeError,
            r"logits must have a floating dtype.*astype",
        ),
        (
            lambda: dsgd_jax.argmax_correct(_LOGITS, jnp.zeros((4, 2), jnp.int32)),
            ValueError,
            r"labels has shape \(4, 2\).*neither integer labels",
        ),
        (
            lambda: dsgd_jax.argmax_correct(_LOGITS, jnp.zeros(5, jnp.int32)),
            ValueError,
            r"labels has shape \(5,\)",
        ),
        (
            lambda: dsgd_jax.argmax_correct(_LOGITS, jnp.zeros(4)),
            TypeError,
            r"labels of the batch shape.*integer class indices.*astype\(jnp.int32\)",
        ),
        (
            lambda: dsgd_jax.sigmoid_correct(_LOGITS, jnp.zeros(4)),
            ValueError,
            r"labels has shape \(4,\) but logits has shape \(4, 3\)",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(_LOGITS, jnp.zeros((4, 1), jnp.int32), scale=0.5),
            ValueError,
            r"labels has shape",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(_LOGITS, _LABELS, scale=jnp.ones(4)),
            ValueError,
            r"scale must be a scalar.*shape \(4,\)",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(_LOGITS, _LABELS, scale=-0.5),
            ValueError,
            r"scale must be finite and >= 0",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(_LOGITS, _LABELS, scale=True),
            TypeError,
            r"scale must be a number",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(_LOGITS, _LABELS, scale="0.5"),
            TypeError,
            r"scale must be",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(
                _LOGITS, _LABELS, scale=0.5, where=jnp.ones(3, bool)
            ),
            ValueError,
            r"where has shape \(3,\).*Pass one flag per loss entry",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE)(
                _LOGITS, _LABELS, scale=0.5, where=jnp.ones(4, jnp.int32)
            ),
            TypeError,
            r"where must be a boolean mask",
        ),
        (
            lambda: dsgd_jax.scaled_mean(jnp.ones(4), jnp.ones(3, bool), 0.5),
            ValueError,
            r"correct has shape \(3,\) but per_example_loss has shape \(4,\)",
        ),
        (
            lambda: dsgd_jax.scaled_mean(jnp.ones(4, jnp.int32), jnp.ones(4, bool), 0.5),
            TypeError,
            r"per_example_loss must have a floating dtype",
        ),
        (
            lambda: dsgd_jax.dsgd_weights(jnp.ones(4), 0.5),
            TypeError,
            r"correct must be a bool array",
        ),
        (
            lambda: dsgd_jax.make_dsgd_loss(
                optax.losses.softmax_cross_entropy, dsgd_jax.sigmoid_correct
            )(_LOGITS, jnp.zeros((4, 3)), scale=0.5),
            ValueError,
            r"correct has shape \(4, 3\) but per_example_loss has shape \(4,\)",
        ),
        (lambda: dsgd_jax.make_dsgd_loss("ce"), TypeError, r"loss_fn must be a per-example loss"),
        (
            lambda: dsgd_jax.make_dsgd_loss(_CE, correct_fn=None),
            TypeError,
            r"correct_fn must be a function",
        ),
    ],
)
def test_bad_input_names_argument_and_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_scale_shape_is_checked_under_jit():
    loss_fn = dsgd_jax.make_dsgd_loss(_CE)
    with pytest.raises(ValueError, match="scale must be a scalar"):
        jax.jit(lambda s: loss_fn(_LOGITS, _LABELS, scale=s))(jnp.ones(2))
