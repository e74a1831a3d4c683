"""Several classification tasks on one encoder: a head per task, batches that mix them.

:func:`join_tasks` turns tasks into one :class:`~dsgd_jax.examples.data.TaskData`
whose examples carry a ``"task"`` input (the task's index) and whose label space
is the tasks' classes one after the other: task ``t``'s class ``c`` is slot
``heads[t].offset + c``. :class:`TaskHeads` wraps a single-task classifier built
with one output per slot, so its last layer holds one fresh head per task (the
head of task ``t`` is the slots' block of columns: its own weights, initialised
like a head of its own), and shows each example only its own task's logits, the
other slots held at a large negative value. Cross-entropy, argmax correctness,
the DSGD reduction, every method and the loop then run unchanged: an example's
loss and correct flag are those under its own head, and one batch of mixed
tasks is reduced with the global ``1/n`` (the doctest of
:func:`dsgd_jax.scaled_mean` shows the same sum with two explicit heads).

:func:`round_robin_order` gives an epoch's order of the mixed training examples under
``task_mixing=round_robin``; ``proportional`` shuffles them all (each batch holds the tasks
in proportion to their sizes, on average), ``round_robin`` takes one example of
each task in turn, each task in its own shuffled order, a task that runs out
leaving the cycle. :func:`per_task_metrics` evaluates each task on its own test
examples, and the run's headline numbers are the tasks' averages, as in the
paper's Table 6.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples.data import ArraySplit, TaskData

__all__ = [
    "MASKED_LOGIT",
    "MIXINGS",
    "Head",
    "TaskHeads",
    "join_tasks",
    "per_task_metrics",
    "round_robin_order",
    "task_kwargs",
]

MASKED_LOGIT = -1e9
"""What an example sees in place of the logits of other tasks' classes. Next to any
real logit its ``exp`` is 0 in float32, so softmax, cross-entropy and argmax see only
the example's own head."""

MIXINGS = ("proportional", "round_robin")


@dataclasses.dataclass(frozen=True)
class Head:
    """One task of a multi-task :class:`~dsgd_jax.examples.data.TaskData`: its name, its
    class names and the first label slot of its classes."""

    name: str
    class_names: tuple[str, ...]
    offset: int

    @property
    def slots(self) -> range:
        return range(self.offset, self.offset + len(self.class_names))


def _pad_to(array: np.ndarray, length: int, value: int) -> np.ndarray:
    """``array`` ([n, L, ...]) right-padded with ``value`` to ``length`` on axis 1."""
    width = [(0, 0)] * array.ndim
    width[1] = (0, length - array.shape[1])
    return np.pad(array, width, constant_values=value)


def _join_splits(splits: Sequence[ArraySplit], offsets, pad_values) -> ArraySplit:
    names = set(splits[0].inputs)
    inputs = {}
    for name in sorted(names):
        arrays = [s.inputs[name] for s in splits]
        if len({a.ndim for a in arrays}) > 1 or len({a.shape[2:] for a in arrays}) > 1:
            raise ValueError(
                f"inputs[{name!r}] has shapes {[a.shape[1:] for a in arrays]} across the tasks; "
                "they may differ only in their second axis (sequence length)."
            )
        if arrays[0].ndim >= 2:
            length = max(a.shape[1] for a in arrays)
            arrays = [_pad_to(a, length, pad_values.get(name, 0)) for a in arrays]
        inputs[name] = np.concatenate(arrays)
    inputs["task"] = np.concatenate(
        [np.full(len(s), t, dtype=np.int32) for t, s in enumerate(splits)]
    )
    labels = np.concatenate([s.labels + o for s, o in zip(splits, offsets, strict=True)])
    return ArraySplit(inputs, labels)


