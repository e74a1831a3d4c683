"""Focal losses (Lin et al. 2017) in place of cross-entropy: :func:`softmax_focal_loss`,
:func:`sigmoid_focal_loss`, and the method ``focal`` that trains with them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method

__all__ = ["FOCAL_FORMS", "Focal", "FocalConfig", "sigmoid_focal_loss", "softmax_focal_loss"]

FOCAL_FORMS = ("softmax", "sigmoid")


def _check_focal(alpha: float, gamma: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (the weight of the positive class)")
    if not gamma >= 0.0:
        raise ValueError(f"gamma={gamma} must be >= 0 (gamma=0 gives alpha * cross-entropy)")


def _check_labels(logits: jax.Array, labels: jax.Array, name: str) -> None:
    if logits.ndim < 1 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{name}: labels have shape {tuple(labels.shape)} but logits {tuple(logits.shape)}; "
            "pass integer labels of the logits' shape without the last (class) axis"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")


def softmax_focal_loss(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Per-example softmax focal loss ``-alpha * (1 - p_t)**gamma * log p_t``, float32.

    Args:
      logits: ``[..., C]`` class scores.
      labels: integer class indices of shape ``logits.shape[:-1]``.
      alpha: constant weight in [0, 1].
      gamma: focusing exponent >= 0; ``gamma=0`` gives ``alpha`` times cross-entropy.

    Returns:
      The loss of each example, shape ``logits.shape[:-1]``; ``p_t`` is the softmax
      probability of the true class and ``log p_t`` comes from ``log_softmax``.
    """
    _check_focal(alpha, gamma)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "softmax_focal_loss")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_pt = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    one_minus_pt = -jnp.expm1(log_pt)  # 1 - p_t without cancellation
    return -alpha * jnp.power(one_minus_pt, gamma) * log_pt


def sigmoid_focal_loss(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Per-example sigmoid focal loss of Lin et al., summed over the classes, float32.

    The integer labels become one-hot targets ``y`` over the ``C`` classes; each entry
    costs ``-alpha_t * (1 - p_t)**gamma * log p_t`` with ``p_t = sigmoid(z)`` and
    ``alpha_t = alpha`` where ``y = 1``, ``p_t = 1 - sigmoid(z)`` and
    ``alpha_t = 1 - alpha`` where ``y = 0``.

    Args:
      logits: ``[..., C]`` class scores.
      labels: integer class indices of shape ``logits.shape[:-1]``.
      alpha: weight of the positive entries, in [0, 1].
      gamma: focusing exponent >= 0.

    Returns:
      The loss of each example, shape ``logits.shape[:-1]``.
    """
    _check_focal(alpha, gamma)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "sigmoid_focal_loss")
    z = logits.astype(jnp.float32)
    positive = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.bool_)
    log_pt = jnp.where(positive, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))
    alpha_t = jnp.where(positive, jnp.float32(alpha), jnp.float32(1.0 - alpha))
    loss = -alpha_t * jnp.power(-jnp.expm1(log_pt), gamma) * log_pt
    return jnp.sum(loss, axis=-1)


@dataclasses.dataclass
class FocalConfig:
    """focal's settings: the focal loss's alpha, gamma and form.

    Fields (and flags) of every example's config.
    """

    focal_alpha: float = config_field(0.25, "focal: weight alpha of -alpha (1 - p_t)^gamma log p_t")
    focal_gamma: float = config_field(2.0, "focal: focusing exponent gamma")
    focal_form: Literal[FOCAL_FORMS] = config_field(
        "softmax", "focal: softmax (multi-class) or sigmoid (one-vs-all)"
    )


class Focal(Method):
    """Fine-tuning with a focal loss: ``focal_alpha``, ``focal_gamma``, ``focal_form``."""

    name = "focal"
    config = FocalConfig

    def validate(self, config) -> None:
        if config.focal_gamma < 0 or not 0 <= config.focal_alpha <= 1:
            raise ValueError("focal_gamma must be >= 0 and focal_alpha in [0, 1].")

    def per_example_loss(self, config) -> Callable[..., jax.Array]:
        focal = {"softmax": softmax_focal_loss, "sigmoid": sigmoid_focal_loss}[config.focal_form]
        return functools.partial(focal, alpha=config.focal_alpha, gamma=config.focal_gamma)
