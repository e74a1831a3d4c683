"""Diagnostics of the paper's Figure 2: gradient conflict and collapse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dsgd_jax import _checks


class GradientConflict(NamedTuple):
    """Gradients of the wrong (W) and correct (C) groups of one batch.

    With n valid examples, ``g_W = (1/n) sum_{i in W} grad l_i`` and
    ``g_C = (1/n) sum_{i in C} grad l_i``.

    Attributes:
        cosine: cos(g_W, g_C); 0 when either group is empty. Negative values
            mean the two groups pull against each other (gradient cancellation).
        wrong_norm: ||g_W||.
        correct_norm: ||g_C|| (unscaled).
        total_norm: ||g_W + scale * g_C||, the norm of the update direction
            (the plain gradient's norm for ``scale=1``).
        fraction_correct: |C| / n.

    Examples:
        >>> import dsgd_jax
        >>> stats = dsgd_jax.GradientConflict(-0.5, 1.0, 2.0, 1.7, 0.6)
        >>> stats.cosine
        -0.5
    """

    cosine: jax.Array
    wrong_norm: jax.Array
    correct_norm: jax.Array
    total_norm: jax.Array
    fraction_correct: jax.Array


def gradient_conflict(
    loss_fn: Callable[..., tuple[jax.Array, jax.Array]],
    params: Any,
    *args: Any,
    scale: jax.typing.ArrayLike = 1.0,
    where: jax.typing.ArrayLike | None = None,
    **kwargs: Any,
) -> GradientConflict:
    """Measures the conflict between the gradients of the wrong and correct examples.

    Cost: one forward and two backward passes of ``loss_fn`` (the two
    backward passes are batched with ``vmap``), on top of the training step.
    Nothing is computed unless you call it; log it every N steps rather than
    every step.

    Args:
        loss_fn: ``loss_fn(params, *args, **kwargs) -> (per_example_loss,
            correct)``, both of the same shape (e.g. an optax loss and
            :func:`argmax_correct` of the same logits).
        params: the pytree to differentiate with respect to.
        *args: passed to ``loss_fn``.
        scale: lambda, used only for ``total_norm``.
        where: optional bool mask of valid entries (the loss's shape or a
            leading part of it).
        **kwargs: passed to ``loss_fn``.

    Returns:
        A :class:`GradientConflict` of float32 scalars.

    Examples:
        Two examples pulling a scalar parameter in opposite directions:

        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> def loss_fn(w):
        ...     losses = jnp.stack([(w - 1.0) ** 2, (w + 1.0) ** 2])
        ...     return losses, jnp.array([True, False])
        >>> stats = dsgd_jax.gradient_conflict(loss_fn, jnp.array(0.0))
        >>> float(stats.cosine), float(stats.total_norm), float(stats.fraction_correct)
        (-1.0, 0.0, 0.5)
    """
    scale = _checks.scale_array(scale)

    losses, vjp_fn, correct = jax.vjp(lambda p: loss_fn(p, *args, **kwargs), params, has_aux=True)
    losses = _checks.float_array(losses, "per_example_loss")
    correct = jnp.asarray(correct)
    if correct.shape != losses.shape or correct.dtype != jnp.bool_:
        raise ValueError(
            f"loss_fn must return (per_example_loss, correct) with correct a bool array "
            f"of the loss's shape {losses.shape}; got correct of shape {correct.shape} "
            f"and dtype {correct.dtype}."
        )
    valid = _checks.mask_array(where, losses.shape)
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
    in_wrong = (valid & ~correct).astype(losses.dtype)
    in_correct = (valid & correct).astype(losses.dtype)
    cotangents = jnp.stack([in_wrong, in_correct]) / n.astype(losses.dtype)
    (grads,) = jax.vmap(vjp_fn)(cotangents)
    grads = optax.tree_utils.tree_cast(grads, jnp.float32)
    g_wrong = jax.tree.map(lambda g: g[0], grads)
    g_correct = jax.tree.map(lambda g: g[1], grads)
    ww = optax.tree_utils.tree_vdot(g_wrong, g_wrong)
    cc = optax.tree_utils.tree_vdot(g_correct, g_correct)
    wc = optax.tree_utils.tree_vdot(g_wrong, g_correct)
    norm_product = jnp.sqrt(ww) * jnp.sqrt(cc)
    cosine = jnp.where(norm_product > 0, wc / jnp.where(norm_product > 0, norm_product, 1.0), 0.0)
    lam = scale.astype(jnp.float32)
    # the norm of the sum directly: expanding |g_W|^2 + 2 lam g_W.g_C + ... cancels badly
    total = jax.tree.map(lambda w, c: w + lam * c, g_wrong, g_correct)
    return GradientConflict(
        cosine=cosine,
        wrong_norm=jnp.sqrt(ww),
        correct_norm=jnp.sqrt(cc),
        total_norm=optax.tree_utils.tree_norm(total),
        fraction_correct=jnp.sum(in_correct, dtype=jnp.float32) / n,
    )


class CollapseStats(NamedTuple):
    """Whether a classifier predicts (nearly) one class for every input.

    Attributes:
        majority_class: int32, the most-predicted class.
        majority_share: float32, the share of valid predictions going to it.
        collapsed: bool, ``majority_share >= threshold``.

    Examples:
        >>> import dsgd_jax
        >>> dsgd_jax.CollapseStats(2, 1.0, True).collapsed
        True
    """

    majority_class: jax.Array
    majority_share: jax.Array
    collapsed: jax.Array


def collapse_check(
    predictions: jax.typing.ArrayLike,
    num_classes: int,
    *,
    threshold: float = 0.95,
    where: jax.typing.ArrayLike | None = None,
) -> CollapseStats:
    """Checks predictions for collapse onto one class.

    A collapsed fine-tuning run predicts the same class for every input. The
    check is on predictions alone: compare ``majority_share`` with the share of
    the majority class in the labels to judge imbalanced sets.

    Args:
        predictions: integer class predictions, e.g. ``jnp.argmax(logits, -1)``.
        num_classes: the number of classes (static, for ``jit``).
        threshold: the majority share at or above which the run counts as
            collapsed, in (0, 1].
        where: optional bool mask of the predictions to count.

    Returns:
        A :class:`CollapseStats`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> stats = dsgd_jax.collapse_check(jnp.array([1, 1, 1, 1, 0]), num_classes=3,
        ...                                 threshold=0.8)
        >>> int(stats.majority_class), round(float(stats.majority_share), 4), bool(stats.collapsed)
        (1, 0.8, True)
    """
    predictions = jnp.asarray(predictions)
    if not jnp.issubdtype(predictions.dtype, jnp.integer):
        raise TypeError(
            f"predictions must be integer class indices, got dtype {predictions.dtype}. "
            "Pass jnp.argmax(logits, axis=-1)."
        )
    num_classes = _checks.positive_int(num_classes, "num_classes")
    threshold = _checks.real_number(threshold, "threshold")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    valid = _checks.mask_array(where, predictions.shape)
    counts = jnp.bincount(
        predictions.ravel(), weights=valid.ravel().astype(jnp.float32), length=num_classes
    )
    total = jnp.maximum(jnp.sum(counts), 1.0)
    share = jnp.max(counts) / total
    return CollapseStats(
        majority_class=jnp.argmax(counts).astype(jnp.int32),
        majority_share=share,
        collapsed=share >= threshold,
    )


def mean_pairwise_cosine(
    features: jax.typing.ArrayLike, *, where: jax.typing.ArrayLike | None = None
) -> jax.Array:
    """Mean cosine similarity over distinct pairs of representations.

    The paper's post-training check on [CLS] representations: a collapsed
    model maps every input to nearly the same vector (mean close to 1).

    Args:
        features: float array ``[num_examples, dim]``.
        where: optional bool mask ``[num_examples]`` of rows to include.

    Returns:
        A float32 scalar; 0 when fewer than two rows are valid.

    Examples:
        >>> import jax.numpy as jnp
        >>> import dsgd_jax
        >>> feats = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
        >>> round(float(dsgd_jax.mean_pairwise_cosine(feats)), 4)  # pairs: 0, 1, 0
        0.3333
    """
    features = _checks.float_array(features, "features")
    if features.ndim != 2:
        raise ValueError(
            f"features must be [num_examples, dim], got shape {features.shape}; "
            "reshape with features.reshape(len(features), -1)."
        )
    x = features.astype(jnp.float32)
    norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
    unit = x / jnp.where(norms > 0, norms, 1.0)
    valid = _checks.mask_array(where, x.shape[:1])
    v = valid.astype(jnp.float32)
    s = unit * v[:, None]
    total = jnp.sum(s, axis=0)
    pair_sum = jnp.vdot(total, total) - jnp.sum(s * s)  # sum over i != j
    k = jnp.sum(v)
    pairs = k * (k - 1.0)
    return jnp.where(pairs > 0, pair_sum / jnp.where(pairs > 0, pairs, 1.0), 0.0)
