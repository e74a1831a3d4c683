"""The runs of one compiled program: S seeds of one config, stacked on a leading axis.

A single run (:func:`~dsgd_jax.examples.train.train_and_evaluate`) is S = 1; the
vmapped seeds of :func:`~dsgd_jax.examples.seeds.train_seeds` are S > 1. Both go
through :func:`train_runs`: one model and optimizer per seed, built exactly as a
single run builds them, split into a shared graph definition and a state whose
arrays carry the seed axis, and the method's train, conflict and predict steps
as pure functions of that state under ``jax.jit(jax.vmap(...))``. On a
data-parallel mesh the state is replicated and each batch is split over the
devices along its batch axis (the one after the seed axis).

Each seed keeps its own data order, dropout keys, metrics log, checkpoints and
``summary.json`` in its own workdir; a checkpoint holds one seed's model and
optimizer, unstacked, whatever S wrote it, so any run resumes alone or in a
group. Every seed must fit in memory at once: S seeds cost S times the
parameters, optimizer state and activations of one run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples import distributed, loop
from dsgd_jax.examples.loop import evaluation, test_outputs
from dsgd_jax.examples.multitask import TaskHeads
from dsgd_jax.examples.nn import num_params, set_dropout_bits
from dsgd_jax.examples.steps import make_optimizer, make_steps, prepare_model
from dsgd_jax.examples.workdir import check_workdir, start_log

if TYPE_CHECKING:
    from dsgd_jax.examples.data import TaskData
    from dsgd_jax.examples.train import TrainConfig

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "Run",
    "build_run",
    "compiler_options",
    "over_seeds",
    "stack",
    "train_runs",
    "unstack",
]

# XLA options of the examples' compiled steps on CPU. The concurrency-optimized
# scheduler orders the same instructions differently: the same bits, and the MiniLM-L6
# DSGD step in 0.953 of the default's time on a 2-core AMD EPYC (95% interval 0.890 to
# 0.986; ``python benchmarks/xla_flags.py``, benchmarks/results/xla_flags/full-cpu).
CPU_COMPILER_OPTIONS = {"xla_cpu_enable_concurrency_optimized_scheduler": True}


def compiler_options() -> dict[str, Any] | None:
    """The XLA options the examples compile their steps with on this backend."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def stack(trees):
    """The trees' arrays stacked on a new leading (seed) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    """Seed ``i``'s slice of a stacked tree."""
    return jax.tree.map(lambda x: x[i], tree)


