"""The DSGD loss: a correctness-masked, scaled mean of per-example losses.

With W the misclassified and C the correctly classified examples of a batch of
n valid examples, DSGD's gradient is

    g = (1/n) * (sum_{i in W} grad l_i + lambda * sum_{i in C} grad l_i),

the gradient of (1/n) * sum_i w_i * l_i with constant weights w_i = 1 on W and
lambda on C. One forward and one backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dsgd_jax import _checks
from dsgd_jax._correct import (
    _NAN_FIX,
    _class_index_text,
    _softmax_labels,
    argmax_correct,
    sigmoid_correct,
)


class DSGDAux(NamedTuple):
    """What a DSGD loss computed besides its value, for logging.

    Attributes:
        correct: bool, per loss entry: classified correctly (weight ``scale``);
            False where masked out.
        weights: float, per loss entry: the constant weight each loss got
            (1 where wrong, ``scale`` where correct; 0 where masked out).
        fraction_correct: float32 scalar, the share of valid entries classified
            correctly (over all devices when ``axis_name`` is given).
        num_valid: float32 scalar, the number of valid entries n (over all
            devices when ``axis_name`` is given).

    Examples:
        >>> import jax.numpy as jnp, optax, dsgd_jax
        >>> loss_fn = dsgd_jax.make_dsgd_loss(
        ...     optax.losses.softmax_cross_entropy_with_integer_labels, has_aux=True)
        >>> logits = jnp.array([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> loss, aux = loss_fn(logits, jnp.array([0, 1, 1, 0]), scale=0.5)
        >>> float(aux.fraction_correct), float(aux.num_valid)
        (0.5, 4.0)
        >>> aux.weights
        Array([0.5, 1. , 0.5, 1. ], dtype=float32)
    """

    correct: jax.Array
    weights: jax.Array
    fraction_correct: jax.Array
    num_valid: jax.Array


def dsgd_weights(correct: jax.typing.ArrayLike, scale: jax.typing.ArrayLike) -> jax.Array:
    """Per-example DSGD weights: 1 where wrong, ``scale`` where correct.

    The weights are constants of the backward pass (behind ``stop_gradient``).

    Args:
        correct: bool array, True where the example is classified correctly.
        scale: the scalar lambda(t), e.g. ``scaler(dsgd_jax.step_count(opt_state))``.

    Returns:
        A float array of ``correct``'s shape, in the scale's float dtype
        (float32 for Python numbers).

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> dsgd_jax.dsgd_weights(jnp.array([True, False, True]), 0.25)
        Array([0.25, 1.  , 0.25], dtype=float32)
    """
    scale = _checks.scale_array(scale)
    correct = jnp.asarray(correct)
    if correct.dtype != jnp.bool_:
        raise TypeError(
            f"correct must be a bool array, got dtype {correct.dtype}. Build it with "
            "dsgd_jax.argmax_correct or dsgd_jax.sigmoid_correct, or pass mask.astype(bool)."
        )
    return lax.stop_gradient(jnp.where(correct, scale, jnp.ones((), scale.dtype)))


def _accumulation_dtype(dtype) -> jnp.dtype:
    """float32 for half precision, the dtype itself otherwise."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def _masked_mean_parts(per_example_loss, correct, scale, where, axis_name):
    """Returns (loss value, weights, fraction correct, n, valid) of the scaled mean.

    The fraction correct is NaN where the value is NaN.
    """
    loss = _checks.float_array(per_example_loss, "per_example_loss")
    correct = jnp.asarray(correct)
    if loss.ndim == 0 and correct.ndim > 0:
        raise ValueError(
            f"per_example_loss is a scalar, but DSGD needs one loss per example (correct has "
            f"shape {correct.shape}). Pass the unreduced per-example losses, e.g. "
            "optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels) "
            "without .mean()."
        )
    if correct.shape != loss.shape:
        raise ValueError(
            f"correct has shape {correct.shape} but per_example_loss has shape "
            f"{loss.shape}; there must be one flag per loss entry. With a per-entry loss "
            "(e.g. sigmoid_binary_cross_entropy) use dsgd_jax.sigmoid_correct."
        )
    weights = dsgd_weights(correct, scale)
    acc = _accumulation_dtype(loss.dtype)
    valid = _checks.mask_array(where, loss.shape)
    terms = jnp.where(valid, loss.astype(acc) * weights.astype(acc), jnp.zeros((), acc))
    weights = jnp.where(valid, weights, jnp.zeros((), weights.dtype))
    n = jnp.sum(valid, dtype=acc)
    num_correct = jnp.sum(valid & correct, dtype=acc)
    total = jnp.sum(terms)
    if axis_name is not None:
        try:
            total, n, num_correct = lax.psum((total, n, num_correct), axis_name)
        except NameError as err:
            raise ValueError(
                f"axis_name={axis_name!r} names no mapped axis here: the loss runs outside "
                "jax.pmap / jax.shard_map, or under another axis name. Call it inside "
                f"jax.pmap(..., axis_name={axis_name!r}) or jax.shard_map over a mesh with "
                "that axis, or pass axis_name=None (jax.jit over sharded arrays needs none)."
            ) from err
    denominator = jnp.maximum(n, jnp.ones((), acc))
    value = (total / denominator).astype(loss.dtype)
    fraction = (num_correct / denominator).astype(jnp.float32)
    fraction = jnp.where(jnp.isnan(total), jnp.full((), jnp.nan, jnp.float32), fraction)
    return value, weights, fraction, n.astype(jnp.float32), valid


def scaled_mean(
    per_example_loss: jax.typing.ArrayLike,
    correct: jax.typing.ArrayLike,
    scale: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    r"""DSGD's reduction: the mean of per-example losses, correct ones scaled down.

    .. math::
        L = \frac{1}{n} \sum_i w_i \, l_i, \qquad
        w_i = \begin{cases} \lambda & \text{if example } i \text{ is correct} \\
        1 & \text{otherwise} \end{cases}

    with ``n`` the number of valid entries, never ``sum(w)``: the gradient is
    that of Eq. 1 of the paper. A fully masked batch gives 0, not NaN. Sums are
    accumulated in at least float32; the result has the loss's dtype.

    A masked entry's loss never reaches the value, even when it is NaN. Its
    gradient can: where the loss's inputs are NaN on a masked row, the chain
    rule gives 0 * NaN there. :func:`make_dsgd_loss` replaces the inputs of
    masked rows before computing the loss; use it (or ``jnp.where`` the inputs
    yourself) when padding may hold NaN or inf.

    Data parallelism: under ``jax.jit`` with a sharded batch, call it without
    ``axis_name``. Inside ``jax.pmap`` or ``jax.shard_map``, pass the batch's
    ``axis_name``: numerator and n are summed over devices, so the value is the
    global mean on every device even when devices hold different numbers of
    valid examples. Under ``pmap``, average the gradients with ``lax.pmean``
    as usual; under ``shard_map`` the gradient with respect to replicated
    parameters already comes out as the global one.

    Args:
        per_example_loss: float array, one loss per entry (as optax losses return).
        correct: bool array of the same shape.
        scale: scalar lambda(t).
        where: optional bool mask, True for valid entries, of the loss's shape or
            a leading part of it (one flag per example); masked entries count
            neither in the sum nor in n.
        axis_name: mapped axis name(s) to sum over inside ``pmap``/``shard_map``.

    Returns:
        The scalar loss.

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> losses = jnp.array([0.2, 1.5, 0.1, 2.0])
        >>> correct = jnp.array([True, False, True, False])
        >>> dsgd_jax.scaled_mean(losses, correct, 0.5)  # (0.1 + 1.5 + 0.05 + 2.0) / 4
        Array(0.9125, dtype=float32)
        >>> dsgd_jax.scaled_mean(losses, correct, 0.5, where=jnp.array([1, 1, 0, 0], bool))
        Array(0.8, dtype=float32)

        Several tasks in one batch, one head per task (the paper's Appendix F): take
        each example's loss and correct flag under its own task's head, then reduce
        the whole batch at once, so that n counts the examples of every task:

        >>> import optax
        >>> task = jnp.array([0, 0, 1, 1, 1])  # the head of each example
        >>> labels = jnp.array([0, 2, 1, 0, 1])  # in that head's classes
        >>> logits_a = jnp.array([[2., 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
        >>> logits_b = jnp.array([[0., 0], [0, 0], [0, 1], [2, 0], [1, 0]])
        >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels
        >>> def head_terms(logits, own):  # loss and flag on the rows this head owns
        ...     y = jnp.where(own, labels, 0)  # other tasks' labels may not fit the head
        ...     return jnp.where(own, ce(logits, y), 0.0), dsgd_jax.argmax_correct(logits, y) & own
        >>> (loss_a, correct_a), (loss_b, correct_b) = (
        ...     head_terms(logits_a, task == 0), head_terms(logits_b, task == 1))
        >>> correct_a | correct_b
        Array([ True, False,  True,  True, False], dtype=bool)
        >>> value = dsgd_jax.scaled_mean(loss_a + loss_b, correct_a | correct_b, 0.5)
        >>> round(float(value), 4)  # (0.5 * (0.2395 + 0.3133 + 0.1269) + 1.5514 + 1.3133) / 5
        0.6409
    """
    return _masked_mean_parts(per_example_loss, correct, scale, where, axis_name)[0]


def _predicate(correct_fn) -> tuple[str | None, dict]:
    """Which of dsgd_jax's predicates ``correct_fn`` is, and the keywords bound to it."""
    func, bound = correct_fn, {}
    if isinstance(correct_fn, functools.partial) and not correct_fn.args:
        func, bound = correct_fn.func, dict(correct_fn.keywords)
    if func is argmax_correct:
        return "argmax", bound
    if func is sigmoid_correct:
        return "sigmoid", bound
    return None, bound


def _input_mask(where: jax.Array, shape: tuple[int, ...], class_axis: int | None):
    """``where`` (a mask of the batch or loss shape) broadcast to an input's ``shape``.

    With a class axis, ``where`` is read against the batch shape (``shape``
    without that axis) first. None where it fits neither.
    """
    if class_axis is not None and class_axis < len(shape):
        batch_shape = shape[:class_axis] + shape[class_axis + 1 :]
        if _checks.fits_leading(where.shape, batch_shape):
            mask = jnp.expand_dims(_checks.broadcast_leading(where, batch_shape), class_axis)
            return jnp.broadcast_to(mask, shape)
    if _checks.fits_leading(where.shape, shape):
        return _checks.broadcast_leading(where, shape)
    return None


def _zero_masked(where, logits, labels, class_axis):
    """Logits and labels with zeros on masked rows, so no NaN or inf there reaches a gradient."""
    logits_mask = _input_mask(where, logits.shape, class_axis)
    if logits_mask is not None:
        logits = jnp.where(logits_mask, logits, jnp.zeros((), logits.dtype))
    if labels is not None:
        if labels.shape == logits.shape:
            labels_mask = logits_mask
        else:
            labels_mask = _input_mask(where, labels.shape, None)
        if labels_mask is not None:
            labels = jnp.where(labels_mask, labels, jnp.zeros((), labels.dtype))
    return logits, labels


def _poison(loss: jax.Array, bad: jax.Array) -> jax.Array:
    """The loss times NaN where ``bad`` (of the loss's shape) is True, 1 elsewhere.

    Those entries' loss is NaN and so is their gradient (the factor scales the
    loss's backward pass too), so the batch's loss and gradient turn NaN for a
    NaN check or ``optax.apply_if_finite`` to catch. One multiply per entry.
    """
    if bad.shape != loss.shape:
        return loss  # the shape check of the reduction reports the mismatch
    factor = jnp.where(bad, jnp.full((), jnp.nan, loss.dtype), jnp.ones((), loss.dtype))
    return loss * factor


def make_dsgd_loss(
    loss_fn: Callable[..., jax.Array],
    correct_fn: Callable[[jax.Array, jax.Array], jax.Array] = argmax_correct,
    *,
    has_aux: bool = False,
    checked: bool = False,
) -> Callable[..., jax.Array | tuple[jax.Array, DSGDAux]]:
    """Turns a per-example loss into a DSGD loss.

    The returned function has the signature
    ``f(logits, labels, *, scale, where=None, axis_name=None, **loss_kwargs)``:
    it calls ``correct_fn(logits, labels)`` and ``loss_fn(logits, labels,
    **loss_kwargs)`` on the same forward pass and reduces them with
    :func:`scaled_mean`. Change the loss line of a training step from
    ``loss_fn(logits, labels).mean()`` to ``f(logits, labels, scale=lam)``.

    ``where`` masks examples (padding), in the per-example loss's shape or a
    leading part of it; it is not passed to ``loss_fn``. Masked rows of
    ``logits`` and ``labels`` are replaced by zeros before ``correct_fn`` and
    ``loss_fn`` see them, so their labels may be anything (such as -100) and
    their logits NaN or inf: they get weight 0, ``correct`` False and exactly
    zero gradient.

    The class axis: an ``axis=`` keyword goes to ``loss_fn`` and also to the
    default ``correct_fn``; with another ``correct_fn`` bind it yourself, e.g.
    ``functools.partial(dsgd_jax.argmax_correct, axis=1)``.

    Bad values never train silently. Integer class labels outside ``[0, C)``
    (such as -1 or -100 on a valid row), labels outside ``[0, 1]`` for
    :func:`sigmoid_correct` or one-hot labels, and NaN logits on valid rows:

    - eager (concrete) calls, also inside ``jax.grad`` without ``jit``, raise
      a one-line ``ValueError`` naming the argument, the bad values and the fix;
    - under ``jit`` the example counts as wrong, and an out-of-range label
      makes its loss NaN with a NaN gradient (a label -1 never trains class
      C-1), so the batch's loss, ``fraction_correct`` and gradients are NaN for
      a NaN check, or ``optax.apply_if_finite``, to catch. NaN logits give the
      loss ``loss_fn`` gives them (NaN for optax's losses); any entry with a NaN
      loss counts as wrong and ``fraction_correct`` is NaN whenever the loss is;
    - ``checked=True`` adds ``checkify`` checks under ``jit``: run the loss
      through ``checkify.checkify(f, errors=checkify.user_checks)`` and
      ``err.throw()``. Without it nothing is added to the compiled function.

    With a ``correct_fn`` of your own, the checks cover integer class labels
    of the batch shape and NaN logits.

    Args:
        loss_fn: a per-example loss, e.g.
            ``optax.losses.softmax_cross_entropy_with_integer_labels``,
            ``optax.losses.softmax_cross_entropy`` or
            ``optax.losses.sigmoid_binary_cross_entropy``.
        correct_fn: returns, from (logits, labels), one bool per loss entry:
            :func:`argmax_correct` (default) for softmax losses,
            :func:`sigmoid_correct` for sigmoid losses.
        has_aux: if True, ``f`` returns ``(loss, DSGDAux)`` with the correct
            flags, weights, fraction correct and n, for logging.
        checked: add ``checkify`` checks of the labels and logits under ``jit``.

    Returns:
        The DSGD loss function.

    Examples:
        >>> import functools, jax, jax.numpy as jnp, optax
        >>> from jax.experimental import checkify
        >>> import dsgd_jax
        >>> loss_fn = dsgd_jax.make_dsgd_loss(
        ...     optax.losses.softmax_cross_entropy_with_integer_labels)
        >>> logits = jnp.array([[3.0, 0.0], [0.0, 1.0]])
        >>> labels = jnp.array([0, 0])  # first correct, second wrong
        >>> plain = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
        >>> bool(jnp.isclose(loss_fn(logits, labels, scale=1.0), plain.mean()))
        True
        >>> bool(jnp.isclose(loss_fn(logits, labels, scale=0.0), plain[1] / 2))
        True
        >>> grads = jax.grad(loss_fn)(logits, labels, scale=0.5)

        Classes on axis 1 (``[batch, classes, time]``): ``axis=1`` reaches the
        loss and the default ``argmax_correct``; the same with the predicate bound:

        >>> per_step = jnp.stack([logits, logits], axis=-1)  # shape (2, 2, 2)
        >>> steps = jnp.array([[0, 0], [0, 0]])
        >>> a = loss_fn(per_step, steps, scale=0.5, axis=1)
        >>> loss_axis1 = dsgd_jax.make_dsgd_loss(
        ...     optax.losses.softmax_cross_entropy_with_integer_labels,
        ...     functools.partial(dsgd_jax.argmax_correct, axis=1))
        >>> bool(a == loss_axis1(per_step, steps, scale=0.5, axis=1))
        True

        Padding: masked rows may hold NaN logits and any label:

        >>> padded = jnp.array([[3.0, 0.0], [jnp.nan, jnp.nan]])
        >>> mask = jnp.array([True, False])
        >>> jax.grad(loss_fn)(padded, jnp.array([0, -100]), scale=0.5, where=mask)[1]
        Array([0., 0.], dtype=float32)

        A bad label on a valid row: an error eagerly, NaN under ``jit``, a
        ``checkify`` error with ``checked=True``:

        >>> loss_fn(logits, jnp.array([0, -1]), scale=0.5)
        Traceback (most recent call last):
        ...
        ValueError: labels must be class indices in [0, 2) ...; got -1 at index 1. ...
        >>> jax.jit(lambda z, y: loss_fn(z, y, scale=0.5))(logits, jnp.array([0, -1]))
        Array(nan, dtype=float32)
        >>> checked_loss = dsgd_jax.make_dsgd_loss(
        ...     optax.losses.softmax_cross_entropy_with_integer_labels, checked=True)
        >>> f = checkify.checkify(lambda z, y: checked_loss(z, y, scale=0.5),
        ...                       errors=checkify.user_checks)
        >>> err, value = jax.jit(f)(logits, jnp.array([0, 7]))
        >>> print(err.get())
        labels must be class indices in [0, 2) ...; got 7 at flat index 1. ...
    """
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a per-example loss function, got {type(loss_fn).__name__}. "
            "Pass e.g. optax.losses.softmax_cross_entropy_with_integer_labels."
        )
    if not callable(correct_fn):
        raise TypeError(
            f"correct_fn must be a function (logits, labels) -> bool array, got "
            f"{type(correct_fn).__name__}. Pass dsgd_jax.argmax_correct or "
            "dsgd_jax.sigmoid_correct."
        )
    kind, bound = _predicate(correct_fn)

    def dsgd_loss(logits, labels, *, scale, where=None, axis_name=None, **loss_kwargs):
        scale = _checks.scale_array(scale)
        logits = jnp.asarray(logits)
        try:
            labels = jnp.asarray(labels)
        except (TypeError, ValueError):
            pass  # not an array: handed to correct_fn and loss_fn as it is
        label_array = labels if isinstance(labels, jax.Array) else None
        loss_axis = loss_kwargs.get("axis")
        if loss_axis is not None:
            _checks.class_axis(loss_axis, logits.shape)
        correct_kwargs = {}
        if kind is not None and "checked" not in bound:
            correct_kwargs["checked"] = checked
        axis = None  # the class axis as given, where there is one
        if kind == "argmax":
            axis = bound.get("axis", -1 if loss_axis is None else loss_axis)
            if "axis" not in bound and loss_axis is not None:
                correct_kwargs["axis"] = loss_axis  # the default predicate reads the same axis
        elif kind is None and logits.ndim > 0:
            axis = -1 if loss_axis is None else loss_axis
        ax = None if axis is None else _checks.class_axis(axis, logits.shape)
        if kind == "argmax" and loss_axis is not None:
            if _checks.class_axis(loss_axis, logits.shape) != ax:
                raise ValueError(
                    f"axis={loss_axis} goes to loss_fn but correct_fn reads the classes on "
                    f"axis={axis}; pass the same axis to both."
                )

        if where is not None:
            where = _checks.bool_mask(where)
            logits, label_array = _zero_masked(where, logits, label_array, ax)
            if label_array is not None:
                labels = label_array

        # bad labels, per loss entry: counted wrong, and their loss made NaN
        bad = None
        if label_array is not None:
            view_logits, view_labels = lax.stop_gradient(logits), lax.stop_gradient(label_array)
            if kind == "argmax" and jnp.issubdtype(logits.dtype, jnp.floating):
                bad = _softmax_labels(view_logits, view_labels, ax, axis)[1]
            elif kind == "sigmoid" and label_array.shape == logits.shape:
                bad = _checks.outside_unit_interval(view_labels)
            elif (
                kind is None
                and ax is not None
                and label_array.shape == logits.shape[:ax] + logits.shape[ax + 1 :]
                and jnp.issubdtype(label_array.dtype, jnp.integer)
            ):
                num_classes = logits.shape[ax]
                bad = _checks.index_out_of_range(view_labels, num_classes)
                message, fix = _class_index_text(num_classes, axis)
                _checks.report_invalid(bad, view_labels, message=message, fix=fix, checked=checked)
        if kind is None and (checked or not _checks.is_traced(lax.stop_gradient(logits))):
            if jnp.issubdtype(logits.dtype, jnp.floating):
                _checks.report_invalid(
                    jnp.isnan(lax.stop_gradient(logits)),
                    None,
                    message="logits must not hold NaN on a valid row",
                    fix=_NAN_FIX,
                    checked=checked,
                )

        correct = correct_fn(logits, labels, **correct_kwargs)
        correct = jnp.asarray(correct)
        per_example_loss = jnp.asarray(loss_fn(logits, labels, **loss_kwargs))
        if per_example_loss.ndim == 0 and correct.ndim > 0:
            raise ValueError(
                f"loss_fn returned a scalar, but DSGD needs one loss per example (correct_fn "
                f"gave shape {correct.shape}). Pass a per-example loss such as "
                "optax.losses.softmax_cross_entropy_with_integer_labels, not its .mean()."
            )
        if not jnp.issubdtype(per_example_loss.dtype, jnp.floating):
            raise TypeError(
                f"loss_fn must return float per-example losses, got dtype "
                f"{per_example_loss.dtype}. Return them as floats, e.g. losses.astype(jnp.float32)."
            )
        if bad is not None:
            per_example_loss = _poison(per_example_loss, bad)
        if correct.shape == per_example_loss.shape and correct.dtype == jnp.bool_:
            correct = correct & ~jnp.isnan(lax.stop_gradient(per_example_loss))
        value, weights, fraction, n, valid = _masked_mean_parts(
            per_example_loss, correct, scale, where, axis_name
        )
        if has_aux:
            return value, DSGDAux(correct & valid, weights, fraction, n)
        return value

    return dsgd_loss
