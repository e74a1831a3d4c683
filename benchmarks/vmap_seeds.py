"""Seeds as one vmapped program against one run per seed: wall time of both, same process.

    python benchmarks/vmap_seeds.py                    # small ViT, 10 seeds, 2 epochs
    python benchmarks/vmap_seeds.py --seeds=4 --num_epochs=2 --model=tiny   # quick
    python benchmarks/vmap_seeds.py --example=bert --task=tweets2 --max_length=64 \
        --seeds=5 --num_epochs=2 --out=benchmarks/results/vmap_seeds-bert.json

Trains an example (by default the ViT: pretrained small ViT on long-tailed
MNIST-5k) for the paper's seeds twice: one ``train_and_evaluate`` per seed, then
all seeds in one ``jax.vmap``-ed program (``dsgd_jax.examples.seeds``). The
totals include loading, compiling and evaluation, as a user would see them; the
steady state is the training time of the epochs after the first (which holds
the compilation), per epoch: summed over the sequential runs, against the
vmapped program's. Checks that both give the same predictions, prints both
speed-ups and writes ``benchmarks/results/vmap_seeds.json``. Any further flag
is a field of the example's config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np

from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.cli import parse, parse_config
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.seeds import train_seeds
from dsgd_jax.examples.stability import PAPER_SEEDS, machine_info
from dsgd_jax.examples.train import train_and_evaluate
from dsgd_jax.examples.vit.config import ViTExampleConfig, run_pretraining

RESULTS = Path(__file__).resolve().parent / "results" / "vmap_seeds.json"


@dataclasses.dataclass
class Flags:
    """The benchmark's own flags; every other flag is a field of the ViT example's config."""

    example: Literal["vit", "bert"] = config_field("vit", "the example to train")
    seeds: int = config_field(10, "how many of the paper's seeds")
    out: Path = config_field(RESULTS, "results file")


def steady_epoch_s(summaries: list[dict]) -> float:
    """Training seconds per epoch after the first, of one program's runs (their
    ``epoch_train_s``, which each run of the program shares)."""
    times = summaries[0]["epoch_train_s"][1:]
    return float(np.mean(times))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python benchmarks/vmap_seeds.py"
    args, rest = parse(
        Flags, argv, prog=prog, description=__doc__.split("\n\n")[0], known_only=True
    )
    cls = ViTExampleConfig if args.example == "vit" else BertExampleConfig
    config, _ = parse_config(cls, rest, prog, "")
    if "--num_epochs" not in " ".join(rest):
        config = dataclasses.replace(config, num_epochs=2)
    if config.num_epochs < 2:
        print(
            f"{prog}: error: --num_epochs must be at least 2 (the steady state is after "
            "epoch 1); pass --num_epochs=2 or more",
            file=sys.stderr,
        )
        return 2
    config = dataclasses.replace(config, progress=False, save_checkpoints=False)
    seeds = list(PAPER_SEEDS[: args.seeds])
    pretrained = args.example == "vit" and config.init == "pretrained"
    if pretrained and not (config.pretrain_dir() / "summary.json").exists():
        run_pretraining(config, config.pretrain_dir())  # outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        sequential = [
            train_and_evaluate(dataclasses.replace(config, seed=s), tmp / "seq" / str(s))
            for s in seeds
        ]
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        vmapped = train_seeds(config, seeds, [tmp / "vmap" / str(s) for s in seeds])
        vmapped_s = time.perf_counter() - start
    steady_sequential = sum(steady_epoch_s([s]) for s in sequential)
    steady_vmapped = steady_epoch_s(vmapped)
    pairs = zip(sequential, vmapped, strict=True)
    same = sum(a["predictions"] == b["predictions"] for a, b in pairs)
    result = {
        "command": "python benchmarks/vmap_seeds.py " + " ".join(argv),
        "machine": machine_info(),
        "seeds": seeds,
        "config": config.to_dict(),
        "task": sequential[0]["task"],
        "sequential_s": sequential_s,
        "vmapped_s": vmapped_s,
        "speedup": sequential_s / vmapped_s,
        "steady_epoch_s_sequential": steady_sequential,
        "steady_epoch_s_vmapped": steady_vmapped,
        "steady_speedup": steady_sequential / steady_vmapped,
        "same_predictions": f"{same}/{len(seeds)}",
        "accuracy_sequential": [s["accuracy"] for s in sequential],
        "accuracy_vmapped": [s["accuracy"] for s in vmapped],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(seeds)} seeds of {result['task']} ({config.model} {args.example}, "
        f"{config.num_epochs} epochs): sequential {sequential_s:.1f} s, vmapped "
        f"{vmapped_s:.1f} s, speed-up {result['speedup']:.2f}x; per epoch after the first "
        f"{steady_sequential:.1f} s against {steady_vmapped:.1f} s, "
        f"{result['steady_speedup']:.2f}x; same predictions for {same}/{len(seeds)} seeds. "
        f"Wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
