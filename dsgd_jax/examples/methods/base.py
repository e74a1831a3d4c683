"""What a training method is to the loop: :class:`Method`, a set of hooks.

The loop of :mod:`dsgd_jax.examples.train` calls the hooks of ``config.method``'s
:class:`Method` and nothing else that depends on the method. Each hook's default
is plain fine-tuning (FFT): every example weighs 1, cross-entropy, the
examples' optimizer, the model as built, the parameters as trained. A method
overrides the hooks it changes; see :mod:`dsgd_jax.examples.methods` for the
table of methods and how to add one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import dsgd_jax

__all__ = ["CE", "Method", "needs_head_split", "per_example_ce"]

CE = optax.softmax_cross_entropy_with_integer_labels
"""The examples' per-example loss: softmax cross-entropy with integer labels."""


def per_example_ce(model, inputs, labels, key) -> tuple[jax.Array, jax.Array]:
    """Per-example cross-entropy and correctness (argmax) of ``model`` on a batch, with
    dropout from ``key``: what :func:`dsgd_jax.gradient_conflict` and PCGrad split."""
    logits = model(inputs, rngs=nnx.Rngs(dropout=key))
    return CE(logits, labels), dsgd_jax.argmax_correct(logits, labels)


def needs_head_split(model: nnx.Module, who: str) -> None:
    """Raises ValueError, naming ``who``, unless ``model`` has features(), classify() and
    head_name (as the BERT and ViT examples' models have)."""
    missing = [a for a in ("features", "classify", "head_name") if not hasattr(model, a)]
    if missing:
        raise ValueError(
            f"{who} needs a model with features(), classify() and head_name "
            f"(as the BERT and ViT examples' models have); {type(model).__name__} lacks "
            f"{', '.join(missing)}."
        )


class Method:
    """A training method as the loop sees it. Subclass it and override the hooks the
    method changes; ``config`` is the run's :class:`~dsgd_jax.examples.train.TrainConfig`.

    ``config`` is the dataclass of the settings the method owns (its flags), or None;
    :class:`~dsgd_jax.examples.train.TrainConfig` inherits the fields of every
    registered method's ``config``, so ``config.beta`` and the flag ``--beta`` exist
    whichever method runs. ``validate`` checks them. The loss hooks run inside the
    jitted train step.
    """

    name: ClassVar[str]
    config: ClassVar[type | None] = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the config fields the method owns."""
        return tuple(f.name for f in dataclasses.fields(self.config)) if self.config else ()

    def validate(self, config) -> None:
        """Raises ValueError naming a bad field of this method and the fix."""

    def scaler(self, config, total_updates: int) -> Callable[[jax.Array], jax.Array]:
        """lambda(t), the weight of the correct examples, from the optimizer's update count."""
        return lambda count: jnp.ones((), jnp.float32)

    def per_example_loss(self, config) -> Callable[..., jax.Array]:
        """``loss(logits, labels) -> [B]``, the per-example loss that DSGD's weights scale."""
        return CE

    def extra_transform(self, config, total_updates: int) -> optax.GradientTransformation | None:
        """A transformation chained after the optimizer (it sees the updated parameters)."""
        return None

    def prepare_model(self, config, model: nnx.Module, key: jax.Array) -> nnx.filterlib.Filter:
        """A one-off change to the freshly built ``model`` (in place); returns the filter of
        the variables the optimizer trains."""
        return nnx.Param

    def model_loss(self, config, loss, model, inputs, labels, valid, key, scale):
        """``(value, aux)`` of the batch: ``loss`` (a :func:`dsgd_jax.make_dsgd_loss` of
        :meth:`~dsgd_jax.examples.methods.Method.per_example_loss`) on the model's logits,
        dropout from ``key``."""
        logits = model(inputs, rngs=nnx.Rngs(dropout=key))
        return loss(logits, labels, scale=scale, where=valid)

    def value_and_grad(self, config, model_loss, model, wrt, inputs, labels, valid, key, scale):
        """``(value, grads, fraction_correct)``: the gradient the optimizer applies."""
        (value, aux), grads = nnx.value_and_grad(
            model_loss, argnums=nnx.DiffState(0, wrt), has_aux=True
        )(model, inputs, labels, valid, key, scale)
        return value, grads, aux.fraction_correct

    def eval_model(self, config, model: nnx.Module, opt_state: Any) -> nnx.Module:
        """The model that evaluation runs (e.g. with averaged parameters)."""
        return model
