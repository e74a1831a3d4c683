"""Pieces the examples' NNX models share: config checks, presets, float32 LayerNorm,
the exact GELU, dropout."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "DROPOUT_BITS",
    "Dropout",
    "add_noise",
    "check_config",
    "float32_norm",
    "from_preset",
    "gelu",
    "head_noise",
    "num_params",
    "set_dropout_bits",
]

DROPOUT_BITS = (16, 32)  # random bits that decide one element's dropout


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


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU written with erf, ``x / 2 * (1 + erf(x / sqrt(2)))``: PyTorch's and
    Hugging Face's ``"gelu"``. The same function as ``jax.nn.gelu(x, approximate=False)``,
    which takes it through ``erfc``, several times slower on XLA's CPU backend
    (``benchmarks/step_profile.py`` shows where a step's time goes)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


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


class Dropout(nnx.Dropout):
    """:class:`flax.nnx.Dropout` with a choice of how many random bits decide an element.

    ``bits=32`` is flax's own draw, unchanged: one 32-bit threefry word per element,
    read as a uniform float and compared with ``1 - rate``. ``bits=16`` draws half as
    many words: the low and the high 16 bits of each word decide two neighbouring
    elements of the last axis (the low half the even one), each kept when it is at
    least ``t = round(rate * 65536)``. The drop rate is then ``t / 65536``, within
    ``1 / 131072`` of ``rate``, and the kept elements are scaled by
    ``65536 / (65536 - t)``, so that the mean is kept exactly (a rate that rounds to
    ``t = 65536`` drops every element). Half the words make a train step on a CPU
    faster (``benchmarks/torch_peer.py`` times both); the masks differ, so the runs
    do too.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 3))
    >>> y = Dropout(0.5, bits=16)(x, deterministic=False, rngs=nnx.Rngs(dropout=0))
    >>> sorted(set(y.ravel().tolist())) <= [0.0, 2.0]
    True
    """

    def __init__(self, rate: float, *, bits: int = 32, **kwargs):
        super().__init__(rate, **kwargs)
        self.bits = check_dropout_bits(bits)

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
        if self.bits == 32:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None:
            raise ValueError("Dropout needs deterministic=True or False (at init or call).")
        if self.rate == 0.0 or deterministic:
            return inputs
        threshold = round(self.rate * 65536)
        if threshold >= 65536:
            return jnp.zeros_like(inputs)
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, RngStream or key, got {type(rngs)}.")
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        keep = jnp.broadcast_to(_keep16(key, tuple(shape), threshold), inputs.shape)
        scale = jnp.asarray(65536 / (65536 - threshold), inputs.dtype)
        return jax.lax.select(keep, inputs * scale, jnp.zeros_like(inputs))


def _keep16(key: jax.Array, shape: tuple[int, ...], threshold: int) -> jax.Array:
    """The keep mask of ``shape`` from 16-bit halves of threefry words, each kept when at
    least ``threshold`` (see :class:`Dropout`)."""
    if not shape:
        shape, scalar = (1,), True
    else:
        scalar = False
    last = shape[-1]
    words = jax.random.bits(key, (*shape[:-1], -(-last // 2)), jnp.uint32)
    threshold = jnp.uint32(threshold)
    pair = jnp.stack([(words & jnp.uint32(0xFFFF)) >= threshold, (words >> 16) >= threshold], -1)
    keep = pair.reshape(*shape[:-1], 2 * words.shape[-1])[..., :last]
    return keep.reshape(()) if scalar else keep


def check_dropout_bits(bits: Any) -> int:
    """``bits`` if it is one of :data:`DROPOUT_BITS`, else a ValueError naming the choices."""
    if isinstance(bits, bool) or bits not in DROPOUT_BITS:
        raise ValueError(f"dropout_bits={bits!r} is not supported; pass one of {DROPOUT_BITS}.")
    return int(bits)


def set_dropout_bits(model: nnx.Module, bits: int) -> nnx.Module:
    """Sets the bits per element of every :class:`Dropout` in ``model``; returns ``model``."""
    bits = check_dropout_bits(bits)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Dropout):
            node.bits = bits
    return model
