"""The lambda(t) schedules against hand-computed values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsgd_jax

T = 200
STEPS = (0, T // 4, T // 2, T, 2 * T)
C45 = (1.0 - math.cos(math.pi / 4)) / 2  # 0.14644660940672627


@pytest.mark.parametrize(
    ("factory", "beta", "expected"),
    [
        (dsgd_jax.linear_scaler, 1.0, [0.0, 0.25, 0.5, 1.0, 1.0]),
        (dsgd_jax.linear_scaler, 0.5, [0.0, 0.125, 0.25, 0.5, 0.5]),
        (dsgd_jax.cosine_scaler, 1.0, [0.0, C45, 0.5, 1.0, 1.0]),
        (dsgd_jax.cosine_scaler, 0.5, [0.0, 0.5 * C45, 0.25, 0.5, 0.5]),
        (dsgd_jax.descending_scaler, 1.0, [1.0, 0.75, 0.5, 0.0, 0.0]),
        (dsgd_jax.descending_scaler, 0.5, [0.5, 0.375, 0.25, 0.0, 0.0]),
    ],
)
def test_values_at_hand_computed_points(factory, beta, expected):
    scaler = factory(beta=beta, total_steps=T)
    jitted = jax.jit(scaler)
    for t, want in zip(STEPS, expected, strict=True):
        for value in (scaler(t), jitted(jnp.int32(t))):
            assert value.dtype == jnp.float32
            assert value.shape == ()
            np.testing.assert_allclose(float(value), want, rtol=1e-6, atol=1e-7)


def test_constant_scaler():
    scaler = dsgd_jax.constant_scaler(0.1)
    for t in STEPS:
        value = jax.jit(scaler)(jnp.int32(t))
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(float(value), 0.1, rtol=1e-7)
    assert float(dsgd_jax.constant_scaler(0)(5)) == 0.0


@pytest.mark.parametrize(
    "factory", [dsgd_jax.linear_scaler, dsgd_jax.cosine_scaler, dsgd_jax.descending_scaler]
)
def test_constant_after_total_steps_and_before_zero(factory):
    scaler = factory(beta=0.8, total_steps=10)
    end = float(scaler(10))
    for t in (11, 100, 10**6):
        assert float(scaler(t)) == end
    assert float(scaler(-5)) == float(scaler(0))


def test_no_retrace_when_step_changes():
    traces = []
    scaler = dsgd_jax.cosine_scaler(1.0, total_steps=T)

    @jax.jit
    def f(t):
        traces.append(t)
        return scaler(t)

    values = [float(f(jnp.int32(t))) for t in STEPS]
    assert len(traces) == 1
    assert values[0] < values[1] < values[2] < values[3]


def test_beta_above_one_needs_opt_in():
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\].*allow_beta_above_one=True"):
        dsgd_jax.linear_scaler(beta=1.5, total_steps=10)
    scaler = dsgd_jax.linear_scaler(beta=1.5, total_steps=10, allow_beta_above_one=True)
    np.testing.assert_allclose(float(scaler(10)), 1.5)
    with pytest.raises(ValueError, match="allow_above_one=True"):
        dsgd_jax.constant_scaler(2.0)
    np.testing.assert_allclose(float(dsgd_jax.constant_scaler(2.0, allow_above_one=True)(0)), 2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta": 0.0, "total_steps": 10}, ValueError, r"beta must be in \(0, 1\]"),
        ({"beta": -0.5, "total_steps": 10}, ValueError, r"beta must be in \(0, 1\]"),
        ({"beta": float("nan"), "total_steps": 10}, ValueError, r"beta must be finite"),
        ({"beta": "1", "total_steps": 10}, TypeError, r"beta must be a real number"),
        ({"beta": 1.0, "total_steps": 0}, ValueError, r"total_steps must be > 0"),
        ({"beta": 1.0, "total_steps": -3}, ValueError, r"total_steps must be > 0"),
        ({"beta": 1.0, "total_steps": 2.5}, TypeError, r"total_steps must be an int"),
        ({"beta": 1.0}, TypeError, r"total_steps must be an int.*total_steps=epochs"),
    ],
)
@pytest.mark.parametrize(
    "factory", [dsgd_jax.linear_scaler, dsgd_jax.cosine_scaler, dsgd_jax.descending_scaler]
)
def test_bad_arguments(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_constant_scaler_rejects_negative():
    with pytest.raises(ValueError, match="value must be >= 0"):
        dsgd_jax.constant_scaler(-0.1)
