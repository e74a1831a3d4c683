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
:func:`_lib.timing.interleaved` and writes ``results.json``,
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

from _lib import timing
from dsgd_jax.examples import markdown, runs
from dsgd_jax.examples.bert import model as bert_model
from dsgd_jax.examples.nn import set_dropout_bits
from dsgd_jax.examples.steps import make_optimizer, make_steps
from dsgd_jax.examples.train import TrainConfig
from dsgd_jax.examples.vit import model as vit_model

__all__ = [
    "CONFIGS",
    "CONTROL",
    "DTYPES",
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
    "run_benchmark",
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
    dtype: str = "float32"  # the compute dtype (parameters and optimizer stay float32)

    def describe(self) -> str:
        compute = "" if self.dtype == "float32" else f", {self.dtype} compute"
        if self.example == "bert":
            return f"BERT {self.preset}, batch {self.batch_size} x {self.seq_len} tokens{compute}"
        size = vit_model.ViTConfig.preset(self.preset).image_size
        return f"ViT {self.preset}, batch {self.batch_size} x {size}x{size}{compute}"


CONFIGS = {
    "bert-tiny": ModelSpec("bert", "tiny", 8, seq_len=32),
    "minilm-l6": ModelSpec("bert", "minilm-l6", 32, seq_len=128),
    "bert-base": ModelSpec("bert", "base", 32, seq_len=128),
    "vit-tiny": ModelSpec("vit", "tiny", 32, num_classes=10),
    "vit-b16": ModelSpec("vit", "b16", 32, num_classes=10),
}
BERT_CONFIGS = tuple(name for name, spec in CONFIGS.items() if spec.example == "bert")
QUICK = ("bert-tiny", "vit-tiny")
DTYPES = ("float32", "bfloat16")
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
        model = bert_model.BertClassifier(
            config, spec.num_classes, rngs=rngs, dtype=jnp.dtype(spec.dtype)
        )
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
        model = vit_model.ViT(config, spec.num_classes, rngs=rngs, dtype=jnp.dtype(spec.dtype))
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
    hlo_text: str = ""  # the optimized module, as compiled.as_text() prints it
    state: Callable[[], Any] = lambda: None  # the model and optimizer state after the steps run


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


def prepare(
    spec: ModelSpec,
    variant: str,
    *,
    seed: int = 0,
    total_updates: int = 1000,
    dropout_bits: int = 32,
    dropout: bool = True,
    compiler_options: dict[str, Any] | None = None,
):
    """Builds, compiles and returns one variant's train step of ``spec``'s model.

    The step is ``jax.jit`` over the split NNX model and optimizer state with the
    state donated, as a training loop runs it; ``memory`` is XLA's own account of
    the compiled program (argument, output and temporary bytes). ``dropout_bits`` is
    the examples' ``--dropout_bits`` (:class:`dsgd_jax.examples.nn.Dropout`);
    ``dropout=False`` sets every dropout rate to 0 (what the step costs without it);
    ``compiler_options`` are XLA options for this one compilation (e.g.
    ``{"xla_cpu_use_xnnpack": True}``), as ``jax.stages.Lowered.compile`` takes them;
    None compiles with the examples' own (:func:`dsgd_jax.examples.runs.compiler_options`),
    ``{}`` with XLA's defaults.
    """
    fn = _variant_step(variant, total_updates)
    model, batch = model_and_batch(spec, seed)
    set_dropout_bits(model, dropout_bits)
    if not dropout:
        for _, node in nnx.iter_graph(model):
            if isinstance(node, nnx.Dropout):
                node.rate = 0.0
    optimizer = nnx.Optimizer(model, make_optimizer(TrainConfig(), total_updates), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def pure(state, inputs, labels, valid, key):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = fn(model, optimizer, inputs, labels, valid, key)
        return nnx.state((model, optimizer)), metrics

    start = time.perf_counter()
    with jax.numpy_dtype_promotion("standard"):  # optax is not written for strict promotion
        compiled = jax.jit(pure, donate_argnums=0).lower(state, *batch)
        if compiler_options is None:
            compiler_options = runs.compiler_options()
        compiled = compiled.compile(compiler_options or None)
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    memory = {
        name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0)
        for name in ("argument", "output", "temp", "alias")
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    hlo_text = compiled.as_text()
    hlo_ops = hlo_entry_ops(hlo_text)
    holder = [state]

    def step() -> None:
        holder[0], metrics = compiled(holder[0], *batch)
        jax.block_until_ready((holder[0], metrics))

    return Prepared(step, compile_s, memory, flops, hlo_ops, hlo_text, lambda: holder[0])


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
    dtype: str = "float32",
) -> dict[str, Any]:
    """Times every variant of each config side by side, computing in ``dtype``; returns
    the results dict."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {DTYPES}.")
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1 (use 20 or more for real figures).")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}.")
    check_variants(variants)
    results = {}
    for name in configs:
        spec = dataclasses.replace(CONFIGS[name], dtype=dtype)
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
    columns = (
        "config", "variant", "median step (ms)", "IQR (ms)", "ratio to AdamW (median [IQR])",
        "XLA flops ratio", "compile (s)", "XLA temp (MiB)",
    )  # fmt: skip
    rows = []
    for name, entry in results.items():
        base_flops = entry["variants"][BASELINE]["flops"]
        for variant, s in entry["variants"].items():
            flops = f"{s['flops'] / base_flops:.4f}" if base_flops else "n/a"
            ratio = f"{s['ratio_median']:.3f} [{s['ratio_q25']:.3f}, {s['ratio_q75']:.3f}]"
            median, iqr = timing.format_ms(s["median_s"]), timing.format_ms(s["iqr_s"])
            memory = f"{s['memory']['temp'] / 2**20:.1f}"
            rows.append([name, variant, median, iqr, ratio, flops, f"{s['compile_s']:.1f}", memory])
    return markdown.table(columns, rows)


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
