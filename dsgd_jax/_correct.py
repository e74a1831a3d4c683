"""Which examples the model already classifies correctly.

The predicates read the forward pass's logits and return booleans; no
gradient flows through them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dsgd_jax import _checks


def argmax_correct(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, axis: int = -1
) -> jax.Array:
    """Whether ``argmax(logits) == label`` for each example (softmax classifiers).

    This is Definition 4.1 of the paper. Labels may be integer class indices
    (the batch shape) or one-hot / soft labels (the logits' shape), in which
    case the target class is ``argmax(labels)``. Ties go to the lowest index.

    Args:
        logits: float array, classes along ``axis``.
        labels: integer array of the batch shape (``logits`` without ``axis``),
            or an array of the logits' shape.
        axis: the class axis of ``logits``.

    Returns:
        A bool array of the batch shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> logits = jnp.array([[2.0, 0.1, -1.0], [0.3, 0.2, 1.5]])
        >>> dsgd_jax.argmax_correct(logits, jnp.array([0, 1]))
        Array([ True, False], dtype=bool)
        >>> dsgd_jax.argmax_correct(logits, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        Array([ True,  True], dtype=bool)
    """
    logits = lax.stop_gradient(_checks.float_array(logits, "logits"))
    labels = lax.stop_gradient(jnp.asarray(labels))
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis; got a scalar.")
    pred = jnp.argmax(logits, axis=axis)
    if labels.shape == logits.shape:
        target = jnp.argmax(labels, axis=axis)
    elif labels.shape == pred.shape:
        if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
            raise TypeError(
                f"labels of the batch shape {labels.shape} must be integer class indices, "
                f"got dtype {labels.dtype}. Cast them with labels.astype(jnp.int32), or "
                f"pass one-hot labels of the logits' shape {logits.shape}."
            )
        target = labels
    else:
        raise ValueError(
            f"labels has shape {labels.shape}, which fits neither integer labels (shape "
            f"{pred.shape}, the logits' shape {logits.shape} without axis {axis}) nor "
            f"one-hot labels (shape {logits.shape}). Reshape the labels or set axis."
        )
    return pred == target.astype(pred.dtype)


def sigmoid_correct(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Whether ``(logit > 0) == (label > 0.5)`` per entry (binary and multi-label).

    Use with per-entry losses such as ``optax.losses.sigmoid_binary_cross_entropy``:
    each (example, label) entry is its own correct or wrong item.

    Args:
        logits: float array.
        labels: array of the same shape, targets in [0, 1] (or bool).

    Returns:
        A bool array of the logits' shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> logits = jnp.array([[1.5, -0.2], [-3.0, 0.4]])
        >>> labels = jnp.array([[1.0, 1.0], [0.0, 0.0]])
        >>> dsgd_jax.sigmoid_correct(logits, labels)
        Array([[ True, False],
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
    return (logits > 0) == (labels.astype(jnp.float32) > 0.5)
