"""dsgd_jax.examples.baselines and the models' features/head split, against references
computed independently: NumPy formulas in float64, hand-worked vectors, jax.grad on
masked losses, and plain NumPy forward passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsgd_jax.examples import baselines as bl
from dsgd_jax.examples.bert.model import BertClassifier, BertConfig
from dsgd_jax.examples.vit.config import ResizeInputs
from dsgd_jax.examples.vit.model import ViT, ViTConfig
from tests._helpers import np_log_softmax, np_sigmoid_bce, np_softmax_ce, standard_promotion

# ------------------------------------------------------------------------------ focal losses


def _np_softmax_focal(logits, labels, alpha, gamma):
    logp = np_log_softmax(logits)
    log_pt = np.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return -alpha * (1.0 - np.exp(log_pt)) ** gamma * log_pt


def _np_sigmoid_focal(logits, labels, alpha, gamma):
    z = np.asarray(logits, np.float64)
    y = np.eye(z.shape[-1])[labels]
    p = 1.0 / (1.0 + np.exp(-z))
    p_t = np.where(y == 1, p, 1.0 - p)
    alpha_t = np.where(y == 1, alpha, 1.0 - alpha)
    return (-alpha_t * (1.0 - p_t) ** gamma * np.log(p_t)).sum(-1)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (1.0, 0.5), (0.6, 3.0), (0.3, 0.0)])
def test_focal_losses_match_numpy(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.normal(size=(16, 5))).astype(np.float32)
    labels = rng.integers(0, 5, size=16).astype(np.int32)
    got = bl.softmax_focal_loss(jnp.asarray(logits), jnp.asarray(labels), alpha=alpha, gamma=gamma)
    assert got.shape == (16,) and got.dtype == jnp.float32
    want = _np_softmax_focal(logits, labels, alpha, gamma)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
    got = bl.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(labels), alpha=alpha, gamma=gamma)
    assert got.shape == (16,) and got.dtype == jnp.float32
    want = _np_sigmoid_focal(logits, labels, alpha, gamma)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


def test_focal_losses_with_gamma_zero_are_weighted_cross_entropies():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=8).astype(np.int32)
    got = bl.softmax_focal_loss(jnp.asarray(logits), jnp.asarray(labels), alpha=0.4, gamma=0.0)
    np.testing.assert_allclose(np.asarray(got), 0.4 * np_softmax_ce(logits, labels), rtol=1e-5)
    y = np.eye(4)[labels]
    bce = np_sigmoid_bce(logits, y)
    want = (np.where(y == 1, 0.4, 0.6) * bce).sum(-1)
    got = bl.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(labels), alpha=0.4, gamma=0.0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


@pytest.mark.parametrize("fn", [bl.softmax_focal_loss, bl.sigmoid_focal_loss])
def test_focal_losses_reject_bad_arguments(fn):
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="gamma"):
        fn(logits, labels, gamma=-1.0)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            fn(logits, labels, alpha=alpha)
    with pytest.raises(ValueError, match="labels"):
        fn(logits, jnp.array([0, 1, 2]))


# ------------------------------------------------------------------------------------ PCGrad


def _pc(g_w, g_c):
    out = bl.pcgrad_combine({"g": jnp.array(g_w)}, {"g": jnp.array(g_c)})
    return np.asarray(out["g"])


def test_pcgrad_combine_on_hand_worked_vectors():
    # dot = -1, |g_C|^2 = 2, |g_W|^2 = 1: g_W' = (1, 0) + (-1, 1) / 2 = (0.5, 0.5),
    # g_C' = (-1, 1) + (1, 0) = (0, 1).
    np.testing.assert_allclose(_pc([1.0, 0.0], [-1.0, 1.0]), [0.5, 1.5], rtol=1e-6)
    # dot = -2, |g_C|^2 = 2, |g_W|^2 = 4: g_W' = (2, 0) + (-1, 1) = (1, 1),
    # g_C' = (-1, 1) + (2, 0) / 2 = (0, 1).
    np.testing.assert_allclose(_pc([2.0, 0.0], [-1.0, 1.0]), [1.0, 2.0], rtol=1e-6)
    # No conflict (dot = 1 >= 0): the plain sum.
    np.testing.assert_allclose(_pc([1.0, 0.0], [1.0, 1.0]), [2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(_pc([1.0, 0.0], [0.0, 3.0]), [1.0, 3.0], rtol=1e-6)
    # An empty group (zero gradient) gives the other group's gradient, finite.
    np.testing.assert_array_equal(_pc([0.0, 0.0], [-1.0, 1.0]), [-1.0, 1.0])
    np.testing.assert_array_equal(_pc([-1.0, 1.0], [0.0, 0.0]), [-1.0, 1.0])
    np.testing.assert_array_equal(_pc([0.0, 0.0], [0.0, 0.0]), [0.0, 0.0])


def test_pcgrad_combine_uses_global_dot_products_over_leaves():
    # The first hand-worked case split over two leaves of different shapes.
    g_w = {"a": jnp.array([[1.0]]), "b": jnp.array([0.0])}
    g_c = {"a": jnp.array([[-1.0]]), "b": jnp.array([1.0])}
    out = bl.pcgrad_combine(g_w, g_c)
    np.testing.assert_allclose(np.asarray(out["a"]), [[0.5]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [1.5], rtol=1e-6)
    with pytest.raises(ValueError, match="same structure"):
        bl.pcgrad_combine(g_w, {"a": jnp.zeros((1, 1))})


def _linear_problem(seed, n=12, d=5, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, size=n).astype(np.int32)
    params = {
        "w": jnp.asarray(rng.normal(size=(d, c)).astype(np.float32)),
        "b": jnp.asarray(0.1 * rng.normal(size=c).astype(np.float32)),
    }

    def losses_of(p):
        logits = jnp.asarray(x) @ p["w"] + p["b"][None, :]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=-1)[:, 0], logits

    def per_example(p):
        losses, logits = losses_of(p)
        return losses, jnp.argmax(logits, axis=-1) == jnp.asarray(y)

    return params, losses_of, per_example, y


def _flat(tree):
    return np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in sorted(tree)])


@pytest.mark.parametrize("seed", [0, 3])
def test_pcgrad_value_and_grad_matches_separate_group_gradients(seed):
    params, losses_of, per_example, y = _linear_problem(seed)
    where = np.ones(12, bool)
    where[[2, 7]] = False
    losses, logits = losses_of(params)
    correct = np.argmax(np.asarray(logits), -1) == y
    mask_w, mask_c = where & ~correct, where & correct
    assert mask_w.any() and mask_c.any()
    n = float(where.sum())

    def group_loss(p, mask):
        return jnp.sum(losses_of(p)[0] * jnp.asarray(mask, jnp.float32)) / n

    g_w = _flat(jax.grad(group_loss)(params, mask_w))
    g_c = _flat(jax.grad(group_loss)(params, mask_c))
    dot = g_w @ g_c
    if dot < 0:
        want = (g_w - dot / (g_c @ g_c) * g_c) + (g_c - dot / (g_w @ g_w) * g_w)
    else:
        want = g_w + g_c

    loss, grads, aux = bl.pcgrad_value_and_grad(per_example, params, where=jnp.asarray(where))
    np.testing.assert_allclose(_flat(grads), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), np.asarray(losses)[where].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(aux["fraction_correct"]), mask_c.sum() / n, rtol=1e-6)
    cosine = dot / np.linalg.norm(g_w) / np.linalg.norm(g_c)
    np.testing.assert_allclose(float(aux["cosine"]), cosine, rtol=1e-5, atol=1e-6)


def test_pcgrad_value_and_grad_with_conflict_and_with_an_empty_group():
    params, losses_of, per_example, _ = _linear_problem(0)
    _, _, aux = bl.pcgrad_value_and_grad(per_example, params)
    assert float(aux["cosine"]) < 0  # seed 0 exercises the projection

    def all_correct(p):
        return per_example(p)[0], jnp.ones(12, jnp.bool_)

    loss, grads, aux = bl.pcgrad_value_and_grad(all_correct, params)
    plain = jax.grad(lambda p: jnp.mean(losses_of(p)[0]))(params)
    np.testing.assert_allclose(_flat(grads), _flat(plain), rtol=1e-5, atol=1e-7)
    assert float(aux["cosine"]) == 0.0 and float(aux["fraction_correct"]) == 1.0
    # No valid example at all: zero loss and gradient, nothing NaN.
    loss, grads, aux = bl.pcgrad_value_and_grad(per_example, params, where=jnp.zeros(12, bool))
    assert float(loss) == 0.0 and not np.any(_flat(grads))
    assert np.isfinite(float(aux["cosine"]))


# --------------------------------------------------------------------------------- NoisyTune


def test_noisytune_perturbs_matrices_within_the_paper_bounds():
    rng = np.random.default_rng(0)
    big = (3.0 * rng.normal(size=(100, 200)) + 1.0).astype(np.float32)
    params = {
        "big": jnp.asarray(big),
        "twin": jnp.asarray(big),
        "conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)).astype(np.float32)),
        "bias": jnp.asarray(rng.normal(size=7).astype(np.float32)),
        "scalar": jnp.float32(2.0),
        "ids": jnp.arange(6, dtype=jnp.int32).reshape(2, 3),
    }
    lam = 0.15
    out = bl.noisytune(params, jax.random.key(0), noise_lambda=lam)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for name in ("bias", "scalar", "ids"):
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(params[name]))
    for name in ("big", "conv"):
        w = np.asarray(params[name], np.float64)
        delta = np.asarray(out[name], np.float64) - w
        bound = 0.5 * lam * w.std()
        assert out[name].dtype == jnp.float32
        assert np.abs(delta).max() <= bound + 1e-5
        assert np.abs(delta).max() > 0.9 * bound
    delta = np.asarray(out["big"], np.float64) - big
    bound = 0.5 * lam * big.std()
    assert np.abs(delta).max() > 0.999 * bound  # 20k uniform draws reach the edge
    np.testing.assert_allclose(delta.std(), 2 * bound / np.sqrt(12), rtol=0.02)
    assert abs(delta.mean()) < 0.01 * bound
    # Each leaf has its own draw; the same key gives the same noise, another key another.
    assert not np.allclose(np.asarray(out["big"]), np.asarray(out["twin"]))
    again = bl.noisytune(params, jax.random.key(0), noise_lambda=lam)
    np.testing.assert_array_equal(np.asarray(again["big"]), np.asarray(out["big"]))
    other = bl.noisytune(params, jax.random.key(1), noise_lambda=lam)
    assert not np.allclose(np.asarray(other["big"]), np.asarray(out["big"]))
    zero = bl.noisytune(params, jax.random.key(0), noise_lambda=0.0)
    np.testing.assert_array_equal(np.asarray(zero["big"]), big)
    with pytest.raises(ValueError, match="noise_lambda"):
        bl.noisytune(params, jax.random.key(0), noise_lambda=-0.1)


def test_noisytune_model_changes_only_the_kernels_of_an_nnx_module():
    model = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    model.bias.set_value(jnp.arange(8, dtype=jnp.float32))
    kernel, bias = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    bl.noisytune_model(model, jax.random.key(3), noise_lambda=0.2)
    delta = np.asarray(model.kernel[...], np.float64) - kernel
    assert 0 < np.abs(delta).max() <= 0.5 * 0.2 * kernel.astype(np.float64).std() + 1e-6
    np.testing.assert_array_equal(np.asarray(model.bias[...]), bias)


# --------------------------------------------------------------------------------------- SWA

_GRADS = np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32)
_P0 = np.array([1.0, -2.0, 0.5], np.float32)


def _sgd_trajectory(grads, lr=0.1):
    """Post-update params of plain SGD, in float64: p_t = p_{t-1} - lr * g_t."""
    p, out = _P0.astype(np.float64), []
    for g in grads:
        p = p - lr * g
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("start,every", [(2, 1), (2, 2), (0, 3)])
def test_swa_mean_of_the_post_update_params(start, every):
    tx = optax.chain(optax.sgd(0.1), bl.swa(start=start, every=every))
    params = {"w": jnp.asarray(_P0)}
    update = jax.jit(tx.update)
    with standard_promotion():
        state = tx.init(params)
        for g in _GRADS:
            updates, state = update({"w": jnp.asarray(g)}, state, params)
            np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * g, rtol=1e-6)
            params = optax.apply_updates(params, updates)
    saved = _sgd_trajectory(_GRADS)
    steps = np.arange(1, len(_GRADS) + 1)
    taken = (steps > start) & ((steps - start) % every == 0)
    np.testing.assert_allclose(np.asarray(params["w"]), saved[-1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bl.swa_params(state)["w"]), saved[taken].mean(0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert int(bl.swa_count(state)) == taken.sum()
    assert bl.swa_count(state).dtype == jnp.int32


def test_swa_before_start_holds_the_initial_params_and_counts_nothing():
    tx = optax.chain(optax.sgd(0.1), bl.swa(start=5))
    params = {"w": jnp.asarray(_P0)}
    with standard_promotion():
        state = tx.init(params)
        for g in _GRADS[:3]:
            updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
            params = optax.apply_updates(params, updates)
    assert int(bl.swa_count(state)) == 0
    np.testing.assert_array_equal(np.asarray(bl.swa_params(state)["w"]), _P0)


def test_swa_under_multisteps_and_vmap():
    k = 2
    tx = optax.MultiSteps(optax.chain(optax.sgd(0.1), bl.swa(start=1)), every_k_schedule=k)
    params = {"w": jnp.asarray(_P0)}
    update = jax.jit(tx.update)
    with standard_promotion():
        state = tx.init(params)
        for g in _GRADS:
            updates, state = update({"w": jnp.asarray(g)}, state, params)
            params = optax.apply_updates(params, updates)
    # The inner optimizer sees the mean of each k micro-batch gradients.
    saved = _sgd_trajectory(_GRADS.reshape(-1, k, 3).mean(1))
    np.testing.assert_allclose(np.asarray(params["w"]), saved[-1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bl.swa_params(state)["w"]), saved[1:].mean(0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert int(bl.swa_count(state)) == len(saved) - 1

    # vmap over two independent runs equals the runs one by one.
    tx = optax.chain(optax.sgd(0.1), bl.swa(start=1, every=2))
    p2 = {"w": jnp.stack([jnp.asarray(_P0), jnp.asarray(-_P0)])}
    g2 = {"w": jnp.stack([jnp.asarray(_GRADS[:5]), jnp.asarray(2 * _GRADS[:5])], 1)}
    with standard_promotion():
        state = jax.vmap(tx.init)(p2)
        for t in range(5):
            g = {"w": g2["w"][t]}
            updates, state = jax.vmap(tx.update)(g, state, p2)
            p2 = optax.apply_updates(p2, updates)
    for run, (p0, scale) in enumerate([(_P0, 1.0), (-_P0, 2.0)]):
        traj = _sgd_trajectory(scale * _GRADS[:5]) - _P0 + p0
        want = traj[[2, 4]].mean(0)  # steps 3 and 5
        np.testing.assert_allclose(np.asarray(bl.swa_params(state)["w"][run]), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(bl.swa_count(state)), [2, 2])


def test_swa_params_inside_an_nnx_optimizer():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    kernel0 = np.asarray(model.kernel[...], np.float64)
    optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(0.5), bl.swa(start=0)), wrt=nnx.Param)
    x = jnp.ones((1, 3))
    grads = nnx.grad(lambda m: jnp.sum(m(x)))(model)  # d/dkernel = ones, constant
    with standard_promotion():
        optimizer.update(model, grads)
        optimizer.update(model, grads)
    mean = bl.swa_params(optimizer.opt_state)
    want = ((kernel0 - 0.5) + (kernel0 - 1.0)) / 2
    np.testing.assert_allclose(np.asarray(mean["kernel"]), want, rtol=1e-6)
    assert int(bl.swa_count(optimizer.opt_state)) == 2


def test_swa_rejects_bad_arguments_and_is_absent_elsewhere():
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="start"):
            bl.swa(start=bad)
    with pytest.raises(ValueError, match="every"):
        bl.swa(start=0, every=0)
    tx = bl.swa(start=0)
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": jnp.zeros(2)}, state)
    plain = optax.chain(optax.sgd(0.1)).init({"w": jnp.zeros(2)})
    assert bl.swa_params(plain) is None and bl.swa_count(plain) is None


# -------------------------------------------------------------------------------------- LNSR


def test_lnsr_penalty_matches_numpy_on_the_same_noise():
    rng = np.random.default_rng(2)
    b, d, c = 6, 4, 3
    feats = rng.normal(size=(b, d)).astype(np.float32)
    w1 = rng.normal(size=(d, d)).astype(np.float32)
    b1 = rng.normal(size=d).astype(np.float32)
    w2 = rng.normal(size=(d, c)).astype(np.float32)
    b2 = rng.normal(size=c).astype(np.float32)

    def head_fn(f, noise):
        x = f if noise[0] is None else f + noise[0]
        h = jnp.tanh(x @ jnp.asarray(w1) + jnp.asarray(b1)[None])
        h = h if noise[1] is None else h + noise[1]
        return h @ jnp.asarray(w2) + jnp.asarray(b2)[None]

    def np_head(n0, n1):
        h = np.tanh((feats + n0) @ w1.astype(np.float64) + b1) + n1
        return h @ w2.astype(np.float64) + b2

    key, sigma, weights = jax.random.key(11), 0.3, (0.2, 0.1)
    where = np.array([1, 1, 0, 1, 1, 1], bool)
    got = bl.lnsr_penalty(head_fn, jnp.asarray(feats), key, sigma=sigma, weights=weights,
                          where=jnp.asarray(where))  # fmt: skip
    k0, k1 = jax.random.split(key, 2)
    eps = [sigma * np.asarray(jax.random.normal(k, (b, d), jnp.float32)) for k in (k0, k1)]
    clean = np_head(0.0, 0.0)
    terms = [((np_head(eps[0], 0.0) - clean) ** 2).sum(-1),
             ((np_head(0.0, eps[1]) - clean) ** 2).sum(-1)]  # fmt: skip
    want = sum(w * t[where].mean() for w, t in zip(weights, terms, strict=True))
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-4)

    # One layer, no mask, differentiable; sigma = 0 gives zero.
    one = bl.lnsr_penalty(lambda f, n: head_fn(f, (n[0], None)), jnp.asarray(feats), key,
                          sigma=sigma, weights=(0.5,))  # fmt: skip
    (k,) = jax.random.split(key, 1)
    e = sigma * np.asarray(jax.random.normal(k, (b, d), jnp.float32))
    np.testing.assert_allclose(
        float(one), 0.5 * ((np_head(e, 0.0) - clean) ** 2).sum(-1).mean(), rtol=1e-4
    )
    grad = jax.grad(lambda f: bl.lnsr_penalty(head_fn, f, key, sigma=sigma))(jnp.asarray(feats))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(bl.lnsr_penalty(head_fn, jnp.asarray(feats), key, sigma=0.0)) == 0.0
    with pytest.raises(ValueError, match="sigma"):
        bl.lnsr_penalty(head_fn, jnp.asarray(feats), key, sigma=-1.0)
    with pytest.raises(ValueError, match="weights"):
        bl.lnsr_penalty(head_fn, jnp.asarray(feats), key, weights=())


# ------------------------------------------------------------------------- models and LoRA

BERT_TINY = BertConfig.preset("tiny")
VIT_TINY = ViTConfig.preset("tiny")


@pytest.fixture(scope="module")
def bert():
    return nnx.jit(lambda r: BertClassifier(BERT_TINY, 3, rngs=r))(nnx.Rngs(0))


@pytest.fixture(scope="module")
def vit():
    model = nnx.jit(lambda r: ViT(VIT_TINY, 4, rngs=r))(nnx.Rngs(0))
    model.head.kernel.set_value(jax.random.normal(jax.random.key(7), (32, 4)))
    return model


def _bert_batch(b=3, n=8):
    rng = np.random.default_rng(1)
    mask = (np.arange(n)[None] < np.array([8, 5, 2])[:b, None]).astype(np.int32)
    ids = rng.integers(1, 30522, size=(b, n)).astype(np.int32) * mask
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def _images(b=3, size=28):
    return {"image": jax.random.normal(jax.random.key(2), (b, size, size, 1))}


def test_bert_features_and_head_split(bert):
    batch = _bert_batch()
    logits = bert(batch)
    feats = bert.features(batch)
    assert feats.shape == (3, BERT_TINY.hidden_size) and BertClassifier.head_name == "classifier"
    np.testing.assert_allclose(np.asarray(bert.classify(feats)), np.asarray(logits), atol=1e-6)
    # With dropout, the same Rngs stream through features then head equals __call__.
    rngs = nnx.Rngs(dropout=3)
    split = bert.classify(bert.features(batch, rngs=rngs), rngs=rngs)
    np.testing.assert_allclose(
        np.asarray(split), np.asarray(bert(batch, rngs=nnx.Rngs(dropout=3))), atol=1e-6
    )
    # noise[1] enters the classifier linearly: logits move by e @ kernel.
    e = np.random.default_rng(4).normal(size=feats.shape).astype(np.float32)
    moved = bert.classify(feats, noise=(None, jnp.asarray(e)))
    kernel = np.asarray(bert.classifier.kernel[...], np.float64)
    np.testing.assert_allclose(np.asarray(moved - logits), e @ kernel, atol=1e-5)
    # noise[0] is added to the pooler's input.
    np.testing.assert_allclose(
        np.asarray(bert.classify(feats, noise=(jnp.asarray(e), None))),
        np.asarray(bert.classify(feats + jnp.asarray(e))),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="noise"):
        bert.classify(feats, noise=(None,))


def test_vit_features_and_head_split(vit):
    x = _images()
    logits = vit(x)
    feats = vit.features(x)
    assert feats.shape == (3, VIT_TINY.hidden_size) and ViT.head_name == "head"
    np.testing.assert_allclose(np.asarray(vit.classify(feats)), np.asarray(logits), atol=1e-6)
    e = np.random.default_rng(4).normal(size=feats.shape).astype(np.float32)
    kernel = np.asarray(vit.head.kernel[...], np.float64)
    moved = vit.classify(feats, noise=(None, jnp.asarray(e)))
    np.testing.assert_allclose(np.asarray(moved - logits), e @ kernel, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(vit.classify(feats, noise=(jnp.asarray(e), None))),
        np.asarray(vit.classify(feats + jnp.asarray(e))),
        atol=1e-6,
    )
    # The classifier stays a Linear under "head" in the state.
    assert isinstance(vit.head, nnx.Linear)
    assert set(nnx.state(vit, nnx.Param)["head"].keys()) == {"kernel", "bias"}
    with pytest.raises(ValueError, match="image"):
        vit.features(_images(size=14))

    wrapped = ResizeInputs(vit)
    small = _images(size=14)
    assert wrapped.head_name == "head"
    feats = wrapped.features(small)
    np.testing.assert_allclose(
        np.asarray(wrapped.classify(feats)), np.asarray(wrapped(small)), atol=1e-6
    )
    image = jax.image.resize(small["image"], (3, 28, 28, 1), "bilinear")
    np.testing.assert_allclose(
        np.asarray(feats), np.asarray(vit.features({"image": image})), atol=1e-6
    )


def _count(state):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_add_lora_on_tiny_bert(bert):
    model = nnx.clone(bert)
    batch = _bert_batch()
    before = np.asarray(model(batch))
    n_params = _count(nnx.state(model, nnx.Param))
    rank, alpha = 4, 8.0
    wrapped = bl.add_lora(model, rank=rank, alpha=alpha, rngs=nnx.Rngs(1))
    assert wrapped == 2 * BERT_TINY.num_hidden_layers
    layer = model.encoder.layers[0]
    assert isinstance(layer.query, bl.ScaledLoRA) and isinstance(layer.value, bl.ScaledLoRA)
    assert isinstance(layer.key, nnx.Linear) and isinstance(model.classifier, nnx.Linear)
    np.testing.assert_array_equal(np.asarray(model(batch)), before)

    # One wrapped layer with a nonzero lora_b: base + (alpha / rank) * x @ a @ b.
    rng = np.random.default_rng(6)
    h = BERT_TINY.hidden_size
    layer.query.lora_b.set_value(jnp.asarray(rng.normal(size=(rank, h)).astype(np.float32)))
    x = rng.normal(size=(2, 5, h)).astype(np.float32)
    a = np.asarray(layer.query.lora_a[...], np.float64)
    b = np.asarray(layer.query.lora_b[...], np.float64)
    base = layer.query.base_module
    want = (x @ np.asarray(base.kernel[...], np.float64) + np.asarray(base.bias[...])
            + (alpha / rank) * x @ a @ b)  # fmt: skip
    np.testing.assert_allclose(np.asarray(layer.query(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(model(batch)), before)

    # Trainable: the LoRA matrices and the classifier, nothing else.
    trainable = nnx.state(model, bl.lora_trainable(BertClassifier.head_name))
    lora = wrapped * (h * rank + rank * h)
    assert _count(trainable) == lora + h * 3 + 3
    assert _count(nnx.state(model, nnx.Param)) == n_params + lora  # Param selects all
    paths = [p for p, _ in nnx.to_flat_state(trainable)]
    assert all(p[-1] in ("lora_a", "lora_b") or p[0] == "classifier" for p in paths)
    # With the pooler as a module to save: its kernel and bias as well, nothing more.
    with_pooler = nnx.state(model, bl.lora_trainable("classifier", "pooler"))
    assert _count(with_pooler) == lora + h * 3 + 3 + h * h + h
    paths = {p[0] for p, _ in nnx.to_flat_state(with_pooler) if p[-1] not in ("lora_a", "lora_b")}
    assert paths == {"classifier", "pooler"}
    for bad, arg in ((("classifier", ""), "also=''"), ((None,), "head=None")):
        with pytest.raises(ValueError, match=arg):
            bl.lora_trainable(*bad)

    with pytest.raises(ValueError, match="query"):
        bl.add_lora(model, rngs=nnx.Rngs(0))  # everything is wrapped already
    with pytest.raises(ValueError, match="rank"):
        bl.add_lora(nnx.clone(bert), rank=0, rngs=nnx.Rngs(0))


def test_add_lora_on_tiny_vit_behind_resize(vit):
    model = ResizeInputs(nnx.clone(vit))
    x = _images(size=14)
    before = np.asarray(model(x))
    wrapped = bl.add_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(1))
    assert wrapped == 2 * VIT_TINY.num_layers
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    trainable = nnx.state(model, bl.lora_trainable(model.head_name))
    d = VIT_TINY.hidden_size
    assert _count(trainable) == wrapped * 2 * d * 2 + d * 4 + 4
