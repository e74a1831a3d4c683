"""The numbers of one seed-stability protocol run (its ``results.json``).

:mod:`dsgd_jax.examples.stability` trains every method variant once per seed and
gathers the runs into ``results.json``; this module computes what the tables of
:mod:`dsgd_jax.examples.stability_report` show: per method, mean ± std of test
accuracy and macro-F1 over seeds, the worst and best seed, the failed and
collapsed runs, each run's escape epoch and gradient-conflict statistics, and the
seed ensembles ``ENS(k)``. Pure NumPy.

Definitions used throughout (computed from each run's saved test predictions,
whatever flags older results files stored):

- std is the population standard deviation over seeds (``numpy.std`` with
  ``ddof=0``);
- a run *collapsed* when it predicts one class for every test input (the paper's
  Definition 2.3), *failed* when its accuracy is at or below the majority-class
  rate of the test split (collapsed or otherwise degenerate), and is *mostly one
  class* when one class takes 95% of its predictions (it may still beat the
  majority rate); see :func:`~dsgd_jax.examples.metrics.failure_flags`;
- a run's *escape epoch* is the first epoch whose evaluation beats the
  majority-class rate (:func:`escape_epoch`);
- a run misses a class when none of that class's test examples is predicted
  right (its recall is 0);
- ``ENS(k)`` is the majority vote of k runs (ties to the lowest class index),
  reported as mean ± std over every k-subset of the method's seeds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ensemble_rows",
    "ensemble_stats",
    "escape_epoch",
    "failed_mask",
    "load_results",
    "majority_rate",
    "majority_vote",
    "method_stats",
    "missed_classes",
    "run_failures",
    "runs_by_label",
    "trace_stats",
]

_REQUIRED = ("runs", "test_labels")


def load_results(path: str | Path) -> dict[str, Any]:
    """Reads a protocol run's ``results.json``.

    Args:
      path: The file written by ``benchmarks/stability.py``.

    Returns:
      The parsed results.

    Raises:
      ValueError: If the file is not a JSON object with the keys ``runs`` and
        ``test_labels``.
    """
    path = Path(path)
    results = json.loads(path.read_text())
    if not isinstance(results, dict):
        raise ValueError(f"{path}: not a stability results file (expected a JSON object).")
    missing = [key for key in _REQUIRED if key not in results]
    if missing:
        raise ValueError(
            f"{path}: not a stability results file (missing keys "
            f"{', '.join(repr(k) for k in missing)})."
        )
    return results


def majority_rate(labels: Sequence[int]) -> float:
    labels = np.asarray(labels)
    return (
        float(np.unique(labels, return_counts=True)[1].max() / labels.size) if labels.size else 0.0
    )


def failed_mask(runs: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> np.ndarray:
    """Which of ``runs`` failed (:func:`run_failures`), as a bool array."""
    return np.array([run_failures(r, labels)["failed"] for r in runs], dtype=bool)


def runs_by_label(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs per label, labels in order of first appearance, runs in seed order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        groups.setdefault(run["label"], []).append(run)
    return {label: sorted(runs, key=lambda r: r["seed"]) for label, runs in groups.items()}


def missed_classes(predictions: Sequence[int], labels: Sequence[int]) -> list[int]:
    """The classes among ``labels`` of which no example is predicted right (recall 0).

    Examples:
      >>> missed_classes([0, 0, 0, 2], [0, 1, 2, 2])
      [1]
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} test labels")
    hit = set(labels[predictions == labels].tolist())
    return sorted(int(c) for c in set(labels.tolist()) - hit)


