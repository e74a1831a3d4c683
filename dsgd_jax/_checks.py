"""Argument checks shared by the public functions.

Every error names the argument it is about and says how to fix it.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def is_traced(x) -> bool:
    """Whether ``x`` is a tracer (its value is unknown at trace time)."""
    return isinstance(x, jax.core.Tracer)


def float_array(x, name: str) -> jax.Array:
    """``x`` as an array with a floating dtype, else a TypeError naming ``name``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype, got {x.dtype}. "
            f"Pass {name} as floats, e.g. {name}.astype(jnp.float32)."
        )
    return x


def scale_array(scale) -> jax.Array:
    """Checks the DSGD scale (lambda) and returns it as a float scalar array."""
    if isinstance(scale, bool):
        raise TypeError("scale must be a number, got a bool. Pass e.g. scale=0.5.")
    try:
        arr = jnp.asarray(scale)
    except TypeError as err:
        raise TypeError(
            f"scale must be a number or a scalar array, got {type(scale).__name__}. "
            "Pass the scaler's value at the current step, e.g. "
            "scale=scaler(dsgd_jax.step_count(opt_state))."
        ) from err
    if arr.ndim != 0:
        raise ValueError(
            f"scale must be a scalar, got an array of shape {arr.shape}. "
            "Pass one value per step, e.g. scale=scaler(dsgd_jax.step_count(opt_state)); "
            "for per-example weights use dsgd_jax.dsgd_weights."
        )
    if arr.dtype == jnp.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise TypeError(f"scale must be a real number, got dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    if not is_traced(arr):
        value = float(arr)
        if not (value >= 0.0 and value < float("inf")):
            raise ValueError(
                f"scale must be finite and >= 0, got {value}. DSGD multiplies the loss of "
                "correctly classified examples by scale; use a value in [0, 1]."
            )
    return arr


def real_number(x, name: str) -> float:
    """``x`` as a finite Python float, else an error naming ``name``."""
    is_scalar_array = (
        hasattr(x, "dtype")
        and jnp.ndim(x) == 0
        and not is_traced(x)
        and (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer))
    )
    if isinstance(x, bool) or not (isinstance(x, numbers.Real) or is_scalar_array):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}: {x!r}.")
    value = float(x)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}.")
    return value


def positive_int(x, name: str) -> int:
    """``x`` as a positive Python int, else an error naming ``name``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(
            f"{name} must be an int, got {type(x).__name__}: {x!r}. "
            f"Pass the number of optimizer updates, e.g. {name}=epochs * steps_per_epoch."
        )
    if x <= 0:
        raise ValueError(
            f"{name} must be > 0, got {x}. It is the number of optimizer updates over "
            "which the scaler ramps, e.g. epochs * steps_per_epoch (divided by the "
            "accumulation steps when you accumulate gradients)."
        )
    return int(x)


def mask_array(where, shape: tuple[int, ...]) -> jax.Array:
    """Checks a validity mask against ``shape`` and broadcasts it to ``shape``.

    ``where`` may have the full shape or a leading prefix of it (one flag per
    example when the loss has a trailing label axis); ``None`` means all valid.
    """
    if where is None:
        return jnp.ones(shape, bool)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"where must be a boolean mask (True for entries that count), got dtype "
            f"{where.dtype}. Pass e.g. where=mask.astype(bool)."
        )
    if where.shape != shape[: where.ndim]:
        raise ValueError(
            f"where has shape {where.shape}, which fits neither the per-example loss's "
            f"shape {shape} nor a leading part of it. Pass one flag per loss entry "
            f"(shape {shape}) or one per example (shape {shape[:1]})."
        )
    where = where.reshape(where.shape + (1,) * (len(shape) - where.ndim))
    return jnp.broadcast_to(where, shape)