def over_seeds(fn, num: int, in_axes=0):
    """``fn`` of one seed, jitted over the leading seed axis of its ``in_axes=0`` arguments
    and of its outputs: ``jax.jit(jax.vmap(fn, in_axes))`` for ``num`` > 1 seeds. For one
    seed it is ``fn`` itself on the seed's slice, the axis of 1 dropped and put back, which
    is what the vmap computes, in the very operations (and float rounding) of one run.
    Both compile with :func:`compiler_options`."""
    if num > 1:
        return jax.jit(jax.vmap(fn, in_axes=in_axes), compiler_options=compiler_options())

    def one(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        args = [a if ax is None else unstack(a, 0) for a, ax in zip(args, axes, strict=True)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return jax.jit(one, compiler_options=compiler_options())


class Run(NamedTuple):
    """A freshly initialised run: model, optimizer and what the loop needs."""

    model: nnx.Module
    optimizer: nnx.Optimizer
    wrt: Any
    steps_per_epoch: int
    total_updates: int
    dropout_key: jax.Array


def build_run(config: TrainConfig, data: TaskData) -> Run:
    """The model (with the method's one-off change) and optimizer of ``config.seed``."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    model = config.build_model(data, nnx.Rngs(params=init_key, dropout=init_key))
    if data.heads and not isinstance(model, TaskHeads):  # several tasks: a head each
        model = TaskHeads(model, data.heads)
    wrt = prepare_model(config, model, jax.random.fold_in(init_key, 1))
    set_dropout_bits(model, config.dropout_bits)  # after prepare_model's new layers
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_updates = steps_per_epoch * config.num_epochs // config.grad_accum_steps
    if total_updates < 1:
        raise ValueError(
            f"grad_accum_steps={config.grad_accum_steps} exceeds the {steps_per_epoch} "
            f"micro-batches of {config.num_epochs} epoch(s); lower it or train longer."
        )
    optimizer = nnx.Optimizer(model, make_optimizer(config, total_updates), wrt=wrt)
    return Run(model, optimizer, wrt, steps_per_epoch, total_updates, dropout_key)


def write_summary(workdir, config, run: Run, model, epochs_done, wall, metrics, write=True):
    """Returns the summary of one run; writes it to ``summary.json`` if ``write``."""
    summary = {
        "method": config.method,
        "task": config.task_name,
        "seed": config.seed,
        "epochs": epochs_done,
        "finished": epochs_done == config.num_epochs,
        "num_params": num_params(model),
        "num_trainable": sum(x.size for x in jax.tree.leaves(nnx.state(model, run.wrt))),
        "wall_time_s": wall,
        **metrics,
        "config": config.to_dict(),
    }
    if write:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def announce_left_over(config: TrainConfig, steps_per_epoch: int) -> None:
    """Says at start when the last accumulation window never fills (its gradients are
    then not applied); once per program."""
    micro_batches = steps_per_epoch * config.num_epochs
    left_over = micro_batches % config.grad_accum_steps
    if left_over and distributed.is_primary():
        print(
            f"Note: grad_accum_steps={config.grad_accum_steps} does not divide the "
            f"{micro_batches} micro-batches of {config.num_epochs} "
            f"epoch(s), so the gradients of the last {left_over} never fill an update and "
            "are not applied; pick grad_accum_steps dividing that count to use them.",
            file=sys.stderr,
        )


def train_runs(configs: list[TrainConfig], workdirs: list[Path]) -> list[dict[str, Any]]:
    """Trains ``configs`` (one config, S seeds) as one program; returns their summaries.

    The workdirs must be locked by the caller. With S > 1 the summaries carry
    ``vmapped_seeds`` and ``wall_time_s`` is the program's time divided by S.

    Raises:
      ValueError: when the seeds' workdirs hold checkpoints of different epochs.
    """
    start = time.perf_counter()
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
        managers = [m for m, _ in opened]
        return _train(configs, workdirs, managers, resumed.pop(), start)
    finally:
        for manager, _ in opened:
            if manager is not None:
                manager.wait_until_finished()
                manager.close()


def _train(configs, workdirs, managers, last_saved, start):
    config, num = configs[0], len(configs)
    placement = distributed.Placement(distributed.make_mesh(config.mesh))
    placement.check_batch("batch_size", config.batch_size)
    placement.check_batch("eval_batch_size", config.eval_batch_size)
    primary = distributed.is_primary()
    data = config.load_data()
    if config.task_mixing != "proportional" and not data.heads:
        raise ValueError(
            f"task_mixing={config.task_mixing!r} mixes several tasks, but this run has one; "
            "drop the flag or train several tasks at once (e.g. --task=drugs+tweets3)."
        )
    runs = [build_run(c, data) for c in configs]
    announce_left_over(config, runs[0].steps_per_epoch)
    if last_saved is not None:  # resume: the newest epoch that reads back intact for all
        last_saved = _restore_common(runs, managers, last_saved)
        if last_saved is None:  # no epoch good for every seed: start over
            runs = [build_run(c, data) for c in configs]
    logs = [start_log(w, c, last_saved) for c, w in zip(configs, workdirs, strict=True)]
    logs = logs if primary else []
    steps = make_steps(config, runs[0].total_updates, runs[0].wrt)
    graphdef, _ = nnx.split((runs[0].model, runs[0].optimizer))
    state = placement.replicate(stack([nnx.split((r.model, r.optimizer))[1] for r in runs]))
    keys = placement.replicate(jnp.stack([r.dropout_key for r in runs]))

    program = _Program(configs, data, graphdef, state, keys, steps, placement, managers)
    evals, epochs_done = loop.train_epochs(
        config, program, data, logs, last_saved=last_saved,
        steps_per_epoch=runs[0].steps_per_epoch, checkpoints=managers[0] is not None,
    )  # fmt: skip
    wall = (time.perf_counter() - start) / num
    summaries = []
    for s, (c, w, run) in enumerate(zip(configs, workdirs, runs, strict=True)):
        model, _ = nnx.merge(graphdef, unstack(program.state, s))
        metrics = {**evals[s], "vmapped_seeds": num} if num > 1 else evals[s]
        summaries.append(write_summary(w, c, run, model, epochs_done, wall, metrics, primary))
    return summaries


class _Program:
    """S seeds for :func:`~dsgd_jax.examples.loop.train_epochs`: the method's steps as
    pure functions of the stacked state under ``jax.jit(jax.vmap(...))``."""

    def __init__(self, configs, data, graphdef, state, keys, steps, placement, managers):
        self.configs, self.data, self.seeds = configs, data, [c.seed for c in configs]
        self.graphdef, self.state, self.keys = graphdef, state, keys
        self.placement, self.managers = placement, managers
        self.show = distributed.is_primary()

        def pure_train(state, inputs, labels, valid, key):
            model, optimizer = nnx.merge(graphdef, state)
            metrics = steps.train(model, optimizer, inputs, labels, valid, key)
            return nnx.split((model, optimizer))[1], metrics

        def pure_conflict(state, inputs, labels, valid, key):
            return steps.conflict(*nnx.merge(graphdef, state), inputs, labels, valid, key)

        def pure_predict(state, inputs):
            return steps.predict(*nnx.merge(graphdef, state), inputs)

        num = len(configs)
        self._train = over_seeds(pure_train, num)
        self._conflict = over_seeds(pure_conflict, num)
        self._predict = over_seeds(pure_predict, num, in_axes=(0, None))
        self._fold = over_seeds(jax.random.fold_in, num, in_axes=(0, None))

    def place(self, batch):
        return self.placement.shard(batch, axis=1)  # [S, B, ...]: split B over the mesh

    def train(self, *batch):
        self.state, metrics = self._train(self.state, *batch)
        return metrics

    def conflict(self, *batch):
        return self._conflict(self.state, *batch)

    def dropout_key(self, step):
        return self._fold(self.keys, step)

    def evaluate(self):
        def predict(inputs):
            outputs = self._predict(self.state, self.placement.shard(inputs))
            return jax.tree.map(self.placement.gather, outputs)

        outputs = test_outputs(predict, self.data, self.configs[0])
        return [
            evaluation({k: v[s] for k, v in outputs.items()}, self.data, c)
            for s, c in enumerate(self.configs)
        ]

    def params(self):
        return nnx.filter_state(self.state[0], nnx.Param)  # (model, optimizer) -> the model's

    def save(self, epoch):
        for s, manager in enumerate(self.managers):
            model, optimizer = nnx.merge(self.graphdef, unstack(self.state, s))
            ckpt.save(manager, epoch, model, optimizer, self.configs[s].to_dict())


def _restore_common(runs, managers, newest: int) -> int | None:
    """Restores every seed at the newest epoch whose checkpoint is good for all of them.

    A damaged checkpoint is named and dropped (:func:`.checkpoint.restore_latest`); the
    seeds' newer good checkpoints above the common epoch are deleted, as that epoch
    trains again. Returns the epoch, or None when the runs start over.
    """
    target: int | None = newest
    while True:
        restored = [
            ckpt.restore_latest(m, r.model, r.optimizer, at_most=target)
            for r, m in zip(runs, managers, strict=True)
        ]
        lowest = None if None in restored else min(restored)
        if lowest is None or all(e == lowest for e in restored):
            break
        target = lowest  # some seed fell back further: restore every seed at that epoch
    for manager in managers:
        for epoch in manager.all_steps():
            if lowest is None or epoch > lowest:
                manager.delete(epoch)
    return lowest
