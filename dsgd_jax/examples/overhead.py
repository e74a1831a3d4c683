"""DSGD's per-step cost against plain AdamW, gradient diagnostics and PCGrad.

:func:`prepare` builds one compiled train step of the BERT or ViT example's
model (random weights, a random batch) for one variant:

- ``adamw``: the step a user writes without DSGD: mean cross-entropy over the
  valid examples, ``jax.grad``, the examples' optimizer (global-norm clipping,
  then ``optax.adamw`` with warm-up and decay). The baseline.
- ``dsgd``: the examples' DSGD step (``make_steps(method="dsgd")``): the same
  optimizer, the loss through :func:`dsgd_jax.make_dsgd_loss` with lambda(t)
  from the optimizer's step count.
- ``dsgd+diagnostics``: that step plus :func:`dsgd_jax.gradient_conflict` on
  the same batch, in one program (what ``--conflict_every=1`` costs).
- ``pcgrad``: the examples' PCGrad step (one forward, two backward passes).
- ``adamw-copy`` (not run unless asked for): a second ``adamw`` step, compiled
  and allocated on its own. Its ratio to ``adamw`` is what the benchmark reads
  for two identical programs, the control for a small DSGD/AdamW gap.

:func:`run_benchmark` times the variants of each model config with
:func:`dsgd_jax.examples.timing.interleaved` and writes ``results.json``,
``table.md`` and ``ratios.png``. ``benchmarks/step_overhead.py`` is its CLI.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dsgd_jax.examples import timing
from dsgd_jax.examples.bert import model as bert_model
from dsgd_jax.examples.train import TrainConfig, make_optimizer, make_steps
from dsgd_jax.examples.vit import model as vit_model

__all__ = [
    "CONFIGS",
    "CONTROL",
    "FULL",
    "KNOWN_VARIANTS",
    "QUICK",
    "VARIANTS",
    "ModelSpec",
    "Prepared",
    "check_variants",
    "markdown_table",
    "plot_ratios",
    "prepare",
    "readme_section",
    "run_benchmark",
    "update_readme",
    "verdict",
    "write_outputs",
]

VARIANTS = ("adamw", "dsgd", "dsgd+diagnostics", "pcgrad")
BASELINE = "adamw"
CONTROL = "adamw-copy"  # the same program as BASELINE, compiled again: an A/A control
KNOWN_VARIANTS = (*VARIANTS, CONTROL)
HLO_DIFF_LIMIT = 40  # instruction kinds listed against AdamW's program; longer lists only counted


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model config: the example (``bert``/``vit``), its preset and the batch."""

    example: str
    preset: str
    batch_size: int
    seq_len: int = 0  # BERT only; ViT's image size comes from the preset
    num_classes: int = 3

    def describe(self) -> str:
        if self.example == "bert":
            return f"BERT {self.preset}, batch {self.batch_size} x {self.seq_len} tokens"
        size = vit_model.ViTConfig.preset(self.preset).image_size
        return f"ViT {self.preset}, batch {self.batch_size} x {size}x{size}"


CONFIGS = {
    "bert-tiny": ModelSpec("bert", "tiny", 8, seq_len=32),
    "minilm-l6": ModelSpec("bert", "minilm-l6", 32, seq_len=128),
    "bert-base": ModelSpec("bert", "base", 32, seq_len=128),
    "vit-tiny": ModelSpec("vit", "tiny", 32, num_classes=10),
    "vit-b16": ModelSpec("vit", "b16", 32, num_classes=10),
}
QUICK = ("bert-tiny", "vit-tiny")
FULL = ("minilm-l6", "bert-base", "vit-tiny", "vit-b16")


def model_and_batch(spec: ModelSpec, seed: int):
    rngs = nnx.Rngs(seed)
    rng = np.random.default_rng(seed)
    b = spec.batch_size
    if spec.example == "bert":
        config = bert_model.BertConfig.preset(spec.preset)
        if spec.seq_len > config.max_position_embeddings:
            raise ValueError(
                f"seq_len={spec.seq_len} exceeds {spec.preset}'s "
                f"{config.max_position_embeddings} positions."
            )
        model = bert_model.BertClassifier(config, spec.num_classes, rngs=rngs)
        ids = rng.integers(0, config.vocab_size, (b, spec.seq_len), dtype=np.int32)
        mask = np.ones((b, spec.seq_len), np.int32)
        mask[: b // 2, spec.seq_len // 2 :] = 0  # half the batch padded to half length
        inputs = {
            "input_ids": jnp.asarray(ids),
            "token_type_ids": jnp.zeros_like(ids),
            "attention_mask": jnp.asarray(mask),
        }
    elif spec.example == "vit":
        config = vit_model.ViTConfig.preset(spec.preset)
        model = vit_model.ViT(config, spec.num_classes, rngs=rngs)
        shape = (b, config.image_size, config.image_size, config.num_channels)
        inputs = {"image": jnp.asarray(rng.standard_normal(shape, dtype=np.float32))}
    else:
        raise ValueError(f"example={spec.example!r}: use 'bert' or 'vit'.")
    labels = jnp.asarray(rng.integers(0, spec.num_classes, (b,), dtype=np.int32))
    return model, (inputs, labels, jnp.ones((b,), bool), jax.random.key(seed))


def _plain_adamw_step(model, optimizer, inputs, labels, valid, key):
    def loss_fn(model):
        logits = model(inputs, rngs=nnx.Rngs(dropout=key))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss}


