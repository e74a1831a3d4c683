"""The performance block of ``docs/results/performance.md``, from the committed
step-overhead, PyTorch-peer and vmapped-seed results, and the README's summary line
(``python benchmarks/performance_readme.py`` writes both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _lib import readme, summary, timing
from _lib.overhead import BASELINE, CONTROL, FULL, markdown_table

__all__ = ["readme_section", "results_files", "update_readme", "verdict"]

README_MARKER = "docs:performance-results"
TARGETS = {"cpu": 1.02, "gpu": 1.01}  # DSGD / AdamW median step-time ratio


def verdict(result: dict[str, Any]) -> str:
    """Plain sentences on the benchmark's targets for one committed results file.

    Targets: DSGD/AdamW median step-time ratio <= 1.02 on CPU (1.01 on GPU);
    PCGrad/DSGD >= 1.7; DSGD (no diagnostics) within noise of AdamW, read as
    the distribution-free interval of the median ratio
    (:func:`_lib.timing.median_interval`) holding 1.
    """
    platform = "gpu" if result["machine"]["device"].lower() not in ("cpu", "") else "cpu"
    target = TARGETS[platform]
    lines, pcgrad_missed = [], []
    for name, entry in result["configs"].items():
        v = entry["variants"]
        # Recomputed from the rounds, so files written before the interval existed read alike.
        ratios = timing.summarize(entry["times_s"], BASELINE)
        parts = [f"- {name}:"]
        if "dsgd" in v:
            d, r = v["dsgd"], ratios["dsgd"]
            met = "meets" if r["ratio_median"] <= target else "misses"
            parts.append(
                f"DSGD/AdamW {r['ratio_median']:.3f} ({met} the {platform.upper()} target "
                f"{target}; {_interval(r)})"
            )
            if v[BASELINE].get("flops"):
                parts.append(f"XLA flops DSGD/AdamW {d['flops'] / v[BASELINE]['flops']:.4f}")
            if d.get("hlo_diff_vs_adamw") is not None:
                parts.append(_hlo_sentence("DSGD's", d["hlo_diff_vs_adamw"]))
        if CONTROL in v:
            parts.append(
                f"the control, AdamW compiled twice, reads {ratios[CONTROL]['ratio_median']:.3f} "
                f"({_interval(ratios[CONTROL])})"
            )
            if v[CONTROL].get("hlo_diff_vs_adamw") is not None:
                parts.append(_hlo_sentence("the control's", v[CONTROL]["hlo_diff_vs_adamw"]))
        if "pcgrad" in v and "dsgd" in v:
            per_pair = timing.summarize(entry["times_s"], "dsgd")["pcgrad"]["ratio_median"]
            parts.append(
                f"PCGrad/DSGD {per_pair:.2f} ({'meets' if per_pair >= 1.7 else 'misses'} 1.7)"
            )
            if per_pair < 1.7:
                pcgrad_missed.append(f"{v['pcgrad']['flops'] / v['dsgd']['flops']:.2f}")
        lines.append(parts[0] + " " + "; ".join(parts[1:]) + ".")
    if pcgrad_missed:
        lines += [
            "",
            "PCGrad misses 1.7 because the examples' PCGrad shares one forward pass between "
            "its two backward passes (`jax.vjp`, then two cotangents): with a backward pass "
            "costing about two forward passes its cost over DSGD is bounded by (F + 2B) / "
            "(F + B) = 5/3 in flops, and XLA counts "
            + ", ".join(pcgrad_missed)
            + " for the compiled steps above; the optimizer update and the step's fixed "
            "costs, shared by both, bring the time ratio lower still. A PCGrad that runs "
            "the model twice (one loss and one gradient per group) would cost about 2x.",
        ]
    return "\n".join(lines)


def _hlo_sentence(whose: str, diff: dict[str, int]) -> str:
    if not diff:
        return f"{whose} optimized program has the same instructions as AdamW's"
    listed = ", ".join(f"{kind} {delta:+d}" for kind, delta in diff.items())
    return (
        f"{whose} optimized program differs from AdamW's in {len(diff)} instruction "
        f"kind{'s' if len(diff) > 1 else ''} "
        f"(opcode and shape, count against AdamW's: {listed})"
    )


def _interval(summary: dict[str, float]) -> str:
    low, high = summary["ratio_ci_low"], summary["ratio_ci_high"]
    held = "holds" if low <= 1.0 <= high else "excludes"
    return (
        f"the {summary['ratio_ci_coverage']:.0%} interval of that median, "
        f"[{low:.3f}, {high:.3f}], {held} 1"
    )


def results_files(root: Path) -> list[Path]:
    """The committed ``results.json`` files of this benchmark, sorted."""
    return sorted((root / "benchmarks" / "results" / "step_overhead").glob("*/results.json"))


def readme_section(root: Path) -> str:
    """The performance page's block from the committed step-overhead results."""
    parts = [f"<!-- {README_MARKER} -->"]
    files = results_files(root)
    if not files:
        parts.append("No step-overhead run has been committed yet.")
    results = {path: json.loads(path.read_text()) for path in files}
    for path, result in results.items():
        m = result["machine"]
        rel = path.parent.relative_to(root).as_posix()
        parts += [
            "",
            f"### {path.parent.name}: {m['device']} · {m['cpu']} ({m['cores']} cores) · "
            f"{result['steps']} rounds",
            "",
            f"`{result['command'].strip()}` (jax {m['jax']}, optax {m['optax']}, flax "
            f"{m['flax']}); models: "
            + "; ".join(f"{n} = {e['description']}" for n, e in result["configs"].items())
            + ".",
            "",
            markdown_table(result["configs"]).strip(),
            "",
            verdict(result),
            "",
            f"![step-time ratios]({rel}/ratios.png)",
        ]
    measured = {name for result in results.values() for name in result["configs"]}
    missing = [name for name in FULL if name not in measured]
    if files and missing:
        parts += [
            "",
            f"Not measured yet: {', '.join(missing)} (the full configs that no committed run "
            "covers; `python benchmarks/step_overhead.py --configs="
            + ",".join(missing)
            + "` adds them, best on a GPU).",
        ]
    for path in sorted((root / "benchmarks" / "results" / "torch_peer").glob("*/results.json")):
        parts += ["", _torch_peer_paragraph(json.loads(path.read_text()))]
    for path in sorted((root / "benchmarks" / "results" / "step_profile").glob("*/results.json")):
        rel = path.parent.relative_to(root).as_posix()
        parts += [
            "",
            step_profile_paragraph(json.loads(path.read_text()), f"{rel}/table.md"),
            "",
            f"![JAX and PyTorch step time by part, one thread](../../{rel}/profile.png)",
        ]
    for path in sorted((root / "benchmarks" / "results" / "xla_flags").glob("*/results.json")):
        parts += ["", xla_flags_paragraph(json.loads(path.read_text()))]
    for path in sorted((root / "benchmarks" / "results").glob("vmap_seeds*.json")):
        parts += ["", _seeds_paragraph(json.loads(path.read_text()))]
    parts.append(f"<!-- /{README_MARKER} -->")
    return "\n".join(parts)


