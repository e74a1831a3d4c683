"""LoRA (Hu et al. 2022) on top of ``flax.nnx.LoRA``: :class:`ScaledLoRA`,
:func:`add_lora`, :func:`lora_trainable`, and the method ``lora`` that trains only the
adapters and the head."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method, needs_head_split

__all__ = ["LoRA", "LoRAConfig", "ScaledLoRA", "add_lora", "lora_trainable"]


class ScaledLoRA(nnx.LoRA):
    """``nnx.LoRA`` with the usual ``alpha / rank`` scaling of the low-rank update.

    ``out = base_module(x) + (alpha / rank) * x @ lora_a @ lora_b``. ``lora_b`` starts
    at zero (as in ``nnx.LoRA``), so wrapping a layer leaves its outputs unchanged.
    ``lora_a`` and ``lora_b`` are ``nnx.LoRAParam`` variables. The low-rank path
    computes in ``dtype``, by default the base module's compute dtype.

    Args:
      in_features: input size.
      lora_rank: rank of the update, >= 1.
      out_features: output size.
      base_module: the wrapped layer (e.g. an ``nnx.Linear``), or None.
      alpha: scale numerator.
      rngs: for the initialisation of ``lora_a``.
      **kwargs: passed on to ``nnx.LoRA`` (``dtype``, ``a_initializer``, ...).
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: nnx.Module | None = None,
        alpha: float = 16.0,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise ValueError(f"ScaledLoRA: lora_rank={lora_rank!r} must be an int >= 1")
        kwargs.setdefault("dtype", getattr(base_module, "dtype", None))
        super().__init__(
            in_features, lora_rank, out_features, base_module=base_module, rngs=rngs, **kwargs
        )
        self.lora_rank = lora_rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / lora_rank

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        xl, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        delta = (xl @ a @ b) * self.scaling
        if self.base_module is None:
            return delta
        out = self.base_module(x, **kwargs)
        return out + delta.astype(out.dtype)


def add_lora(
    model: nnx.Module,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = ("query", "value"),
    rngs: nnx.Rngs,
) -> int:
    """Wrap, in place, the ``nnx.Linear`` attributes named in ``targets`` in :class:`ScaledLoRA`.

    Every submodule of ``model`` (itself included) whose attribute ``name`` in
    ``targets`` is an ``nnx.Linear`` gets it replaced by ``ScaledLoRA(in, rank, out,
    base_module=<that Linear>, alpha=alpha, rngs=rngs)``. Train the result with
    :func:`lora_trainable` as the optimizer's ``wrt``.

    Args:
      model: the module to change.
      rank: LoRA rank, >= 1.
      alpha: LoRA scale numerator (the update is scaled by ``alpha / rank``).
      targets: attribute names to wrap (BERT's and ViT's attention: query, value).
      rngs: initialises the ``lora_a`` matrices.

    Returns:
      The number of wrapped layers.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"add_lora: rank={rank!r} must be an int >= 1")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    found = []
    seen = set()
    for _, module in nnx.iter_modules(model):
        for name in targets:
            child = vars(module).get(name)
            if isinstance(child, nnx.Linear) and (id(module), name) not in seen:
                seen.add((id(module), name))
                found.append((module, name, child))
    if not found:
        raise ValueError(
            f"add_lora: no nnx.Linear attribute named any of targets={targets} in "
            f"{type(model).__name__} (already wrapped ones are ScaledLoRA); pass the "
            "attribute names of the layers to adapt"
        )
    for module, name, linear in found:
        lora = ScaledLoRA(linear.in_features, rank, linear.out_features, base_module=linear,
                          alpha=alpha, rngs=rngs)  # fmt: skip
        setattr(module, name, lora)
    return len(found)


def lora_trainable(head: str, *also: str) -> nnx.filterlib.Filter:
    """The nnx filter of what LoRA fine-tuning trains: every ``nnx.LoRAParam`` plus the
    ``nnx.Param`` variables whose path contains ``head`` (the fresh classifier) or one of
    ``also`` (further modules trained in full, PEFT's ``modules_to_save``).

    ``nnx.LoRAParam`` subclasses ``nnx.Param``, so ``nnx.Param`` alone would select
    everything. Use it as ``nnx.Optimizer(..., wrt=...)`` and ``nnx.DiffState``.
    """
    if not isinstance(head, str) or not head:
        raise ValueError(
            f"lora_trainable: head={head!r} must be the attribute name of the classifier "
            "(the model's head_name, e.g. 'classifier' for BERT, 'head' for ViT)"
        )
    for name in also:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"lora_trainable: also={name!r} must be the attribute name of a module to "
                "train in full, e.g. 'pooler' for BERT"
            )
    paths = [nnx.PathContains(name) for name in (head, *also)]
    return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.Any(*paths)))


@dataclasses.dataclass
class LoRAConfig:
    """lora's settings: the adapters' rank and scale.

    Fields (and flags) of every example's config.
    """

    lora_rank: int = config_field(8, "lora: rank of the adapters on attention query/value")
    lora_alpha: float = config_field(16.0, "lora: the adapters' output is scaled by alpha / rank")


class LoRA(Method):
    """Adapters of rank ``lora_rank`` (scaled by ``lora_alpha`` / rank) on attention
    query and value; the optimizer trains them, the head and the modules named in the
    model's ``lora_also_trains`` (if any)."""

    name = "lora"
    config = LoRAConfig

    def validate(self, config) -> None:
        if config.lora_rank < 1 or config.lora_alpha <= 0:
            raise ValueError("lora_rank must be >= 1 and lora_alpha > 0.")

    def prepare_model(self, config, model, key):
        needs_head_split(model, f"method={self.name!r}")
        add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, rngs=nnx.Rngs(params=key))
        return lora_trainable(model.head_name, *getattr(model, "lora_also_trains", ()))
