"""NoisyTune (Wu et al. 2022): perturb the pretrained weights once, before fine-tuning:
:func:`noisytune`, :func:`noisytune_model`, and the method ``noisytune``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method

__all__ = ["NoisyTune", "NoisyTuneConfig", "noisytune", "noisytune_model"]


def noisytune(params: Any, key: jax.Array, *, noise_lambda: float = 0.15) -> Any:
    """NoisyTune: perturb every matrix-like leaf once, before fine-tuning.

    Each floating leaf ``W`` with ``ndim >= 2`` (weight matrices, conv kernels,
    embeddings) becomes ``W + (U - 0.5) * noise_lambda * std(W)`` with ``U`` uniform in
    [0, 1), drawn with ``jax.random.fold_in(key, i)`` for the ``i``-th leaf (in
    ``jax.tree.leaves`` order), so each leaf gets its own draw. Vectors (biases,
    LayerNorm scales) and scalars are unchanged.

    Args:
      params: any pytree of arrays, e.g. ``nnx.state(model, nnx.Param)``.
      key: PRNG key.
      noise_lambda: relative noise intensity, >= 0.

    Returns:
      A pytree of the same structure and dtypes.
    """
    if not noise_lambda >= 0:
        raise ValueError(f"noise_lambda={noise_lambda} must be >= 0 (the paper uses 0.15)")
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, w in enumerate(leaves):
        w = jnp.asarray(w)
        if w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.floating):
            out.append(w)
            continue
        w32 = w.astype(jnp.float32)
        u = jax.random.uniform(jax.random.fold_in(key, i), w.shape, jnp.float32)
        out.append((w32 + (u - 0.5) * noise_lambda * jnp.std(w32)).astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def noisytune_model(model: nnx.Module, key: jax.Array, *, noise_lambda: float = 0.15) -> None:
    """Apply :func:`noisytune` in place to the ``nnx.Param`` variables of ``model``."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, noisytune(state, key, noise_lambda=noise_lambda))


@dataclasses.dataclass
class NoisyTuneConfig:
    """noisytune's setting: the scale of the noise on the weights.

    Fields (and flags) of every example's config.
    """

    noisytune_lambda: float = config_field(0.15, "noisytune: noise scale relative to std(W)")


class NoisyTune(Method):
    """Fine-tuning from weights perturbed by ``noisytune_lambda`` x their std."""

    name = "noisytune"
    config = NoisyTuneConfig

    def validate(self, config) -> None:
        if config.noisytune_lambda < 0:
            raise ValueError("noisytune_lambda must be >= 0.")

    def prepare_model(self, config, model, key):
        noisytune_model(model, key, noise_lambda=config.noisytune_lambda)
        return nnx.Param
