"""Diagnostics of the paper's Figure 2: gradient conflict and collapse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dsgd_jax import _checks


def _check_params(params: Any) -> None:
    """Every leaf of ``params`` must be a float array (gradient_conflict differentiates it)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    if not leaves:
        raise ValueError(
            "params holds no arrays; pass the parameters loss_fn is differentiated with "
            "respect to, e.g. the model's parameter pytree."
        )
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "params"
            raise TypeError(
                f"params must hold float arrays (gradient_conflict differentiates loss_fn with "
                f"respect to them), but {where} has dtype {dtype}. Cast it with "
                ".astype(jnp.float32), or close over integer state in loss_fn instead of "
                "passing it in params."
            )


class GradientConflict(NamedTuple):
    """Gradients of the wrong (W) and correct (C) groups of one batch.

    With n valid examples, ``g_W = (1/n) sum_{i in W} grad l_i`` and
    ``g_C = (1/n) sum_{i in C} grad l_i``.

    Attributes:
        cosine: cos(g_W, g_C); 0 when either group is empty, NaN when a valid
            loss or a gradient is NaN (never a silent 0). Negative values mean
            the two groups pull against each other (gradient cancellation).
        wrong_norm: ``||g_W||``.
        correct_norm: ``||g_C||`` (unscaled).
        total_norm: ``||g_W + scale * g_C||``, the norm of the update direction
            (the plain gradient's norm for ``scale=1``).
        fraction_correct: ``|C| / n``.

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

    Raises:
        TypeError: if a leaf of ``params`` is not a float array, or ``loss_fn``
            does not return a pair of float losses and bool flags.
        ValueError: if ``loss_fn``'s losses are a scalar (a reduced loss) or
            the flags do not have the losses' shape.

    A NaN in a valid entry's loss, or in the gradients, makes ``cosine`` NaN,
    never the 0 of an empty group. A masked entry's NaN loss is left out, but
    if its gradient is NaN that NaN still reaches the gradients (as 0 * NaN):
    replace masked inputs inside ``loss_fn`` (``jnp.where``) when padding may
    hold NaN.

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

        A NaN loss reads as NaN, not as "no conflict":

        >>> def broken(w):
        ...     losses = jnp.stack([(w - 1.0) ** 2, jnp.log(w - 1.0)])  # log(-1) = NaN
        ...     return losses, jnp.array([True, False])
        >>> float(dsgd_jax.gradient_conflict(broken, jnp.array(0.0)).cosine)
        nan
    """
    scale = _checks.scale_array(scale)
    _check_params(params)

    not_a_pair = []

    def split(p):
        out = loss_fn(p, *args, **kwargs)
        if isinstance(out, tuple) and len(out) == 2:
            return out
        not_a_pair.append(
            f"one array of shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
        )
        return jnp.zeros(()), jnp.zeros((), bool)

    losses, vjp_fn, correct = jax.vjp(split, params, has_aux=True)
    if not_a_pair:  # raised out here, where JAX adds nothing to the message
        raise TypeError(
            f"loss_fn must return a pair (per_example_loss, correct), got {not_a_pair[0]}. "
            "Return e.g. (optax.losses.softmax_cross_entropy_with_integer_labels(logits, y), "
            "dsgd_jax.argmax_correct(logits, y))."
        )
    losses = jnp.asarray(losses)
    if not jnp.issubdtype(losses.dtype, jnp.floating):
        raise TypeError(
            f"loss_fn must return float per-example losses, got dtype {losses.dtype}. "
            "Return them as floats, e.g. losses.astype(jnp.float32)."
        )
    if losses.ndim == 0:
        raise ValueError(
            "loss_fn returned a scalar loss, but gradient_conflict needs one loss per example "
            "to split the batch into wrong and correct groups. Return the unreduced losses, "
            "e.g. optax.losses.softmax_cross_entropy_with_integer_labels(logits, y) without "
            ".mean()."
        )
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
    # a NaN loss or gradient must not read as "no conflict"
    broken = jnp.any(valid & jnp.isnan(lax.stop_gradient(losses))) | jnp.isnan(ww * cc + wc)
    cosine = jnp.where(broken, jnp.full((), jnp.nan, jnp.float32), cosine)
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
    checked: bool = False,
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
        checked: add a ``checkify`` check of the predictions' range under ``jit``.

    Returns:
        A :class:`CollapseStats`.

    Predictions outside ``[0, num_classes)`` raise a one-line ``ValueError``
    eagerly. Under ``jit`` they count in the total but in no class (never as
    class 0), so they lower ``majority_share``; with ``checked=True`` they fail
    a ``checkify`` check (``checkify.checkify(f, errors=checkify.user_checks)``).
    Masked predictions are not checked.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import dsgd_jax
        >>> stats = dsgd_jax.collapse_check(jnp.array([1, 1, 1, 1, 0]), num_classes=3,
        ...                                 threshold=0.8)
        >>> int(stats.majority_class), round(float(stats.majority_share), 4), bool(stats.collapsed)
        (1, 0.8, True)
        >>> dsgd_jax.collapse_check(jnp.array([5, 5, 1, -1]), num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: predictions must be class indices in [0, 3) ...; got 5 at index 0, ...
        >>> stats = jax.jit(dsgd_jax.collapse_check, static_argnums=1)(jnp.array([5, 1, 1, -1]), 3)
        >>> int(stats.majority_class), float(stats.majority_share)  # 5 and -1 are in no class
        (1, 0.5)
    """
    predictions = jnp.asarray(predictions)
    if not jnp.issubdtype(predictions.dtype, jnp.integer):
        raise TypeError(
            f"predictions must be integer class indices, got dtype {predictions.dtype}. "
            "Pass jnp.argmax(logits, axis=-1)."
        )
    num_classes = _checks.positive_int(
        num_classes,
        "num_classes",
        "the number of classes the predictions index (static under jit)",
        "logits.shape[-1]",
    )
    threshold = _checks.real_number(threshold, "threshold")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    valid = _checks.mask_array(where, predictions.shape, "the predictions", "prediction")
    out_of_range = _checks.index_out_of_range(predictions, num_classes)
    _checks.report_invalid(
        out_of_range & valid,
        predictions,
        message=f"predictions must be class indices in [0, {num_classes}) "
        f"(num_classes={num_classes})",
        fix="Pass the model's number of classes (e.g. num_classes=logits.shape[-1]) and "
        "predictions=jnp.argmax(logits, axis=-1), or mask those entries out with where=.",
        checked=checked,
    )
    in_class = valid & ~out_of_range
    counts = jnp.bincount(
        jnp.where(in_class, predictions, jnp.zeros((), predictions.dtype)).ravel(),
        weights=in_class.ravel().astype(jnp.float32),
        length=num_classes,
    )
    total = jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
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
    valid = _checks.mask_array(where, x.shape[:1], "the rows of features", "row")
    v = valid.astype(jnp.float32)
    s = unit * v[:, None]
    total = jnp.sum(s, axis=0)
    pair_sum = jnp.vdot(total, total) - jnp.sum(s * s)  # sum over i != j
    k = jnp.sum(v)
    pairs = k * (k - 1.0)
    return jnp.where(pairs > 0, pair_sum / jnp.where(pairs > 0, pairs, 1.0), 0.0)
