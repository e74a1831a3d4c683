"""The DSGD loss: a correctness-masked, scaled mean of per-example losses.

With W the misclassified and C the correctly classified examples of a batch of
n valid examples, DSGD's gradient is

    g = (1/n) * (sum_{i in W} grad l_i + lambda * sum_{i in C} grad l_i),

the gradient of (1/n) * sum_i w_i * l_i with constant weights w_i = 1 on W and
lambda on C. One forward and one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dsgd_jax import _checks
from dsgd_jax._correct import argmax_correct


class DSGDAux(NamedTuple):
    """What a DSGD loss computed besides its value, for logging.

    Attributes:
        correct: bool, per loss entry: classified correctly (weight ``scale``).
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
    """Returns (loss value, weights, fraction correct, n) of the scaled mean."""
    loss = _checks.float_array(per_example_loss, "per_example_loss")
    correct = jnp.asarray(correct)
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
        total, n, num_correct = lax.psum((total, n, num_correct), axis_name)
    denominator = jnp.maximum(n, jnp.ones((), acc))
    value = (total / denominator).astype(loss.dtype)
    fraction = (num_correct / denominator).astype(jnp.float32)
    return value, weights, fraction, n.astype(jnp.float32)


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
    """
    return _masked_mean_parts(per_example_loss, correct, scale, where, axis_name)[0]


def make_dsgd_loss(
    loss_fn: Callable[..., jax.Array],
    correct_fn: Callable[[jax.Array, jax.Array], jax.Array] = argmax_correct,
    *,
    has_aux: bool = False,
) -> Callable[..., jax.Array | tuple[jax.Array, DSGDAux]]:
    """Turns a per-example loss into a DSGD loss.

    The returned function has the signature
    ``f(logits, labels, *, scale, where=None, axis_name=None, **loss_kwargs)``:
    it calls ``correct_fn(logits, labels)`` and ``loss_fn(logits, labels,
    **loss_kwargs)`` on the same forward pass and reduces them with
    :func:`scaled_mean`. Change the loss line of a training step from
    ``loss_fn(logits, labels).mean()`` to ``f(logits, labels, scale=lam)``.

    ``where`` masks examples (padding), in the per-example loss's shape or a
    leading part of it; it is not passed to ``loss_fn``.

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

    Returns:
        The DSGD loss function.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
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

    def dsgd_loss(logits, labels, *, scale, where=None, axis_name=None, **loss_kwargs):
        correct = correct_fn(logits, labels)
        per_example_loss = loss_fn(logits, labels, **loss_kwargs)
        value, weights, fraction, n = _masked_mean_parts(
            per_example_loss, correct, scale, where, axis_name
        )
        if has_aux:
            return value, DSGDAux(correct, weights, fraction, n)
        return value

    return dsgd_loss
