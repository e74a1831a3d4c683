"""Which examples the model already classifies correctly.

The predicates read the forward pass's logits and return booleans; no
gradient flows through them. They also check the labels and logits: an
out-of-range label or a NaN logit is never counted correct (see
:func:`argmax_correct` for what happens eagerly, under ``jit`` and in the
checked mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dsgd_jax import _checks

_MASK_FIX = "or mask those examples out with where= (masked entries are not checked)"
_NAN_FIX = (
    "Find where the NaN comes from (jax.debug_nans, a lower learning rate, gradient "
    "clipping), " + _MASK_FIX + "."
)


def _class_index_text(num_classes: int, given_axis) -> tuple[str, str]:
    """The message and fix of an error about integer labels outside [0, num_classes)."""
    message = (
        f"labels must be class indices in [0, {num_classes}) (logits has {num_classes} "
        f"classes on axis {given_axis})"
    )
    fix = (
        "Fix the labels (or the model's number of classes), "
        + _MASK_FIX
        + ", e.g. where=labels >= 0 for -100 padding."
    )
    return message, fix


def _softmax_labels(logits: jax.Array, labels: jax.Array, axis: int, given_axis) -> tuple:
    """(target class, bad rows, bad label entries, message, fix).

    ``target`` and the bad rows have the batch shape; the bad entries have the
    labels' shape (the labels hold their values, for the error message).
    """
    num_classes = logits.shape[axis]
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    if labels.shape == logits.shape:
        bad = _checks.outside_unit_interval(labels)
        message = (
            f"labels of the logits' shape {logits.shape} (one-hot or soft labels) must be in [0, 1]"
        )
        fix = "Pass one-hot or soft labels (probabilities), " + _MASK_FIX + "."
        return jnp.argmax(labels, axis=axis), jnp.any(bad, axis=axis), bad, message, fix
    if labels.shape == batch_shape:
        if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
            raise TypeError(
                f"labels of the batch shape {labels.shape} must be integer class indices, "
                f"got dtype {labels.dtype}. Cast them with labels.astype(jnp.int32), or "
                f"pass one-hot labels of the logits' shape {logits.shape}."
            )
        bad = _checks.index_out_of_range(labels, num_classes)
        return labels, bad, bad, *_class_index_text(num_classes, given_axis)
    raise ValueError(
        f"labels has shape {labels.shape}, which fits neither integer labels (shape "
        f"{batch_shape}, the logits' shape {logits.shape} without axis {given_axis}) nor "
        f"one-hot labels (shape {logits.shape}). Reshape the labels, or set the class axis: "
        "argmax_correct(logits, labels, axis=1); for a DSGD loss pass axis=1 to it (it "
        "reaches the default argmax_correct) or use "
        "correct_fn=functools.partial(dsgd_jax.argmax_correct, axis=1)."
    )


def argmax_correct(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis: int = -1,
    where: jax.typing.ArrayLike | None = None,
    checked: bool = False,
) -> jax.Array:
    """Whether ``argmax(logits) == label`` for each example (softmax classifiers).

    This is Definition 4.1 of the paper. Labels may be integer class indices
    (the batch shape) or one-hot / soft labels (the logits' shape), in which
    case the target class is ``argmax(labels)``. Ties go to the lowest index.

    Bad inputs are never counted correct. Integer labels outside
    ``[0, num_classes)`` (such as ``-1`` or the ``-100`` of ignored tokens),
    one-hot or soft labels outside ``[0, 1]`` (NaN included), and rows of
    ``logits`` holding a NaN:

    - eagerly (concrete arrays, also inside ``jax.grad`` without ``jit``) raise
      a one-line ``ValueError`` naming the argument, the first bad values with
      their indices, and the fix;
    - under ``jit`` (values unknown at trace time) give ``False`` for those
      examples and raise nothing; :func:`make_dsgd_loss` also makes their
      loss NaN, so the problem shows in the loss;
    - with ``checked=True`` under ``jit``, add ``checkify`` checks, reported by
      ``jax.experimental.checkify.checkify(f, errors=checkify.user_checks)``.
      Without ``checked`` nothing is added to the compiled function.

    Entries where ``where`` is False are not checked and give ``False``.

    Args:
        logits: float array, classes along ``axis``.
        labels: integer array of the batch shape (``logits`` without ``axis``),
            or an array of the logits' shape.
        axis: the class axis of ``logits``. To use another axis inside a DSGD
            loss, pass ``axis=`` to the loss (it reaches the default
            ``argmax_correct``) or bind it:
            ``make_dsgd_loss(loss_fn, functools.partial(argmax_correct, axis=1))``.
        where: optional bool mask of the batch shape (or a leading part of it),
            True for the examples to check and classify.
        checked: add ``checkify`` checks of the labels and logits under ``jit``.

    Returns:
        A bool array of the batch shape.

    Examples:
        >>> import functools, jax, jax.numpy as jnp
        >>> from jax.experimental import checkify
        >>> import dsgd_jax
        >>> logits = jnp.array([[2.0, 0.1, -1.0], [0.3, 0.2, 1.5]])
        >>> dsgd_jax.argmax_correct(logits, jnp.array([0, 1]))
        Array([ True, False], dtype=bool)
        >>> dsgd_jax.argmax_correct(logits, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        Array([ True,  True], dtype=bool)

        Classes on another axis, e.g. ``[batch, classes, time]``:

        >>> per_step = jnp.stack([logits, logits], axis=-1)  # shape (2, 3, 2)
        >>> correct_fn = functools.partial(dsgd_jax.argmax_correct, axis=1)
        >>> correct_fn(per_step, jnp.array([[0, 1], [2, 2]]))
        Array([[ True, False],
               [ True,  True]], dtype=bool)

        A label out of range is an error eagerly, ``False`` under ``jit``, and a
        ``checkify`` error in the checked mode:

        >>> dsgd_jax.argmax_correct(logits, jnp.array([0, -1]))
        Traceback (most recent call last):
        ...
        ValueError: labels must be class indices in [0, 3) ...; got -1 at index 1. ...
        >>> jax.jit(dsgd_jax.argmax_correct)(logits, jnp.array([0, -1]))
        Array([ True, False], dtype=bool)
        >>> checked = checkify.checkify(
        ...     functools.partial(dsgd_jax.argmax_correct, checked=True),
        ...     errors=checkify.user_checks)
        >>> err, _ = jax.jit(checked)(logits, jnp.array([0, 9]))
        >>> print(err.get())
        labels must be class indices in [0, 3) ...; got 9 at flat index 1. ...
    """
    logits = lax.stop_gradient(_checks.float_array(logits, "logits"))
    labels = lax.stop_gradient(jnp.asarray(labels))
    ax = _checks.class_axis(axis, logits.shape)
    batch_shape = logits.shape[:ax] + logits.shape[ax + 1 :]
    target, bad_rows, bad, message, fix = _softmax_labels(logits, labels, ax, axis)
    pred = jnp.argmax(logits, axis=ax)
    # argmax picks a NaN where a row holds one: reading the picked logit finds NaN rows
    picked = jnp.take_along_axis(logits, jnp.expand_dims(pred, ax), axis=ax)
    nan_rows = jnp.isnan(jnp.squeeze(picked, ax))
    valid = (
        None
        if where is None
        else _checks.mask_array(
            where, batch_shape, "the batch (logits without the class axis)", "example"
        )
    )
    report_bad, report_nan = bad, nan_rows
    if valid is not None:
        entry_valid = valid if bad.shape == batch_shape else jnp.expand_dims(valid, ax)
        report_bad, report_nan = bad & entry_valid, nan_rows & valid
    _checks.report_invalid(report_bad, labels, message=message, fix=fix, checked=checked)
    _checks.report_invalid(
        report_nan,
        None,
        message="logits rows must not hold NaN (a NaN row is never counted correct)",
        fix=_NAN_FIX,
        checked=checked,
    )
    correct = (pred == target.astype(pred.dtype)) & ~nan_rows & ~bad_rows
    return correct if valid is None else correct & valid


def sigmoid_correct(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    checked: bool = False,
) -> jax.Array:
    """Whether ``(logit > 0) == (label > 0.5)`` per entry (binary and multi-label).

    Use with per-entry losses such as ``optax.losses.sigmoid_binary_cross_entropy``:
    each (example, label) entry is its own correct or wrong item.

    Labels outside ``[0, 1]`` (NaN included) and NaN logits are never counted
    correct: eagerly they raise a one-line ``ValueError``; under ``jit`` the
    entry is ``False`` (and :func:`make_dsgd_loss` makes its loss NaN); with
    ``checked=True`` under ``jit`` they fail a ``checkify`` check, as in
    :func:`argmax_correct`. Entries where ``where`` is False are not checked
    and give ``False``.

    Args:
        logits: float array.
        labels: array of the same shape, targets in [0, 1] (or bool).
        where: optional bool mask of the logits' shape or a leading part of it.
        checked: add ``checkify`` checks of the labels and logits under ``jit``.

    Returns:
        A bool array of the logits' shape.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import dsgd_jax
        >>> logits = jnp.array([[1.5, -0.2], [-3.0, 0.4]])
        >>> labels = jnp.array([[1.0, 1.0], [0.0, 0.0]])
        >>> dsgd_jax.sigmoid_correct(logits, labels)
        Array([[ True, False],
               [ True, False]], dtype=bool)
        >>> dsgd_jax.sigmoid_correct(logits, jnp.array([[5.0, 1.0], [0.0, 0.0]]))
        Traceback (most recent call last):
        ...
        ValueError: labels must be targets in [0, 1] ...; got 5.0 at index (0, 0). ...
        >>> jax.jit(dsgd_jax.sigmoid_correct)(logits, jnp.array([[5.0, 1.0], [0.0, -3.0]]))
        Array([[False, False],
               [ True, False]], dtype=bool)
    """
    logits = lax.stop_gradient(_checks.float_array(logits, "logits"))
    labels = lax.stop_gradient(jnp.asarray(labels))
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels has shape {labels.shape} but logits has shape {logits.shape}; "
            "sigmoid_correct compares them entry by entry. Pass one target per logit "
            "(multi-hot labels for multi-label tasks)."
        )
    bad = _checks.outside_unit_interval(labels)
    nan = jnp.isnan(logits)
    valid = (
        None if where is None else _checks.mask_array(where, logits.shape, "the logits", "entry")
    )
    _checks.report_invalid(
        bad if valid is None else bad & valid,
        labels,
        message="labels must be targets in [0, 1] (sigmoid_correct compares label > 0.5)",
        fix="Pass binary or multi-hot targets in [0, 1], " + _MASK_FIX + ".",
        checked=checked,
    )
    _checks.report_invalid(
        nan if valid is None else nan & valid,
        None,
        message="logits must not hold NaN (a NaN logit is never counted correct)",
        fix=_NAN_FIX,
        checked=checked,
    )
    correct = ((logits > 0) == (labels.astype(jnp.float32) > 0.5)) & ~nan & ~bad
    return correct if valid is None else correct & valid
