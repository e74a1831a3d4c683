"""What one run trains with: its optimizer, its model's one-off change, and its steps.

:func:`make_optimizer` builds the examples' optax chain, :func:`prepare_model`
applies the method's change to a freshly built model, and :func:`make_steps`
gives the train, conflict and predict steps of ``config.method``, calling the
hooks of its :class:`~dsgd_jax.examples.methods.Method`. The steps are plain
functions of ``(model, optimizer, ...)``: the loop wraps them in ``nnx.jit``, or
splits the model for ``jax.vmap`` over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import dsgd_jax
from dsgd_jax.examples import methods, optimizers
from dsgd_jax.examples.methods.base import per_example_ce
from dsgd_jax.examples.multitask import task_kwargs

if TYPE_CHECKING:
    from dsgd_jax.examples.train import TrainConfig

__all__ = ["Steps", "make_optimizer", "make_steps", "prepare_model"]


def make_optimizer(config: TrainConfig, total_updates: int) -> optax.GradientTransformation:
    """AdamW (or BERTAdam) with warm-up and linear decay, clipping and accumulation as
    configured; ``warmup_ratio=0`` starts at the peak rate."""
    warmup = round(config.warmup_ratio * total_updates)
    lr = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
            optax.linear_schedule(config.learning_rate, 0.0, max(total_updates - warmup, 1)),
        ],
        boundaries=[warmup],
    )
    make = {"adamw": optax.adamw, "bertadam": optimizers.bert_adam}[config.optimizer]
    adamw = make(
        lr,
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params),
    )
    parts = [adamw]
    if config.max_grad_norm > 0:
        parts.insert(0, optax.clip_by_global_norm(config.max_grad_norm))
    extra = methods.get(config.method).extra_transform(config, total_updates)
    if extra is not None:  # last in the chain: it sees the updated parameters (SWA)
        parts.append(extra)
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx


def prepare_model(config: TrainConfig, model: nnx.Module, key: jax.Array) -> nnx.filterlib.Filter:
    """Applies the method's one-off change to a freshly built ``model`` (in place).

    ``reinit_layers`` re-initialises the top encoder layers first (Zhang et al. 2021);
    NoisyTune perturbs the weights; LoRA wraps attention query/value in adapters and
    trains them with the head and the modules named in the model's ``lora_also_trains``
    (if any). Returns the filter of the variables the optimizer trains.
    """
    if config.reinit_layers:
        if not hasattr(model, "reinit_top_layers"):
            raise ValueError(
                f"reinit_layers={config.reinit_layers} needs a model with reinit_top_layers() "
                f"(as the BERT and ViT examples' models have); {type(model).__name__} lacks it."
            )
        reinit_key = jax.random.fold_in(key, 2)
        model.reinit_top_layers(config.reinit_layers, rngs=nnx.Rngs(params=reinit_key))
    return methods.get(config.method).prepare_model(config, model, key)


class Steps(NamedTuple):
    """The raw (not yet jitted) steps of one run; see :func:`make_steps`."""

    train: Callable[..., dict[str, jax.Array]]
    conflict: Callable[..., dict[str, jax.Array]]
    predict: Callable[..., jax.Array]


def make_steps(config: TrainConfig, total_updates: int, wrt=nnx.Param) -> Steps:
    """The train, conflict and predict steps of ``config.method``.

    ``train(model, optimizer, inputs, labels, valid, key)`` updates in place and
    returns loss, lambda and fraction correct; ``conflict`` measures
    :func:`dsgd_jax.gradient_conflict` without updating; ``predict(model,
    optimizer, inputs)`` gives ``{"predictions": argmax, "features": [B, H]}``
    (the features only for models with ``features()`` and ``classify()``; with
    the SWA average for ``method="swa"`` once it holds a snapshot). Wrap them in ``nnx.jit``, or
    split the model for ``jax.vmap`` over seeds.
    """
    method = methods.get(config.method)
    scale_fn = method.scaler(config, total_updates)
    loss = dsgd_jax.make_dsgd_loss(
        method.per_example_loss(config), dsgd_jax.argmax_correct, has_aux=True
    )

    def model_loss(model, inputs, labels, valid, key, scale):
        return method.model_loss(config, loss, model, inputs, labels, valid, key, scale)

    def train(model, optimizer, inputs, labels, valid, key):
        scale = scale_fn(dsgd_jax.step_count(optimizer.opt_state))
        value, grads, fraction = method.value_and_grad(
            config, model_loss, model, wrt, inputs, labels, valid, key, scale
        )
        optimizer.update(model, grads)
        return {"loss": value, "lambda": scale, "fraction_correct": fraction}

    def conflict(model, optimizer, inputs, labels, valid, key):
        scale = scale_fn(dsgd_jax.step_count(optimizer.opt_state))
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def loss_fn(params):
            return per_example_ce(nnx.merge(graphdef, params, rest), inputs, labels, key)

        return dsgd_jax.gradient_conflict(loss_fn, params, scale=scale, where=valid)._asdict()

    def predict(model, optimizer, inputs):
        model = method.eval_model(config, model, optimizer.opt_state)
        if not (hasattr(model, "features") and hasattr(model, "classify")):
            return {"predictions": jnp.argmax(model(inputs), axis=-1)}
        features = model.features(inputs)
        return {
            "predictions": jnp.argmax(model.classify(features, **task_kwargs(model, inputs)), -1),
            "features": features.astype(jnp.float32),
        }

    return Steps(train, conflict, predict)
