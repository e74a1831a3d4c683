"""The seed-stability results: the block of ``docs/results/stability.md`` (per setting
its table, plots and verdict, and the overview across settings) and the README's short
summary of it (``python benchmarks/stability_readme.py`` writes both)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _lib import readme, summary
from _lib.overview import overview_rows, overview_table, plot_overview, setting_key, setting_label
from dsgd_jax.examples.stability_report import markdown_table, write_report
from dsgd_jax.examples.stability_stats import ensemble_stats, load_results, method_stats
from dsgd_jax.examples.stability_tasks import multitask_table

__all__ = [
    "load_settings",
    "multitask_folders",
    "multitask_section",
    "overview_verdict",
    "readme_section",
    "results_folders",
    "update_readme",
    "verdict",
]

README_MARKER = "docs:stability-results"
MULTITASK_MARKER = "docs:multitask-results"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _of(s: dict[str, Any], key: str) -> str:
    return f"{s[key]} of {s['n']}"


def _learned(s: dict[str, Any]) -> str:
    """``" (the others average 93.25)"``: the mean accuracy of the runs that did not fail."""
    if s["learned_mean"] is None or s["failed"] == 0:
        return ""
    learned = s["n"] - s["failed"]
    if learned == 1:
        return f" (the one that learns scores {_pct(s['learned_mean'])})"
    return f" (the {learned} that learn average {_pct(s['learned_mean'])})"


def _claim_test(f: dict[str, Any], d: dict[str, Any]) -> str:
    """Whether FFT's seeds fail in a way that can test DSGD's claim, and what DSGD does."""
    if f["failed"] == 0:
        return (
            "FFT fails on no seed here, so this setting cannot test whether DSGD removes "
            "failed seeds; it compares accuracy and spread only."
        )
    if f["failed"] == f["n"]:
        return (
            "FFT fails on every seed here, so the setting, not the seed, decides and it cannot "
            "test whether DSGD removes seed failures; DSGD fails on "
            f"{_of(d, 'failed')}{_learned(d)}."
        )
    return (
        f"FFT is seed-unstable here: {_of(f, 'failed')} seeds fail while the rest "
        f"learn{_learned(f)}; DSGD fails on {_of(d, 'failed')}{_learned(d)}."
    )


def verdict(results: dict[str, Any], *, base: str = "fft", dsgd: str = "dsgd") -> str:
    """What the numbers of one protocol run say about DSGD, in a few plain sentences.

    A run *failed* when its test accuracy is at or below the majority-class rate and
    *collapsed* when it predicts one class for every input
    (:mod:`dsgd_jax.examples.stability_stats`).
    """
    stats = method_stats(results)
    if base not in stats or dsgd not in stats:
        return "This run lacks FFT or DSGD, so it says nothing about DSGD against FFT."
    f, d = stats[base], stats[dsgd]
    gap = 100 * (d["accuracy_mean"] - f["accuracy_mean"])
    if _pct(d["accuracy_mean"]) == _pct(f["accuracy_mean"]):
        compared = f"equals FFT's ({_pct(d['accuracy_mean'])})"
    else:
        compared = (
            f"is {abs(gap):.2f} points {'above' if gap > 0 else 'below'} FFT's "
            f"({_pct(d['accuracy_mean'])} vs {_pct(f['accuracy_mean'])})"
        )
    labels = results["test_labels"]
    majority = max(labels.count(c) for c in set(labels)) / len(labels) if labels else 0.0
    lines = [
        f"DSGD's mean accuracy {compared}, with a standard deviation over seeds of "
        f"{_pct(d['accuracy_std'])} vs {_pct(f['accuracy_std'])}.",
        f"Failed runs (accuracy at or below the majority-class rate, {_pct(majority)}): DSGD "
        f"{_of(d, 'failed')}, FFT {_of(f, 'failed')}; collapsed onto one class: DSGD "
        f"{d['collapsed']}, FFT {f['collapsed']}.",
        _claim_test(f, d),
    ]
    if d["missing_class"] or f["missing_class"]:
        lines.append(
            f"Runs that never predict some class right: DSGD {_of(d, 'missing_class')}, "
            f"FFT {_of(f, 'missing_class')}."
        )
    others = [label for label in stats if label not in (base, dsgd)]
    if others:
        better = [o for o in others if stats[o]["accuracy_mean"] >= d["accuracy_mean"]]
        steadier = [o for o in others if stats[o]["accuracy_std"] <= d["accuracy_std"]]
        more = [o for o in others if stats[o]["failed"] > d["failed"]]
        fewer = [o for o in others if stats[o]["failed"] < d["failed"]]
        lines.append(
            "DSGD does not beat "
            + ", ".join(f"{o} ({_pct(stats[o]['accuracy_mean'])})" for o in better)
            + " in mean accuracy here."
            if better
            else f"None of the other {len(others)} methods reaches DSGD's mean accuracy."
        )
        if steadier:
            lines.append(
                "Lower or equal seed spread than DSGD: "
                + ", ".join(_spread(o, stats[o], d) for o in steadier)
                + "."
            )
        for word, group in (("More", more), ("Fewer", fewer)):
            if group:
                lines.append(
                    f"{word} failed runs than DSGD ({_of(d, 'failed')}): "
                    + ", ".join(f"{o} {_of(stats[o], 'failed')}" for o in group)
                    + "."
                )
    ens9, dsgd9 = ensemble_stats(results, base, 9), ensemble_stats(results, dsgd, 9)
    if ens9 is not None and dsgd9 is not None:
        lines.append(
            f"Majority votes of 9 seeds (mean over the {ens9['subsets']} and "
            f"{dsgd9['subsets']} subsets): FFT {_pct(ens9['accuracy_mean'])}, DSGD "
            f"{_pct(dsgd9['accuracy_mean'])}; the mean single DSGD run "
            f"{'reaches' if d['accuracy_mean'] >= ens9['accuracy_mean'] else 'stays below'} "
            "ENS(9)."
        )
    return " ".join(lines)


def _spread(label: str, s: dict[str, Any], dsgd: dict[str, Any]) -> str:
    """``label (std)``, saying so where the low spread comes from failed runs."""
    note = ""
    if s["failed"] == s["n"]:
        note = ", every run failed"
    elif s["failed"] > dsgd["failed"]:
        note = f", {_of(s, 'failed')} runs failed"
    return f"{label} ({_pct(s['accuracy_std'])}{note})"


def overview_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """What :func:`~_lib.overview.overview_rows` say, in plain sentences.

    The settings are sorted by what FFT does there: fails on some seeds but not all
    (those can test whether DSGD removes failed seeds), on none, or on all.
    """
    if not rows:
        return "No setting has both FFT and DSGD runs yet."
    n = len(rows)
    higher = sum(r["dsgd"]["accuracy_mean"] > r["base"]["accuracy_mean"] for r in rows)
    steadier = sum(r["dsgd"]["accuracy_std"] < r["base"]["accuracy_std"] for r in rows)

    def total(group, side, key):
        return sum(r[side][key] for r in group)

    lines = [
        f"Over {n} setting{'s' if n > 1 else ''}, DSGD's mean accuracy is above FFT's in "
        f"{higher} and its seed spread (std) is below FFT's in {steadier}.",
        f"Failed runs (at or below the majority-class rate): FFT {total(rows, 'base', 'failed')} "
        f"of {total(rows, 'base', 'n')}, DSGD {total(rows, 'dsgd', 'failed')} of "
        f"{total(rows, 'dsgd', 'n')}; collapsed onto one class: FFT "
        f"{total(rows, 'base', 'collapsed')}, DSGD {total(rows, 'dsgd', 'collapsed')}.",
    ]
    testable = [r for r in rows if r["testable"]]
    never = [r for r in rows if r["base"]["failed"] == 0]
    always = [r for r in rows if r["base"]["failed"] == r["base"]["n"]]
    if testable:
        t_higher = sum(r["dsgd"]["accuracy_mean"] > r["base"]["accuracy_mean"] for r in testable)
        t_steadier = sum(r["dsgd"]["accuracy_std"] < r["base"]["accuracy_std"] for r in testable)
        t_fewer = sum(r["dsgd"]["failed"] < r["base"]["failed"] for r in testable)
        t_more = sum(r["dsgd"]["failed"] > r["base"]["failed"] for r in testable)
        lines.append(
            f"FFT fails on some seeds but not all in {len(testable)} setting"
            f"{'s' if len(testable) > 1 else ''} ("
            + ", ".join(r["setting"] for r in testable)
            + f"), the kind that can test whether DSGD removes failed seeds: there FFT fails "
            f"on {total(testable, 'base', 'failed')} of {total(testable, 'base', 'n')} runs "
            f"and DSGD on {total(testable, 'dsgd', 'failed')} of {total(testable, 'dsgd', 'n')}; "
            f"DSGD has fewer failed runs in {t_fewer} and more in {t_more}, a higher mean in "
            f"{t_higher} and a lower spread in {t_steadier} of them. Per setting, failed runs "
            "of FFT against DSGD (mean accuracy): "
            + "; ".join(
                f"{r['setting']}: {_of(r['base'], 'failed')} against {_of(r['dsgd'], 'failed')} "
                f"({_pct(r['base']['accuracy_mean'])} against {_pct(r['dsgd']['accuracy_mean'])})"
                for r in testable
            )
            + "."
        )
    else:
        lines.append(
            "No setting makes FFT fail on some seeds but not on others, so none of them can "
            "test whether DSGD removes failed seeds."
        )
    if never:
        lines.append(
            f"FFT fails on no seed in {len(never)} setting{'s' if len(never) > 1 else ''}."
        )
    if always:
        lines.append(
            "FFT fails on every seed on "
            + ", ".join(
                f"{r['setting']} (DSGD {r['dsgd']['failed']} of {r['dsgd']['n']})" for r in always
            )
            + ": there the setting decides, not the seed."
        )
    lines += [
        f"Runs that never predict some class right: FFT {total(rows, 'base', 'missing_class')}, "
        f"DSGD {total(rows, 'dsgd', 'missing_class')}.",
        _widest_spreads(rows),
    ]
    beaten = [
        r
        for r in rows
        if r["best_other"] and r["best_other"][1]["accuracy_mean"] >= r["dsgd"]["accuracy_mean"]
    ]
    with_others = [r["setting"] for r in rows if r["best_other"]]
    if with_others:
        lines.append("Other methods ran on " + ", ".join(with_others) + ".")
    if beaten:
        lines.append(
            "Where baselines ran, DSGD is matched or beaten in mean accuracy on "
            + ", ".join(f"{r['setting']} (by {r['best_other'][0]})" for r in beaten)
            + "."
        )
    return " ".join(lines)


def _widest_spreads(rows: Sequence[dict[str, Any]]) -> str:
    """Where FFT's seed spread is widest, per example where there are several."""
    examples = list(dict.fromkeys(r["example"] for r in rows))
    parts = []
    for example in examples:
        widest = max(
            (r for r in rows if r["example"] == example), key=lambda r: r["base"]["accuracy_std"]
        )
        among = f" among the {example} settings" if len(examples) > 1 else ""
        parts.append(
            f"on {widest['setting']} ({_pct(widest['base']['accuracy_std'])} points){among}"
        )
    return "FFT's seed spread is widest " + " and ".join(parts) + "."


