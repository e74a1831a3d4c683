"""Tables and plots of one seed-stability protocol run (its ``results.json``).

:mod:`dsgd_jax.examples.stability` trains every method variant once per seed and
gathers the runs into ``results.json``; this module turns that file into the
paper's table (mean ± std of test accuracy and macro-F1 over seeds, the worst and
best seed, the failed and collapsed runs, and the seed ensembles ``ENS(k)`` of
plain fine-tuning against ``DSGD(9)``), a table per seed (escape epoch, feature
cosine, gradient-conflict statistics) and its figures: test accuracy per seed,
eval accuracy per epoch, the gradient-conflict traces of every traced seed and
the final representations per seed.

Pure NumPy; matplotlib (Agg backend) is imported only by the plotting functions.

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
    "format_lr",
    "load_results",
    "majority_vote",
    "markdown_table",
    "method_stats",
    "missed_classes",
    "overview_rows",
    "overview_table",
    "plot_conflict_trace",
    "plot_epoch_curves",
    "plot_overview",
    "plot_representation",
    "plot_seed_accuracy",
    "run_failures",
    "seed_table",
    "setting_key",
    "setting_label",
    "trace_stats",
    "write_report",
]

_REQUIRED = ("runs", "test_labels")
_DPI = 120
_DASH = "—"


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


def _majority_rate(labels: Sequence[int]) -> float:
    labels = np.asarray(labels)
    return (
        float(np.unique(labels, return_counts=True)[1].max() / labels.size) if labels.size else 0.0
    )


def _failed_mask(runs: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> np.ndarray:
    """Which of ``runs`` failed (:func:`run_failures`), as a bool array."""
    return np.array([run_failures(r, labels)["failed"] for r in runs], dtype=bool)


def _runs_by_label(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
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
    for label, runs in _runs_by_label(results).items():
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
    for run in _runs_by_label(results).get(label, []):
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


def _percent(x: float) -> str:
    return f"{100 * x:.2f}"


def _format_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return _DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def markdown_table(results: Mapping[str, Any], *, base: str = "fft", dsgd: str = "dsgd") -> str:
    """The paper's table of a protocol run, in markdown.

    One row per method label: accuracy and macro-F1 as mean ± std over seeds in
    percent, the worst and best seed's accuracy, the runs that failed (accuracy at
    or below the majority-class rate), collapsed (one class for every input), put
    95% of the inputs in one class and missed a class, out of the seeds, and the
    mean wall time per run. Then the seed-ensemble rows of :func:`ensemble_rows`:
    accuracy mean ± std over every k-subset (the seeds column holds the number of
    subsets).

    Args:
      results: A protocol run's results (see :func:`load_results`).
      base: The label whose runs form the ``ENS(k)`` rows.
      dsgd: The label whose runs form the ``DSGD(9)`` row.

    Returns:
      The table, one line per row, ending with a newline.
    """
    columns = ("method", "seeds", "accuracy (%)", "macro-F1 (%)", "min (%)", "max (%)")
    flags = ("failed", "collapsed", "≥95% one class", "missing a class", "time/run")
    header = "| " + " | ".join((*columns, *flags)) + " |"
    lines = [header, "|" + "|".join(["---"] + ["---:"] * 10) + "|"]
    for label, s in method_stats(results).items():
        n = s["n"]
        cells = [
            label,
            str(n),
            f"{_percent(s['accuracy_mean'])} ± {_percent(s['accuracy_std'])}",
            f"{_percent(s['macro_f1_mean'])} ± {_percent(s['macro_f1_std'])}",
            _percent(s["accuracy_min"]),
            _percent(s["accuracy_max"]),
            *(f"{s[k]}/{n}" for k in ("failed", "collapsed", "mostly_one_class", "missing_class")),
            _format_time(s["wall_time_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for row in ensemble_rows(results, base=base, dsgd=dsgd):
        accuracy = f"{_percent(row['accuracy_mean'])} ± {_percent(row['accuracy_std'])}"
        cells = [row["method"], str(row["subsets"]), accuracy] + [_DASH] * 8
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table(results: Mapping[str, Any]) -> str:
    """One markdown row per run: how it ended, when it escaped, its trace and features.

    Columns: method, seed, accuracy, failed / collapsed, the escape epoch
    (:func:`escape_epoch`; "never" if it never beat the majority rate), the mean
    pairwise cosine of the final test features (``—`` if not recorded) and the
    gradient-conflict statistics of :func:`trace_stats` (``—`` without a trace).
    """
    lines = [
        "| method | seed | accuracy (%) | failed | collapsed | escape epoch | feature cosine "
        "| mean cos(g_W, g_C) | steps cos < 0 | steps cos < -0.5 |",
        "|---|---:|---:|:---:|:---:|---:|---:|---:|---:|---:|",
    ]
    labels = results["test_labels"]
    for label, runs in _runs_by_label(results).items():
        for run in runs:
            f = run_failures(run, labels)
            t = trace_stats(run)
            cosine = run.get("representation_cosine")
            cells = [
                label,
                str(run["seed"]),
                _percent(float(run["accuracy"])),
                "yes" if f["failed"] else "no",
                "yes" if f["collapsed"] else "no",
                "never" if f["escape_epoch"] is None else str(f["escape_epoch"]),
                _DASH if cosine is None else f"{cosine:.3f}",
                *(
                    [_DASH] * 3
                    if t is None
                    else [
                        f"{t['cosine_mean']:.3f}",
                        f"{100 * t['negative_share']:.0f}%",
                        f"{100 * t['below_half_share']:.0f}%",
                    ]
                ),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _title(results: Mapping[str, Any], what: str) -> str:
    example, task = results.get("example"), results.get("task")
    where = " / ".join(str(x) for x in (example, task) if x)
    return f"{where}: {what}" if where else what


def _figure(**kwargs: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_seed_accuracy(results: Mapping[str, Any], path: str | Path) -> Path:
    """The paper's Figure 1: test accuracy per seed, one box per method label.

    The individual seeds are overlaid as points with a deterministic horizontal
    jitter; failed runs (at or below the majority-class rate, drawn as a dotted
    line) are marked with a red x.

    Args:
      results: A protocol run's results (see :func:`load_results`).
      path: The PNG to write.

    Returns:
      ``path``.

    Raises:
      ValueError: If there are no runs.
    """
    groups = _runs_by_label(results)
    if not groups:
        raise ValueError("no runs to plot")
    fig = _figure(figsize=(max(5.0, 1.1 * len(groups) + 2.0), 4.5))
    ax = fig.add_subplot()
    positions = np.arange(1, len(groups) + 1)
    data = [[100 * float(r["accuracy"]) for r in runs] for runs in groups.values()]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    failed_shown = False
    for position, runs, values in zip(positions, groups.values(), data, strict=True):
        n = len(runs)
        jitter = np.linspace(-0.15, 0.15, n) if n > 1 else np.zeros(1)
        x = position + jitter
        ok = ~_failed_mask(runs, results["test_labels"])
        values = np.asarray(values)
        ax.scatter(x[ok], values[ok], s=18, color="tab:blue", alpha=0.7, zorder=3)
        if (~ok).any():
            ax.scatter(
                x[~ok],
                values[~ok],
                s=50,
                color="red",
                marker="x",
                zorder=4,
                label=None if failed_shown else "failed run (≤ majority rate)",
            )
            failed_shown = True
    ax.set_xticks(positions)
    ax.set_xticklabels(list(groups), rotation=30 if len(groups) > 4 else 0, ha="right")
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_xlabel("method")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(results, "test accuracy per seed"))
    majority = _majority_rate(results["test_labels"])
    ax.axhline(100 * majority, color="gray", linestyle=":", linewidth=1.0, label="majority rate")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def _epoch_series(runs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The epochs all runs evaluated and their accuracies, shape ``[runs, epochs]``."""
    per_run = [
        {int(e["epoch"]): float(e["accuracy"]) for e in r.get("epoch_metrics") or []} for r in runs
    ]
    common = sorted(set.intersection(*(set(m) for m in per_run))) if per_run else []
    if not common:
        return None
    return np.array(common), np.array([[m[e] for e in common] for m in per_run])