def step_profile_paragraph(r: dict[str, Any], table: str) -> str:
    """One committed ``benchmarks/step_profile.py`` run: the totals, then the parts where
    JAX spends the most time over PyTorch, largest gap first."""
    m = r["machine"]
    jax_parts, torch_parts = r["jax"]["parts_ms"], r["torch"]["parts_ms"]
    gap = {k: jax_parts[k] - torch_parts.get(k, 0.0) for k in jax_parts}
    order = sorted((k for k in gap if abs(gap[k]) >= 1.0), key=lambda k: -abs(gap[k]))
    slower = [k for k in order if gap[k] > 0]
    faster = [k for k in order if gap[k] < 0]

    def part(k):
        return f"{k} {jax_parts[k]:.0f} against {torch_parts.get(k, 0.0):.0f} ms"

    total_jax, total_torch = r["jax"]["op_ms_per_step"], r["torch"]["op_ms_per_step"]
    return (
        f"Where the time goes: `{r['command'].strip()}`, {r['description']}, on {m['cpu']} "
        f"({m['cores']} cores, load average {m['load_average_1_5_15'][0]:.2f} at the start), "
        f"each framework on {r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
        f"{r['steps']} profiled steps each (tables of parts, lines and ops: `{table}`). "
        f"The ops of JAX's DSGD step add up to {total_jax:.0f} ms per step against "
        f"PyTorch's {total_torch:.0f} ms (JAX/PyTorch {total_jax / total_torch:.2f}). "
        "JAX spends more on "
        + "; ".join(part(k) for k in slower)
        + ", and less on "
        + "; ".join(part(k) for k in faster)
        + " (largest gap first; parts within 1 ms left out)."
    )