def escape_epoch(run: Mapping[str, Any], labels: Sequence[int]) -> int | None:
    """The first epoch whose evaluation beats the majority-class rate of ``labels``.

    That is the first epoch at which the run is no longer *failed* (see
    :func:`~dsgd_jax.examples.metrics.failure_flags`): its accuracy, times the
    number of test labels, exceeds the count of the most frequent label. None if no
    evaluated epoch does (or the run has no per-epoch evaluations).

    Examples:
      >>> run = {"epoch_metrics": [{"epoch": 1, "accuracy": 0.75},
      ...                          {"epoch": 2, "accuracy": 0.75},
      ...                          {"epoch": 3, "accuracy": 1.0}]}
      >>> escape_epoch(run, [0, 0, 0, 1])
      3
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return None
    majority = int(np.unique(labels, return_counts=True)[1].max())
    for record in sorted(run.get("epoch_metrics") or [], key=lambda r: r["epoch"]):
        if round(float(record["accuracy"]) * labels.size) > majority:
            return int(record["epoch"])
    return None


def run_failures(
    run: Mapping[str, Any], labels: Sequence[int], *, one_class_share: float = 0.95
) -> dict[str, Any]:
    """One run's failure flags from its saved test predictions, and its escape epoch.

    The flags are :func:`~dsgd_jax.examples.metrics.failure_flags`' (``collapsed``:
    one class for every input; ``failed``: at or below the majority-class rate;
    ``mostly_one_class``: one class takes ``one_class_share`` of the predictions),
    recomputed from ``run["predictions"]`` whatever flags the run saved, so results
    written under older definitions count the same way. ``escape_epoch`` is
    :func:`escape_epoch`'s.

    Raises:
      ValueError: If the run has no predictions, or not one per test label.
    """
    from dsgd_jax.examples.metrics import failure_flags

    predictions = run.get("predictions")
    if not predictions:
        raise ValueError(f"run {run.get('label')!r} seed {run.get('seed')} has no predictions.")
    flags = failure_flags(
        np.asarray(labels), np.asarray(predictions), one_class_share=one_class_share
    )
    return {**flags, "escape_epoch": escape_epoch(run, labels)}


def _both_groups(record: Mapping[str, Any]) -> bool:
    """Whether a conflict record's batch had wrong and correct examples (else its cosine,
    recorded as 0, is undefined)."""
    return 0.0 < float(record["fraction_correct"]) < 1.0


def trace_stats(run: Mapping[str, Any]) -> dict[str, float] | None:
    """Summary of one run's gradient-conflict trace, or None if it has none.

    Only the traced steps whose batch held both wrong and correct examples count
    (``steps``): elsewhere cos(g_W, g_C) is undefined. ``cosine_mean`` is the mean
    of cos(g_W, g_C) over them, ``negative_share`` the share with cos < 0 and
    ``below_half_share`` with cos < -0.5 (the paper reports 90% and 30% for failed
    runs).

    Examples:
      >>> trace_stats({"conflict_trace": [
      ...     {"cosine": -0.8, "fraction_correct": 0.5}, {"cosine": -0.2, "fraction_correct": 0.5},
      ...     {"cosine": 0.4, "fraction_correct": 0.9}, {"cosine": -0.6, "fraction_correct": 0.2},
      ...     {"cosine": 0.0, "fraction_correct": 1.0}]})
      {'steps': 4, 'cosine_mean': -0.3, 'negative_share': 0.75, 'below_half_share': 0.5}
    """
    trace = run.get("conflict_trace") or []
    cosines = np.array([float(t["cosine"]) for t in trace if _both_groups(t)])
    if cosines.size == 0:
        return None
    return {
        "steps": int(cosines.size),
        "cosine_mean": round(float(cosines.mean()), 12),
        "negative_share": float(np.mean(cosines < 0)),
        "below_half_share": float(np.mean(cosines < -0.5)),
    }


def method_stats(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method label, the statistics over its seeds.

    Std is the population standard deviation over seeds (``numpy.std``,
    ``ddof=0``), so a label with one seed has std 0. The failure counts are
    recomputed from each run's saved predictions (:func:`run_failures`).

    Args:
      results: A protocol run's results (see :func:`load_results`).

    Returns:
      Per label, in order of first appearance in ``results["runs"]``: ``n`` (the
      number of seeds), ``seeds`` (sorted), ``accuracy_mean``, ``accuracy_std``,
      ``macro_f1_mean``, ``macro_f1_std``, ``accuracy_min``, ``accuracy_max``;
      the counts of ``failed`` runs (at or below the majority-class rate),
      ``collapsed`` runs (one class for every input) and ``mostly_one_class`` runs
      (one class for 95% of the inputs); ``failed_seeds``; ``learned_mean`` (the
      mean accuracy of the runs that did not fail, None if all failed);
      ``missing_class`` (runs that miss a class, see :func:`missed_classes`); per
      seed, in seed order, ``escape_epochs`` (:func:`escape_epoch`) and
      ``representation_cosine`` (None where not recorded); and ``wall_time_mean``
      (seconds).

    Examples:
      >>> runs = [
      ...     {"label": "fft", "seed": 52, "accuracy": 0.5, "macro_f1": 0.4,
      ...      "predictions": [0, 0, 0, 0], "wall_time_s": 10.0},
      ...     {"label": "fft", "seed": 42, "accuracy": 0.75, "macro_f1": 0.6,
      ...      "predictions": [0, 1, 0, 0], "wall_time_s": 30.0},
      ... ]
      >>> s = method_stats({"runs": runs, "test_labels": [0, 1, 0, 1]})["fft"]
      >>> s["seeds"], s["accuracy_mean"], s["failed"], s["collapsed"], s["failed_seeds"]
      ([42, 52], 0.625, 1, 1, [52])
    """
    stats = {}
    labels = results["test_labels"]
    for label, runs in runs_by_label(results).items():
        accuracy = np.array([float(r["accuracy"]) for r in runs])
        macro_f1 = np.array([float(r["macro_f1"]) for r in runs])
        wall = np.array([float(r.get("wall_time_s", np.nan)) for r in runs])
        flags = [run_failures(r, labels) for r in runs]
        learned = [a for a, f in zip(accuracy, flags, strict=True) if not f["failed"]]
        stats[label] = {
            "n": len(runs),
            "seeds": [int(r["seed"]) for r in runs],
            "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=0)),
            "macro_f1_mean": float(macro_f1.mean()),
            "macro_f1_std": float(macro_f1.std(ddof=0)),
            "accuracy_min": float(accuracy.min()),
            "accuracy_max": float(accuracy.max()),
            "failed": sum(f["failed"] for f in flags),
            "collapsed": sum(f["collapsed"] for f in flags),
            "mostly_one_class": sum(f["mostly_one_class"] for f in flags),
            "failed_seeds": [
                int(r["seed"]) for r, f in zip(runs, flags, strict=True) if f["failed"]
            ],
            "learned_mean": float(np.mean(learned)) if learned else None,
            "missing_class": sum(bool(missed_classes(r["predictions"], labels)) for r in runs),
            "escape_epochs": [f["escape_epoch"] for f in flags],
            "representation_cosine": [r.get("representation_cosine") for r in runs],
            "wall_time_mean": float(wall.mean()),
        }
    return stats


