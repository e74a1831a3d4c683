"""The epoch of the examples' loop, once for a single run and for vmapped seeds.

:func:`run_epoch` iterates one epoch of training batches and calls the train
step on each, logging every ``log_every`` steps, the gradient conflict every
``conflict_every`` steps, and refusing a non-finite loss before it is logged.
It serves one run (:func:`dsgd_jax.examples.train.train_and_evaluate`, whose
metrics are scalars) and S seeds trained as one vmapped program
(:func:`dsgd_jax.examples.seeds.train_seeds`, whose metrics carry a leading
seed axis) alike: each seed keeps its own data order (:func:`data_order`),
dropout keys and log. :func:`train_epochs` runs the epochs of either, from the
first unfinished one: train, evaluate, log, check the parameters, checkpoint,
stop when asked; a :class:`Runs` says how one run or a vmapped group does each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples import interrupt, multitask
from dsgd_jax.examples.data import TaskData, batches
from dsgd_jax.examples.metrics import MetricsLog, classification_metrics, mean_pairwise_cosine

__all__ = [
    "CompletedSteps",
    "check_finite",
    "check_params_finite",
    "data_order",
    "evaluation",
    "log_evaluation",
    "progress_bar",
    "run_epoch",
    "test_outputs",
    "train_epochs",
]


def data_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch`` of the run seeded ``seed``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def check_finite(records: list[dict[str, Any]], last_saved: int) -> None:
    for record in records:
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"The training loss is {record['loss']} at step {record['step']} "
                f"(epoch {record['epoch']}); nothing was logged or saved from it. Lower "
                "--learning_rate or set --max_grad_norm; the last good checkpoint is "
                f"epoch {last_saved}."
            )


def progress_bar(config, total: int, epoch: int, show: bool = True):
    """The epoch's progress bar (off with ``--no-progress`` or when ``show`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"epoch {epoch}/{config.num_epochs}",
        disable=not (config.progress and show),
        dynamic_ncols=True,
        leave=True,
    )


class CompletedSteps:
    """Advances a progress bar by completed steps, not dispatched ones.

    Under JAX's asynchronous dispatch a loop returns from a step as soon as it is
    queued, so a bar advanced per call runs ahead of the computation and then
    stalls at the next read-back. ``dispatched(output)`` is called with each new
    step's output: it waits for the step before it (one step stays in flight, so
    the host still prepares the next batch while the device computes) and only
    then advances the bar; ``finish()`` waits for the last one.
    """

    def __init__(self, bar):
        self.bar = bar
        self._in_flight = None

    def dispatched(self, output) -> None:
        self._complete()
        self._in_flight = output

    def finish(self) -> None:
        self._complete()

    def _complete(self) -> None:
        if self._in_flight is not None:
            jax.block_until_ready(self._in_flight)
            self._in_flight = None
            self.bar.update(1)


def _per_seed(tree: dict[str, Any], seeds: int) -> list[dict[str, float]]:
    """Host metrics (a leading seed axis) as one record per seed."""
    return [{k: float(v[s]) for k, v in tree.items()} for s in range(seeds)]


class Runs(Protocol):
    """What :func:`train_epochs` needs of the runs of one program (S seeds; S = 1 for a
    single run): batches, keys and metrics carry a leading seed axis."""

    seeds: Sequence[int]  # the seed of each run
    show: bool  # whether this process shows the progress bar

    def place(self, batch: Any) -> Any: ...  # where the steps read a batch (e.g. sharded)
    def train(self, inputs, labels, valid, key) -> dict[str, jax.Array]: ...
    def conflict(self, inputs, labels, valid, key) -> dict[str, jax.Array]: ...
    def dropout_key(self, step: int) -> jax.Array: ...
    def evaluate(self) -> list[dict[str, Any]]: ...
    def params(self) -> nnx.State: ...
    def save(self, epoch: int) -> None: ...


