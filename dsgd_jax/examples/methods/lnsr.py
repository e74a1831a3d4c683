"""LNSR (Hua et al. 2021): a noise-stability penalty on the model's last layers,
:func:`lnsr_penalty`, and the method ``lnsr`` that adds it to the loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method, needs_head_split
from dsgd_jax.examples.multitask import task_kwargs

__all__ = ["LNSR", "LNSRConfig", "lnsr_penalty"]


def lnsr_penalty(
    head_fn: Callable[[jax.Array, tuple[jax.Array | None, ...]], jax.Array],
    features: jax.Array,
    key: jax.Array,
    *,
    sigma: float = 0.01,
    weights: Sequence[float] = (0.2, 0.1),
    where: jax.Array | None = None,
) -> jax.Array:
    """LNSR: how much Gaussian noise at the input of the last layers moves the logits.

    With ``L = len(weights)``, ``clean = head_fn(features, (None,) * L)`` and, for each
    layer ``l``, ``noisy_l = head_fn(features, noise)`` where ``noise`` holds
    ``eps_l = sigma * jax.random.normal(k_l, features.shape, features.dtype)`` at entry
    ``l`` and None elsewhere, with ``k_0, ..., k_{L-1} = jax.random.split(key, L)``.
    The penalty is ``sum_l weights[l] * mean_valid(sum_classes (noisy_l - clean)**2)``.
    Gradients flow through both the clean and the noisy pass.

    Args:
      head_fn: ``(features, noise) -> logits [B, C]``; ``noise[l]`` is None or an array
        added to the input of the ``l``-th of the model's last layers.
      features: ``[B, ...]`` input of the head.
      key: PRNG key for the noise.
      sigma: noise standard deviation, >= 0.
      weights: one non-negative weight per perturbed layer, at least one.
      where: optional ``[B]`` bool mask of the valid examples.

    Returns:
      The float32 scalar penalty.
    """
    weights = tuple(weights)
    if not weights:
        raise ValueError("lnsr_penalty: weights is empty; pass one weight per perturbed layer")
    if not sigma >= 0:
        raise ValueError(f"lnsr_penalty: sigma={sigma} must be >= 0 (the noise std)")
    n_layers = len(weights)
    features = jnp.asarray(features)
    batch = features.shape[0]
    valid = jnp.ones((batch,), jnp.bool_) if where is None else jnp.asarray(where, jnp.bool_)
    if valid.shape != (batch,):
        raise ValueError(
            f"lnsr_penalty: where has shape {valid.shape}, expected ({batch},) for features "
            f"of shape {features.shape}"
        )
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
    clean = head_fn(features, (None,) * n_layers).astype(jnp.float32)
    keys = jax.random.split(key, n_layers)
    penalty = jnp.float32(0.0)
    for layer, weight in enumerate(weights):
        eps = sigma * jax.random.normal(keys[layer], features.shape, features.dtype)
        noise = tuple(eps if i == layer else None for i in range(n_layers))
        diff = head_fn(features, noise).astype(jnp.float32) - clean
        per_example = jnp.sum(jnp.square(diff).reshape(batch, -1), axis=-1)
        penalty = penalty + weight * jnp.sum(jnp.where(valid, per_example, 0.0)) / n
    return penalty


@dataclasses.dataclass
class LNSRConfig:
    """lnsr's settings: the noise on the head's inputs and the penalty's weights.

    Fields (and flags) of every example's config.
    """

    lnsr_sigma: float = config_field(0.01, "lnsr: std of the Gaussian noise on the head's inputs")
    lnsr_weight_first: float = config_field(0.2, "lnsr: penalty weight, noise before 2nd-last")
    lnsr_weight_last: float = config_field(0.1, "lnsr: penalty weight, noise before the last layer")


class LNSR(Method):
    """The loss plus the penalty for noise (std ``lnsr_sigma``) before the head's two layers."""

    name = "lnsr"
    config = LNSRConfig

    def validate(self, config) -> None:
        if config.lnsr_sigma < 0:
            raise ValueError("lnsr_sigma must be >= 0.")
        if config.lnsr_weight_first < 0 or config.lnsr_weight_last < 0:
            raise ValueError("lnsr_weight_first and lnsr_weight_last must be >= 0.")

    def prepare_model(self, config, model, key):
        needs_head_split(model, f"method={self.name!r}")
        return nnx.Param

    def model_loss(self, config, loss, model, inputs, labels, valid, key, scale):
        features = model.features(inputs, rngs=nnx.Rngs(dropout=key))
        head_key, noise_key = jax.random.split(jax.random.fold_in(key, 1))

        def head(f, noise):  # the same dropout mask for the clean and the noisy passes
            rngs = nnx.Rngs(dropout=head_key)
            return model.classify(f, rngs=rngs, noise=noise, **task_kwargs(model, inputs))

        value, aux = loss(head(features, (None, None)), labels, scale=scale, where=valid)
        penalty = lnsr_penalty(
            head,
            features,
            noise_key,
            sigma=config.lnsr_sigma,
            weights=(config.lnsr_weight_first, config.lnsr_weight_last),
            where=valid,
        )
        return value + penalty, aux
