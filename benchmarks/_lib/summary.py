"""The README's results at a glance: one short table of the seed-stability settings and
one paragraph on the step's cost, every number from the committed results files, each
linking to its page of the documentation. ``python benchmarks/stability_readme.py`` and
``python benchmarks/performance_readme.py`` rewrite it with their own blocks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from _lib import readme
from _lib.overview import overview_rows

__all__ = ["MARKER", "baseline_ranking", "fisher_exact", "section", "update"]

MARKER = "readme:results-summary"
STABILITY_PAGE = "docs/results/stability.md"
PERFORMANCE_PAGE = "docs/results/performance.md"


def _pm(stats: dict[str, Any]) -> str:
    return f"{100 * stats['accuracy_mean']:.2f} ± {100 * stats['accuracy_std']:.2f}"


def stability_part(root: Path) -> list[str]:
    """The settings' table and one sentence on the settings that can test the claim."""
    from _lib.stability_readme import load_settings, results_folders

    rows = overview_rows([results for _, results in load_settings(results_folders(root))])
    if not rows:
        return ["No seed-stability run has been committed yet."]
    lines = [
        f"Seed stability, the paper's protocol ([every setting with its tables, plots and "
        f"commands]({STABILITY_PAGE})): test accuracy in % as mean ± std over seeds, and "
        "the failed runs (accuracy at or below the majority-class rate) of FFT / DSGD.",
        "",
        "| setting | seeds | FFT | DSGD | failed | FFT fails on some seeds | best other method |",
        "|---|---:|---:|---:|---:|:---:|---|",
    ]
    for r in rows:
        base, dsgd, other = r["base"], r["dsgd"], r["best_other"]
        lines.append(
            f"| {r['setting']} | {base['n']}/{dsgd['n']} | {_pm(base)} | {_pm(dsgd)} | "
            f"{base['failed']}/{dsgd['failed']} | {'yes' if r['testable'] else 'no'} | "
            + (f"{other[0]} {_pm(other[1])}" if other else "—")
            + " |"
        )
    testable = [r for r in rows if r["testable"]]
    fewer = sum(r["dsgd"]["failed"] < r["base"]["failed"] for r in testable)
    more = sum(r["dsgd"]["failed"] > r["base"]["failed"] for r in testable)
    lines += [
        "",
        f"FFT fails on some seeds but not all in {len(testable)} of {len(rows)} settings, the "
        "only ones that can test the paper's claim that DSGD removes such failures: there "
        f"FFT failed {sum(r['base']['failed'] for r in testable)} of "
        f"{sum(r['base']['n'] for r in testable)} runs and DSGD "
        f"{sum(r['dsgd']['failed'] for r in testable)} of "
        f"{sum(r['dsgd']['n'] for r in testable)}; DSGD failed less often in {fewer} of "
        f"them and more often in {more}.",
    ]
    ranked = baseline_ranking(rows)
    if ranked:
        lines += ["", _ranking_sentence(*ranked)]
    return lines


def baseline_ranking(
    rows: list[dict[str, Any]],
) -> tuple[str, list[tuple[str, dict[str, Any]]]] | None:
    """The setting that can test the claim with the most other methods, and every
    method's stats there, fewest failed runs first (then the higher mean accuracy);
    None where no such setting has at least two other methods."""
    testable = [r for r in rows if r["testable"] and len(r["others"]) >= 2]
    if not testable:
        return None
    row = max(testable, key=lambda r: len(r["others"]))
    methods = [("FFT", row["base"]), ("DSGD", row["dsgd"]), *row["others"].items()]
    methods.sort(key=lambda m: (m[1]["failed"] / m[1]["n"], -m[1]["accuracy_mean"]))
    return row["setting"], methods


