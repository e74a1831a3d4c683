"""Several seeds of one fine-tuning run as one compiled program: ``jax.vmap`` over seeds.

:func:`train_seeds` builds one model and optimizer per seed exactly as
:func:`~dsgd_jax.examples.train.train_and_evaluate` does, splits them into a
shared graph definition and a state, stacks the states on a leading seed axis
and runs the very same train, conflict and predict steps under
``jax.jit(jax.vmap(...))``. Each seed keeps its own data order, dropout keys,
metrics log, checkpoints and ``summary.json`` in its own workdir, in the same
format as a sequential run, so a vmapped group's results can be resumed,
compared and reported like sequential ones.

Every seed must fit in memory at once: S seeds cost S times the parameters,
optimizer state and activations of one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples import distributed, files, loop
from dsgd_jax.examples.loop import evaluation, test_outputs
from dsgd_jax.examples.steps import make_steps
from dsgd_jax.examples.train import TrainConfig, announce_left_over, build_run, write_summary
from dsgd_jax.examples.workdir import check_workdir, start_log

__all__ = ["train_seeds"]


def train_seeds(
    config: TrainConfig, seeds: Sequence[int], workdirs: Sequence[str | Path]
) -> list[dict[str, Any]]:
    """Trains ``config`` once per seed, all seeds in one vmapped program.

    The program runs on one device (the seeds are its parallel axis); an explicit
    ``--mesh=data:N`` with N > 1 is refused.

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
    if distributed.parse_mesh(config.mesh) > 1 or jax.process_count() > 1:
        raise ValueError(
            f"mesh={config.mesh!r}: vmapped seeds run on one device in one process; drop "
            "--vmap to spread each run over a mesh, or drop --mesh."
        )
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    for c in configs:
        c.validate()
    workdirs = [Path(w).absolute() for w in workdirs]
    with contextlib.ExitStack() as stack, jax.numpy_dtype_promotion("standard"):
        for w in workdirs:
            stack.enter_context(files.workdir_lock(w))
        return _train_seeds(configs, workdirs)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _train_seeds(configs: list[TrainConfig], workdirs: list[Path]) -> list[dict[str, Any]]:
    start = time.perf_counter()
    num = len(configs)
    opened = []
    try:
        for c, w in zip(configs, workdirs, strict=True):
            opened.append(check_workdir(c, w))
        resumed = {last for _, last in opened}
        if len(resumed) > 1:
            raise ValueError(
                "The seeds' workdirs hold checkpoints of different epochs "
                f"{sorted(resumed, key=str)}; resume them one by one with train_and_evaluate, "
                "or start new workdirs."
            )
        return _train_group(configs, workdirs, [m for m, _ in opened], resumed.pop(), start, num)
    finally:
        for manager, _ in opened:
            if manager is not None:
                manager.wait_until_finished()
                manager.close()


def _train_group(configs, workdirs, managers, last_saved, start, num):
    config = configs[0]
    data = config.load_data()
    runs = [build_run(c, data) for c in configs]
    announce_left_over(config, runs[0].steps_per_epoch)
    if last_saved is not None:
        last_saved = _restore_common(runs, managers, last_saved)
        if last_saved is None:  # no epoch good for every seed: start the group over
            runs = [build_run(c, data) for c in configs]
    logs = [start_log(w, c, last_saved) for c, w in zip(configs, workdirs, strict=True)]
    steps = make_steps(config, runs[0].total_updates, runs[0].wrt)
    graphdef, _ = nnx.split((runs[0].model, runs[0].optimizer))
    state = _stack([nnx.split((r.model, r.optimizer))[1] for r in runs])
    dropout_keys = jnp.stack([r.dropout_key for r in runs])

    group = _Group(configs, data, graphdef, state, dropout_keys, steps, managers)
    evals, epochs_done = loop.train_epochs(
        config, group, data, logs, last_saved=last_saved,
        steps_per_epoch=runs[0].steps_per_epoch, checkpoints=managers[0] is not None,
    )  # fmt: skip
    wall = (time.perf_counter() - start) / num
    summaries = []
    for s, (c, w, run) in enumerate(zip(configs, workdirs, runs, strict=True)):
        model, _ = nnx.merge(graphdef, _unstack(group.state, s))
        metrics = {**evals[s], "vmapped_seeds": num}
        summaries.append(write_summary(w, c, run, model, epochs_done, wall, metrics))
    return summaries


class _Group:
    """Vmapped seeds for :func:`~dsgd_jax.examples.loop.train_epochs`: the very steps of
    a single run, as pure functions of the stacked state under ``jax.jit(jax.vmap(...))``."""

    stacked, show = True, True

    def __init__(self, configs, data, graphdef, state, dropout_keys, steps, managers):
        self.configs, self.data, self.seeds = configs, data, [c.seed for c in configs]
        self.graphdef, self.state, self.keys = graphdef, state, dropout_keys
        self.managers = managers

        def pure_train(state, inputs, labels, valid, key):
            model, optimizer = nnx.merge(graphdef, state)
            metrics = steps.train(model, optimizer, inputs, labels, valid, key)
            return nnx.split((model, optimizer))[1], metrics

        def pure_conflict(state, inputs, labels, valid, key):
            return steps.conflict(*nnx.merge(graphdef, state), inputs, labels, valid, key)

        def pure_predict(state, inputs):
            return steps.predict(*nnx.merge(graphdef, state), inputs)

        self._train = jax.jit(jax.vmap(pure_train))
        self._conflict = jax.jit(jax.vmap(pure_conflict))
        self._predict = jax.jit(jax.vmap(pure_predict, in_axes=(0, None)))
        self._fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))

    def place(self, batch):
        return batch  # one device: the program's parallel axis is the seeds

    def train(self, *batch):
        self.state, metrics = self._train(self.state, *batch)
        return metrics

    def conflict(self, *batch):
        return self._conflict(self.state, *batch)

    def dropout_key(self, step):
        return self._fold(self.keys, step)

    def evaluate(self):
        outputs = test_outputs(lambda x: self._predict(self.state, x), self.data, self.configs[0])
        return [
            evaluation({k: v[s] for k, v in outputs.items()}, self.data, c)
            for s, c in enumerate(self.configs)
        ]

    def params(self):
        return nnx.filter_state(self.state[0], nnx.Param)  # (model, optimizer) -> the model's

    def save(self, epoch):
        for s, manager in enumerate(self.managers):
            model, optimizer = nnx.merge(self.graphdef, _unstack(self.state, s))
            ckpt.save(manager, epoch, model, optimizer, self.configs[s].to_dict())


def _restore_common(runs, managers, newest: int) -> int | None:
    """Restores every seed at the newest epoch whose checkpoint is good for all of them.

    A damaged checkpoint is named and dropped (:func:`.checkpoint.restore_latest`); the
    seeds' newer good checkpoints above the common epoch are deleted, as that epoch
    trains again. Returns the epoch, or None when the group starts over.
    """
    target: int | None = newest
    while True:
        restored = [
            ckpt.restore_latest(m, r.model, r.optimizer, at_most=target)
            for r, m in zip(runs, managers, strict=True)
        ]
        lowest = None if None in restored else min(restored)
        if all(e == lowest for e in restored):
            break
        target = lowest
        if target is None:
            break
    for manager in managers:
        for epoch in manager.all_steps():
            if target is None or epoch > target:
                manager.delete(epoch)
    return target
