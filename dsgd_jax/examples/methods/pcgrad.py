"""PCGrad (Yu et al. 2020) with the wrong and the correct examples as its two tasks:
:func:`pcgrad_combine`, :func:`pcgrad_value_and_grad`, and the method ``pcgrad``;
for a multi-task run (:mod:`dsgd_jax.examples.multitask`), ``--pcgrad_groups=tasks``
takes the tasks as its groups instead, the form PCGrad was built for
(:func:`pcgrad_combine_many`, :func:`pcgrad_groups_value_and_grad`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method, per_example_ce

__all__ = [
    "PCGRAD_GROUPS",
    "PCGrad",
    "PCGradConfig",
    "pcgrad_combine",
    "pcgrad_combine_many",
    "pcgrad_groups_value_and_grad",
    "pcgrad_value_and_grad",
]

PCGRAD_GROUPS = ("correctness", "tasks")


def _tree_dot(a: Any, b: Any) -> jax.Array:
    """Sum over the leaves of ``vdot`` in float32 (a global dot product)."""
    products = [
        jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(products, jnp.float32(0.0))


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, 0 where ``den`` is 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def pcgrad_combine(g_wrong: Any, g_correct: Any) -> Any:
    """PCGrad with two tasks: the wrong group's and the correct group's gradient.

    Dot products and norms are global over all leaves. When the two conflict
    (``dot(g_W, g_C) < 0``) each is projected onto the normal plane of the *original*
    other, ``g_W' = g_W - dot / |g_C|^2 g_C`` and ``g_C' = g_C - dot / |g_W|^2 g_W``, and
    ``g_W' + g_C'`` is returned; otherwise ``g_W + g_C``. A zero group gradient never
    conflicts, so the result stays finite.

    Args:
      g_wrong: gradient pytree of the wrong (misclassified) examples.
      g_correct: gradient pytree of the correct examples, same structure.

    Returns:
      The combined gradient, same structure and leaf dtypes as ``g_wrong``.
    """
    if jax.tree.structure(g_wrong) != jax.tree.structure(g_correct):
        raise ValueError(
            "pcgrad_combine: g_wrong and g_correct must be pytrees of the same structure, got "
            f"{jax.tree.structure(g_wrong)} and {jax.tree.structure(g_correct)}"
        )
    dot = _tree_dot(g_wrong, g_correct)
    conflict = dot < 0
    # g_W' + g_C' = (1 - dot / |g_W|^2) g_W + (1 - dot / |g_C|^2) g_C when conflicting.
    c_wrong = jnp.where(conflict, _safe_div(dot, _tree_dot(g_wrong, g_wrong)), 0.0)
    c_correct = jnp.where(conflict, _safe_div(dot, _tree_dot(g_correct, g_correct)), 0.0)

    def combine(w, c):
        out = (1.0 - c_wrong) * w.astype(jnp.float32) + (1.0 - c_correct) * c.astype(jnp.float32)
        return out.astype(w.dtype)

    return jax.tree.map(combine, g_wrong, g_correct)


def pcgrad_combine_many(grads: Sequence[Any]) -> Any:
    """PCGrad over K group gradients: each ``g_i`` projected, in turn for ``j = 0 ... K-1``
    (``j != i``), onto the normal plane of the original ``g_j`` whenever the projected
    ``g_i`` conflicts with it (``dot < 0``); the projected gradients are summed.

    Yu et al. (2020) visit the other groups in a random order each step; this visits
    them in index order, so a step is deterministic. For K = 2 it is
    :func:`pcgrad_combine`. Dot products are global over the leaves, in float32; a zero
    group gradient never conflicts.

    Examples:
      >>> import jax.numpy as jnp
      >>> out = pcgrad_combine_many([jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])])
      >>> out.tolist()  # [1, 0] -> [0.5, 0.5]; [-1, 1] -> [0, 1]
      [0.5, 1.5]
    """
    grads = list(grads)
    if len(grads) < 2:
        raise ValueError(f"pcgrad_combine_many needs at least 2 group gradients, got {len(grads)}.")
    structure = jax.tree.structure(grads[0])
    if any(jax.tree.structure(g) != structure for g in grads):
        raise ValueError("pcgrad_combine_many: the group gradients must share one structure.")
    as32 = [jax.tree.map(lambda x: x.astype(jnp.float32), g) for g in grads]
    squares = [_tree_dot(g, g) for g in as32]
    total = jax.tree.map(jnp.zeros_like, as32[0])
    for i, g_i in enumerate(as32):
        projected = g_i
        for j, g_j in enumerate(as32):
            if j == i:
                continue
            dot = _tree_dot(projected, g_j)
            c = jnp.where(dot < 0, _safe_div(dot, squares[j]), 0.0)
            projected = jax.tree.map(lambda p, o, c=c: p - c * o, projected, g_j)
        total = jax.tree.map(jnp.add, total, projected)
    return jax.tree.map(lambda t, g: t.astype(g.dtype), total, grads[0])


def pcgrad_groups_value_and_grad(
    per_example_fn: Callable[[Any], tuple[jax.Array, jax.Array]],
    params: Any,
    groups: jax.Array,
    num_groups: int,
    *,
    where: jax.Array | None = None,
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """Mean loss and its PCGrad gradient over ``num_groups`` groups of examples (tasks).

    Like :func:`pcgrad_value_and_grad`, one forward pass and one backward pass per
    group, with cotangent ``mask_k / n`` for group ``k`` (``groups == k`` among the
    valid examples, ``n`` of them); :func:`pcgrad_combine_many` resolves the conflicts.

    Returns:
      ``(loss, grads, aux)`` with ``aux = dict(fraction_correct=...)``.
    """
    (losses, correct), vjp_fn = _vjp_with_aux(per_example_fn, params)
    valid = jnp.ones(losses.shape, jnp.bool_) if where is None else jnp.asarray(where, jnp.bool_)
    groups = jnp.asarray(groups)
    if groups.shape != losses.shape or valid.shape != losses.shape:
        raise ValueError(
            f"pcgrad_groups_value_and_grad: groups {groups.shape} and where {valid.shape} must "
            f"have the losses' shape {losses.shape}"
        )
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, losses.astype(jnp.float32), 0.0)) / n
    grads = [
        vjp_fn(((valid & (groups == k)).astype(losses.dtype) / n).astype(losses.dtype))[0]
        for k in range(num_groups)
    ]
    correct = valid & jnp.asarray(correct, jnp.bool_)
    fraction = jnp.sum(correct, dtype=jnp.int32).astype(jnp.float32) / n
    return loss, pcgrad_combine_many(grads), {"fraction_correct": fraction}


def pcgrad_value_and_grad(
    per_example_fn: Callable[[Any], tuple[jax.Array, jax.Array]],
    params: Any,
    *,
    where: jax.Array | None = None,
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """Mean loss and its PCGrad gradient, wrong vs. correct examples as the two tasks.

    One forward pass (``jax.vjp``) and two backward passes, with cotangents
    ``mask_W / n`` and ``mask_C / n`` (``n`` valid examples, at least 1), give the
    gradients ``g_W`` and ``g_C`` of the two groups' shares of the mean loss; their sum
    is the plain gradient of the mean, and :func:`pcgrad_combine` resolves a conflict.

    Args:
      per_example_fn: ``params -> (losses [B], correct [B] bool)``.
      params: the pytree to differentiate.
      where: optional ``[B]`` bool mask of the valid examples (padding is False).

    Returns:
      ``(loss, grads, aux)``: the mean loss over the valid examples, the combined
      gradient, and ``dict(fraction_correct=..., cosine=cos(g_W, g_C))`` (cosine 0 when
      a group is empty).
    """
    (losses, correct), vjp_fn = _vjp_with_aux(per_example_fn, params)
    if losses.shape != correct.shape:
        raise ValueError(
            f"pcgrad_value_and_grad: per_example_fn returned losses of shape {losses.shape} "
            f"and correct of shape {correct.shape}; they must be the same ([B])"
        )
    valid = jnp.ones(losses.shape, jnp.bool_) if where is None else jnp.asarray(where, jnp.bool_)
    if valid.shape != losses.shape:
        raise ValueError(
            f"pcgrad_value_and_grad: where has shape {valid.shape} but the losses "
            f"{losses.shape}; pass a bool mask of the losses' shape"
        )
    correct = jnp.asarray(correct, jnp.bool_)
    mask_c = valid & correct
    mask_w = valid & ~correct
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
    losses32 = losses.astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, losses32, 0.0)) / n
    (g_wrong,) = vjp_fn(mask_w.astype(losses.dtype) / n.astype(losses.dtype))
    (g_correct,) = vjp_fn(mask_c.astype(losses.dtype) / n.astype(losses.dtype))
    grads = pcgrad_combine(g_wrong, g_correct)
    norms = jnp.sqrt(_tree_dot(g_wrong, g_wrong)) * jnp.sqrt(_tree_dot(g_correct, g_correct))
    aux = {
        "fraction_correct": jnp.sum(mask_c, dtype=jnp.int32).astype(jnp.float32) / n,
        "cosine": _safe_div(_tree_dot(g_wrong, g_correct), norms),
    }
    return loss, grads, aux


def _vjp_with_aux(per_example_fn, params):
    """``jax.vjp`` of the losses, with ``correct`` carried as auxiliary output."""
    primal, vjp_fn, correct = jax.vjp(lambda p: tuple(per_example_fn(p)), params, has_aux=True)
    return (primal, correct), vjp_fn


@dataclasses.dataclass
class PCGradConfig:
    """PCGrad's settings. Fields (and flags) of every example's config."""

    pcgrad_groups: Literal[PCGRAD_GROUPS] = config_field(
        "correctness",
        "pcgrad: its groups, the wrong and the correct examples (correctness, the paper's) "
        "or, with several tasks, the tasks",
    )


class PCGrad(Method):
    """One forward pass, the groups' gradients (wrong and correct examples, or the tasks
    of a multi-task run) projected."""

    name = "pcgrad"
    config = PCGradConfig

    def value_and_grad(self, config, model_loss, model, wrt, inputs, labels, valid, key, scale):
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def per_example(params):
            return per_example_ce(nnx.merge(graphdef, params, rest), inputs, labels, key)

        if config.pcgrad_groups == "tasks":
            heads = getattr(model, "heads", ())
            if len(heads) < 2:
                raise ValueError(
                    "pcgrad_groups='tasks' needs several tasks (e.g. --task=drugs+tweets3); "
                    "with one task use pcgrad_groups='correctness'."
                )
            value, grads, aux = pcgrad_groups_value_and_grad(
                per_example, params, inputs["task"], len(heads), where=valid
            )
            return value, grads, aux["fraction_correct"]
        value, grads, aux = pcgrad_value_and_grad(per_example, params, where=valid)
        return value, grads, aux["fraction_correct"]
