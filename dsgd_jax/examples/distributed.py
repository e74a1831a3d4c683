"""Data parallelism for the examples: a ``data`` mesh, sharded batches, many hosts.

The loop runs its jitted steps on global arrays: the batch is split over the
mesh's ``data`` axis, the model and optimizer state are replicated, and XLA
inserts the gradient all-reduce. The loss stays the mean over the *global*
batch's valid examples (the program is written for the whole batch), so a step
on N devices computes what one device computes, up to the order of float sums,
whatever the padding on each device.

Several hosts run the same command with their process id (or let
``jax.distributed.initialize`` detect SLURM, Open MPI or a TPU pod slice). Each
process puts only its own rows of every global batch on its devices
(``jax.make_array_from_process_local_data``); predictions are gathered to every
process; process 0 alone writes logs, the summary and the progress bar, and
orbax writes each replicated checkpoint once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "Placement",
    "initialize",
    "is_primary",
    "make_mesh",
    "parse_mesh",
]


def parse_mesh(spec: str) -> int:
    """The device count of ``--mesh``: ``''`` or ``'data:0'`` means every device."""
    if spec in ("", "data:0", "data"):
        return 0
    name, _, count = spec.partition(":")
    if name != "data" or not count.isdigit():
        raise ValueError(
            f"mesh={spec!r} is not understood; write --mesh=data:N (N devices on the data "
            "axis) or leave it empty for every device."
        )
    return int(count)


def make_mesh(spec: str) -> Mesh:
    """A one-axis ``data`` mesh over the first N devices (all of them by default)."""
    count = parse_mesh(spec) or jax.device_count()
    available = jax.device_count()
    if count > available:
        raise ValueError(
            f"mesh={spec!r} asks for {count} devices but JAX sees {available}; pass "
            f"--mesh=data:{available} or less."
        )
    if jax.process_count() > 1 and count != available:
        raise ValueError(
            f"mesh={spec!r}: with {jax.process_count()} processes the mesh spans all "
            f"{available} devices; leave --mesh empty."
        )
    return Mesh(np.asarray(jax.devices()[:count]), ("data",))


def is_primary() -> bool:
    """Whether this process writes logs, summaries and the progress bar."""
    return jax.process_index() == 0


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> bool:
    """Starts JAX's multi-controller runtime when the flags ask for it.

    ``num_processes`` 0 and no address: a single process (nothing to do).
    ``num_processes`` -1: let JAX detect the cluster (SLURM, Open MPI, TPU pods).
    Otherwise all three are passed on. CPU processes talk through gloo.
    Returns whether the runtime was started.
    """
    if num_processes == 0 and not coordinator_address:
        return False
    if num_processes == 1:
        return False
    if jax.distributed.is_initialized():
        return True
    if num_processes == -1:
        jax.distributed.initialize()
        return True
    if not coordinator_address or num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes}, "
            f"process_id={process_id}: give --coordinator_address=host:port, "
            "--num_processes=N (N > 1) and --process_id in [0, N), or --num_processes=-1 "
            "to let JAX detect the cluster."
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


class Placement:
    """Where the loop's arrays live: state replicated, batches split over ``data``."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.devices = mesh.devices.size
        self.replicated = NamedSharding(mesh, P())

    def check_batch(self, name: str, size: int) -> None:
        """Refuses a global batch that does not divide over the devices."""
        if size % self.devices:
            lower = size - size % self.devices
            raise ValueError(
                f"{name}={size} does not divide over the {self.devices} devices of the mesh; "
                f"pass --{name}={lower or self.devices} (a multiple of {self.devices}) or a "
                "smaller --mesh=data:N."
            )

    def replicate(self, tree: Any) -> Any:
        """``tree``'s arrays replicated on every device of the mesh."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(x):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                impl = jax.random.key_impl(x)
                return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
            return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))

        return jax.tree.map(put, tree)

    def shard(self, batch: Mapping[str, Any] | Any, axis: int = 0) -> Any:
        """A global batch (NumPy, identical on every process) split over the devices
        along ``axis`` (1 for batches of stacked seeds, ``[S, B, ...]``).
        Each process hands over only its own contiguous rows.
        """
        split = NamedSharding(self.mesh, P(*([None] * axis), "data"))

        def put(x):
            x = np.asarray(x)
            if jax.process_count() == 1:
                return jax.device_put(x, split)
            rows = x.shape[axis] // jax.process_count()
            first = jax.process_index() * rows
            mine = np.take(x, np.arange(first, first + rows), axis=axis)
            return jax.make_array_from_process_local_data(split, mine, x.shape)

        return jax.tree.map(put, batch)

    @staticmethod
    def gather(x: jax.Array) -> np.ndarray:
        """The whole of a (sharded) global array as NumPy, on every process."""
        if jax.process_count() == 1:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