def xla_flags_paragraph(r: dict[str, Any]) -> str:
    """One committed ``benchmarks/xla_flags.py`` run: each option set's step against the
    default's, whether its 95% interval holds 1, and whether it computes the same bits."""
    m, v = r["machine"], r["variants"]

    def one(name):
        s, diff = v[name], r["option_sets"][name]["max_param_diff"]
        low, high = s["ratio_ci_low"], s["ratio_ci_high"]
        verdict = "faster" if high < 1 else "slower" if low > 1 else "within noise"
        same = "the same bits" if diff == 0 else f"parameters off by up to {diff:.1e}"
        return f"{name} {s['ratio_median']:.3f} [{low:.3f}, {high:.3f}], {verdict}, {same}"

    others = [name for name in v if name != r["baseline"]]
    faster = [n for n in others if v[n]["ratio_ci_high"] < 1]
    text = (
        f"XLA options: `{r['command'].strip()}`, {r['description']}, on {m['cpu']} "
        f"({m['cores']} cores), {r['steps']} rounds; the DSGD step compiled under each option "
        "set against the default compilation (median of per-round ratios, its 95% interval), "
        "and each set's largest parameter difference from the default after the same "
        "updates: " + "; ".join(one(n) for n in others) + "."
    )
    if r.get("failed"):
        text += " Not known to this XLA: " + ", ".join(r["failed"]) + "."
    safe = [n for n in faster if r["option_sets"][n]["max_param_diff"] == 0]
    if safe:
        text += " Faster with the same bits: " + ", ".join(safe) + "."
    else:
        text += " No option set is faster than the default while computing the same bits."
    return text


def _seeds_paragraph(t: dict[str, Any]) -> str:
    """One committed ``benchmarks/vmap_seeds.py`` run: in total, and per epoch after the
    first where the file has it."""
    c, m = t["config"], t["machine"]
    if "image_size" in c:
        model = f"{c['model']} ViT"
    elif c["model"] == "pretrained":  # --checkpoint, or the bundled MiniLM-L6
        model = f"pretrained {Path(c['checkpoint']).name or 'MiniLM-L6'}"
    else:
        model = f"{c['model']} BERT"
    text = (
        f"Seeds: `{t['command'].strip()}` trained {len(t['seeds'])} seeds of {t['task']} "
        f"({model}, {c['num_epochs']} epochs) in {t['vmapped_s']:.0f} s as one vmapped "
        f"program against {t['sequential_s']:.0f} s one run after another "
        f"({t['speedup']:.2f}x, compile, loading and evaluation included; {m['cpu']}, "
        f"{m['cores']} cores, {m['device']}), with the same predictions for "
        f"{t['same_predictions']} seeds."
    )
    if "steady_speedup" in t:
        text += (
            f" Training alone, per epoch after the first (the first holds the compilation): "
            f"{t['steady_epoch_s_vmapped']:.1f} s vmapped against "
            f"{t['steady_epoch_s_sequential']:.1f} s for the sequential runs together "
            f"({t['steady_speedup']:.2f}x)."
        )
    else:
        text += " Its file predates the per-epoch timing (rerun the command for it)."
    return text


