"""Tables and plots of one seed-stability protocol run (its ``results.json``).

From the numbers of :mod:`dsgd_jax.examples.stability_stats` (whose definitions
of *failed*, *collapsed*, the escape epoch and ``ENS(k)`` hold here too), this
module writes the paper's table (:func:`markdown_table`), a table per seed
(:func:`seed_table`) and the figures: test accuracy per seed, eval accuracy per
epoch, the gradient-conflict traces of every traced seed and the final
representations per seed. matplotlib (Agg backend) is imported only by the
plotting functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsgd_jax.examples import markdown
from dsgd_jax.examples.stability_stats import (
    _both_groups,
    ensemble_rows,
    failed_mask,
    majority_rate,
    method_stats,
    run_failures,
    runs_by_label,
    trace_stats,
)
from dsgd_jax.examples.stability_tasks import multitask_table, task_names, task_view

__all__ = [
    "markdown_table",
    "plot_conflict_trace",
    "plot_epoch_curves",
    "plot_representation",
    "plot_seed_accuracy",
    "seed_table",
    "write_report",
]

_DPI = 120
_DASH = "—"


_percent = markdown.percent


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
    rows = []
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
        rows.append(cells)
    for row in ensemble_rows(results, base=base, dsgd=dsgd):
        accuracy = f"{_percent(row['accuracy_mean'])} ± {_percent(row['accuracy_std'])}"
        rows.append([row["method"], str(row["subsets"]), accuracy] + [_DASH] * 8)
    return markdown.table((*columns, *flags), rows, "l" + "r" * 10)


def seed_table(results: Mapping[str, Any]) -> str:
    """One markdown row per run: how it ended, when it escaped, its trace and features.

    Columns: method, seed, accuracy, failed / collapsed, the escape epoch
    (:func:`escape_epoch`; "never" if it never beat the majority rate), the mean
    pairwise cosine of the final test features (``—`` if not recorded) and the
    gradient-conflict statistics of :func:`trace_stats` (``—`` without a trace).
    """
    columns = (
        "method", "seed", "accuracy (%)", "failed", "collapsed", "escape epoch", "feature cosine",
        "mean cos(g_W, g_C)", "steps cos < 0", "steps cos < -0.5",
    )  # fmt: skip
    rows = []
    labels = results["test_labels"]
    for label, runs in runs_by_label(results).items():
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
            rows.append(cells)
    return markdown.table(columns, rows, "lrrccrrrrr")


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
    groups = runs_by_label(results)
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
        ok = ~failed_mask(runs, results["test_labels"])
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
    majority = majority_rate(results["test_labels"])
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
    for label, runs in runs_by_label(results).items():
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
    failed = failed_mask(traced, results["test_labels"])
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
        for label, runs in runs_by_label(results).items()
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
        bad = failed_mask(runs, labels)
        if bad.any():
            ax.scatter(x[bad], y[bad], s=60, color="red", marker="x", zorder=4)
    ax.axhline(100 * majority_rate(labels), color="gray", linestyle=":", linewidth=1.0)
    ax.set_xlabel("mean pairwise cosine of the final test features")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(results, "representations per seed (red x: failed)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
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
      ``conflict_trace``, ``representation``. For a multi-task run (results with
      ``heads``) ``table.md`` starts with
      :func:`~dsgd_jax.examples.stability_tasks.multitask_table` and holds each
      task's tables under its heading, and the plots are per task
      (``seed_accuracy-<task>``...), but for the conflict trace of the whole batches.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "table.md"
    tasks = task_names(results)
    if tasks:
        paths = _multitask_tables_and_plots(results, tasks, out_dir, table)
    else:
        table.write_text(markdown_table(results) + "\nPer seed:\n\n" + seed_table(results))
        paths = {"table": table, **_task_plots(results, out_dir, "")}
    if any(r.get("conflict_trace") for r in results["runs"]):
        paths["conflict_trace"] = plot_conflict_trace(results, out_dir / "conflict_trace.png")
    return paths


def _task_plots(results: Mapping[str, Any], out_dir: Path, suffix: str) -> dict[str, Path]:
    """The plots of one task's results, their file names ending in ``suffix``."""
    paths = {}
    name = f"seed_accuracy{suffix}"
    paths[name] = plot_seed_accuracy(results, out_dir / f"{name}.png")
    if any(_epoch_series(runs) is not None for runs in runs_by_label(results).values()):
        name = f"epoch_curves{suffix}"
        paths[name] = plot_epoch_curves(results, out_dir / f"{name}.png")
    if any(r.get("representation_cosine") is not None for r in results["runs"]):
        name = f"representation{suffix}"
        paths[name] = plot_representation(results, out_dir / f"{name}.png")
    return paths


def _multitask_tables_and_plots(results, tasks, out_dir: Path, table: Path) -> dict[str, Path]:
    """A multi-task run's ``table.md`` (its Table 6, then each task's own tables) and each
    task's plots (``seed_accuracy-<task>.png``...)."""
    parts = [multitask_table(results)]
    paths: dict[str, Path] = {"table": table}
    for task in tasks:
        view = task_view(results, task)
        parts.append(f"\n### {task}\n\n{markdown_table(view)}\nPer seed:\n\n{seed_table(view)}")
        slug = task.replace("/", "_")
        paths.update(_task_plots(view, out_dir, f"-{slug}"))
    table.write_text("".join(parts))
    return paths
