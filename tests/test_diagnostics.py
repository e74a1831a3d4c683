"""gradient_conflict, collapse_check and mean_pairwise_cosine against references."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import init_mlp, mlp

import dsgd_jax


def _mlp_problem(seed=0, batch=32):
    k_p, k_x, k_y, k_m = jax.random.split(jax.random.key(seed), 4)
    params = init_mlp(k_p, (5, 12, 3))
    x = jax.random.normal(k_x, (batch, 5))
    y = jax.random.randint(k_y, (batch,), 0, 3)
    mask = jax.random.bernoulli(k_m, 0.75, (batch,))
    return params, x, y, mask


def _per_example(params, x, y):
    logits = mlp(params, x)
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses, dsgd_jax.argmax_correct(logits, y)


def _flat(tree):
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_gradient_conflict_matches_separate_backward_passes(masked, scale):
    params, x, y, mask = _mlp_problem()
    where = mask if masked else None
    stats = jax.jit(
        lambda p, s: dsgd_jax.gradient_conflict(_per_example, p, x, y, scale=s, where=where)
    )(params, jnp.float32(scale))

    logits = np.asarray(mlp(params, x))
    valid = np.asarray(mask) if masked else np.ones(len(y), bool)
    correct = (logits.argmax(-1) == np.asarray(y)) & valid
    wrong = valid & ~correct
    assert correct.any() and wrong.any()
    n = valid.sum()

    def group_grad(idx):
        return _flat(
            jax.grad(lambda p: jnp.sum(_per_example(p, x, y)[0][np.nonzero(idx)]) / float(n))(
                params
            )
        )

    g_w, g_c = group_grad(wrong), group_grad(correct)
    np.testing.assert_allclose(stats.wrong_norm, np.linalg.norm(g_w), rtol=1e-5)
    np.testing.assert_allclose(stats.correct_norm, np.linalg.norm(g_c), rtol=1e-5)
    cosine = g_w @ g_c / (np.linalg.norm(g_w) * np.linalg.norm(g_c))
    np.testing.assert_allclose(stats.cosine, cosine, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.total_norm, np.linalg.norm(g_w + scale * g_c), rtol=1e-5)
    np.testing.assert_allclose(stats.fraction_correct, correct.sum() / n, rtol=1e-6)


def test_gradient_conflict_hand_built_opposite_pulls():
    # l_C = (w - 1)^2, l_W = (w + 1)^2 at w = 0: g_C = -2 / 2, g_W = +2 / 2
    def loss_fn(w):
        return jnp.stack([(w - 1.0) ** 2, (w + 1.0) ** 2]), jnp.array([True, False])

    stats = dsgd_jax.gradient_conflict(loss_fn, jnp.float32(0.0), scale=0.5)
    assert float(stats.cosine) == pytest.approx(-1.0)
    assert float(stats.wrong_norm) == pytest.approx(1.0)
    assert float(stats.correct_norm) == pytest.approx(1.0)
    assert float(stats.total_norm) == pytest.approx(0.5)  # |1 - 0.5 * 1|
    assert float(stats.fraction_correct) == pytest.approx(0.5)


def test_gradient_conflict_with_an_empty_group_has_zero_cosine():
    def loss_fn(w):
        return jnp.stack([(w - 1.0) ** 2, (w - 3.0) ** 2]), jnp.array([True, True])

    stats = dsgd_jax.gradient_conflict(loss_fn, jnp.float32(0.0))
    assert float(stats.cosine) == 0.0
    assert float(stats.wrong_norm) == 0.0
    assert float(stats.correct_norm) == pytest.approx((2.0 + 6.0) / 2)
    assert float(stats.fraction_correct) == 1.0


def test_gradient_conflict_rejects_a_bad_loss_fn():
    def loss_fn(w):
        return jnp.stack([w, w]), jnp.array([1.0, 0.0])

    with pytest.raises(ValueError, match=r"loss_fn must return \(per_example_loss, correct\)"):
        dsgd_jax.gradient_conflict(loss_fn, jnp.float32(0.0))


def _np_collapse(pred, num_classes, threshold):
    counts = np.bincount(pred, minlength=num_classes)
    share = counts.max() / counts.sum()
    return counts.argmax(), share, share >= threshold


@pytest.mark.parametrize("seed", range(5))
def test_collapse_check_against_numpy(seed):
    rng = np.random.default_rng(seed)
    num_classes = 4
    p = rng.dirichlet(np.full(num_classes, 0.3))
    pred = rng.choice(num_classes, size=200, p=p).astype(np.int32)
    stats = jax.jit(lambda q: dsgd_jax.collapse_check(q, num_classes, threshold=0.6))(pred)
    cls, share, collapsed = _np_collapse(pred, num_classes, 0.6)
    assert int(stats.majority_class) == cls
    np.testing.assert_allclose(stats.majority_share, share, rtol=1e-6)
    assert bool(stats.collapsed) == collapsed


def test_collapse_check_cases():
    assert bool(dsgd_jax.collapse_check(jnp.full(50, 2), 3).collapsed)
    balanced = dsgd_jax.collapse_check(jnp.arange(90) % 3, 3)
    assert not bool(balanced.collapsed)
    np.testing.assert_allclose(balanced.majority_share, 1 / 3, rtol=1e-6)
    # masked-out predictions do not count
    pred = jnp.array([0, 0, 0, 1, 1, 1, 1, 1])
    where = jnp.array([True, True, True, True, False, False, False, False])
    stats = dsgd_jax.collapse_check(pred, 2, where=where)
    assert int(stats.majority_class) == 0
    np.testing.assert_allclose(stats.majority_share, 0.75)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"predictions": jnp.zeros(4), "num_classes": 2},
            TypeError,
            r"predictions must be integer",
        ),
        ({"predictions": jnp.zeros(4, jnp.int32), "num_classes": 0}, ValueError, r"num_classes"),
        (
            {"predictions": jnp.zeros(4, jnp.int32), "num_classes": 2, "threshold": 1.5},
            ValueError,
            r"threshold must be in \(0, 1\]",
        ),
    ],
)
def test_collapse_check_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        dsgd_jax.collapse_check(**kwargs)


def test_mean_pairwise_cosine_against_a_loop():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 5)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1, 0, 1], bool)
    rows = feats[mask]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = [unit[i] @ unit[j] for i, j in itertools.permutations(range(len(rows)), 2)]
    np.testing.assert_allclose(
        dsgd_jax.mean_pairwise_cosine(feats, where=jnp.asarray(mask)), np.mean(cosines), rtol=1e-5
    )
    collapsed = np.tile(feats[:1], (6, 1)) * np.arange(1, 7, dtype=np.float32)[:, None]
    np.testing.assert_allclose(dsgd_jax.mean_pairwise_cosine(collapsed), 1.0, rtol=1e-5)
    assert float(dsgd_jax.mean_pairwise_cosine(feats[:1])) == 0.0
    with pytest.raises(ValueError, match=r"features must be \[num_examples, dim\]"):
        dsgd_jax.mean_pairwise_cosine(feats[0])
