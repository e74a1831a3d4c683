"""step_count on optax states, and the DSGD train step inside optax wrappers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import init_mlp, mlp, standard_promotion

import dsgd_jax

PARAMS = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
GRADS = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
SCHEDULE = optax.linear_schedule(1e-3, 0.0, 100)


def _optimizers():
    return {
        "adamw": optax.adamw(1e-3),
        "adamw_schedule": optax.adamw(SCHEDULE),  # two counters
        "chain_clip_adamw": optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(SCHEDULE)),
        "inject_hyperparams": optax.inject_hyperparams(optax.adamw)(learning_rate=SCHEDULE),
        "adamw_reduce_on_plateau": optax.chain(
            optax.adamw(1e-3), optax.contrib.reduce_on_plateau(accumulation_size=3)
        ),
        "masked": optax.masked(optax.adamw(1e-3), {"w": True, "b": False}),
    }


@pytest.mark.parametrize("name", list(_optimizers()))
def test_counts_updates(name):
    tx = _optimizers()[name]
    state = tx.init(PARAMS)
    read = jax.jit(dsgd_jax.step_count)
    assert int(read(state)) == 0
    for k in range(1, 6):
        with standard_promotion():
            _, state = tx.update(GRADS, state, PARAMS, value=jnp.float32(1.0))
        count = read(state)
        assert count.shape == () and jnp.issubdtype(count.dtype, jnp.integer)
        assert int(count) == k


def test_tree_get_fails_where_step_count_works():
    """The trap step_count avoids: two counters in adamw(schedule)."""
    state = optax.adamw(SCHEDULE).init(PARAMS)
    with pytest.raises(KeyError):
        optax.tree_utils.tree_get(state, "count")
    assert int(dsgd_jax.step_count(state)) == 0


def test_multisteps_counts_emitted_updates():
    tx = optax.MultiSteps(optax.adamw(SCHEDULE), every_k_schedule=3)
    state = tx.init(PARAMS)
    counts = []
    for _ in range(7):
        with standard_promotion():
            _, state = tx.update(GRADS, state, PARAMS)
        counts.append(int(dsgd_jax.step_count(state)))
    assert counts == [0, 0, 1, 1, 1, 2, 2]


def test_no_counter_is_a_clear_error_and_the_suggested_fix_works():
    with pytest.raises(ValueError, match=r"opt_state holds no step counter.*scale_by_schedule"):
        dsgd_jax.step_count(optax.sgd(0.1).init(PARAMS))
    with pytest.raises(ValueError, match="opt_state holds no step counter"):
        dsgd_jax.step_count({"not": "a state"})
    tx = optax.chain(optax.sgd(0.1), optax.scale_by_schedule(lambda t: 1.0))
    state = tx.init(PARAMS)
    with standard_promotion():
        _, state = tx.update(GRADS, state, PARAMS)
    assert int(dsgd_jax.step_count(state)) == 1


def test_a_parameter_named_count_is_not_a_counter():
    params = {"count": jnp.zeros(2)}
    state = optax.sgd(0.1, momentum=0.9).init(params)  # trace state holds {'count': ...}
    with pytest.raises(ValueError, match="no step counter"):
        dsgd_jax.step_count(state)


def test_flax_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = optax.MultiSteps(optax.adamw(SCHEDULE), every_k_schedule=2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)))))(model)
        with standard_promotion():
            optimizer.update(model, grads)
        return dsgd_jax.step_count(optimizer.opt_state), dsgd_jax.step_count(optimizer)

    counts = [tuple(int(c) for c in step(model, optimizer)) for _ in range(5)]
    assert counts == [(0, 0), (1, 1), (1, 1), (2, 2), (2, 2)]
    assert int(optimizer.step[...]) == 5  # nnx counts micro-batches


# ------------------------------------------------------------------ contract with optax wrappers

K = 2  # micro-batches per update under MultiSteps
N_CALLS = 6


def _contract_optimizers():
    return {
        "chain_clip_adamw": (optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(SCHEDULE)), 1),
        "inject_hyperparams": (optax.inject_hyperparams(optax.adamw)(learning_rate=SCHEDULE), 1),
        "multisteps": (optax.MultiSteps(optax.adamw(SCHEDULE), every_k_schedule=K), K),
        "multisteps_chain": (
            optax.MultiSteps(
                optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), every_k_schedule=K
            ),
            K,
        ),
    }


@pytest.mark.parametrize("name", list(_contract_optimizers()))
@pytest.mark.parametrize(
    "scaler",
    [dsgd_jax.linear_scaler(1.0, total_steps=4), optax.linear_schedule(0.0, 1.0, 4)],
    ids=["linear_scaler", "optax_schedule"],
)
def test_train_step_inside_optax_wrappers(name, scaler):
    tx, k = _contract_optimizers()[name]
    params = init_mlp(jax.random.key(0), (4, 8, 3))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    loss_fn = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy_with_integer_labels)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        with standard_promotion():
            scale = jnp.asarray(scaler(dsgd_jax.step_count(opt_state)), jnp.float32)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(mlp(p, x), y, scale=scale))(params)
        with standard_promotion():
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, scale, loss

    scales, counts = [], []
    for _ in range(N_CALLS):
        params, opt_state, scale, loss = step(params, opt_state)
        scales.append(float(scale))
        counts.append(int(dsgd_jax.step_count(opt_state)))
        assert np.isfinite(float(loss))
    expected_t = [i // k for i in range(N_CALLS)]
    np.testing.assert_allclose(scales, [min(t / 4, 1.0) for t in expected_t], rtol=1e-6)
    assert counts == [(i + 1) // k for i in range(N_CALLS)]
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.float32


def test_linen_train_state():
    from flax.training import train_state

    tx = optax.MultiSteps(optax.adamw(1e-3), every_k_schedule=2)
    state = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    counts = []
    for _ in range(4):
        with standard_promotion():
            state = state.apply_gradients(grads=GRADS)
        counts.append((int(dsgd_jax.step_count(state)), int(dsgd_jax.step_count(state.opt_state))))
    assert counts == [(0, 0), (1, 1), (1, 1), (2, 2)]
    assert int(state.step) == 4  # Linen counts apply_gradients calls