def _torch_peer_paragraph(r: dict[str, Any]) -> str:
    m, v, ratios = r["machine"], r["variants"], r["ratios"]
    ratio = ratios["jax_dsgd/torch_dsgd"]
    return (
        f"PyTorch peer: `{r['command'].strip()}`, {r['description']}, on {m['cpu']} "
        f"({m['cores']} cores; JAX on {m['jax_backend']}, torch {m['torch']} on "
        f"{m['torch_device']} with {m['torch_threads']} threads), {r['steps']} rounds. "
        f"The two models give the same logits (largest difference "
        f"{r['max_abs_logit_diff']:.1e}). DSGD step: JAX {v['jax_dsgd']['median_s'] * 1e3:.1f} ms, "
        f"PyTorch {v['torch_dsgd']['median_s'] * 1e3:.1f} ms (median); JAX/PyTorch "
        f"{ratio:.2f}, so JAX's step is {'slower' if ratio > 1 else 'faster'} here. DSGD/AdamW "
        f"within JAX {ratios['jax_dsgd/jax_adamw']:.3f}, within PyTorch "
        f"{ratios['torch_dsgd/torch_adamw']:.3f} (medians of per-round ratios, from rounds "
        "that mix both frameworks; the step-overhead runs above measure DSGD's own cost)."
        + _dropout16_sentence(r)
        + _compiled_sentence(r)
    )


def _compiled_sentence(r: dict[str, Any]) -> str:
    """The ``torch.compile`` step's figures, or why it is missing."""
    if "torch_compile_error" in r:
        return f" `torch.compile` failed here ({r['torch_compile_error']}), so it is not timed."
    if "torch_dsgd_compiled" not in r["variants"]:
        return " Its file predates the `torch.compile` step (rerun the command for it)."
    ms = r["variants"]["torch_dsgd_compiled"]["median_s"] * 1e3
    ratios = r["ratios"]
    return (
        f" Under `torch.compile` (inductor; its first call, the compilation, took "
        f"{r['torch_compile_first_call_s']:.0f} s) the PyTorch DSGD step took {ms:.1f} ms, "
        f"{ratios['torch_dsgd_compiled/torch_dsgd']:.2f} times eager PyTorch's; JAX/compiled "
        f"PyTorch {ratios['jax_dsgd/torch_dsgd_compiled']:.2f}."
    )


def _dropout16_sentence(r: dict[str, Any]) -> str:
    """The ``--dropout_bits=16`` step's figures, where the peer run timed it."""
    ratios = r["ratios"]
    if "jax_dsgd_dropout16/torch_dsgd" not in ratios:
        return " Its file predates the `--dropout_bits=16` step (rerun the command for it)."
    ms = r["variants"]["jax_dsgd_dropout16"]["median_s"] * 1e3
    text = (
        f" With `--dropout_bits=16` (two dropout decisions per 32-bit random word) the JAX "
        f"DSGD step took {ms:.1f} ms: {ratios['jax_dsgd_dropout16/jax_dsgd']:.3f} times the "
        f"32-bit one, {ratios['jax_dsgd_dropout16/torch_dsgd']:.2f} times PyTorch's."
    )
    if "jax_dsgd_nodropout/torch_dsgd_nodropout" in ratios:
        v = r["variants"]
        jax_off, torch_off = (v[f"{k}_dsgd_nodropout"]["median_s"] * 1e3 for k in ("jax", "torch"))
        text += (
            f" With every dropout off, JAX {jax_off:.1f} ms and PyTorch {torch_off:.1f} ms, "
            f"JAX/PyTorch {ratios['jax_dsgd_nodropout/torch_dsgd_nodropout']:.2f}: dropout "
            f"costs JAX {v['jax_dsgd']['median_s'] * 1e3 - jax_off:.0f} ms of its step and "
            f"PyTorch {v['torch_dsgd']['median_s'] * 1e3 - torch_off:.0f} ms (median "
            "differences)."
        )
        off_ratio = ratios["jax_dsgd_nodropout/torch_dsgd_nodropout"]
        if off_ratio > ratios["jax_dsgd/torch_dsgd"]:
            text += (
                " So the gap lies outside dropout: dropout is a smaller share of JAX's step "
                "than of PyTorch's."
            )
    return text


def update_readme(root: Path) -> str:
    """Rewrites the performance page's block and the README's summary from the committed
    results; returns the block."""
    section = readme_section(root)
    readme.fill_block(root / readme.PAGES[README_MARKER], README_MARKER, section)
    summary.update(root)
    return section
