"""DSGD's train-step time against plain AdamW, diagnostics and PCGrad, side by side.

    python benchmarks/step_overhead.py --quick     # tiny BERT and ViT, about a minute on CPU
    python benchmarks/step_overhead.py             # MiniLM-L6, BERT-base, tiny ViT, ViT-B/16
    python benchmarks/step_overhead.py --configs=minilm-l6,vit-tiny --steps=50
    python benchmarks/step_overhead.py --configs=bert-base --variants=adamw,adamw-copy,dsgd

Each config's four variants (``adamw``, ``dsgd``, ``dsgd+diagnostics``,
``pcgrad``; see ``benchmarks/_lib/overhead.py``) are compiled and warmed up
first, then timed in interleaved rounds (A B C D, B C D A, ...) in this one
process; ``--variants`` picks some of them, and ``adamw-copy`` adds the AdamW
step compiled a second time, a control that shows what the benchmark reads for
two identical programs. Writes ``results.json``, ``table.md`` and ``ratios.png`` to
``benchmarks/results/step_overhead/<quick|full>-<cpu|gpu>/`` (or ``--out``) and
prints the table, the machine and the versions.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path
from typing import Literal

import jax

from _lib import overhead
from _lib.script import usage_error
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability_results import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "step_overhead"
PROG = "python benchmarks/step_overhead.py"


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/step_overhead.py``."""

    quick: bool = config_field(False, "tiny configs, 5 rounds")
    configs: str = config_field("", f"comma-separated, from {', '.join(overhead.CONFIGS)}")
    variants: str = config_field(
        ",".join(overhead.VARIANTS),
        f"comma-separated, from {', '.join(overhead.KNOWN_VARIANTS)}; must include adamw",
    )
    steps: int = config_field(0, "timed rounds (default 20; quick 5)")
    warmup: int = config_field(2, "untimed calls per variant first")
    dtype: Literal[overhead.DTYPES] = config_field("float32", "the models' compute dtype")
    out: Path | None = config_field(None, "output folder")
    progress: bool = config_field(True, "show a progress bar over the rounds")


def parse_args(argv):
    """The flags ``argv`` ask for; ``configs`` and ``variants`` as lists, ``steps`` and
    ``out`` resolved. A bad flag prints one line ``prog: error: ...`` and exits with 2."""
    args = parse(Flags, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    configs = args.configs.split(",") if args.configs else None
    args.configs = configs or list(overhead.QUICK if args.quick else overhead.FULL)
    unknown = [c for c in args.configs if c not in overhead.CONFIGS]
    if unknown:
        usage_error(
            PROG, f"--configs: unknown {unknown}; choose from {', '.join(overhead.CONFIGS)}"
        )
    args.variants = args.variants.split(",")
    try:
        overhead.check_variants(args.variants)
    except ValueError as e:
        usage_error(PROG, f"--variants: {e}")
    args.steps = args.steps or (5 if args.quick else 20)
    if args.steps < 1:
        usage_error(
            PROG, f"--steps={args.steps}: give at least 1 timed round (20 for real figures)"
        )
    if args.warmup < 0:
        usage_error(PROG, f"--warmup={args.warmup}: give 0 or more")
    platform = jax.devices()[0].platform
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    args.out = args.out or RESULTS / f"{'quick' if args.quick else 'full'}-{platform}{suffix}"
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    machine = machine_info()
    print(f"machine: {machine}")
    configs = overhead.run_benchmark(
        args.configs,
        steps=args.steps,
        warmup=args.warmup,
        variants=args.variants,
        show_bar=args.progress,
        dtype=args.dtype,
    )
    result = {
        "command": "python benchmarks/step_overhead.py " + " ".join(argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "steps": args.steps,
        "warmup": args.warmup,
        "configs": configs,
    }
    files = overhead.write_outputs(result, args.out)
    print(overhead.markdown_table(configs))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
