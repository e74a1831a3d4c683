"""Orbax checkpoints of a model and its optimizer, one per epoch.

The saved tree is ``{"model": ..., "optimizer": ...}`` of plain nested dicts of
arrays (``nnx.State.to_pure_dict``). RNG streams are not saved: the loop derives
every dropout key from the seed and the step, so a resumed run draws the same
keys as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["latest_model_tree", "open_manager", "read_tree", "restore", "save"]

_SAVED = nnx.Not(nnx.RngState)


def open_manager(directory: str | Path, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A manager for ``directory`` keeping the last ``max_to_keep`` epochs."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _tree(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, Any]:
    return {
        "model": nnx.to_pure_dict(nnx.state(model, _SAVED)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer, _SAVED)),
    }


def save(
    manager: ocp.CheckpointManager, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer
) -> None:
    """Saves after ``epoch`` (asynchronously; ``manager.wait_until_finished`` waits)."""
    manager.save(epoch, args=ocp.args.StandardSave(_tree(model, optimizer)))


def restore(
    manager: ocp.CheckpointManager, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer
) -> None:
    """Loads the checkpoint of ``epoch`` into ``model`` and ``optimizer`` in place."""
    target = _tree(model, optimizer)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"The checkpoint of epoch {epoch} in {manager.directory} does not fit this "
            f"model/optimizer ({e}). Resume with the settings it was saved with."
        ) from e
    for obj, key in ((model, "model"), (optimizer, "optimizer")):
        state = nnx.state(obj, _SAVED)
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(obj, state)


def read_tree(directory: str | Path, epoch: int | None = None) -> dict[str, Any]:
    """The saved ``{"model", "optimizer"}`` tree of ``epoch`` (default: the newest).

    Arrays come back on this process's first device, whatever mesh or process
    count wrote them.
    """
    manager = ocp.CheckpointManager(
        Path(directory).absolute(), item_handlers=ocp.StandardCheckpointHandler()
    )
    try:
        epoch = manager.latest_step() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint.")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(epoch),
        )
        return manager.restore(epoch, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()


def latest_model_tree(directory: str | Path) -> dict[str, Any]:
    """The model part (nested dicts of arrays) of the newest checkpoint in ``directory``."""
    return read_tree(directory)["model"]