def fisher_exact(failed_a: int, n_a: int, failed_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value of failed_a/n_a against failed_b/n_b: the chance,
    with the margins fixed, of a table as probable as the observed one or less."""
    failed, n = failed_a + failed_b, n_a + n_b

    def prob(k):
        return math.comb(n_a, k) * math.comb(n_b, failed - k) / math.comb(n, failed)

    observed = prob(failed_a)
    ks = range(max(0, failed - n_b), min(n_a, failed) + 1)
    return min(1.0, sum(p for p in map(prob, ks) if p <= observed * (1 + 1e-9)))


def _ranking_sentence(setting: str, methods: list[tuple[str, dict[str, Any]]]) -> str:
    stats = dict(methods)
    fft, dsgd = stats["FFT"], stats["DSGD"]

    def rate(s):
        return s["failed"] / s["n"]

    fewer = [
        f"{name} (p = {fisher_exact(s['failed'], s['n'], fft['failed'], fft['n']):.2f})"
        for name, s in methods
        if rate(s) < rate(fft)
    ]
    compare = "fewer" if rate(dsgd) < rate(fft) else "more" if rate(dsgd) > rate(fft) else "as many"
    p = fisher_exact(dsgd["failed"], dsgd["n"], fft["failed"], fft["n"])
    return (
        f"At {setting}, where the baselines ran, failed runs per method (mean accuracy), "
        "fewest first: "
        + ", ".join(
            f"{name} {s['failed']}/{s['n']} ({100 * s['accuracy_mean']:.2f})" for name, s in methods
        )
        + f". DSGD fails on {compare} seeds than FFT there ({dsgd['failed']} of {dsgd['n']} "
        f"against {fft['failed']} of {fft['n']}; two-sided Fisher exact p = {p:.2f}"
        + (", a gap these seeds cannot tell from chance)" if p >= 0.05 else ")")
        + (
            f"; fewer failed runs than FFT: {', '.join(fewer)}."
            if fewer
            else "; no method fails less often than FFT."
        )
    )


def performance_part(root: Path) -> list[str]:
    """DSGD's step against AdamW's over every committed config, and JAX against PyTorch."""
    results = [
        json.loads(p.read_text())
        for p in sorted((root / "benchmarks/results/step_overhead").glob("*/results.json"))
    ]
    if not results:
        return ["No step-overhead run has been committed yet."]
    entries = [entry for r in results for entry in r["configs"].values()]
    ratios = [entry["variants"]["dsgd"]["ratio_median"] for entry in entries]
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['device']})" for r in results})
    on_gpu = any(r["machine"]["device"] != "cpu" for r in results)
    text = (
        f"Step cost ([every config, with its intervals, and the PyTorch peer]"
        f"({PERFORMANCE_PAGE})): over {len(ratios)} measured configs, DSGD's train step took "
        f"{min(ratios):.3f} to {max(ratios):.3f} times AdamW's (medians of per-round ratios, "
        f"on {', '.join(machines)})."
    )
    for path in sorted((root / "benchmarks/results/torch_peer").glob("*/results.json")):
        peer = json.loads(path.read_text())
        sixteen = peer["ratios"].get("jax_dsgd_dropout16/torch_dsgd")
        compiled = peer["ratios"].get("jax_dsgd/torch_dsgd_compiled")
        text += (
            f" The MiniLM-L6 DSGD step in JAX took {peer['ratios']['jax_dsgd/torch_dsgd']:.2f} "
            + ("" if sixteen is None else f"(with `--dropout_bits=16` {sixteen:.2f}) ")
            + "times PyTorch eager's"
            + ("" if compiled is None else f" and {compiled:.2f} times `torch.compile`'s")
            + f" ({peer['machine']['cpu']}, {peer['machine']['torch_device']})."
        )
    if not on_gpu:
        text += " No GPU figure is measured yet."
    return [text]


def section(root: Path = readme.ROOT) -> str:
    """The README's summary block."""
    start, end = readme.tags(MARKER)
    return "\n".join([start, *stability_part(root), "", *performance_part(root), end])


def update(root: Path = readme.ROOT) -> str:
    """Rewrites the README's summary block; returns it."""
    text = section(root)
    readme.fill_block(root / readme.PAGES[MARKER], MARKER, text, root)
    return text
