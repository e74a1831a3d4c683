"""The examples' DSGD step compiled under XLA CPU options, timed side by side in one process.

    python benchmarks/xla_flags.py                      # MiniLM-L6 BERT, batch 32 x 128, 10 rounds
    python benchmarks/xla_flags.py --quick              # tiny BERT, batch 8 x 32, 3 rounds
    python benchmarks/xla_flags.py --options=default,onednn

Compiles ``overhead.prepare(spec, "dsgd")`` once per option set (XLA options for
that one compilation, ``jax.stages.Lowered.compile(compiler_options)``), then times
the steps in interleaved rounds (``benchmarks/_lib/timing.py``) and reports each
set's median step and its ratio to ``default``, XLA's own defaults (median of
per-round ratios); the examples compile with
``dsgd_jax.examples.runs.CPU_COMPILER_OPTIONS`` on CPU, one of the sets here. Every
step starts from the same state and batch and runs the same number of updates, so
the largest difference of any parameter from the default's after the run tells
whether an option set computes the same thing (0: the same bits). An option set
this XLA does not know is reported and left out.

Writes ``results.json`` and ``table.md`` to ``--out`` (default
``benchmarks/results/xla_flags/<quick|full>-cpu``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from _lib import overhead, timing
from _lib.script import usage_error
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "xla_flags"
PROG = "python benchmarks/xla_flags.py"
BASELINE = "default"
# Option sets: name -> XLA options. "fast_math" may change results; the rest should not.
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "xnnpack": {"xla_cpu_use_xnnpack": True},
    "onednn": {"xla_cpu_use_onednn": True},
    "vector_width_512": {"xla_cpu_prefer_vector_width": 512},
    "concurrency_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "platform_math": {"xla_cpu_enable_platform_dependent_math": True},
    "fast_math": {"xla_cpu_enable_fast_math": True},
}


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/xla_flags.py``."""

    config: Literal[overhead.BERT_CONFIGS] | None = config_field(
        None, "model config of benchmarks/_lib/overhead.py (default minilm-l6, bert-tiny quick)"
    )
    quick: bool = config_field(False, "smoke run: bert-tiny, 3 rounds, 1 warm-up call")
    options: str = config_field(
        ",".join(OPTION_SETS), f"comma-separated option sets, default first: {list(OPTION_SETS)}"
    )
    steps: int | None = config_field(None, "timed interleaved rounds (default 10, 3 quick)")
    warmup: int | None = config_field(None, "untimed calls of each step (default 2, 1 quick)")
    seed: int = config_field(0, "seed of the model weights and the batch")
    out: Path | None = config_field(None, f"output folder (default {RESULTS}/<quick|full>-cpu)")
    progress: bool = config_field(True, "a bar over the rounds")


def parse_args(argv: list[str]) -> tuple[Flags, list[str]]:
    """The flags and the option sets ``argv`` ask for; a bad flag exits with status 2."""
    args = parse(Flags, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    args.config = args.config or ("bert-tiny" if args.quick else "minilm-l6")
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    names = [n.strip() for n in args.options.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTION_SETS]
    if unknown:
        usage_error(PROG, f"--options: {unknown} unknown; choose from {list(OPTION_SETS)}")
    if not names or names[0] != BASELINE or len(set(names)) != len(names):
        usage_error(PROG, f"--options={args.options}: name each set once, {BASELINE!r} first")
    if args.steps < 1 or args.warmup < 0:
        usage_error(
            PROG, f"--steps={args.steps} --warmup={args.warmup}: need steps >= 1, warmup >= 0"
        )
    if args.out is None:
        args.out = RESULTS / f"{'quick' if args.quick else 'full'}-cpu"
    return args, names


def max_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two pytrees' float leaves."""
    diffs = [
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        if np.issubdtype(np.asarray(x).dtype, np.floating) and np.size(x)
    ]
    return max(diffs, default=0.0)


def markdown_table(summary: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [
        "| option set | XLA options | median step (ms) | ratio to default (median [IQR]) "
        "| largest parameter difference |",
        "|---|---|---:|---|---:|",
    ]
    for name, s in summary.items():
        options = ", ".join(f"`{k}={v}`" for k, v in OPTION_SETS[name].items()) or "—"
        lines.append(
            f"| {name} | {options} | {timing.format_ms(s['median_s'])} | "
            f"{s['ratio_median']:.3f} [{s['ratio_q25']:.3f}, {s['ratio_q75']:.3f}] | "
            f"{results[name]['max_param_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, names = parse_args(argv)
    spec = overhead.CONFIGS[args.config]
    print(f"{args.config}: {spec.describe()}; option sets {', '.join(names)}")
    prepared, failed = {}, {}
    for name in names:
        try:
            prepared[name] = overhead.prepare(
                spec, "dsgd", seed=args.seed, compiler_options=OPTION_SETS[name]
            )
        except Exception as error:  # an option this XLA does not know: record it, go on
            if name == BASELINE:
                raise
            failed[name] = (str(error).strip().splitlines() or [""])[0][:300]
            print(f"  {name}: left out ({failed[name]})")
            continue
        print(f"  {name}: compiled in {prepared[name].compile_s:.1f} s")
    steps = {name: p.step for name, p in prepared.items()}
    with timing.rounds_bar(args.steps, "timed rounds", args.progress) as bar:
        times = timing.interleaved(
            steps, steps=args.steps, warmup=args.warmup, on_round=lambda _: bar.update()
        )
    summary = timing.summarize(times, baseline=BASELINE)
    reference = prepared[BASELINE].state()
    per_set = {
        name: {
            "options": OPTION_SETS[name],
            "compile_s": p.compile_s,
            "flops": p.flops,
            "max_param_diff": max_difference(p.state(), reference),
        }
        for name, p in prepared.items()
    }
    result = {
        "command": f"{PROG} {' '.join(argv)}".strip(),
        "machine": {
            **machine_info(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
        "config": args.config,
        "description": spec.describe(),
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
        "baseline": BASELINE,
        "option_sets": per_set,
        "failed": failed,
        "variants": summary,
        "times_s": times,
    }
    table = markdown_table(summary, per_set)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    (args.out / "table.md").write_text(
        f"{spec.describe()}; {m['cpu']} ({m['cores']} cores), jax {m['jax']}, "
        f"{args.steps} rounds\n\n{table}"
    )
    print(table)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'table.md'}")
    return 0 if all(math.isfinite(s["ratio_median"]) for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
