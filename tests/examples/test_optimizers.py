"""BERTAdam and the optimizer knobs of the loop, against hand-written NumPy updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import standard_promotion

import dsgd_jax
from dsgd_jax.examples import optimizers
from dsgd_jax.examples.steps import make_optimizer
from dsgd_jax.examples.train import TrainConfig

B1, B2 = 0.9, 0.999


def _grads(rng, steps):
    return [
        {
            "w": rng.normal(size=(2, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32),
        }
        for _ in range(steps)
    ]


def _run(tx, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        with standard_promotion():
            updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(np.asarray, params), state


def _numpy_reference(params, grads, *, lr_at, bias_correction, eps, decay, clip=0.0):
    """Adam(W) in float64 NumPy, one parameter at a time, as the papers write it."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if clip:
            norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
            g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
        for k in p:
            m[k] = B1 * m[k] + (1 - B1) * g[k]
            v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
            m_hat, v_hat = m[k], v[k]
            if bias_correction:
                m_hat, v_hat = m[k] / (1 - B1 ** (t + 1)), v[k] / (1 - B2 ** (t + 1))
            u = m_hat / (np.sqrt(v_hat) + eps) + (decay if p[k].ndim > 1 else 0.0) * p[k]
            p[k] = p[k] - lr_at(t) * u
    return p


def test_bert_adam_matches_numpy_without_bias_correction():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.ones(3, np.float32)}
    grads = _grads(rng, 6)
    mask = {"w": True, "b": False}
    tx = optimizers.bert_adam(1e-2, weight_decay=0.1, mask=mask)
    got, state = _run(tx, params, grads)
    want = _numpy_reference(
        params, grads, lr_at=lambda t: 1e-2, bias_correction=False, eps=1e-6, decay=0.1
    )
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert int(state[0].count) == 6
    # ... and it is not bias-corrected Adam: the first steps differ by about 3x.
    corrected = _numpy_reference(
        params, grads, lr_at=lambda t: 1e-2, bias_correction=True, eps=1e-6, decay=0.1
    )
    assert not np.allclose(got["b"], corrected["b"], atol=1e-3)


def test_scale_by_adam_no_bias_correction_first_step_by_hand():
    tx = optimizers.scale_by_adam_no_bias_correction(eps=0.0 + 1e-12)
    g = jnp.array([2.0, -0.5, 1e-3])
    updates, state = tx.update(g, tx.init(g))
    # m = 0.1 g, v = 0.001 g^2: u = 0.1 / sqrt(0.001) sign(g) = 3.1623 sign(g).
    np.testing.assert_allclose(updates, 0.1 / np.sqrt(0.001) * np.sign(g), rtol=1e-5)
    assert isinstance(state, optimizers.ScaleByAdamNoBiasCorrectionState)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"b1": 1.0}, "b1"), ({"b2": -0.1}, "b2"), ({"eps": 0.0}, "eps")],
)
def test_scale_by_adam_no_bias_correction_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizers.scale_by_adam_no_bias_correction(**kwargs)


@pytest.mark.parametrize(
    ("optimizer", "warmup_ratio", "max_grad_norm"),
    [("bertadam", 0.0, 0.0), ("bertadam", 0.25, 1.0), ("adamw", 0.0, 0.0), ("adamw", 0.25, 0.5)],
)
def test_make_optimizer_knobs_match_numpy(optimizer, warmup_ratio, max_grad_norm):
    """The loop's optimizer: BERTAdam or AdamW, warm-up share (0 starts at the peak),
    clipping on or off, linear decay to 0, weight decay on matrices only."""
    total, peak = 8, 1e-2
    config = TrainConfig(
        optimizer=optimizer,
        learning_rate=peak,
        warmup_ratio=warmup_ratio,
        max_grad_norm=max_grad_norm,
        weight_decay=0.05,
    )
    warmup = round(warmup_ratio * total)

    def lr_at(t):
        if t < warmup:
            return peak * t / warmup
        return peak * (1 - (t - warmup) / (total - warmup))

    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.ones(3, np.float32)}
    grads = [jax.tree.map(lambda x: 5 * x, g) for g in _grads(rng, total)]  # norms above 1
    got, state = _run(make_optimizer(config, total), params, grads)
    want = _numpy_reference(
        params,
        grads,
        lr_at=lr_at,
        bias_correction=optimizer == "adamw",
        eps=1e-6 if optimizer == "bertadam" else 1e-8,
        decay=0.05,
        clip=max_grad_norm,
    )
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert int(dsgd_jax.step_count(state)) == total


def test_bertadam_is_a_config_choice():
    TrainConfig(optimizer="bertadam").validate()
    with pytest.raises(ValueError, match=r"optimizer='sgd' is unknown"):
        TrainConfig(optimizer="sgd").validate()
