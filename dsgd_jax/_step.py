"""Reading the number of optimizer updates from an optax state."""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import optax

# States whose ``count`` field counts something other than optimizer updates.
_NOT_UPDATE_COUNTERS = ("ReduceLROnPlateauState", "ZoomLinesearchState")


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _children(node: Any) -> list[Any]:
    if _is_namedtuple(node) or isinstance(node, (tuple, list)):
        return list(node)
    if isinstance(node, collections.abc.Mapping):
        return list(node.values())
    return []


def _find_counter(opt_state: Any) -> Any | None:
    """Breadth-first search for the shallowest update counter."""
    queue = collections.deque([opt_state])
    while queue:
        node = queue.popleft()
        if isinstance(node, optax.MultiStepsState):
            return node.gradient_step
        if (
            _is_namedtuple(node)
            and "count" in node._fields
            and type(node).__name__ not in _NOT_UPDATE_COUNTERS
        ):
            return node.count
        queue.extend(_children(node))
    return None


def step_count(opt_state: Any) -> jax.Array:
    """The number of optimizer updates applied so far, read from an optax state.

    Use it to evaluate a scaler inside a jitted train step:
    ``scale = scaler(dsgd_jax.step_count(opt_state))``. It works for

    - ``optax.adamw(lr)`` and ``optax.adamw(schedule)`` (two counters, which
      ``optax.tree_utils.tree_get(state, "count")`` refuses),
    - ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(...))``,
    - ``optax.inject_hyperparams(optax.adamw)(...)``,
    - ``optax.MultiSteps(...)``: the number of *emitted* updates
      (``gradient_step``), so lambda stays constant within an accumulation
      window and ``total_steps`` counts optimizer updates, not micro-batches,
    - the ``opt_state`` of ``flax.nnx.Optimizer`` (or the optimizer itself)
      and of a Linen ``TrainState`` (or the train state itself).

    Where a state holds several counters the shallowest is taken; the counters
    of optax's transforms advance together, once per ``update`` call.

    Alternatives: ``nnx.Optimizer.step`` counts ``optimizer.update`` calls and
    Linen ``TrainState.step`` counts ``apply_gradients`` calls; under
    ``optax.MultiSteps`` both count micro-batches, not optimizer updates, so
    divide by the accumulation steps (or use this function) to get ``t``.

    Args:
        opt_state: an optax optimizer state (any pytree of optax states), or an
            object with an ``opt_state`` attribute.

    Returns:
        The update count, an int32 scalar (traced under ``jit``).

    Raises:
        ValueError: if the state holds no update counter.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import dsgd_jax
        >>> params = {"w": jnp.zeros(3)}
        >>> tx = optax.MultiSteps(optax.adamw(optax.linear_schedule(1e-3, 0.0, 10)), 2)
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     _, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> int(dsgd_jax.step_count(state))  # 5 micro-batches, 2 updates emitted
        2
    """
    if not _is_namedtuple(opt_state) and hasattr(opt_state, "opt_state"):
        opt_state = opt_state.opt_state
    counter = _find_counter(opt_state)
    if counter is None:
        raise ValueError(
            "opt_state holds no step counter (no optax state with a `count` field and "
            "no optax.MultiStepsState). Pass the state of an optimizer that counts its "
            "updates, such as optax.adamw or any optax.inject_hyperparams(...) "
            "optimizer, or wrap yours: optax.chain(tx, optax.scale_by_schedule(lambda t: "
            "1.0)) adds a counter."
        )
    get_value = getattr(counter, "get_value", None)  # a flax.nnx Variable
    return jnp.asarray(get_value() if callable(get_value) else counter)