def run_epoch(
    config,
    epoch: int,
    data: TaskData,
    runs: Runs,
    logs: Sequence[MetricsLog],
    *,
    steps_per_epoch: int,
    last_saved: int,
) -> float:
    """One epoch of training; returns its seconds, from the first batch to the last
    step's completed metrics (evaluation and checkpoints not included).

    Args:
      config: the run's settings (batch size, logging and conflict intervals, bar).
      epoch: the epoch, from 1.
      data: the task; its train split is batched in each seed's :func:`data_order` (or,
        for several tasks with ``task_mixing="round_robin"``,
        :func:`~dsgd_jax.examples.multitask.round_robin_order`).
      runs: the run or vmapped seeds (:class:`Runs`): ``train(inputs, labels, valid,
        key)`` takes one optimizer step and updates their state, ``conflict`` measures
        :func:`dsgd_jax.gradient_conflict` without updating, ``dropout_key(step)`` is
        the step's key; batches, keys and metrics carry a leading seed axis.
      logs: one log per run (none on the processes that do not write).
      steps_per_epoch: micro-batches per epoch (the step count runs on across epochs).
      last_saved: the last checkpointed epoch, named when the loss turns non-finite.
    """
    run_seeds = runs.seeds
    seeds = len(run_seeds)
    if config.task_mixing == "round_robin":
        orders = [multitask.round_robin_order(data, s, epoch) for s in run_seeds]
    else:
        orders = [data_order(s, epoch, len(data.train)) for s in run_seeds]
    iters = [batches(data.train, config.batch_size, order=order) for order in orders]
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    bar = progress_bar(config, steps_per_epoch, epoch, show=runs.show)

    def flush():
        host = jax.device_get(pending)
        per_run: list[list[dict[str, Any]]] = [[] for _ in run_seeds]
        for step, metrics in host:
            for records, values in zip(per_run, _per_seed(metrics, seeds), strict=True):
                records.append({"kind": "step", "epoch": epoch, "step": step, **values})
        for records in per_run:
            check_finite(records, last_saved)
        for log, records in zip(logs, per_run, strict=False):
            log.write(records)
        if host:
            last = host[-1][1]
            bar.set_postfix(
                loss=f"{float(np.mean(last['loss'])):.4f}",
                acc=f"{float(np.mean(last['fraction_correct'])):.2f}",
                lam=f"{float(np.mean(last['lambda'])):.3f}",
            )
        pending.clear()

    done = CompletedSteps(bar)
    start = time.perf_counter()
    with bar:
        if seeds > 1:
            bar.set_description(f"{seeds} seeds, epoch {epoch}/{config.num_epochs}")
        for i, group in enumerate(zip(*iters, strict=True)):
            interrupt.check()
            step = (epoch - 1) * steps_per_epoch + i + 1
            batch = jax.tree.map(lambda *xs: np.stack(xs), *group)
            batch, key = runs.place(batch), runs.dropout_key(step)
            if config.conflict_every and step % config.conflict_every == 0:
                stats = jax.device_get(runs.conflict(*batch, key))
                for log, values in zip(logs, _per_seed(stats, seeds), strict=False):
                    log.write([{"kind": "conflict", "epoch": epoch, "step": step, **values}])
            pending.append((step, runs.train(*batch, key)))
            done.dispatched(pending[-1][1])
            if len(pending) >= config.log_every:
                flush()
        done.finish()
        flush()
    return time.perf_counter() - start


def log_evaluation(logs: Sequence[MetricsLog], epoch: int, evals: Sequence[dict[str, Any]]):
    """Writes each run's epoch evaluation (its predictions left out) to its log."""
    for log, metrics in zip(logs, evals, strict=False):
        kept = {k: v for k, v in metrics.items() if k != "predictions"}
        log.write([{"kind": "epoch", "epoch": epoch, **kept}])


def check_params_finite(params: nnx.State, epoch: int, run_seeds: Sequence[int]) -> None:
    """Raises FloatingPointError, before the epoch's checkpoint, if a parameter is not
    finite; ``params`` carry a leading seed axis (``run_seeds``)."""
    leaves = jax.tree.leaves(params)
    finite = [bool(all(jnp.all(jnp.isfinite(p[s])) for p in leaves)) for s in range(len(run_seeds))]
    bad = [seed for seed, ok in zip(run_seeds, finite, strict=True) if not ok]
    if bad and len(run_seeds) == 1:
        raise FloatingPointError(
            f"Non-finite parameters after epoch {epoch}; the checkpoint was not written. "
            "Lower --learning_rate or set --max_grad_norm."
        )
    if bad:
        raise FloatingPointError(
            f"Non-finite parameters after epoch {epoch} for seeds {bad}; no checkpoint was "
            "written. Lower --learning_rate or set --max_grad_norm."
        )