def _variant_step(variant: str, total_updates: int) -> Callable[..., Any]:
    if variant in (BASELINE, CONTROL):
        return _plain_adamw_step
    if variant == "pcgrad":
        return make_steps(TrainConfig(method="pcgrad"), total_updates).train
    steps = make_steps(TrainConfig(method="dsgd"), total_updates)
    if variant == "dsgd":
        return steps.train
    if variant == "dsgd+diagnostics":

        def with_diagnostics(model, optimizer, *batch):
            conflict = steps.conflict(model, optimizer, *batch)
            return {**steps.train(model, optimizer, *batch), **conflict}

        return with_diagnostics
    raise ValueError(f"variant={variant!r} is not one of {KNOWN_VARIANTS}.")


@dataclasses.dataclass
class Prepared:
    """A compiled step of one (config, variant); ``step()`` runs one update and blocks."""

    step: Callable[[], None]
    compile_s: float
    memory: dict[str, int]
    flops: float
    hlo_ops: collections.Counter  # the optimized entry computation, see hlo_entry_ops


_ARRAY_SHAPE = re.compile(r"\b[a-z]+[0-9]*\[")  # f32[, s32[, pred[, u32[ ...
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][\w\-]*)\(")


def hlo_entry_ops(hlo_text: str) -> collections.Counter:
    """Instructions of an HLO module's ENTRY computation, counted by ``"opcode shape"``.

    ``hlo_text`` is ``compiled.as_text()``: after XLA's passes, each fusion is one
    instruction. Layouts are dropped (``f32[32]{0}`` counts as ``f32[32]``) and a
    tuple shape is written ``tuple/N`` for N elements.
    """
    start = hlo_text.find("\nENTRY ")
    if start < 0:
        raise ValueError("hlo_text has no ENTRY computation; pass compiled.as_text().")
    body = hlo_text[start + 1 :].split("\n}", 1)[0].splitlines()[1:]
    counts: collections.Counter = collections.Counter()
    for line in body:
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        shape = re.sub(r"\{[^{}]*\}", "", match.group(1))
        if shape.startswith("("):
            shape = f"tuple/{len(_ARRAY_SHAPE.findall(shape))}"
        counts[f"{match.group(2)} {shape}"] += 1
    return counts


def hlo_difference(base: collections.Counter, other: collections.Counter) -> dict[str, int]:
    """``other``'s count minus ``base``'s for each instruction kind whose counts differ."""
    return {k: other[k] - base[k] for k in sorted(set(base) | set(other)) if other[k] != base[k]}


def prepare(spec: ModelSpec, variant: str, *, seed: int = 0, total_updates: int = 1000):
    """Builds, compiles and returns one variant's train step of ``spec``'s model.

    The step is ``jax.jit`` over the split NNX model and optimizer state with the
    state donated, as a training loop runs it; ``memory`` is XLA's own account of
    the compiled program (argument, output and temporary bytes).
    """
    fn = _variant_step(variant, total_updates)
    model, batch = model_and_batch(spec, seed)
    optimizer = nnx.Optimizer(model, make_optimizer(TrainConfig(), total_updates), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def pure(state, inputs, labels, valid, key):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = fn(model, optimizer, inputs, labels, valid, key)
        return nnx.state((model, optimizer)), metrics

    start = time.perf_counter()
    with jax.numpy_dtype_promotion("standard"):  # optax is not written for strict promotion
        compiled = jax.jit(pure, donate_argnums=0).lower(state, *batch).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    memory = {
        name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0)
        for name in ("argument", "output", "temp", "alias")
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    hlo_ops = hlo_entry_ops(compiled.as_text())
    holder = [state]

    def step() -> None:
        holder[0], metrics = compiled(holder[0], *batch)
        jax.block_until_ready((holder[0], metrics))

    return Prepared(step, compile_s, memory, flops, hlo_ops)


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def check_variants(variants: Sequence[str]) -> None:
    """ValueError unless ``variants`` names known variants, each once, ``adamw`` among them."""
    bad = [v for v in variants if v not in KNOWN_VARIANTS]
    if bad or BASELINE not in variants or len(set(variants)) != len(variants):
        raise ValueError(
            f"variants={list(variants)}: name each of {KNOWN_VARIANTS} at most once "
            f"and include {BASELINE!r}."
        )


def run_benchmark(
    configs: Sequence[str],
    *,
    steps: int = 20,
    warmup: int = 2,
    variants: Sequence[str] = VARIANTS,
    progress: Callable[[str], None] = print,
    show_bar: bool = True,
) -> dict[str, Any]:
    """Times every variant of each config side by side; returns the results dict."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1 (use 20 or more for real figures).")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}.")
    check_variants(variants)
    results = {}
    for name in configs:
        spec = CONFIGS[name]
        progress(f"{name}: compiling {len(variants)} variants ({spec.describe()})")
        prepared = {v: prepare(spec, v) for v in variants}
        progress(f"{name}: timing {steps} interleaved rounds")
        with timing.rounds_bar(steps, f"{name}: timed rounds", show_bar) as bar:
            times = timing.interleaved(
                {v: p.step for v, p in prepared.items()},
                steps=steps,
                warmup=warmup,
                on_round=lambda _: bar.update(),
            )
        summary = timing.summarize(times, BASELINE)
        base_ops = prepared[BASELINE].hlo_ops
        for v, p in prepared.items():
            diff = hlo_difference(base_ops, p.hlo_ops)
            summary[v].update(
                compile_s=p.compile_s,
                memory=p.memory,
                flops=p.flops,
                hlo_instructions=sum(p.hlo_ops.values()),
                hlo_kinds_differing=len(diff),
                # In full only when short: DSGD's and the control's, not PCGrad's.
                hlo_diff_vs_adamw=diff if len(diff) <= HLO_DIFF_LIMIT else None,
            )
        results[name] = {
            "spec": dataclasses.asdict(spec),
            "description": spec.describe(),
            "variants": summary,
            "times_s": times,
            "peak_rss_bytes": timing.peak_rss_bytes(),
            "device_peak_bytes": _device_peak(),
        }
        del prepared
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (config, variant): median step, IQR, ratios to AdamW, compile, memory."""
    lines = [
        "| config | variant | median step (ms) | IQR (ms) | ratio to AdamW (median [IQR]) "
        "| XLA flops ratio | compile (s) | XLA temp (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        base_flops = entry["variants"][BASELINE]["flops"]
        for variant, s in entry["variants"].items():
            flops = f"{s['flops'] / base_flops:.4f}" if base_flops else "n/a"
            ratio = f"{s['ratio_median']:.3f} [{s['ratio_q25']:.3f}, {s['ratio_q75']:.3f}]"
            median, iqr = timing.format_ms(s["median_s"]), timing.format_ms(s["iqr_s"])
            lines.append(
                f"| {name} | {variant} | {median} | {iqr} "
                f"| {ratio} | {flops} | {s['compile_s']:.1f} | {s['memory']['temp'] / 2**20:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot_ratios(results: dict[str, Any], path: Path, title: str) -> Path:
    """Bar chart of each variant's median step-time ratio to AdamW, IQR as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    variants = [v for v in KNOWN_VARIANTS if any(v in results[n]["variants"] for n in names)]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for i, variant in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for j, name in enumerate(names):
            s = results[name]["variants"].get(variant)
            if s is None:
                continue
            xs.append(j + (i - (len(variants) - 1) / 2) * width)
            ys.append(s["ratio_median"])
            lo.append(s["ratio_median"] - s["ratio_q25"])
            hi.append(s["ratio_q75"] - s["ratio_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("step time / AdamW step time")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """``results.json``, ``table.md`` and ``ratios.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result["configs"])
    (out / "table.md").write_text(table)
    machine = result["machine"]
    title = f"{machine['device']} ({machine['cpu']}, {machine['cores']} cores)"
    plot_ratios(result["configs"], out / "ratios.png", title)
    return [out / "results.json", out / "table.md", out / "ratios.png"]


README_MARKER = "readme:performance-results"
TARGETS = {"cpu": 1.02, "gpu": 1.01}  # DSGD / AdamW median step-time ratio


def verdict(result: dict[str, Any]) -> str:
    """Plain sentences on the benchmark's targets for one committed results file.

    Targets: DSGD/AdamW median step-time ratio <= 1.02 on CPU (1.01 on GPU);
    PCGrad/DSGD >= 1.7; DSGD (no diagnostics) within noise of AdamW, read as
    the distribution-free interval of the median ratio
    (:func:`dsgd_jax.examples.timing.median_interval`) holding 1.
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
    """The README's performance block from the committed step-overhead results."""
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
            f"#### {path.parent.name}: {m['device']} · {m['cpu']} ({m['cores']} cores) · "
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
    seeds = root / "benchmarks" / "results" / "vmap_seeds.json"
    if seeds.exists():
        t = json.loads(seeds.read_text())
        parts += [
            "",
            f"Seeds: `{t['command'].strip()}` trained {len(t['seeds'])} seeds of the small ViT "
            f"({t['config']['num_epochs']} epochs, compile included) in {t['vmapped_s']:.0f} s as "
            f"one vmapped program against {t['sequential_s']:.0f} s one run after another "
            f"({t['speedup']:.2f}x, {t['machine']['cpu']}, {t['machine']['cores']} cores).",
        ]
    parts.append(f"<!-- /{README_MARKER} -->")
    return "\n".join(parts)


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
    )


def update_readme(root: Path) -> str:
    """Rewrites the README's performance block from the committed results; returns it."""
    from dsgd_jax.examples import readme_blocks

    section = readme_section(root)
    readme_blocks.fill_block(root / "README.md", README_MARKER, section)
    return section
