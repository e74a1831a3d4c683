"""Pieces the examples' NNX models share: config checks, presets, float32 LayerNorm."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["add_noise", "check_config", "float32_norm", "from_preset", "head_noise", "num_params"]


def check_config(config: Any, *, rates: Sequence[str]) -> None:
    """ValueError unless every int field is positive, each of ``rates`` is in [0, 1)
    and ``layer_norm_eps`` is positive; messages name ``Class.field``."""
    kind = type(config).__name__
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{kind}.{f.name} must be a positive int, got {v!r}")
    for name in rates:
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{kind}.{name} must be in [0, 1), got {getattr(config, name)}")
    if not config.layer_norm_eps > 0:
        raise ValueError(f"{kind}.layer_norm_eps must be > 0, got {config.layer_norm_eps}")


def from_preset(cls: type, presets: Mapping[str, dict], name: str, label: str, **overrides):
    """``cls`` built from the preset ``name`` of ``presets``, then ``overrides``."""
    if name not in presets:
        raise ValueError(f"unknown {label} preset {name!r}; choose one of {sorted(presets)}")
    return dataclasses.replace(cls(**presets[name]), **overrides)


def from_hf_config(cls: type, raw: Mapping[str, Any], path: Any, label: str):
    """``cls`` from the fields of a Hugging Face ``config.json`` dict ``raw`` that it has
    (the others ignored; rates and eps as floats); ValueError naming ``path`` and
    ``label`` when the values are invalid."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in names}
    for k in ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if k in kwargs:
            kwargs[k] = float(kwargs[k])
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: invalid {label} config: {e}") from None


def float32_norm(layer_norm: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    """LayerNorm in float32, result back in the compute dtype."""
    return layer_norm(x.astype(jnp.float32)).astype(x.dtype)


def num_params(module: nnx.Module) -> int:
    """Number of scalar parameters (elements of every ``nnx.Param``)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def head_noise(noise: Any, first: str, second: str) -> tuple[Any, Any]:
    """``noise`` of a model's ``classify`` as a pair (at ``first``'s and ``second``'s input)."""
    if not isinstance(noise, (tuple, list)) or len(noise) != 2:
        raise ValueError(
            f"noise must be a pair (noise at the {first}'s input, noise at the {second}'s "
            f"input), each None or an array; got {noise!r}"
        )
    return noise[0], noise[1]


def add_noise(x: jax.Array, noise: Any) -> jax.Array:
    """``x + noise`` in ``x``'s dtype (``x`` itself for None); noise must have x's shape."""
    if noise is None:
        return x
    noise = jnp.asarray(noise)
    if noise.shape != x.shape:
        raise ValueError(
            f"head noise has shape {noise.shape}, expected {x.shape} (the layer input's shape)"
        )
    return x + noise.astype(x.dtype)
