"""The baselines the DSGD paper compares against, as reusable JAX / Optax / Flax NNX code.

Each lives in its method module of :mod:`dsgd_jax.examples.methods`; this module
gathers their building blocks under one name.

- Focal losses (Lin et al. 2017): :func:`~.focal.softmax_focal_loss`,
  :func:`~.focal.sigmoid_focal_loss`.
- PCGrad (Yu et al. 2020) with the wrong and the correct examples as its two tasks:
  :func:`~.pcgrad.pcgrad_combine`, :func:`~.pcgrad.pcgrad_value_and_grad`.
- NoisyTune (Wu et al. 2022), a one-off perturbation before fine-tuning:
  :func:`~.noisytune.noisytune`, :func:`~.noisytune.noisytune_model`.
- SWA (Izmailov et al. 2018) as an optax transformation: :func:`~.swa.swa`,
  :func:`~.swa.swa_params`, :func:`~.swa.swa_count`.
- LNSR (Hua et al. 2021), a noise-stability penalty on the model's last layers:
  :func:`~.lnsr.lnsr_penalty`.
- LoRA (Hu et al. 2022) on top of ``flax.nnx.LoRA``: :class:`~.lora.ScaledLoRA`,
  :func:`~.lora.add_lora`, :func:`~.lora.lora_trainable`.

LNSR and LoRA need a model split into ``features(inputs, *, rngs=None)`` and
``classify(features, *, rngs=None, noise=(None, None))`` with a ``head_name`` (the attribute
of the freshly initialised classifier), as the BERT and ViT examples' models have.

>>> import jax.numpy as jnp
>>> logits = jnp.array([[2.0, 0.0, -1.0]])
>>> softmax_focal_loss(logits, jnp.array([0]), gamma=0.0).shape
(1,)
>>> pcgrad_combine({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([-1.0, 1.0])})["w"]
Array([0.5, 1.5], dtype=float32)
"""

from __future__ import annotations

from dsgd_jax.examples.methods.focal import sigmoid_focal_loss, softmax_focal_loss
from dsgd_jax.examples.methods.lnsr import lnsr_penalty
from dsgd_jax.examples.methods.lora import ScaledLoRA, add_lora, lora_trainable
from dsgd_jax.examples.methods.noisytune import noisytune, noisytune_model
from dsgd_jax.examples.methods.pcgrad import pcgrad_combine, pcgrad_value_and_grad
from dsgd_jax.examples.methods.swa import SWAState, swa, swa_count, swa_params

__all__ = [
    "SWAState",
    "ScaledLoRA",
    "add_lora",
    "lnsr_penalty",
    "lora_trainable",
    "noisytune",
    "noisytune_model",
    "pcgrad_combine",
    "pcgrad_value_and_grad",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "swa",
    "swa_count",
    "swa_params",
]
