"""Tables and plots of one seed-stability protocol run (its ``results.json``).

:mod:`dsgd_jax.examples.stability` trains every method variant once per seed and
gathers the runs into ``results.json``; this module turns that file into the
paper's table (mean ± std of test accuracy and macro-F1 over seeds, the worst and
best seed, the collapsed runs, and the seed ensembles ``ENS(k)`` of plain
fine-tuning against ``DSGD(9)``) and its figures: test accuracy per seed, eval
accuracy per epoch, and the gradient-conflict trace of the traced runs.

Pure NumPy; matplotlib (Agg backend) is imported only by the plotting functions.

Definitions used throughout:

- std is the population standard deviation over seeds (``numpy.std`` with
  ``ddof=0``);
- a run counts as collapsed when its ``collapsed`` flag is set (the runner sets it
  when one class takes most of the test predictions);
- a run misses a class when none of that class's test examples is predicted
  right (its recall is 0): a partial collapse, of which the paper's collapse is
  the extreme;
- a method's runs are ordered by seed, and ``ENS(k)`` is the majority vote of the
  first ``k`` of them (ties to the lowest class index).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ensemble_accuracy",
    "ensemble_rows",
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
    "plot_seed_accuracy",
    "setting_key",
    "setting_label",
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


def method_stats(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method label, the statistics over its seeds.

    Std is the population standard deviation over seeds (``numpy.std``,
    ``ddof=0``), so a label with one seed has std 0.

    Args:
      results: A protocol run's results (see :func:`load_results`).

    Returns:
      Per label, in order of first appearance in ``results["runs"]``: ``n`` (the
      number of seeds), ``seeds`` (sorted), ``accuracy_mean``, ``accuracy_std``,
      ``macro_f1_mean``, ``macro_f1_std``, ``accuracy_min``, ``accuracy_max``,
      ``collapsed`` (the number of collapsed runs), ``missing_class`` (the number
      of runs with saved predictions that miss a class, see :func:`missed_classes`)
      and ``wall_time_mean`` (seconds).

    Examples:
      >>> runs = [
      ...     {"label": "fft", "seed": 52, "accuracy": 0.5, "macro_f1": 0.4,
      ...      "collapsed": True, "wall_time_s": 10.0},
      ...     {"label": "fft", "seed": 42, "accuracy": 0.7, "macro_f1": 0.6,
      ...      "collapsed": False, "wall_time_s": 30.0},
      ... ]
      >>> s = method_stats({"runs": runs, "test_labels": []})["fft"]
      >>> s["seeds"], round(s["accuracy_mean"], 4), round(s["accuracy_std"], 4), s["collapsed"]
      ([42, 52], 0.6, 0.1, 1)
    """
    stats = {}
    labels = results["test_labels"]
    for label, runs in _runs_by_label(results).items():
        accuracy = np.array([float(r["accuracy"]) for r in runs])
        macro_f1 = np.array([float(r["macro_f1"]) for r in runs])
        wall = np.array([float(r.get("wall_time_s", np.nan)) for r in runs])
        stats[label] = {
            "n": len(runs),
            "seeds": [int(r["seed"]) for r in runs],
            "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=0)),
            "macro_f1_mean": float(macro_f1.mean()),
            "macro_f1_std": float(macro_f1.std(ddof=0)),
            "accuracy_min": float(accuracy.min()),
            "accuracy_max": float(accuracy.max()),
            "collapsed": sum(bool(r.get("collapsed", False)) for r in runs),
            "missing_class": sum(
                bool(r.get("predictions") and missed_classes(r["predictions"], labels))
                for r in runs
            ),
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


def ensemble_accuracy(results: Mapping[str, Any], label: str, k: int) -> float | None:
    """Test accuracy of the majority vote of ``label``'s first ``k`` runs in seed order.

    Args:
      results: A protocol run's results (see :func:`load_results`).
      label: The method label whose runs vote.
      k: The ensemble size.

    Returns:
      The ensemble's accuracy on ``results["test_labels"]``, or None if ``label``
      has fewer than ``k`` runs.

    Raises:
      ValueError: If a run's predictions do not match the test labels in length.
    """
    runs = _runs_by_label(results).get(label, [])
    if k < 1 or len(runs) < k:
        return None
    labels = np.asarray(results["test_labels"], dtype=np.int64)
    rows = []
    for run in runs[:k]:
        row = np.asarray(run["predictions"], dtype=np.int64)
        if row.shape != labels.shape:
            raise ValueError(
                f"run {label!r} seed {run['seed']}: {row.size} predictions for "
                f"{labels.size} test labels"
            )
        rows.append(row)
    predictions = np.stack(rows)
    voted = majority_vote(predictions, _num_classes(results, predictions, labels))
    return float(np.mean(voted == labels)) if labels.size else float("nan")


def ensemble_rows(
    results: Mapping[str, Any],
    *,
    base: str = "fft",
    ks: Sequence[int] = (3, 5, 7, 9),
    dsgd: str = "dsgd",
    dsgd_k: int = 9,
) -> list[dict[str, Any]]:
    """The paper's seed-ensemble rows: ``ENS(k)`` of ``base`` and ``DSGD(dsgd_k)``.

    Args:
      results: A protocol run's results (see :func:`load_results`).
      base: The label whose runs form ``ENS(k)`` (plain fine-tuning).
      ks: The ensemble sizes of ``base``.
      dsgd: The label whose runs form ``DSGD(dsgd_k)``.
      dsgd_k: The DSGD ensemble size.

    Returns:
      One dict per row with enough runs (rows without are left out): ``method``
      (e.g. ``"ENS(3)"``), ``label``, ``k``, ``seeds`` (those that voted) and
      ``accuracy``.
    """
    groups = _runs_by_label(results)
    wanted = [(f"ENS({k})", base, k) for k in ks] + [(f"DSGD({dsgd_k})", dsgd, dsgd_k)]
    rows = []
    for name, label, k in wanted:
        accuracy = ensemble_accuracy(results, label, k)
        if accuracy is None:
            continue
        seeds = [int(r["seed"]) for r in groups[label][:k]]
        rows.append({"method": name, "label": label, "k": k, "seeds": seeds, "accuracy": accuracy})
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

    One row per method label (accuracy and macro-F1 as mean ± std over seeds in
    percent, the worst and best seed's accuracy, the collapsed runs and the runs
    missing a class out of the seeds, the mean wall time per run), then the seed-ensemble rows of
    :func:`ensemble_rows` (accuracy only; the seeds column holds ``k``).

    Args:
      results: A protocol run's results (see :func:`load_results`).
      base: The label whose runs form the ``ENS(k)`` rows.
      dsgd: The label whose runs form the ``DSGD(9)`` row.

    Returns:
      The table, one line per row, ending with a newline.
    """
    columns = ("method", "seeds", "accuracy (%)", "macro-F1 (%)", "min (%)", "max (%)")
    header = "| " + " | ".join((*columns, "collapsed", "missing a class", "time/run")) + " |"
    lines = [header, "|" + "|".join(["---"] + ["---:"] * 8) + "|"]
    for label, s in method_stats(results).items():
        cells = [
            label,
            str(s["n"]),
            f"{_percent(s['accuracy_mean'])} ± {_percent(s['accuracy_std'])}",
            f"{_percent(s['macro_f1_mean'])} ± {_percent(s['macro_f1_std'])}",
            _percent(s["accuracy_min"]),
            _percent(s["accuracy_max"]),
            f"{s['collapsed']}/{s['n']}",
            f"{s['missing_class']}/{s['n']}",
            _format_time(s["wall_time_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for row in ensemble_rows(results, base=base, dsgd=dsgd):
        cells = [row["method"], str(row["k"]), _percent(row["accuracy"])] + [_DASH] * 6
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
    jitter; collapsed runs are marked with a red x.

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
    collapsed_shown = False
    for position, runs, values in zip(positions, groups.values(), data, strict=True):
        n = len(runs)
        jitter = np.linspace(-0.15, 0.15, n) if n > 1 else np.zeros(1)
        x = position + jitter
        ok = np.array([not r.get("collapsed", False) for r in runs])
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
                label=None if collapsed_shown else "collapsed run",
            )
            collapsed_shown = True
    ax.set_xticks(positions)
    ax.set_xticklabels(list(groups), rotation=30 if len(groups) > 4 else 0, ha="right")
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_xlabel("method")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(results, "test accuracy per seed"))
    ax.grid(axis="y", alpha=0.3)
    if collapsed_shown:
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
    """The gradient-conflict trace of the traced runs, in three panels sharing the step axis.

    Top: cos(g_W, g_C), the cosine between the gradients of the wrongly and the
    correctly classified examples (dashed line at 0); middle: the total gradient
    norm; bottom: the fraction of the batch classified correctly. One line per run
    with a trace, labelled ``"label (seed s)"``.

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
    fig = _figure(figsize=(7.0, 7.0))
    axes = fig.subplots(3, 1, sharex=True)
    panels = (
        ("cosine", "cos(g_W, g_C)"),
        ("total_norm", "gradient norm"),
        ("fraction_correct", "fraction correct"),
    )
    for run in traced:
        trace = run["conflict_trace"]
        steps = np.array([float(t["step"]) for t in trace])
        for ax, (key, _) in zip(axes, panels, strict=True):
            values = np.array([np.nan if t.get(key) is None else float(t[key]) for t in trace])
            ax.plot(steps, values, linewidth=1.2, label=f"{run['label']} (seed {run['seed']})")
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="black", linestyle="--", linewidth=0.8)
    axes[0].legend(loc="best")
    axes[-1].set_xlabel("step")
    axes[0].set_title(_title(results, "gradient conflict"))
    return _save(fig, path)