def test_outputs(predict: Callable[[Any], dict[str, Any]], data: TaskData, config):
    """``predict(inputs)`` over the test split, padding dropped.

    ``predict`` returns ``{"predictions": [..., B]}`` and optionally ``"features":
    [..., B, H]`` (a leading axis of S vmapped seeds or none); the result holds
    the same keys with the B axes of every batch joined into N.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    for inputs, _, valid in batches(data.test, config.eval_batch_size):
        for name, value in predict(inputs).items():
            value = np.asarray(value)
            axis = -1 if name == "predictions" else -2
            chunks.setdefault(name, []).append(np.compress(valid, value, axis=axis))
    return {
        name: np.concatenate(parts, axis=-1 if name == "predictions" else -2)
        for name, parts in chunks.items()
    }


def evaluation(outputs: dict[str, np.ndarray], data: TaskData, config) -> dict[str, Any]:
    """Test metrics of one run's test outputs (see :func:`test_outputs`), with the
    predictions themselves and, where the model gives features, their
    :func:`~dsgd_jax.examples.metrics.mean_pairwise_cosine`.

    For several tasks (``data.heads``) each task is evaluated on its own test examples,
    under ``"tasks"``; ``accuracy``, ``macro_f1`` and ``representation_cosine`` are the
    tasks' means (the paper's Table 6 averages its tasks), ``collapsed``, ``failed``
    and ``mostly_one_class`` hold if they hold for any task, and ``per_class_recall``
    names each class ``"task/class"``.
    """
    if data.heads:
        return _multitask_evaluation(outputs, data, config)
    predictions = outputs["predictions"]
    metrics = classification_metrics(
        data.test.labels,
        predictions,
        data.class_names,
        one_class_share=config.one_class_share,
    )
    if "features" in outputs:
        metrics["representation_cosine"] = mean_pairwise_cosine(outputs["features"])
    metrics["predictions"] = predictions.tolist()
    return metrics


def _multitask_evaluation(outputs, data: TaskData, config) -> dict[str, Any]:
    def metrics_fn(labels, predictions, class_names):
        return classification_metrics(
            labels, predictions, class_names, one_class_share=config.one_class_share
        )

    predictions = outputs["predictions"]
    tasks, task_of = multitask.per_task_metrics(predictions, data, metrics_fn)
    per_task = list(tasks.values())
    features = outputs.get("features")
    if features is not None:
        for t, metrics in enumerate(per_task):
            metrics["representation_cosine"] = mean_pairwise_cosine(features[task_of == t])
    summary: dict[str, Any] = {
        "accuracy": float(np.mean([m["accuracy"] for m in per_task])),
        "macro_f1": float(np.mean([m["macro_f1"] for m in per_task])),
        "per_class_recall": {
            f"{name}/{c}": r for name, m in tasks.items() for c, r in m["per_class_recall"].items()
        },
        **{
            flag: any(m[flag] for m in per_task)
            for flag in ("collapsed", "failed", "mostly_one_class")
        },
    }
    if features is not None:
        summary["representation_cosine"] = float(
            np.mean([m["representation_cosine"] for m in per_task])
        )
    summary["tasks"] = tasks
    summary["predictions"] = predictions.tolist()
    return summary


def train_epochs(
    config,
    runs: Runs,
    data: TaskData,
    logs: Sequence[MetricsLog],
    *,
    last_saved: int | None,
    steps_per_epoch: int,
    checkpoints: bool,
) -> tuple[list[dict[str, Any]], int]:
    """Trains the epochs after ``last_saved`` (all when None): per epoch, train
    (:func:`run_epoch`), evaluate, log the evaluation, check the parameters, save a
    checkpoint (if ``checkpoints``) and stop after ``config.stop_after_epochs``.

    Returns:
      The last evaluation of each run (of the restored state, for a run resumed
      after its last epoch), with ``epoch_train_s``: the training seconds of each
      epoch this call ran (:func:`run_epoch`; all seeds of the program together,
      the first epoch's including the compilation), and the number of epochs done.
    """
    first_epoch = (last_saved or 0) + 1
    train_s: list[float] = []
    saved, epochs_done = last_saved or 0, first_epoch - 1
    evals: list[dict[str, Any]] | None = None
    for epoch in range(first_epoch, config.num_epochs + 1):
        train_s.append(
            run_epoch(
                config, epoch, data, runs, logs, steps_per_epoch=steps_per_epoch, last_saved=saved
            )
        )
        evals = runs.evaluate()
        log_evaluation(logs, epoch, evals)
        check_params_finite(runs.params(), epoch, runs.seeds)
        if checkpoints:
            runs.save(epoch)
            saved = epoch
        epochs_done = epoch
        if config.stop_after_epochs and epoch - first_epoch + 1 >= config.stop_after_epochs:
            break
    if evals is None:  # resumed after the last epoch: evaluate what was restored
        evals = runs.evaluate()
    return [{**e, "epoch_train_s": train_s} for e in evals], epochs_done
