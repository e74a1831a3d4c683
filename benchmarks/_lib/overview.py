"""Many protocol runs side by side: setting names, the overview table and plot.

What the stability page's results block and the pilot's table show across
settings (``benchmarks/stability_readme.py``, ``benchmarks/instability_pilot.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsgd_jax.examples import markdown
from dsgd_jax.examples.stability_report import _DASH, _figure, _percent, _save
from dsgd_jax.examples.stability_stats import (
    failed_mask,
    majority_rate,
    method_stats,
    runs_by_label,
)

__all__ = [
    "format_lr",
    "overview_rows",
    "overview_table",
    "plot_overview",
    "setting_key",
    "setting_label",
]

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
      method with the highest mean accuracy, or None, ``others``: every other
      method's stats by label, and ``testable``: whether FFT fails on some seeds but
      not on all.
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
                "others": others,
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
    columns = (
        "setting", "seeds", "FFT accuracy (%)", "DSGD accuracy (%)", "FFT macro-F1 (%)",
        "DSGD macro-F1 (%)", "failed", "collapsed", "missing a class",
        "FFT fails on some seeds", "best other method",
    )  # fmt: skip
    rows = []
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
        rows.append(cells)
    return markdown.table(columns, rows, "lrrrrrrrrcl")


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
        groups = runs_by_label(results)
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
            ok = ~failed_mask(runs, results["test_labels"])
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
        majority = 100 * majority_rate(results["test_labels"])
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
