"""Where the DSGD train step's time goes, in JAX and in PyTorch, op by op.

    python benchmarks/step_profile.py              # MiniLM-L6 BERT, batch 32 x 128, 3 steps
    python benchmarks/step_profile.py --quick      # tiny BERT, batch 8 x 32, 1 step
    python benchmarks/step_profile.py --no-torch   # the JAX side only (no bench extra)

Builds the same two steps as ``benchmarks/torch_peer.py`` (the examples' JAX DSGD step,
``overhead.prepare(spec, "dsgd")``, and the PyTorch peer's eager step on a copy of the
same weights), runs each ``--warmup`` times, then profiles ``--steps`` steps of each:
JAX with ``jax.profiler`` (the CPU runtime's per-instruction events, attributed to the
Python line that created each instruction), PyTorch with ``torch.profiler`` (each op's
self time and its callers). Both run on one thread (XLA's intra-op pool off,
``torch.set_num_threads(1)``), so an op's time is its own and the parts add up to the
step; ``benchmarks/torch_peer.py`` times the steps on every core.

Reports milliseconds per step in each part both models have (dense layers, attention
matmuls, softmax, GELU, layer norm, dropout, optimizer, ...) with the JAX/PyTorch
ratio, JAX's costliest source lines and PyTorch's costliest ops; writes
``results.json``, ``table.md`` and ``profile.png`` to ``--out`` (default
``benchmarks/results/step_profile/<quick|full>-cpu``).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before jax starts: per-instruction trace events, one thread
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            "--xla_cpu_enable_xprof_traceme=true",
            "--xla_cpu_multi_thread_eigen=false",
            "intra_op_parallelism_threads=1",
        ]
    ).strip()

import collections
import dataclasses
import glob
import gzip
import json
import linecache
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import jax

from _lib import op_profile, overhead
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "step_profile"
PROG = "python benchmarks/step_profile.py"
TOP = 15  # rows of the per-line and per-op tables


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/step_profile.py``."""

    config: Literal[overhead.BERT_CONFIGS] | None = config_field(
        None,
        "model config of benchmarks/_lib/overhead.py's CONFIGS (BERT ones); "
        "default minilm-l6, bert-tiny with --quick",
    )
    quick: bool = config_field(False, "smoke run: bert-tiny, 1 profiled step, 1 warm-up call")
    steps: int | None = config_field(None, "profiled steps of each framework (default 3, 1 quick)")
    warmup: int | None = config_field(
        None, "unprofiled calls of each step first (default 2, 1 quick)"
    )
    torch: bool = config_field(True, "profile the PyTorch peer too (needs the bench extra)")
    seed: int = config_field(0, "seed of the model weights and the batch")
    out: Path | None = config_field(None, f"output folder (default {RESULTS}/<quick|full>-cpu)")