def join_tasks(
    tasks: Mapping[str, TaskData], *, pad_values: Mapping[str, int] | None = None
) -> TaskData:
    """One :class:`~dsgd_jax.examples.data.TaskData` of several tasks, a head each.

    Each split is the tasks' splits one after the other, with an int32 ``"task"`` input
    (the task's index in ``tasks``) and labels moved to the task's slots
    (:class:`Head`); inputs with a sequence axis are right-padded to the longest task's
    length with ``pad_values[name]`` (default 0). ``class_names`` names each slot
    ``"task/class"``; ``meta`` keeps the tasks' own metas under ``"tasks"``.

    Examples:
      >>> import numpy as np
      >>> def task(x, labels, classes):
      ...     split = ArraySplit({"x": np.array(x)}, np.array(labels))
      ...     return TaskData(split, split, classes)
      >>> data = join_tasks({"a": task([[1], [2]], [0, 1], ("no", "yes")),
      ...                    "b": task([[3]], [2], ("x", "y", "z"))})
      >>> data.train.labels.tolist(), data.train.inputs["task"].tolist()
      ([0, 1, 4], [0, 0, 1])
      >>> [(h.name, list(h.slots)) for h in data.heads]
      [('a', [0, 1]), ('b', [2, 3, 4])]
    """
    if len(tasks) < 2:
        raise ValueError(f"join_tasks needs at least 2 tasks, got {list(tasks)}.")
    pad_values = dict(pad_values or {})
    items = list(tasks.items())
    for name, data in items:
        if data.heads:
            raise ValueError(f"task {name!r} is multi-task already; join single tasks.")
        if "task" in data.train.inputs:
            raise ValueError(f"task {name!r} has an input named 'task'; rename it.")
        if set(data.train.inputs) != set(items[0][1].train.inputs):
            raise ValueError(
                f"task {name!r} has inputs {sorted(data.train.inputs)}, task {items[0][0]!r} "
                f"{sorted(items[0][1].train.inputs)}; joined tasks need the same inputs."
            )
    offsets = np.cumsum([0] + [d.num_classes for _, d in items[:-1]]).tolist()
    heads = tuple(
        Head(name, tuple(d.class_names), int(offset))
        for (name, d), offset in zip(items, offsets, strict=True)
    )
    train = _join_splits([d.train for _, d in items], offsets, pad_values)
    test = _join_splits([d.test for _, d in items], offsets, pad_values)
    class_names = tuple(f"{h.name}/{c}" for h in heads for c in h.class_names)
    meta = {"tasks": {name: dict(d.meta) for name, d in items}}
    shared = set.intersection(*(set(d.meta) for _, d in items))
    for key in shared:  # facts every task agrees on (the vocabulary size...) stay on top
        values = [d.meta[key] for _, d in items]
        if all(v == values[0] for v in values):
            meta[key] = values[0]
    return TaskData(train, test, class_names, meta, heads=heads)


def round_robin_order(data: TaskData, seed: int, epoch: int) -> np.ndarray:
    """The order of ``data``'s training examples in ``epoch`` of the run seeded ``seed``
    under ``task_mixing="round_robin"``: one example of each task in turn, every task in
    its own permutation seeded by ``[seed, epoch, task]``, a task that runs out leaving
    the cycle. (``proportional`` mixing is the single-task order,
    :func:`~dsgd_jax.examples.loop.data_order`, over all the tasks' examples.)

    Examples:
      >>> import numpy as np
      >>> def task(n):
      ...     split = ArraySplit({"x": np.zeros((n, 1))}, np.arange(n) % 2)
      ...     return TaskData(split, split, ("no", "yes"))
      >>> data = join_tasks({"a": task(2), "b": task(3)})
      >>> data.train.inputs["task"][round_robin_order(data, 0, 1)].tolist()
      [0, 1, 0, 1, 1]
    """
    if not data.heads:
        raise ValueError("round-robin mixing needs several tasks; build them with join_tasks().")
    task_of = _task_of(data.train, data.heads)
    queues = []
    for t in range(len(data.heads)):
        members = np.flatnonzero(task_of == t)
        queues.append(members[np.random.default_rng([seed, epoch, t]).permutation(members.size)])
    longest = max(q.size for q in queues)
    table = np.full((longest, len(queues)), -1, dtype=np.int64)
    for t, q in enumerate(queues):
        table[: q.size, t] = q
    order = table.reshape(-1)
    return order[order >= 0]


