"""SWA (Izmailov et al. 2018) as an optax transformation: :func:`swa`,
:func:`swa_params`, :func:`swa_count`, and the method ``swa`` that evaluates the average."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method

__all__ = ["SWA", "SWAConfig", "SWAState", "swa", "swa_count", "swa_params"]


class SWAState(NamedTuple):
    """State of :func:`swa`.

    Attributes:
      count: int32 number of updates so far.
      n_averaged: int32 number of parameter snapshots in ``mean``.
      mean: float32 running mean of the post-update parameters (the initial parameters
        until the first snapshot).
    """

    count: jax.Array
    n_averaged: jax.Array
    mean: Any


def swa(start: int, every: int = 1) -> optax.GradientTransformation:
    """Stochastic weight averaging as an optax transformation (updates pass unchanged).

    After update number ``count`` (1-based), if ``count > start`` and
    ``(count - start) % every == 0``, the post-update parameters ``params + updates`` are
    added to a running mean: ``mean += (params + updates - mean) / (n_averaged + 1)``.
    Use it as the LAST element of ``optax.chain(...)`` so ``updates`` are the final
    ones; read the average with :func:`swa_params` (and :func:`swa_count`). Jit- and
    vmap-friendly; ``update`` needs ``params``.

    Args:
      start: number of updates before averaging starts (>= 0).
      every: average every ``every`` updates after ``start`` (>= 1).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), swa(start=1))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> swa_params(state)["w"], swa_count(state)
      (Array([-2.5, -2.5], dtype=float32), Array(2, dtype=int32))
    """
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"swa: start={start!r} must be an int >= 0 (updates before averaging)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"swa: every={every!r} must be an int >= 1 (updates between snapshots)")

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        mean = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        return SWAState(count=zero, n_averaged=zero, mean=mean)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "swa needs the current params: call tx.update(grads, state, params) "
                "(nnx.Optimizer and optax.MultiSteps pass them)"
            )
        count = state.count + 1
        take = (count > start) & ((count - start) % every == 0)
        weight = 1.0 / (state.n_averaged + 1).astype(jnp.float32)

        def average(m, p, u):
            new = p.astype(jnp.float32) + u.astype(jnp.float32)
            return jnp.where(take, m + (new - m) * weight, m)

        mean = jax.tree.map(average, state.mean, params, updates)
        n_averaged = state.n_averaged + take.astype(jnp.int32)
        return updates, SWAState(count=count, n_averaged=n_averaged, mean=mean)

    return optax.GradientTransformation(init_fn, update_fn)


def _find_swa_state(tree: Any) -> SWAState | None:
    if isinstance(tree, SWAState):
        return tree
    if isinstance(tree, (tuple, list)):  # optax.chain, NamedTuples (MultiStepsState, ...)
        children = tree
    elif isinstance(tree, Mapping):
        children = tree.values()
    else:
        return None
    for child in children:
        found = _find_swa_state(child)
        if found is not None:
            return found
    return None


def _unwrap(tree: Any) -> Any:
    """Raw arrays in place of nnx Variables (nnx.Optimizer wraps its state in OptState)."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(lambda x: x[...] if is_var(x) else x, tree, is_leaf=is_var)


def swa_params(opt_state: Any) -> Any | None:
    """The SWA mean held by the :class:`SWAState` inside ``opt_state``, or None.

    ``opt_state`` may be any nesting of tuples (``optax.chain``), NamedTuples (e.g.
    ``optax.MultiSteps``' ``inner_opt_state``), lists and mappings, as well as
    ``nnx.Optimizer.opt_state`` (its ``OptState`` variables are unwrapped to arrays).
    Before the first snapshot (see :func:`swa_count`) the mean is the initial params.
    """
    state = _find_swa_state(opt_state)
    return None if state is None else _unwrap(state.mean)


def swa_count(opt_state: Any) -> jax.Array | None:
    """Number of snapshots in the SWA mean inside ``opt_state`` (int32), or None."""
    state = _find_swa_state(opt_state)
    return None if state is None else _unwrap(state.n_averaged)


@dataclasses.dataclass
class SWAConfig:
    """swa's settings: when averaging starts and how often it takes a snapshot.

    Fields (and flags) of every example's config.
    """

    swa_start: float = config_field(0.75, "swa: share of optimizer updates before averaging starts")
    swa_every: int = config_field(1, "swa: optimizer updates between averaged snapshots")


class SWA(Method):
    """Averages the parameters every ``swa_every`` updates after the ``swa_start`` share of
    training, and evaluates the average once it holds a snapshot."""

    name = "swa"
    config = SWAConfig

    def validate(self, config) -> None:
        if not 0 <= config.swa_start < 1 or config.swa_every < 1:
            raise ValueError(
                f"swa_start must be in [0, 1) and swa_every >= 1, got {config.swa_start}, "
                f"{config.swa_every}."
            )

    def extra_transform(self, config, total_updates):
        return swa(round(config.swa_start * total_updates), config.swa_every)

    def eval_model(self, config, model, opt_state):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        mean, use = swa_params(opt_state), swa_count(opt_state) > 0
        averaged = jax.tree.map(
            lambda p, m: jnp.where(use, m, p), nnx.to_pure_dict(params), nnx.to_pure_dict(mean)
        )
        nnx.replace_by_pure_dict(params, averaged)
        return nnx.merge(graphdef, params, rest)