def parse_args(argv: list[str]) -> Flags:
    """The flags ``argv`` ask for, defaults filled in; a bad one exits with status 2."""
    args = parse(Flags, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    if args.config is None:
        args.config = "bert-tiny" if args.quick else "minilm-l6"
    if args.steps is None:
        args.steps = 1 if args.quick else 3
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    for name, least in (("steps", 1), ("warmup", 0)):
        if getattr(args, name) < least:
            print(
                f"{PROG}: error: --{name}={getattr(args, name)}: must be at least {least}",
                file=sys.stderr,
            )
            raise SystemExit(2)
    if args.out is None:
        args.out = RESULTS / f"{'quick' if args.quick else 'full'}-cpu"
    return args


def _read_trace(trace_dir: str) -> list[dict]:
    (path,) = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        return json.load(f)["traceEvents"]


class JaxSide:
    """The examples' JAX DSGD step (``overhead.prepare(spec, "dsgd")``), profiled a step
    at a time; :meth:`summary` gives milliseconds per step by source line and by part."""

    def __init__(self, spec: overhead.ModelSpec, seed: int):
        self.prepared = overhead.prepare(spec, "dsgd", seed=seed)
        self.sources = op_profile.hlo_sources(self.prepared.hlo_text)
        self.times: collections.Counter = collections.Counter()  # microseconds per instruction
        self.wall = 0.0
        self.steps = 0

    def run(self) -> None:
        self.prepared.step()

    def profile_step(self) -> None:
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
            start = time.perf_counter()
            self.prepared.step()
            wall = time.perf_counter() - start
            jax.profiler.stop_trace()
            events = _read_trace(trace_dir)
        times = op_profile.instruction_times(events, self.sources)
        if not times:
            raise SystemExit(
                f"the JAX trace has no per-instruction events (jax {jax.__version__}): this "
                "profile needs a CPU runtime that traces each instruction it runs "
                "(XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, which this script sets)"
            )
        self.times.update(times)
        self.wall += wall
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        per_step = 1e3 * self.steps  # microseconds in all steps -> ms per step
        by_line = collections.defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
        parts, part_of = collections.Counter(), {}
        for name, us in self.times.items():
            source = self.sources[name]
            where = source.short()
            text = linecache.getline(source.file, source.line).strip()
            part_of[where] = op_profile.jax_category(source, text)
            by_line[where]["backward" if source.backward else "forward"] += us / per_step
            parts[part_of[where]] += us / per_step
        top = sorted(by_line.items(), key=lambda kv: -sum(kv[1].values()))
        return {
            "wall_ms_per_step": self.wall / self.steps * 1e3,
            "op_ms_per_step": sum(self.times.values()) / per_step,
            "parts_ms": dict(parts),
            "lines": [{"source": where, **ms, "part": part_of[where]} for where, ms in top],
            "compile_s": self.prepared.compile_s,
        }


class TorchSide:
    """The PyTorch peer's eager DSGD step (``benchmarks/torch_peer.py``) on a copy of the
    JAX model's weights, profiled a step at a time; ops are keyed ``op < caller``."""

    def __init__(self, spec: overhead.ModelSpec, seed: int):
        import torch
        import torch_peer

        from _lib.torch_bert import TorchBertClassifier
        from dsgd_jax.examples.bert.model import BertConfig

        torch.set_num_threads(1)
        model = TorchBertClassifier(BertConfig.preset(spec.preset), spec.num_classes)
        device = torch.device("cpu")
        check, batch = torch_peer.check_equivalence(spec, model, device, seed)
        torch_peer.require_same_logits(check)
        self.check = check
        self.version = torch.__version__
        self.step = torch_peer.make_torch_step(model, batch, dsgd=True, device=device)
        self.ops: collections.Counter = collections.Counter()  # microseconds per op key
        self.part_of: dict[str, str] = {}
        self.wall = 0.0
        self.steps = 0

    def run(self) -> None:
        self.step()

    def profile_step(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            self.step()
            wall = time.perf_counter() - start
        events = prof.events()

        def callers(event):
            while event is not None:
                yield event
                event = event.cpu_parent

        # sequence number -> the outermost forward op with it (its children share it);
        # a backward node's "evaluate_function" event carries its forward op's number.
        forward = {}
        for event in events:
            parent = event.cpu_parent
            if event.sequence_nr >= 0 and not event.name.startswith(op_profile.AUTOGRAD_NODE):
                if parent is None or parent.sequence_nr != event.sequence_nr:
                    forward.setdefault(event.sequence_nr, event)
        for event in events:
            chain = [e.name for e in callers(event)]
            node = next(
                (e for e in callers(event) if e.name.startswith(op_profile.AUTOGRAD_NODE)), None
            )
            origin = forward.get(node.sequence_nr) if node is not None else None
            origin_chain = [e.name for e in callers(origin)] if origin is not None else []
            key = event.name if len(chain) == 1 else f"{event.name} < {chain[1]}"
            self.part_of[key] = op_profile.torch_category(chain, origin_chain)
            self.ops[key] += event.self_cpu_time_total
        self.wall += wall
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        per_step = 1e3 * self.steps
        parts = collections.Counter()
        for key, us in self.ops.items():
            parts[self.part_of[key]] += us / per_step
        return {
            "wall_ms_per_step": self.wall / self.steps * 1e3,
            "op_ms_per_step": sum(self.ops.values()) / per_step,
            "parts_ms": dict(parts),
            "ops": [
                {"op": key, "ms": us / per_step, "part": self.part_of[key]}
                for key, us in self.ops.most_common()
            ],
            "max_abs_logit_diff": self.check["max_abs_logit_diff"],
            "torch": self.version,
        }


def profile(sides: dict[str, Any], *, steps: int, warmup: int) -> dict[str, dict]:
    """Warms each side up, then profiles ``steps`` rounds of one step of each in turn (a
    load that changes during the run falls on both); the sides' summaries."""
    for side in sides.values():
        for _ in range(warmup):
            side.run()
    for _ in range(steps):
        for side in sides.values():
            side.profile_step()
    return {name: side.summary() for name, side in sides.items()}


def markdown_table(result: dict[str, Any]) -> str:
    """The parts table, then JAX's costliest lines and PyTorch's costliest ops."""
    jax_side, torch_side = result["jax"], result.get("torch")
    head = "| part of the step | JAX ms/step |" + (
        " PyTorch ms/step | JAX/PyTorch |" if torch_side else ""
    )
    rule = "|---|---|" + ("---|---|" if torch_side else "")
    rows = [head, rule]

    def row(label, j, t):
        cells = f"| {label} | {j:.1f} |"
        if torch_side:
            ratio = f"{j / t:.2f}" if t > 0 else "-"
            cells += f" {t:.1f} | {ratio} |"
        return cells

    for part in op_profile.CATEGORIES:
        j = jax_side["parts_ms"].get(part, 0.0)
        t = torch_side["parts_ms"].get(part, 0.0) if torch_side else 0.0
        if j or t:
            rows.append(row(part, j, t))
    rows.append(
        row(
            "**all ops**",
            jax_side["op_ms_per_step"],
            torch_side["op_ms_per_step"] if torch_side else 0.0,
        )
    )
    rows.append(
        row(
            "step wall time (profiled)",
            jax_side["wall_ms_per_step"],
            torch_side["wall_ms_per_step"] if torch_side else 0.0,
        )
    )
    rows += [
        "",
        "JAX's costliest source lines (ms per step):",
        "",
        "| source line | forward | backward | part |",
        "|---|---|---|---|",
    ]
    for line in jax_side["lines"][:TOP]:
        rows.append(
            f"| `{line['source']}` | {line['forward']:.1f} | {line['backward']:.1f} "
            f"| {line['part']} |"
        )
    if torch_side:
        rows += [
            "",
            "PyTorch's costliest ops (self time, ms per step; `op < caller`):",
            "",
            "| op | ms | part |",
            "|---|---|---|",
        ]
        for op in torch_side["ops"][:TOP]:
            rows.append(f"| `{op['op']}` | {op['ms']:.1f} | {op['part']} |")
    return "\n".join(rows) + "\n"


def plot_parts(result: dict[str, Any], path: Path) -> Path:
    """Horizontal bars: milliseconds per step in each part, JAX beside PyTorch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sides = [("JAX", result["jax"])] + ([("PyTorch", result["torch"])] if "torch" in result else [])
    parts = [p for p in op_profile.CATEGORIES if any(s["parts_ms"].get(p, 0) for _, s in sides)]
    y = np.arange(len(parts))
    height = 0.8 / len(sides)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(parts) + 1.2))
    for i, (label, side) in enumerate(sides):
        ax.barh(y + i * height, [side["parts_ms"].get(p, 0.0) for p in parts], height, label=label)
    ax.set_yticks(y + height * (len(sides) - 1) / 2, parts)
    ax.invert_yaxis()
    ax.set_xlabel("ms per step (one thread)")
    ax.set_title(result["description"], fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if jax.default_backend() != "cpu":
        print(
            f"{PROG}: error: JAX runs on {jax.default_backend()}; this profile is for the CPU",
            file=sys.stderr,
        )
        return 2
    spec = overhead.CONFIGS[args.config]
    sides = {"jax": JaxSide(spec, args.seed)}
    if args.torch:
        sides["torch"] = TorchSide(spec, args.seed)
    load = [round(x, 2) for x in os.getloadavg()]
    print(
        f"profiling {args.steps} round(s) of one {' and one '.join(sides)} DSGD step, "
        f"{spec.describe()}, one thread each"
    )
    result: dict[str, Any] = {
        "command": " ".join([PROG, *argv]),
        "machine": {**machine_info(), "load_average_1_5_15": load},
        "config": args.config,
        "description": spec.describe(),
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
        "threads": 1,
        **profile(sides, steps=args.steps, warmup=args.warmup),
    }
    if args.torch:
        result["machine"]["torch"] = result["torch"]["torch"]
    result["machine"]["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    (args.out / "table.md").write_text(
        f"{spec.describe()}; {machine['cpu']} ({machine['cores']} cores), one thread each, "
        f"{args.steps} profiled step(s) each, load average "
        f"{machine['load_average_1_5_15'][0]}\n\n{table}"
    )
    plot_parts(result, args.out / "profile.png")
    print(table)
    print(f"wrote {args.out}/results.json, table.md and profile.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
