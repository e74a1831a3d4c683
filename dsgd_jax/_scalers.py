"""Schedules for the DSGD scale lambda(t).

Each scaler is an ``optax.Schedule``: a function from the optimizer update
index ``t`` (a Python int or a traced int32 array) to a float32 scalar. Any
optax schedule can be used in its place.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from dsgd_jax import _checks


def _beta(beta, allow_beta_above_one: bool) -> float:
    beta = _checks.real_number(beta, "beta")
    if beta <= 0.0:
        raise ValueError(
            f"beta must be in (0, 1], got {beta}. beta is the largest scale given to "
            "correctly classified examples; the paper's default is 1.0."
        )
    if beta > 1.0 and not allow_beta_above_one:
        raise ValueError(
            f"beta must be in (0, 1], got {beta}. A scale above 1 up-weights correctly "
            "classified examples, which is no longer DSGD; pass allow_beta_above_one=True "
            "if you mean it."
        )
    return beta


def _ramp(
    beta, total_steps, allow_beta_above_one: bool, curve: Callable[[jax.Array], jax.Array]
) -> optax.Schedule:
    """The schedule ``t -> beta * curve(min(t / T, 1))``, t clipped at 0, in float32."""
    beta = _beta(beta, allow_beta_above_one)
    total_steps = _checks.positive_int(
        total_steps,
        "total_steps",
        "the number of optimizer updates over which the scale changes (with gradient "
        "accumulation, optimizer updates, not micro-batches)",
        "epochs * steps_per_epoch",
    )

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        progress = jnp.clip(jnp.asarray(count).astype(jnp.float32) / total_steps, 0.0, 1.0)
        return beta * curve(progress)

    return schedule


def linear_scaler(
    beta: float = 1.0, total_steps: int | None = None, *, allow_beta_above_one: bool = False
) -> optax.Schedule:
    r"""Linear ascending scale, the paper's default: 0 at the start, ``beta`` at the end.

    .. math::
        \lambda(t) = \beta \min(t / T, 1)

    Args:
        beta: the final scale, in (0, 1]. 1.0 ends training as plain fine-tuning.
        total_steps: ``T``, the number of optimizer updates over which lambda
            rises; constant at ``beta`` for ``t >= T``. With gradient
            accumulation, count optimizer updates, not micro-batches.
        allow_beta_above_one: accept ``beta > 1``.

    Returns:
        A schedule ``t -> lambda(t)`` (float32 scalar), jittable with a traced step.

    Examples:
        >>> import dsgd_jax
        >>> scaler = dsgd_jax.linear_scaler(beta=1.0, total_steps=100)
        >>> [round(float(scaler(t)), 4) for t in (0, 25, 50, 100, 200)]
        [0.0, 0.25, 0.5, 1.0, 1.0]

    References:
        Bui & Wang, *Dynamic Scaled Gradient Descent for Stable Fine-Tuning for
        Classifications*, arXiv 2604.27987, 2026 (Eq. 4).
    """
    return _ramp(beta, total_steps, allow_beta_above_one, lambda p: p)


def cosine_scaler(
    beta: float = 1.0, total_steps: int | None = None, *, allow_beta_above_one: bool = False
) -> optax.Schedule:
    r"""Cosine ascending scale: 0 at the start, ``beta`` at the end, flat at both ends.

    .. math::
        \lambda(t) = \beta \, \frac{1 - \cos(\pi \min(t / T, 1))}{2}

    Args:
        beta: the final scale, in (0, 1].
        total_steps: ``T``, the number of optimizer updates; constant for ``t >= T``.
        allow_beta_above_one: accept ``beta > 1``.

    Returns:
        A schedule ``t -> lambda(t)`` (float32 scalar).

    Examples:
        >>> import dsgd_jax
        >>> scaler = dsgd_jax.cosine_scaler(beta=1.0, total_steps=100)
        >>> [round(float(scaler(t)), 4) for t in (0, 25, 50, 100, 200)]
        [0.0, 0.1464, 0.5, 1.0, 1.0]
    """
    return _ramp(
        beta, total_steps, allow_beta_above_one, lambda p: 0.5 * (1.0 - jnp.cos(jnp.pi * p))
    )


def descending_scaler(
    beta: float = 1.0, total_steps: int | None = None, *, allow_beta_above_one: bool = False
) -> optax.Schedule:
    r"""Linear descending scale: ``beta`` at the start, 0 at the end.

    The paper's ablation (section 5.5); it does worse than the ascending scalers.

    .. math::
        \lambda(t) = \beta (1 - \min(t / T, 1))

    Args:
        beta: the initial scale, in (0, 1].
        total_steps: ``T``, the number of optimizer updates; 0 for ``t >= T``.
        allow_beta_above_one: accept ``beta > 1``.

    Returns:
        A schedule ``t -> lambda(t)`` (float32 scalar).

    Examples:
        >>> import dsgd_jax
        >>> scaler = dsgd_jax.descending_scaler(beta=0.5, total_steps=100)
        >>> [round(float(scaler(t)), 4) for t in (0, 25, 50, 100, 200)]
        [0.5, 0.375, 0.25, 0.0, 0.0]
    """
    return _ramp(beta, total_steps, allow_beta_above_one, lambda p: 1.0 - p)


def constant_scaler(value: float, *, allow_above_one: bool = False) -> optax.Schedule:
    r"""Static scale ``lambda(t) = value``.

    The paper reports low accuracy for ``value`` in {0, 0.1} and collapsed runs
    for larger values; it is here for ablations.

    Args:
        value: the scale, in [0, 1].
        allow_above_one: accept ``value > 1``.

    Returns:
        A schedule ``t -> value`` (float32 scalar).

    Examples:
        >>> import dsgd_jax
        >>> scaler = dsgd_jax.constant_scaler(0.1)
        >>> [round(float(scaler(t)), 4) for t in (0, 1000)]
        [0.1, 0.1]
    """
    value = _checks.real_number(value, "value")
    if value < 0.0:
        raise ValueError(f"value must be >= 0, got {value}. Use a scale in [0, 1].")
    if value > 1.0 and not allow_above_one:
        raise ValueError(
            f"value must be in [0, 1], got {value}; pass allow_above_one=True if you mean it."
        )

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        return jnp.full(jnp.shape(count), value, dtype=jnp.float32)

    return schedule
