"""PCGrad (Yu et al. 2020) with the wrong and the correct examples as its two tasks:
:func:`pcgrad_combine`, :func:`pcgrad_value_and_grad`, and the method ``pcgrad``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples.methods.base import Method, per_example_ce

__all__ = ["PCGrad", "pcgrad_combine", "pcgrad_value_and_grad"]


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


class PCGrad(Method):
    """One forward pass, the wrong and the correct examples' gradients projected."""

    name = "pcgrad"

    def value_and_grad(self, config, model_loss, model, wrt, inputs, labels, valid, key, scale):
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def per_example(params):
            return per_example_ce(nnx.merge(graphdef, params, rest), inputs, labels, key)

        value, grads, aux = pcgrad_value_and_grad(per_example, params, where=valid)
        return value, grads, aux["fraction_correct"]
