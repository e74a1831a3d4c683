"""One task of a multi-task protocol run (its ``results.json`` has ``heads``).

:func:`task_view` cuts a multi-task run down to one task, as the results of a
single-task run, so every count of :mod:`dsgd_jax.examples.stability_stats` (failures,
escape epochs, ensembles) and every table and plot of
:mod:`dsgd_jax.examples.stability_report` works on it; :func:`multitask_table` is the
paper's Table 6 of the whole run. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dsgd_jax.examples import markdown
from dsgd_jax.examples.stability_stats import method_stats, runs_by_label

__all__ = ["multitask_table", "task_names", "task_view"]


def task_view(results: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One task of a multi-task protocol run, as the results of a single-task run.

    The test labels and each run's predictions are cut to ``task``'s test examples and
    moved from its label slots to its own class indices (the ``heads`` of the results);
    accuracy, macro-F1 and the per-epoch evaluations are the task's own. Every function
    of this module then counts the task's failures, escape epochs and ensembles.

    Examples:
      >>> results = {"heads": [{"name": "a", "class_names": ["n", "y"], "offset": 0},
      ...                      {"name": "b", "class_names": ["x", "z"], "offset": 2}],
      ...            "test_labels": [0, 3, 2], "class_names": ["a/n", "a/y", "b/x", "b/z"],
      ...            "runs": [{"label": "fft", "seed": 42, "predictions": [1, 3, 3],
      ...                      "tasks": {"a": {"accuracy": 0.0}, "b": {"accuracy": 0.5}}}]}
      >>> view = task_view(results, "b")
      >>> view["test_labels"], view["runs"][0]["predictions"], view["runs"][0]["accuracy"]
      ([1, 0], [1, 1], 0.5)
    """
    heads = {h["name"]: h for h in results.get("heads") or ()}
    if task not in heads:
        raise ValueError(f"task {task!r} is not a task of these results; they have {list(heads)}.")
    head = heads[task]
    low, high = head["offset"], head["offset"] + len(head["class_names"])
    labels = np.asarray(results["test_labels"])
    rows = (labels >= low) & (labels < high)

    def own(values):
        return [int(v) - low for v in np.asarray(values)[rows]]

    runs = []
    for run in results["runs"]:
        mine = dict(run)
        mine.update({k: v for k, v in run["tasks"][task].items()})
        mine["predictions"] = own(run["predictions"])
        mine["epoch_metrics"] = [
            {"epoch": r["epoch"], **r["tasks"][task]}
            for r in run.get("epoch_metrics") or []
            if "tasks" in r
        ]
        mine.pop("tasks", None)
        runs.append(mine)
    view = {k: v for k, v in results.items() if k not in ("heads", "runs")}
    view.update(
        task=task, class_names=list(head["class_names"]), test_labels=own(labels), runs=runs
    )
    return view


def task_names(results: Mapping[str, Any]) -> list[str]:
    """The tasks of a multi-task protocol run, in order; [] for a single task."""
    return [h["name"] for h in results.get("heads") or ()]


def multitask_table(results: Mapping[str, Any]) -> str:
    """The paper's Table 6 of a multi-task protocol run, in markdown.

    One row per method label: per task, its test accuracy as mean ± std over seeds
    and its failed runs (at or below the task's majority-class rate, from the saved
    predictions; :func:`task_view`), then the
    average over tasks of each seed's accuracy, as mean ± std over seeds.
    """
    tasks = task_names(results)
    stats = {task: method_stats(task_view(results, task)) for task in tasks}
    columns = ["method", "seeds"]
    for task in tasks:
        columns += [f"{task} accuracy (%)", f"{task} failed"]
    columns.append("average (%)")
    rows = []
    for label, runs in runs_by_label(results).items():
        n = len(runs)
        cells = [label, str(n)]
        for task in tasks:
            s = stats[task][label]
            cells += [
                f"{markdown.percent(s['accuracy_mean'])} ± {markdown.percent(s['accuracy_std'])}"
            ]
            cells += [f"{s['failed']}/{n}"]
        average = np.array(
            [np.mean([r["tasks"][t]["accuracy"] for t in tasks]) for r in runs], dtype=float
        )
        cells.append(f"{markdown.percent(average.mean())} ± {markdown.percent(average.std())}")
        rows.append(cells)
    return markdown.table(columns, rows, "lr" + "rr" * len(tasks) + "r")