def readme_section(folders: Sequence[Path], root: Path) -> str:
    """The stability page's results block from the committed ``results.json`` files in
    ``folders``.

    An overview of every setting (table, verdict, ``overview.png``; see
    :func:`update_readme`) comes first, then each setting's full table.
    """
    return _section(load_settings(folders), root)


def _commands(results: dict) -> str:
    """The command that made a results file, or each of those that added to it."""
    commands = list(dict.fromkeys(results.get("commands") or [results["command"]]))
    if len(commands) == 1:
        return f"`{commands[0]}`"
    listed = "; ".join(f"`{c}`" for c in commands)
    return f"Made by {len(commands)} commands, each adding its runs to results.json: {listed};"


def _section(settings: Sequence[tuple[Path, dict[str, Any]]], root: Path) -> str:
    """:func:`readme_section` from settings already read by :func:`load_settings`."""
    parts = [f"<!-- {README_MARKER} -->"]
    if not settings:
        parts.append("No protocol run has been committed yet.")
    all_results = [results for _, results in settings]
    rows = overview_rows(all_results)
    if rows:
        parts += [
            "",
            "Every setting, FFT against DSGD: accuracy and macro-F1 in % as mean ± std over "
            "seeds; as FFT/DSGD, the failed runs (accuracy at or below the majority-class "
            "rate), the collapsed runs (one class for every input) and the runs missing a "
            "class (recall 0 on some class); whether FFT fails on some seeds but not all; "
            "the best of the other methods where they ran.",
            "",
            overview_table(all_results).strip(),
            "",
            overview_verdict(rows),
            "",
            f"![FFT against DSGD per seed, every setting]({OVERVIEW_PLOT})",
            "",
            "Each setting in full:",
        ]
    for folder, results in settings:
        config = results["base_config"]
        rel = folder.relative_to(root).as_posix()
        parts += [
            "",
            f"### {setting_label(results)} · {config['num_epochs']} epochs",
            "",
            _commands(results)
            + _machines(results)
            + f". Per-seed results, plots: `{rel}/`."
            + _missing(results["missing"]),
            "",
            markdown_table(results).strip(),
            "",
            verdict(results)
            + " Time per run is wall time with loading, compiling and evaluation on a shared "
            "machine (a vmapped group's time divided by its seeds), not a speed comparison.",
            "",
            f"![per-seed accuracy]({rel}/seed_accuracy.png)",
        ]
    parts.append(f"<!-- /{README_MARKER} -->")
    return "\n".join(parts)


