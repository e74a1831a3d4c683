"""Argument checks shared by the public functions.

Every error names the argument it is about and says how to fix it.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


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
    if scale is None:
        raise TypeError(
            "scale is None; pass the DSGD scale lambda(t) for this step, e.g. "
            "scale=scaler(dsgd_jax.step_count(opt_state)), or scale=1.0 for plain fine-tuning."
        )
    if isinstance(scale, bool):
        raise TypeError("scale must be a number, got a bool. Pass e.g. scale=0.5.")
    try:
        arr = jnp.asarray(scale)
    except (TypeError, ValueError) as err:
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


def positive_int(x, name: str, meaning: str, example: str) -> int:
    """``x`` as a positive Python int, else an error naming ``name``.

    ``meaning`` says what the number is (a sentence), ``example`` a typical value
    (an expression), both for the error messages.
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(
            f"{name} must be an int, got {type(x).__name__}: {x!r}. "
            f"Pass {meaning}, e.g. {name}={example}."
        )
    if x <= 0:
        raise ValueError(f"{name} must be > 0, got {x}. It is {meaning}, e.g. {example}.")
    return int(x)


def bool_mask(where) -> jax.Array:
    """``where`` as a bool array, else a TypeError."""
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"where must be a boolean mask (True for entries that count), got dtype "
            f"{where.dtype}. Pass e.g. where=mask.astype(bool)."
        )
    return where


def fits_leading(where_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``where_shape`` is ``shape`` or a leading part of it."""
    return len(where_shape) <= len(shape) and tuple(where_shape) == tuple(shape[: len(where_shape)])


def broadcast_leading(where: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A mask of a leading part of ``shape`` broadcast to ``shape``."""
    where = where.reshape(where.shape + (1,) * (len(shape) - where.ndim))
    return jnp.broadcast_to(where, shape)


def mask_array(
    where,
    shape: tuple[int, ...],
    what: str = "the per-example loss",
    unit: str = "loss entry",
) -> jax.Array:
    """Checks a validity mask against ``shape`` and broadcasts it to ``shape``.

    ``where`` may have the full shape or a leading prefix of it (one flag per
    example when the loss has a trailing label axis); ``None`` means all valid.
    ``what`` names the array whose shape ``shape`` is and ``unit`` one of its
    entries, for the error message.
    """
    if where is None:
        return jnp.ones(shape, bool)
    where = bool_mask(where)
    if not fits_leading(where.shape, shape):
        raise ValueError(
            f"where has shape {where.shape}, which fits neither {what} (shape {shape}) nor "
            f"a leading part of it. Pass one flag per {unit} (shape {shape}) or one per "
            f"example (shape {shape[:1]})."
        )
    return broadcast_leading(where, shape)


def class_axis(axis, shape: tuple[int, ...], name: str = "logits") -> int:
    """The class axis ``axis`` of an array of ``shape``, as a non-negative index."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(
            f"axis must be an int, the class axis of {name}; got {type(axis).__name__}: "
            f"{axis!r}. Pass e.g. axis=-1 (the last axis)."
        )
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(f"{name} must have a class axis; got a scalar.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis} is out of range for {name} of shape {tuple(shape)} (rank {ndim}); "
            f"pass the class axis, an int in [{-ndim}, {ndim}) (default -1, the last axis)."
        )
    return int(axis) % ndim


def index_out_of_range(x: jax.Array, size: int) -> jax.Array:
    """True where the integer (or bool) array ``x`` is not an index in [0, size)."""
    if x.dtype == jnp.bool_:  # False is class 0, True class 1
        if size >= 2:
            return jnp.zeros(x.shape, bool)
        return x if size == 1 else jnp.ones(x.shape, bool)
    bad = x < 0
    if size <= jnp.iinfo(x.dtype).max:
        bad = bad | (x >= size)
    return bad


def outside_unit_interval(x: jax.Array) -> jax.Array:
    """True where ``x`` is not in [0, 1] (NaN included)."""
    if x.dtype == jnp.bool_:
        return jnp.zeros(x.shape, bool)
    return ~((x >= 0) & (x <= 1))


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _index_text(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(tuple(int(i) for i in index))


def report_invalid(
    bad: jax.Array,
    values: jax.Array | None,
    *,
    message: str,
    fix: str,
    checked: bool,
) -> None:
    """Reports entries where ``bad`` is True; nothing when there are none.

    Concrete (eager) ``bad``: a one-line ValueError, ``"{message}; got {value} at
    index {i}, ... {fix}"``, with the first bad entries of ``values`` (or "NaN"
    where ``values`` is None). Traced ``bad`` with ``checked``: a
    ``checkify.check`` with the first bad value and its flat index, reported by
    ``checkify.checkify(f, errors=checkify.user_checks)``. Traced without
    ``checked``: nothing (no work is added to the compiled function).
    """
    if not is_traced(bad):
        bad_np = np.asarray(bad)
        if not bad_np.any():
            return
        where_bad = np.argwhere(bad_np) if bad_np.ndim else np.zeros((1, 0), np.int64)
        shown = []
        values_np = None if values is None else np.asarray(values)
        for index in where_bad[:3]:
            index = tuple(int(i) for i in index)
            value = "NaN" if values_np is None else repr(values_np[index].item())
            shown.append(f"{value} at index {_index_text(index)}" if index else value)
        count = len(where_bad)
        more = f" ({count} bad entries of {bad_np.size})" if count > len(shown) else ""
        raise ValueError(f"{message}; got {', '.join(shown)}{more}. {fix}")
    if checked:
        from jax.experimental import checkify

        flat = bad.ravel()
        first = jnp.argmax(flat)
        value = "NaN" if values is None else "{}"
        args = () if values is None else (jnp.ravel(values)[first],)
        checkify.check(
            ~jnp.any(flat),
            f"{_escape(message)}; got {value} at flat index {{}}. {_escape(fix)}",
            *args,
            first,
        )