def plot_epoch_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Eval accuracy per epoch: per method label the mean over seeds and mean ± std.

    Only the epochs that every seed of a label evaluated are drawn; std is the
    population std over seeds.

    Args:
      results: A protocol run's results (see :func:`load_results`).
      path: The PNG to write.

    Returns:
      ``path``.

    Raises:
      ValueError: If no label has per-epoch metrics on all its seeds.
    """
    series = {}
    for label, runs in _runs_by_label(results).items():
        s = _epoch_series(runs)
        if s is not None:
            series[label] = (s, len(runs))
    if not series:
        raise ValueError("no per-epoch metrics to plot (the runs have no epoch_metrics)")
    fig = _figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for label, ((epochs, accuracy), n) in series.items():
        mean, std = 100 * accuracy.mean(axis=0), 100 * accuracy.std(axis=0, ddof=0)
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{label} (n={n})")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title(_title(results, "eval accuracy per epoch\n(mean ± std over seeds)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_conflict_trace(results: Mapping[str, Any], path: str | Path) -> Path:
    """The gradient-conflict traces of every traced run, in three panels sharing the step axis.

    Top: cos(g_W, g_C), the cosine between the gradients of the wrongly and the
    correctly classified examples (dotted line at 0; left out at steps whose batch
    was all right or all wrong, where it is undefined); middle: the total gradient
    norm; bottom: the fraction of the batch classified correctly. One line per
    traced run, one colour per method label; the runs that failed (at or below
    the majority-class rate, :func:`run_failures`) are drawn dashed and thicker,
    so a failed seed's trace stands beside the traces of the seeds that learned
    (the paper's Figure 2c/2d).

    Args:
      results: A protocol run's results (see :func:`load_results`).
      path: The PNG to write.

    Returns:
      ``path``.

    Raises:
      ValueError: If no run has a conflict trace.
    """
    traced = [r for r in results["runs"] if r.get("conflict_trace")]
    if not traced:
        raise ValueError(
            "The results have no conflict traces; run with --conflict_every=N to trace the "
            "gradient conflict of the FFT and DSGD runs."
        )
    from matplotlib.lines import Line2D

    fig = _figure(figsize=(7.5, 7.5))
    axes = fig.subplots(3, 1, sharex=True)
    panels = (
        ("cosine", "cos(g_W, g_C)"),
        ("total_norm", "gradient norm"),
        ("fraction_correct", "fraction correct"),
    )
    labels = list(dict.fromkeys(r["label"] for r in traced))
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    failed = _failed_mask(traced, results["test_labels"])
    for run, bad in zip(traced, failed, strict=True):
        trace = run["conflict_trace"]
        steps = np.array([float(t["step"]) for t in trace])
        for ax, (key, _) in zip(axes, panels, strict=True):
            values = np.array(
                [
                    np.nan
                    if t.get(key) is None or (key == "cosine" and not _both_groups(t))
                    else float(t[key])
                    for t in trace
                ]
            )
            ax.plot(
                steps,
                values,
                color=colors[run["label"]],
                linestyle="--" if bad else "-",
                linewidth=1.6 if bad else 0.9,
                alpha=0.95 if bad else 0.6,
                label=f"{run['label']} (seed {run['seed']})",
            )
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="black", linestyle=":", linewidth=0.8)
    handles = [Line2D([], [], color=colors[label], label=label) for label in labels]
    if failed.any():
        handles.append(Line2D([], [], color="gray", linestyle="--", label="failed seed"))
    axes[0].legend(handles=handles, loc="best", fontsize=8)
    axes[-1].set_xlabel("step")
    axes[0].set_title(_title(results, f"gradient conflict, {len(traced)} traced runs"))
    return _save(fig, path)


def plot_representation(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy against the mean pairwise cosine of the final test features, per run.

    The paper's Figure 2a/2b: a collapsed model maps every input to nearly the
    same representation (cosine near 1). One colour per method label; failed runs
    marked with a red x; the majority-class rate as a dotted line.

    Raises:
      ValueError: If no run recorded ``representation_cosine``.
    """
    groups = {
        label: [r for r in runs if r.get("representation_cosine") is not None]
        for label, runs in _runs_by_label(results).items()
    }
    groups = {label: runs for label, runs in groups.items() if runs}
    if not groups:
        raise ValueError("no run recorded representation_cosine (rerun with this version)")
    fig = _figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    labels = results["test_labels"]
    for i, (label, runs) in enumerate(groups.items()):
        x = np.array([float(r["representation_cosine"]) for r in runs])
        y = np.array([100 * float(r["accuracy"]) for r in runs])
        ax.scatter(x, y, s=22, color=f"C{i}", alpha=0.8, label=label, zorder=3)
        bad = _failed_mask(runs, labels)
        if bad.any():
            ax.scatter(x[bad], y[bad], s=60, color="red", marker="x", zorder=4)
    ax.axhline(100 * _majority_rate(labels), color="gray", linestyle=":", linewidth=1.0)
    ax.set_xlabel("mean pairwise cosine of the final test features")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(results, "representations per seed (red x: failed)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


_EXAMPLE_NAMES = {"bert": "BERT", "vit": "ViT"}


def setting_label(results: Mapping[str, Any]) -> str:
    """A short name of a protocol run's setting: example, task, length, learning rate,
    and where the optimizer recipe leaves the stable one (bias-corrected AdamW,
    warm-up, clipping, no accumulation), how; all four changes together read as
    "failure recipe".

    Examples:
      >>> setting_label({"example": "bert", "task": "drugs",
      ...                "base_config": {"max_length": 64, "learning_rate": 1e-4}})
      'BERT · drugs · 64 tokens · lr 1e-4'
      >>> setting_label({"example": "bert", "task": "tweets2",
      ...                "base_config": {"max_length": 64, "learning_rate": 1.5e-4,
      ...                                "optimizer": "bertadam", "warmup_ratio": 0.0,
      ...                                "batch_size": 5, "grad_accum_steps": 2,
      ...                                "max_grad_norm": 0.0}})
      'BERT · tweets2 · 64 tokens · lr 1.5e-4 · failure recipe'
      >>> setting_label({"example": "vit", "task": "mnist",
      ...                "base_config": {"learning_rate": 2e-3, "warmup_ratio": 0.0}})
      'ViT · mnist · lr 2e-3 · no warm-up'
    """
    config = results.get("base_config") or {}
    parts = [_example_name(results), str(results.get("task", "?"))]
    if "max_length" in config:
        parts.append(f"{config['max_length']} tokens")
    if "learning_rate" in config:
        parts.append(f"lr {format_lr(config['learning_rate'])}")
    recipe = []
    if config.get("optimizer", "adamw") != "adamw":
        recipe.append("BERTAdam" if config["optimizer"] == "bertadam" else config["optimizer"])
    if config.get("warmup_ratio") == 0:
        recipe.append("no warm-up")
    if config.get("grad_accum_steps", 1) > 1:
        recipe.append(f"batch {config.get('batch_size', '?')} x {config['grad_accum_steps']}")
    if config.get("max_grad_norm") == 0:
        recipe.append("no clipping")
    parts += ["failure recipe"] if len(recipe) == 4 else recipe
    return " · ".join(parts)


def _example_name(results: Mapping[str, Any]) -> str:
    """The display name of a protocol run's example ("BERT", "ViT"; "?" if unknown)."""
    example = results.get("example", "?")
    return _EXAMPLE_NAMES.get(example, str(example))


def format_lr(value: float) -> str:
    """A learning rate as people write it on the command line.

    Examples:
      >>> [format_lr(x) for x in (1e-4, 5e-5, 3e-4, 0.002, 2.5e-5, 0.1)]
      ['1e-4', '5e-5', '3e-4', '2e-3', '2.5e-5', '1e-1']
    """
    mantissa, exponent = f"{float(value):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def setting_key(results: Mapping[str, Any]) -> tuple[str, str, int, float]:
    """Orders protocol runs by example, task, sequence length, then learning rate."""
    config = results.get("base_config") or {}
    return (
        str(results.get("example", "")),
        str(results.get("task", "")),
        int(config.get("max_length", 0)),
        float(config.get("learning_rate", 0.0)),
    )


def overview_rows(
    all_results: Sequence[Mapping[str, Any]], *, base: str = "fft", dsgd: str = "dsgd"
) -> list[dict[str, Any]]:
    """One row per protocol run that has both ``base`` and ``dsgd`` runs.

    Returns:
      Per run, in the given order: ``setting`` (:func:`setting_label`),
      ``example`` (its display name, e.g. ``"BERT"``), ``base`` and ``dsgd`` (their
      :func:`method_stats`), ``best_other``: the label and stats of the other
      method with the highest mean accuracy, or None, and ``testable``: whether
      FFT fails on some seeds but not on all.
    """
    rows = []
    for results in all_results:
        stats = method_stats(results)
        if base not in stats or dsgd not in stats:
            continue
        others = {k: v for k, v in stats.items() if k not in (base, dsgd)}
        best = max(others.items(), key=lambda kv: kv[1]["accuracy_mean"], default=None)
        rows.append(
            {
                "setting": setting_label(results),
                "example": _example_name(results),
                "base": stats[base],
                "dsgd": stats[dsgd],
                "best_other": best,
                "testable": 0 < stats[base]["failed"] < stats[base]["n"],
            }
        )
    return rows


def overview_table(
    all_results: Sequence[Mapping[str, Any]], *, base: str = "fft", dsgd: str = "dsgd"
) -> str:
    """FFT against DSGD over many protocol runs, one markdown row per run.

    Columns: the setting, the seeds of each, accuracy and macro-F1 (mean ± std in
    percent), failed, collapsed and class-missing runs (``base``/``dsgd``),
    whether FFT fails on some seeds but not all (the settings that can test
    whether DSGD removes failed seeds), and the best other method by mean accuracy.
    """
    lines = [
        "| setting | seeds | FFT accuracy (%) | DSGD accuracy (%) | FFT macro-F1 (%) "
        "| DSGD macro-F1 (%) | failed | collapsed | missing a class "
        "| FFT fails on some seeds | best other method |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    for row in overview_rows(all_results, base=base, dsgd=dsgd):
        f, d = row["base"], row["dsgd"]
        best = row["best_other"]
        cells = [
            row["setting"],
            f"{f['n']}/{d['n']}",
            f"{_percent(f['accuracy_mean'])} ± {_percent(f['accuracy_std'])}",
            f"{_percent(d['accuracy_mean'])} ± {_percent(d['accuracy_std'])}",
            f"{_percent(f['macro_f1_mean'])} ± {_percent(f['macro_f1_std'])}",
            f"{_percent(d['macro_f1_mean'])} ± {_percent(d['macro_f1_std'])}",
            *(f"{f[k]}/{d[k]}" for k in ("failed", "collapsed", "missing_class")),
            "yes" if row["testable"] else "no",
            _DASH
            if best is None
            else f"{best[0]} {_percent(best[1]['accuracy_mean'])} ± "
            f"{_percent(best[1]['accuracy_std'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_overview(
    all_results: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    base: str = "fft",
    dsgd: str = "dsgd",
) -> Path:
    """Test accuracy per seed of ``base`` against ``dsgd``, one panel per protocol run.

    Each panel shows the seeds as points (failed runs as red x), the mean ± std as
    a bar and the majority-class rate as a dotted line; panels share nothing, since
    the settings' accuracies differ.

    Raises:
      ValueError: If no run has both ``base`` and ``dsgd`` runs.
    """
    panels = []
    for results in all_results:
        groups = _runs_by_label(results)
        if base in groups and dsgd in groups:
            panels.append((results, [groups[base], groups[dsgd]]))
    if not panels:
        raise ValueError(f"no results with both {base!r} and {dsgd!r} runs to plot")
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(figsize=(4.2 * ncols, 3.6 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (results, method_runs) in zip(axes, panels, strict=False):
        for position, (runs, color) in enumerate(
            zip(method_runs, ("tab:gray", "tab:blue"), strict=True)
        ):
            values = np.array([100 * float(r["accuracy"]) for r in runs])
            ok = ~_failed_mask(runs, results["test_labels"])
            x = position + (np.linspace(-0.12, 0.12, len(runs)) if len(runs) > 1 else 0.0)
            x = np.broadcast_to(x, values.shape)
            ax.scatter(x[ok], values[ok], s=16, color=color, alpha=0.7, zorder=3)
            if (~ok).any():
                ax.scatter(x[~ok], values[~ok], s=40, color="red", marker="x", zorder=4)
            ax.errorbar(
                position + 0.3,
                values.mean(),
                yerr=values.std(ddof=0),
                fmt="o",
                color="black",
                capsize=4,
                markersize=4,
            )
        majority = 100 * _majority_rate(results["test_labels"])
        ax.axhline(majority, color="gray", linestyle=":", linewidth=1.0)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([base, dsgd])
        ax.set_xlim(-0.5, 1.6)
        ax.set_title(setting_label(results), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[: len(panels)][::ncols]:
        ax.set_ylabel("test accuracy (%)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        "test accuracy per seed (bar: mean ± std; red x: failed; dotted: majority rate)",
        fontsize=10,
    )
    return _save(fig, path)


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes the tables and the plots of a protocol run into ``out_dir``.

    Files: ``table.md`` (:func:`markdown_table`, then :func:`seed_table`),
    ``seed_accuracy.png``, ``epoch_curves.png`` (left out when no run has
    per-epoch metrics), ``conflict_trace.png`` (left out when no run has a
    conflict trace) and ``representation.png`` (left out when no run recorded its
    features' cosine).

    Args:
      results: A protocol run's results (see :func:`load_results`).
      out_dir: The directory to write into (created if missing).

    Returns:
      The written paths by name: ``table``, ``seed_accuracy``, ``epoch_curves``,
      ``conflict_trace``, ``representation``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "table.md"
    table.write_text(markdown_table(results) + "\nPer seed:\n\n" + seed_table(results))
    paths = {"table": table}
    paths["seed_accuracy"] = plot_seed_accuracy(results, out_dir / "seed_accuracy.png")
    if any(_epoch_series(runs) is not None for runs in _runs_by_label(results).values()):
        paths["epoch_curves"] = plot_epoch_curves(results, out_dir / "epoch_curves.png")
    if any(r.get("conflict_trace") for r in results["runs"]):
        paths["conflict_trace"] = plot_conflict_trace(results, out_dir / "conflict_trace.png")
    if any(r.get("representation_cosine") is not None for r in results["runs"]):
        paths["representation"] = plot_representation(results, out_dir / "representation.png")
    return paths
