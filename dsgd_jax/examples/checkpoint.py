"""Orbax checkpoints of a model and its optimizer, one per epoch, each with a checksum.

The saved tree is ``{"model": ..., "optimizer": ...}`` of plain nested dicts of
arrays (``nnx.State.to_pure_dict``). RNG streams are not saved: the loop derives
every dropout key from the seed and the step, so a resumed run draws the same
keys as an uninterrupted one.

:func:`save` waits for the write to finish, so a failed write (a full disk) is
reported for the epoch that failed, and then records the tree's SHA-256 digest
and the run's settings in ``digests.json`` beside the epochs' folders.
:func:`restore_latest` loads the newest checkpoint whose digest matches and falls
back to the one before when the newest is damaged (bit flips, a truncated or
missing file), naming the damage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from dsgd_jax.examples import files

__all__ = [
    "CheckpointDamaged",
    "latest_model_tree",
    "open_manager",
    "read_tree",
    "restore",
    "restore_latest",
    "save",
    "saved_config",
    "tree_digest",
]

_SAVED = nnx.Not(nnx.RngState)
DIGESTS = "digests.json"


class CheckpointDamaged(ValueError):
    """A checkpoint that cannot be read back as it was written."""


def open_manager(directory: str | Path, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A manager for ``directory`` keeping the last ``max_to_keep`` epochs.

    An epoch folder that orbax never finished (no ``_CHECKPOINT_METADATA``: emptied,
    or cut short before its commit) is named and removed first: orbax would
    otherwise refuse every checkpoint of the folder.
    """
    directory = Path(directory).absolute()
    if directory.is_dir() and jax.process_index() == 0:
        for step in sorted(p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()):
            if not (step / "_CHECKPOINT_METADATA").exists():
                print(
                    f"Warning: the checkpoint of epoch {step.name} in {directory} is "
                    "incomplete (no _CHECKPOINT_METADATA): removed it, falling back to the "
                    "checkpoint before it.",
                    file=sys.stderr,
                )
                shutil.rmtree(step)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def _tree(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, Any]:
    return {
        "model": nnx.to_pure_dict(nnx.state(model, _SAVED)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer, _SAVED)),
    }


def _host(x: Any) -> np.ndarray:
    """This process's copy of a (replicated) array."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def tree_digest(tree: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in a fixed order.

    Examples:
      >>> import numpy as np
      >>> a = tree_digest({"w": np.zeros(3, np.float32)})
      >>> a == tree_digest({"w": np.zeros(3, np.float32)}), a == tree_digest({"w": np.ones(3)})
      (True, False)
    """
    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    named = sorted(((_path_text(path), leaf) for path, leaf in leaves), key=lambda t: t[0])
    for name, leaf in named:
        value = np.ascontiguousarray(_host(leaf))
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _path_text(path) -> str:
    """``a/0/b`` for a tree path, whether its keys are ints or strings (orbax reads the
    integer keys of NNX lists back as strings)."""
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def _digests_path(manager: ocp.CheckpointManager) -> Path:
    return Path(manager.directory) / DIGESTS


def _read_digests(manager: ocp.CheckpointManager) -> dict[str, Any]:
    path = _digests_path(manager)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        print(f"Warning: {path} is unreadable; its checkpoints are not verified.", file=sys.stderr)
        return {}


def save(
    manager: ocp.CheckpointManager,
    epoch: int,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    config: dict[str, Any] | None = None,
) -> None:
    """Saves after ``epoch``, waits for the write, then records its digest (and ``config``).

    Raises:
      OSError: naming the epoch and the folder when the write fails (a full disk).
    """
    tree = _tree(model, optimizer)
    try:
        manager.save(epoch, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()
    except Exception as e:  # orbax reports write errors as bare Exceptions
        raise OSError(
            f"Could not write the checkpoint of epoch {epoch} to {manager.directory}: "
            f"{_reason(e)}. Free space there and run the same command with --resume."
        ) from e
    if jax.process_index() != 0:
        return
    kept = set(manager.all_steps())
    digests = {k: v for k, v in _read_digests(manager).items() if int(k) in kept}
    digests[str(epoch)] = {"sha256": tree_digest(tree), "config": config}
    files.write_atomic(_digests_path(manager), json.dumps(digests, indent=1) + "\n")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def saved_config(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The settings recorded with the newest checkpoint, or None."""
    digests = _read_digests(manager)
    steps = sorted((int(k) for k in digests), reverse=True)
    return digests[str(steps[0])].get("config") if steps else None


def restore(
    manager: ocp.CheckpointManager, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer
) -> None:
    """Loads the checkpoint of ``epoch`` into ``model`` and ``optimizer`` in place.

    Raises:
      CheckpointDamaged: if it cannot be read, does not fit the model, or its digest
        differs from the one recorded when it was written.
    """
    target = _tree(model, optimizer)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises bare Exceptions for truncated files
        raise CheckpointDamaged(
            f"the checkpoint of epoch {epoch} in {manager.directory} cannot be read ({_reason(e)})"
        ) from e
    expected = _read_digests(manager).get(str(epoch), {}).get("sha256")
    if expected is not None and tree_digest(restored) != expected:
        raise CheckpointDamaged(
            f"the checkpoint of epoch {epoch} in {manager.directory} does not match the "
            "checksum recorded when it was written"
        )
    for obj, key in ((model, "model"), (optimizer, "optimizer")):
        state = nnx.state(obj, _SAVED)
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(obj, state)


def restore_latest(
    manager: ocp.CheckpointManager,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *,
    at_most: int | None = None,
) -> int | None:
    """Restores the newest good checkpoint (of an epoch ``<= at_most`` if given).

    A damaged newer checkpoint is named on stderr and deleted, so the run can write
    that epoch again. Returns the epoch restored, or None if none is good (the run
    then starts over).
    """
    for epoch in sorted(manager.all_steps(), reverse=True):
        if at_most is not None and epoch > at_most:
            continue
        try:
            restore(manager, epoch, model, optimizer)
            return epoch
        except CheckpointDamaged as e:
            print(f"Warning: {e}; falling back to the checkpoint before it.", file=sys.stderr)
            if jax.process_index() == 0:
                manager.delete(epoch)
    return None


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
