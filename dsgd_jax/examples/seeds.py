"""Several seeds of one fine-tuning run as one compiled program: ``jax.vmap`` over seeds.

:func:`train_seeds` checks the seeds and their workdirs and hands them to
:func:`dsgd_jax.examples.runs.train_runs`, the program a single run is too (with
one seed): one model and optimizer per seed, built exactly as a single run
builds them, stacked on a leading seed axis, and the very same train, conflict
and predict steps under ``jax.jit(jax.vmap(...))``. Each seed keeps its own data
order, dropout keys, metrics log, checkpoints and ``summary.json`` in its own
workdir, in the format of a single run, so a vmapped group's results can be
resumed, compared and reported like sequential ones.

Every seed must fit in memory at once: S seeds cost S times the parameters,
optimizer state and activations of one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from dsgd_jax.examples import distributed, files
from dsgd_jax.examples.runs import train_runs
from dsgd_jax.examples.train import TrainConfig

__all__ = ["train_seeds"]


def train_seeds(
    config: TrainConfig, seeds: Sequence[int], workdirs: Sequence[str | Path]
) -> list[dict[str, Any]]:
    """Trains ``config`` once per seed, all seeds in one vmapped program.

    The seeds are the program's leading axis (:mod:`dsgd_jax.examples.runs`, where a
    single run is one seed); on a ``--mesh=data:N`` every seed's batch is split over
    the N devices.

    Args:
      config: the run's settings; its ``seed`` is replaced by each of ``seeds``.
      seeds: distinct seeds, one per run.
      workdirs: one workdir per seed (what ``train_and_evaluate`` would write to).

    Returns:
      One summary per seed, as :func:`~dsgd_jax.examples.train.train_and_evaluate`
      returns (with ``vmapped_seeds`` added; ``wall_time_s`` is the group's time
      divided by the number of seeds).

    Raises:
      ValueError: on bad arguments, or when the seeds' workdirs hold checkpoints of
        different epochs (resume those one by one with ``train_and_evaluate``).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}.")
    if len(workdirs) != len(seeds):
        raise ValueError(f"Give one workdir per seed: {len(seeds)} seeds, {len(workdirs)} dirs.")
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    for c in configs:
        c.validate()
    workdirs = [Path(w).absolute() for w in workdirs]
    with contextlib.ExitStack() as stack, jax.numpy_dtype_promotion("standard"):
        for w in workdirs if distributed.is_primary() else ():
            stack.enter_context(files.workdir_lock(w))
        return train_runs(configs, workdirs)