def _task_of(split: ArraySplit, heads: Sequence[Head]) -> np.ndarray:
    """Each example's task index: its ``"task"`` input, checked against its label."""
    task = np.asarray(split.inputs["task"])
    starts = np.array([h.offset for h in heads])
    from_labels = np.searchsorted(starts, split.labels, side="right") - 1
    if not np.array_equal(task, from_labels):
        raise ValueError("the 'task' input disagrees with the labels' slots; use join_tasks().")
    return task


def per_task_metrics(
    predictions: np.ndarray, data: TaskData, metrics_fn
) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """Each task's metrics on its own test examples; also the test examples' task index.

    ``predictions`` are slots (what the model's argmax gives); ``metrics_fn(labels,
    predictions, class_names)`` sees one task's labels and predictions as its own
    class indices. A prediction outside the task's slots (impossible with
    :class:`TaskHeads`) raises ValueError.
    """
    task_of = _task_of(data.test, data.heads)
    out = {}
    for t, head in enumerate(data.heads):
        rows = task_of == t
        labels = data.test.labels[rows] - head.offset
        mine = np.asarray(predictions)[rows] - head.offset
        if mine.size and (mine.min() < 0 or mine.max() >= len(head.class_names)):
            raise ValueError(f"task {head.name!r} has predictions outside its classes.")
        out[head.name] = metrics_fn(labels, mine, head.class_names)
    return out, task_of


def task_kwargs(model: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"task": inputs["task"]}`` for a :class:`TaskHeads` model, else ``{}``: what a
    caller of ``model.classify(features, ...)`` passes so that each example sees its head."""
    return {"task": inputs["task"]} if isinstance(model, TaskHeads) else {}


class TaskHeads(nnx.Module):
    """A classifier with one output per label slot, showing each example its task's head.

    ``model`` maps inputs to logits ``[B, slots]`` (a BERT or ViT example model built
    with ``num_classes`` the total number of slots) and may split into ``features``
    and ``classify`` (LNSR, LoRA and the representation cosine use them). Every
    output of this wrapper holds :data:`MASKED_LOGIT` outside the example's slots, so
    losses, correctness and predictions are those of the example's own head. The
    gradient into the masked logits is exactly 0 (``jnp.where``), so a task's head is
    trained by its own examples only.
    """

    def __init__(self, model: nnx.Module, heads: Sequence[Head]):
        self.model = model
        self.heads = tuple(heads)
        slots = sum(len(h.class_names) for h in self.heads)
        owner = np.zeros((len(self.heads), slots), dtype=bool)
        for t, head in enumerate(self.heads):
            owner[t, head.offset : head.offset + len(head.class_names)] = True
        # static (a tuple, not an array): nothing trains, saves or vmaps it
        self._owner = tuple(tuple(bool(x) for x in row) for row in owner)

    @property
    def head_name(self) -> str:
        return self.model.head_name

    @property
    def lora_also_trains(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "lora_also_trains", ()))

    def reinit_top_layers(self, n: int, *, rngs: nnx.Rngs) -> None:
        self.model.reinit_top_layers(n, rngs=rngs)

    def mask(self, logits: jax.Array, task: jax.Array) -> jax.Array:
        """``logits`` [B, slots] with every slot not of the example's task masked."""
        owner = np.array(self._owner)
        if logits.shape[-1] != owner.shape[1]:
            raise ValueError(
                f"the model gives {logits.shape[-1]} logits but the tasks have "
                f"{owner.shape[1]} classes together; build it with that many outputs."
            )
        own = jnp.asarray(owner)[jnp.asarray(task)]
        return jnp.where(own, logits, jnp.asarray(MASKED_LOGIT, logits.dtype))

    def __call__(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        return self.mask(self.model(inputs, rngs=rngs), inputs["task"])

    def features(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        return self.model.features(inputs, rngs=rngs)

    def classify(self, features, *, task=None, rngs: nnx.Rngs | None = None, noise=(None, None)):
        """The wrapped model's ``classify``, masked to ``task`` (``inputs["task"]``, which
        a multi-task model cannot do without: :func:`task_kwargs` passes it)."""
        if task is None:
            raise ValueError(
                "TaskHeads.classify needs task=inputs['task'] (each example's task); pass "
                "**task_kwargs(model, inputs)."
            )
        return self.mask(self.model.classify(features, rngs=rngs, noise=noise), task)
