"""DSGD on 8 fake CPU devices equals DSGD on one device with the whole batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import init_mlp, mlp, np_softmax_ce, standard_promotion
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import dsgd_jax

N_DEV = 8
PER_DEV = 4
SCALE = 0.4
# valid (unpadded) examples per device: uneven, one device fully padded
VALID_PER_DEV = [4, 3, 0, 2, 4, 1, 4, 3]

pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (fake) devices; see conftest.py"
)

LOSS = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy_with_integer_labels)
TX = optax.adamw(1e-2, weight_decay=1e-2)


def _batch(seed=0):
    k_p, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = init_mlp(k_p, (6, 16, 3))
    x = jax.random.normal(k_x, (N_DEV * PER_DEV, 6))
    y = jax.random.randint(k_y, (N_DEV * PER_DEV,), 0, 3)
    mask = np.zeros((N_DEV, PER_DEV), bool)
    for d, v in enumerate(VALID_PER_DEV):
        mask[d, :v] = True
    return params, x, y, jnp.asarray(mask.reshape(-1))


def _update(params, opt_state, grads):
    with standard_promotion():
        updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _single_step(params, opt_state, x, y, mask, axis_name=None):
    def objective(p):
        return LOSS(mlp(p, x), y, scale=jnp.float32(SCALE), where=mask, axis_name=axis_name)

    loss, grads = jax.value_and_grad(objective)(params)
    return loss, grads


def _reference():
    params, x, y, mask = _batch()
    loss, grads = jax.jit(_single_step)(params, TX.init(params), x, y, mask)
    new_params, _ = _update(params, TX.init(params), grads)
    return (params, x, y, mask), loss, grads, new_params


def _split(a):
    return a.reshape(N_DEV, PER_DEV, *a.shape[1:])


def test_reference_loss_is_the_global_masked_mean():
    (params, x, y, mask), loss, _, _ = _reference()
    logits = np.asarray(mlp(params, x))
    ce = np_softmax_ce(logits, np.asarray(y))
    w = np.where(logits.argmax(-1) == np.asarray(y), SCALE, 1.0)
    valid = np.asarray(mask)
    np.testing.assert_allclose(loss, (w * ce)[valid].sum() / valid.sum(), rtol=1e-6)


def test_pmap_with_pmean_equals_single_device():
    (params, x, y, mask), loss, grads, new_params = _reference()

    def step(params, opt_state, x, y, mask):
        loss, grads = _single_step(params, opt_state, x, y, mask, axis_name="batch")
        grads = lax.pmean(grads, "batch")
        new_params, _ = _update(params, opt_state, grads)
        return loss, grads, new_params

    p_loss, p_grads, p_params = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0, 0, 0))(
        params, TX.init(params), _split(x), _split(y), _split(mask)
    )
    for d in range(N_DEV):
        np.testing.assert_allclose(p_loss[d], loss, rtol=1e-6)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, d=d: a[d], p_grads), grads, rtol=1e-6, atol=1e-8
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, d=d: a[d], p_params), new_params, rtol=1e-6, atol=0
        )


def test_jit_with_named_sharding_equals_single_device():
    (params, x, y, mask), loss, grads, new_params = _reference()
    mesh = jax.make_mesh((N_DEV,), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    x_s, y_s, mask_s = (jax.device_put(a, batch_sharding) for a in (x, y, mask))
    params_r = jax.device_put(params, replicated)
    opt_state = jax.device_put(TX.init(params), replicated)

    @jax.jit
    def step(params, opt_state, x, y, mask):
        loss, grads = _single_step(params, opt_state, x, y, mask)
        new_params, _ = _update(params, opt_state, grads)
        return loss, grads, new_params

    s_loss, s_grads, s_params = step(params_r, opt_state, x_s, y_s, mask_s)
    assert len(x_s.sharding.device_set) == N_DEV
    np.testing.assert_allclose(s_loss, loss, rtol=1e-6)
    chex.assert_trees_all_close(s_grads, grads, rtol=1e-6, atol=1e-8)
    chex.assert_trees_all_close(s_params, new_params, rtol=1e-6, atol=0)


def test_shard_map_equals_single_device():
    (params, x, y, mask), loss, grads, new_params = _reference()
    mesh = jax.make_mesh((N_DEV,), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))
    x_s, y_s, mask_s = (jax.device_put(a, batch_sharding) for a in (x, y, mask))
    params_r = jax.device_put(params, NamedSharding(mesh, P()))
    opt_state = jax.device_put(TX.init(params), NamedSharding(mesh, P()))

    def step(params, opt_state, x, y, mask):
        loss, grads = _single_step(params, opt_state, x, y, mask, axis_name="data")
        new_params, _ = _update(params, opt_state, grads)
        return loss, grads, new_params

    sharded = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P(), P()),
        )
    )
    m_loss, m_grads, m_params = sharded(params_r, opt_state, x_s, y_s, mask_s)
    np.testing.assert_allclose(m_loss, loss, rtol=1e-6)
    chex.assert_trees_all_close(m_grads, grads, rtol=1e-6, atol=1e-8)
    chex.assert_trees_all_close(m_params, new_params, rtol=1e-6, atol=0)


def test_scaled_mean_with_axis_name_and_uneven_masks_is_the_global_mean():
    rng = np.random.default_rng(0)
    losses = rng.random((N_DEV, 5)).astype(np.float32)
    correct = rng.random((N_DEV, 5)) > 0.5
    mask = np.zeros((N_DEV, 5), bool)
    for d, v in enumerate([5, 0, 1, 3, 5, 2, 4, 1]):
        mask[d, :v] = True
    w = np.where(correct, SCALE, 1.0)
    expected = (w * losses)[mask].sum() / mask.sum()
    naive = np.mean(
        [(w[d] * losses[d])[mask[d]].sum() / max(mask[d].sum(), 1) for d in range(N_DEV)]
    )
    assert abs(naive - expected) > 1e-3  # a per-device mean would be wrong here

    def global_mean(loss, c, m):
        return dsgd_jax.scaled_mean(loss, c, SCALE, where=m, axis_name="i")

    got = jax.pmap(global_mean, axis_name="i")(losses, correct, mask)
    np.testing.assert_allclose(got, np.full(N_DEV, expected), rtol=1e-6)

    mesh = jax.make_mesh((N_DEV,), ("i",))
    args = [
        jax.device_put(a.reshape(-1), NamedSharding(mesh, P("i"))) for a in (losses, correct, mask)
    ]
    got_shmap = jax.jit(
        jax.shard_map(
            global_mean,
            mesh=mesh,
            in_specs=P("i"),
            out_specs=P(),
        )
    )(*args)
    np.testing.assert_allclose(got_shmap, expected, rtol=1e-6)


def test_fraction_correct_is_global_under_pmap():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(N_DEV, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(N_DEV, 4)).astype(np.int32)
    mask = rng.random((N_DEV, 4)) > 0.3
    loss_fn = dsgd_jax.make_dsgd_loss(
        optax.losses.softmax_cross_entropy_with_integer_labels, has_aux=True
    )
    _, aux = jax.pmap(
        lambda z, y, m: loss_fn(z, y, scale=0.5, where=m, axis_name="i"), axis_name="i"
    )(logits, labels, mask)
    correct = logits.argmax(-1) == labels
    np.testing.assert_allclose(aux.fraction_correct, (correct & mask).sum() / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(aux.num_valid, mask.sum())