_EXAMPLE_NAMES = {"bert": "BERT", "vit": "ViT"}


def setting_label(results: Mapping[str, Any]) -> str:
    """A short name of a protocol run's setting: example, task, length, learning rate.

    Examples:
      >>> setting_label({"example": "bert", "task": "drugs",
      ...                "base_config": {"max_length": 64, "learning_rate": 1e-4}})
      'BERT · drugs · 64 tokens · lr 1e-4'
    """
    config = results.get("base_config") or {}
    parts = [_example_name(results), str(results.get("task", "?"))]
    if "max_length" in config:
        parts.append(f"{config['max_length']} tokens")
    if "learning_rate" in config:
        parts.append(f"lr {format_lr(config['learning_rate'])}")
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
      :func:`method_stats`), and ``best_other``: the label and stats of the other
      method with the highest mean accuracy, or None.
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
            }
        )
    return rows


def overview_table(
    all_results: Sequence[Mapping[str, Any]], *, base: str = "fft", dsgd: str = "dsgd"
) -> str:
    """FFT against DSGD over many protocol runs, one markdown row per run.

    Columns: the setting, the seeds of each, accuracy and macro-F1 (mean ± std in
    percent), collapsed runs and runs missing a class (``base``/``dsgd``), and the
    best other method by mean accuracy.
    """
    lines = [
        "| setting | seeds | FFT accuracy (%) | DSGD accuracy (%) | FFT macro-F1 (%) "
        "| DSGD macro-F1 (%) | collapsed | missing a class | best other method |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
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
            f"{f['collapsed']}/{d['collapsed']}",
            f"{f['missing_class']}/{d['missing_class']}",
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

    Each panel shows the seeds as points (collapsed runs as red x) and the mean ±
    std as a bar; panels share nothing, since the settings' accuracies differ.

    Raises:
      ValueError: If no run has both ``base`` and ``dsgd`` runs.
    """
    panels = []
    for results in all_results:
        groups = _runs_by_label(results)
        if base in groups and dsgd in groups:
            panels.append((setting_label(results), [groups[base], groups[dsgd]]))
    if not panels:
        raise ValueError(f"no results with both {base!r} and {dsgd!r} runs to plot")
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(figsize=(4.2 * ncols, 3.6 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (title, method_runs) in zip(axes, panels, strict=False):
        for position, (runs, color) in enumerate(
            zip(method_runs, ("tab:gray", "tab:blue"), strict=True)
        ):
            values = np.array([100 * float(r["accuracy"]) for r in runs])
            ok = np.array([not r.get("collapsed", False) for r in runs])
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
        ax.set_xticks([0, 1])
        ax.set_xticklabels([base, dsgd])
        ax.set_xlim(-0.5, 1.6)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[: len(panels)][::ncols]:
        ax.set_ylabel("test accuracy (%)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("test accuracy per seed (bar: mean ± std; red x: collapsed)", fontsize=10)
    return _save(fig, path)


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes the table and the plots of a protocol run into ``out_dir``.

    Files: ``table.md`` (:func:`markdown_table`), ``seed_accuracy.png``,
    ``epoch_curves.png`` (left out when no run has per-epoch metrics) and
    ``conflict_trace.png`` (left out when no run has a conflict trace).

    Args:
      results: A protocol run's results (see :func:`load_results`).
      out_dir: The directory to write into (created if missing).

    Returns:
      The written paths by name: ``table``, ``seed_accuracy``, ``epoch_curves``,
      ``conflict_trace``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "table.md"
    table.write_text(markdown_table(results))
    paths = {"table": table}
    paths["seed_accuracy"] = plot_seed_accuracy(results, out_dir / "seed_accuracy.png")
    if any(_epoch_series(runs) is not None for runs in _runs_by_label(results).values()):
        paths["epoch_curves"] = plot_epoch_curves(results, out_dir / "epoch_curves.png")
    if any(r.get("conflict_trace") for r in results["runs"]):
        paths["conflict_trace"] = plot_conflict_trace(results, out_dir / "conflict_trace.png")
    return paths