def _machine(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['cores']} cores, {m['device']}; jax {m['jax']}, flax {m['flax']})"


def _machines(results: dict[str, Any]) -> str:
    """Where the runs ran: one machine, or each machine with the methods run on it."""
    labels: dict[str, list[str]] = {}
    for run in results["runs"]:
        where = labels.setdefault(_machine(run.get("machine") or results["machine"]), [])
        if run["label"] not in where:
            where.append(run["label"])
    if len(labels) <= 1:
        return f" on {next(iter(labels), _machine(results['machine']))}"
    return ";".join(f" on {m} for {', '.join(ls)}" for m, ls in labels.items())


def _missing(missing: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for entry in missing:  # "label seed N"
        label = entry.rsplit(" seed ", 1)[0]
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return ""
    return " Not run yet: " + ", ".join(f"{k} ({n} seeds)" for k, n in counts.items()) + "."


def results_folders(root: Path) -> list[Path]:
    """The committed protocol runs: ``benchmarks/results/stability/*/results.json``."""
    return sorted(p.parent for p in (root / "benchmarks/results/stability").glob("*/results.json"))


def load_settings(folders: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each folder with its ``results.json``, read once, in setting order.

    The order is :func:`~_lib.overview.setting_key`'s
    (example, task, sequence length, learning rate), so a sweep reads top to bottom.
    """
    loaded = [(folder, load_results(folder / "results.json")) for folder in folders]
    return sorted(loaded, key=lambda item: (setting_key(item[1]), item[0]))


OVERVIEW_PLOT = "benchmarks/results/stability/overview.png"


def multitask_folders(root: Path) -> list[Path]:
    """The committed multi-task protocol runs: ``benchmarks/results/multitask/*/``."""
    return sorted(p.parent for p in (root / "benchmarks/results/multitask").glob("*/results.json"))


def multitask_section(root: Path) -> str:
    """The stability page's block of multi-task runs: per pair of tasks, its commands,
    machines and the Table 6 rows of :func:`~dsgd_jax.examples.stability_tasks.multitask_table`
    (each task's own tables and plots are in the run's folder)."""
    parts = [f"<!-- {MULTITASK_MARKER} -->"]
    folders = multitask_folders(root)
    if not folders:
        parts.append(
            "No multi-task protocol run is committed yet. "
            "`python benchmarks/stability.py --example=bert --task=drugs+tweets2 "
            "--methods=fft,dsgd,pcgrad/pcgrad_groups=tasks --seeds=10 "
            "--out=benchmarks/results/multitask/<tasks>` makes one (add the recipe's flags)."
        )
    for folder in folders:
        results = load_results(folder / "results.json")
        rel = folder.relative_to(root).as_posix()
        config = results["base_config"]
        parts += [
            "",
            f"### {results['task']} · lr {config['learning_rate']:g} · "
            f"{config['num_epochs']} epochs",
            "",
            _commands(results) + _machines(results) + f". Each task's tables and plots: "
            f"`{rel}/table.md`." + _missing(results["missing"]),
            "",
            multitask_table(results).strip(),
        ]
    parts.append(f"<!-- /{MULTITASK_MARKER} -->")
    return "\n".join(parts)


def update_readme(root: Path) -> str:
    """Rewrites the stability page's results block, the README's summary, ``OVERVIEW_PLOT``
    and each committed
    setting's table and plots (:func:`~dsgd_jax.examples.stability_report.write_report`)
    from the committed ``results.json`` files, which it only reads.

    Returns the section.
    """
    settings = load_settings(results_folders(root))
    for folder, results in settings:
        write_report(results, folder)
    all_results = [results for _, results in settings]
    if overview_rows(all_results):
        plot_overview(all_results, root / OVERVIEW_PLOT)
    section = _section(settings, root)
    readme.fill_block(root / readme.PAGES[README_MARKER], README_MARKER, section)
    for folder in multitask_folders(root):
        write_report(load_results(folder / "results.json"), folder)
    page = root / readme.PAGES[MULTITASK_MARKER]
    readme.fill_block(page, MULTITASK_MARKER, multitask_section(root))
    summary.update(root)
    return section