def majority_vote(
    predictions: np.ndarray | Sequence[Sequence[int]], num_classes: int
) -> np.ndarray:
    """The per-example majority vote of ``k`` runs' predicted classes.

    Ties go to the lowest class index.

    Args:
      predictions: Integer class predictions, shape ``[k, N]`` (one row per run).
      num_classes: The number of classes; predictions must lie in
        ``[0, num_classes)``.

    Returns:
      The voted class per example, shape ``[N]``, int64.

    Raises:
      ValueError: If ``predictions`` is not two-dimensional with at least one row,
        or holds a class outside ``[0, num_classes)``.

    Examples:
      >>> majority_vote([[0, 1, 2], [1, 1, 0], [1, 2, 2], [0, 2, 1]], 3)
      array([0, 1, 2])
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] == 0:
        raise ValueError(f"predictions must have shape [k, N] with k >= 1, got {predictions.shape}")
    predictions = predictions.astype(np.int64)
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes}), got a class outside it.")
    counts = np.zeros((num_classes, predictions.shape[1]), dtype=np.int64)
    columns = np.broadcast_to(np.arange(predictions.shape[1]), predictions.shape)
    np.add.at(counts, (predictions, columns), 1)
    return counts.argmax(axis=0)  # argmax returns the first (lowest) maximal class


def _num_classes(results: Mapping[str, Any], predictions: np.ndarray, labels: np.ndarray) -> int:
    if results.get("class_names"):
        return len(results["class_names"])
    return int(max(predictions.max(initial=0), labels.max(initial=0))) + 1


def _prediction_rows(results: Mapping[str, Any], label: str) -> tuple[np.ndarray, np.ndarray]:
    """``label``'s runs' predictions [runs, N] in seed order, and the test labels [N]."""
    labels = np.asarray(results["test_labels"], dtype=np.int64)
    rows = []
    for run in runs_by_label(results).get(label, []):
        row = np.asarray(run["predictions"], dtype=np.int64)
        if row.shape != labels.shape:
            raise ValueError(
                f"run {label!r} seed {run['seed']}: {row.size} predictions for "
                f"{labels.size} test labels"
            )
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, labels.size), np.int64), labels


def ensemble_stats(results: Mapping[str, Any], label: str, k: int) -> dict[str, Any] | None:
    """The majority vote of every ``k``-subset of ``label``'s runs: accuracy mean ± std.

    With 10 seeds that is 120 subsets for k = 3, 252 for 5, 120 for 7 and 10 for 9, so
    the figure does not hang on which seeds happen to come first. Std is the
    population std over the subsets.

    Returns:
      ``{"k", "subsets", "accuracy_mean", "accuracy_std", "accuracy_min",
      "accuracy_max"}``, or None if ``label`` has fewer than ``k`` runs.

    Examples:
      >>> results = {"test_labels": [0, 1], "class_names": ["a", "b"], "runs": [
      ...     {"label": "fft", "seed": s, "predictions": p}
      ...     for s, p in ((42, [0, 1]), (52, [0, 0]), (62, [1, 1]))]}
      >>> e = ensemble_stats(results, "fft", 2)  # votes [0, 0], [0, 1], [0, 0] (ties to 0)
      >>> e["subsets"], round(e["accuracy_mean"], 4), e["accuracy_min"], e["accuracy_max"]
      (3, 0.6667, 0.5, 1.0)
    """
    predictions, labels = _prediction_rows(results, label)
    if k < 1 or len(predictions) < k or labels.size == 0:
        return None
    num_classes = _num_classes(results, predictions, labels)
    scores = np.array(
        [
            np.mean(majority_vote(predictions[list(subset)], num_classes) == labels)
            for subset in itertools.combinations(range(len(predictions)), k)
        ]
    )
    return {
        "k": k,
        "subsets": int(scores.size),
        "accuracy_mean": float(scores.mean()),
        "accuracy_std": float(scores.std(ddof=0)),
        "accuracy_min": float(scores.min()),
        "accuracy_max": float(scores.max()),
    }


def ensemble_rows(
    results: Mapping[str, Any],
    *,
    base: str = "fft",
    ks: Sequence[int] = (3, 5, 7, 9),
    dsgd: str = "dsgd",
    dsgd_k: int = 9,
) -> list[dict[str, Any]]:
    """The paper's seed-ensemble rows: ``ENS(k)`` of ``base`` and ``DSGD(dsgd_k)``.

    Each row is :func:`ensemble_stats` over every k-subset of the label's seeds.

    Args:
      results: A protocol run's results (see :func:`load_results`).
      base: The label whose runs form ``ENS(k)`` (plain fine-tuning).
      ks: The ensemble sizes of ``base``.
      dsgd: The label whose runs form ``DSGD(dsgd_k)``.
      dsgd_k: The DSGD ensemble size.

    Returns:
      One dict per row with enough runs (rows without are left out): ``method``
      (e.g. ``"ENS(3)"``), ``label`` and :func:`ensemble_stats`' keys.
    """
    wanted = [(f"ENS({k})", base, k) for k in ks] + [(f"DSGD({dsgd_k})", dsgd, dsgd_k)]
    rows = []
    for name, label, k in wanted:
        stats = ensemble_stats(results, label, k)
        if stats is not None:
            rows.append({"method": name, "label": label, **stats})
    return rows
