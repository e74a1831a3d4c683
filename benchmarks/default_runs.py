"""Runs an example's default command twice, FFT and DSGD on the same seed, and records both.

    python benchmarks/default_runs.py --example=bert   # about 2 x 8 minutes on a 2-core CPU
    python benchmarks/default_runs.py --example=vit    # pretraining once, then 2 fine-tunings

Writes ``benchmarks/results/<example>_default.json`` (both summaries, the
command lines, the machine and the library versions) and rewrites the
example's results block (README.md for BERT, docs/guides/examples.md for the
ViT) from that file. ``--readme-only`` redoes
those blocks from the saved JSON files without training.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Literal

from _lib.readme import PAGES, fill_block
from dsgd_jax.examples import markdown as markdown_table
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability_results import machine_info

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "bert": {"module": "dsgd_jax.examples.bert", "marker": "readme:main-job-results"},
    "vit": {"module": "dsgd_jax.examples.vit", "marker": "docs:vit-results"},
}
EXAMPLE_NAMES = tuple(sorted(EXAMPLES))


def results_path(example: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"{example}_default.json"


def run(example: str, workdir_root: Path, flags: list[str] = ()) -> dict:
    """FFT and DSGD with the example's default command plus ``flags``, resumably."""
    module = EXAMPLES[example]["module"]
    main = importlib.import_module(f"{module}.__main__").main
    results = {"example": example, "machine": machine_info(), "runs": {}}
    for method in ("fft", "dsgd"):
        workdir = workdir_root / f"{example}-{method}"
        done = workdir / "summary.json"
        if not (done.exists() and json.loads(done.read_text())["finished"]):
            # --resume starts afresh in an empty workdir and continues an interrupted run.
            status = main([f"--method={method}", f"--workdir={workdir}", "--resume", *flags])
            if status != 0:
                sys.exit(status)
        summary = json.loads(done.read_text())
        summary["command"] = shlex.join(["python", "-m", module, f"--method={method}", *flags])
        results["runs"][method] = summary
    if example == "vit" and results["runs"]["fft"]["config"]["init"] == "pretrained":
        from dsgd_jax.examples.vit.config import ViTExampleConfig

        # The cached pretraining both fine-tunings started from.
        config = ViTExampleConfig(**results["runs"]["fft"]["config"])
        pretrain = json.loads((config.pretrain_dir() / "summary.json").read_text())
        pretrain.pop("predictions")
        pretrain["command"] = "python -m dsgd_jax.examples.vit pretrain"
        results["pretrain"] = pretrain
    return results


def _recall(recall: dict[str, float]) -> str:
    if len(recall) <= 4:
        return " / ".join(f"{v:.3f}" for v in recall.values())
    worst = min(recall, key=recall.get)
    return f"lowest {recall[worst]:.3f} ({worst}), mean {sum(recall.values()) / len(recall):.3f}"


def failure(summary: dict) -> str:
    """How the run ended (failed, collapsed or no), from its saved confusion matrix."""
    import numpy as np

    from dsgd_jax.examples.metrics import failure_flags

    confusion = np.asarray(summary["confusion"])
    pairs = [(t, p) for t, row in enumerate(confusion) for p, n in enumerate(row) for _ in range(n)]
    labels, predictions = (np.array(column) for column in zip(*pairs, strict=True))
    flags = failure_flags(labels, predictions)
    return "collapsed" if flags["collapsed"] else "failed" if flags["failed"] else "no"


def markdown(results: dict) -> str:
    example = results["example"]
    m = results["machine"]
    any_run = next(iter(results["runs"].values()))
    cfg = any_run["config"]
    classes = list(any_run["per_class_recall"])
    recall_head = " / ".join(classes) if len(classes) <= 4 else "of the classes"
    table = markdown_table.table(
        ["method", "accuracy", "macro-F1", f"recall {recall_head}", "failed", "wall time"],
        [
            [method.upper(), f"{s['accuracy']:.4f}", f"{s['macro_f1']:.4f}",
             _recall(s["per_class_recall"]), failure(s), f"{s['wall_time_s'] / 60:.1f} min"]
            for method, s in results["runs"].items()
        ],
    )  # fmt: skip
    missed = [
        c for c in classes if all(s["per_class_recall"][c] == 0.0 for s in results["runs"].values())
    ]
    missed_line = (
        f"No run recognises the {', '.join(missed)} class{'es' if len(missed) > 1 else ''}: "
        "accuracy alone would hide that, hence macro-F1 and per-class recall. "
        if missed
        else ""
    )
    fft, dsgd = results["runs"]["fft"], results["runs"]["dsgd"]
    gap = 100 * (dsgd["accuracy"] - fft["accuracy"])
    verdict = (
        f"On this seed DSGD is {abs(gap):.1f} accuracy points "
        f"{'above' if gap > 0 else 'below'} FFT. "
        if gap
        else "On this seed DSGD and FFT reach the same accuracy. "
    )
    pretrain = results.get("pretrain")
    pretrain_line = (
        f"Both start from the ViT that `{pretrain['command']}` trained once "
        f"({pretrain['task']}, {pretrain['epochs']} epochs, {pretrain['wall_time_s'] / 60:.1f} "
        f"min, test accuracy {pretrain['accuracy']:.4f}); a first run that must pretrain "
        "takes that much longer."
        if pretrain
        else ""
    )
    marker = EXAMPLES[example]["marker"]
    return "\n".join(
        [
            f"<!-- {marker} -->",
            f"Measured with `python benchmarks/default_runs.py --example={example}`, which runs "
            f"the default command with `--method=fft` and `--method=dsgd` (task "
            f"{any_run['task']}, seed {cfg['seed']}, {cfg['num_epochs']} epochs, learning rate "
            f"{cfg['learning_rate']:g}, batch {cfg['batch_size']}) on {m['cpu']} "
            f"({m['cores']} cores, no GPU; jax {m['jax']}, flax {m['flax']}); raw results in "
            f"`benchmarks/results/{example}_default.json`:",
            "",
            table.rstrip(),
            "",
            f"{verdict}{missed_line}Wall time includes loading, compiling and evaluating; it is "
            "not a speed comparison. One seed is one sample: the seed-stability protocol (10 "
            "seeds, the paper's baselines) is what says whether DSGD helps on a task."
            + (f" {pretrain_line}" if pretrain_line else ""),
            f"<!-- /{marker} -->",
        ]
    )


def update_readme(results: dict) -> None:
    marker = EXAMPLES[results["example"]]["marker"]
    fill_block(ROOT / PAGES[marker], marker, markdown(results))


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/default_runs.py``."""

    example: Literal[EXAMPLE_NAMES] = dataclasses.field(
        metadata={"help": "the example whose default command runs"}
    )
    workdir: Path = config_field(
        Path("runs/default_runs"), "folder of the runs' workdirs, <example>-fft and <example>-dsgd"
    )
    readme_only: bool = config_field(
        False, "no training: the table and the results block from the saved results file"
    )
    out: Path | None = config_field(
        None,
        "results file; default benchmarks/results/<example>_default.json, the only one "
        "that rewrites the results block",
    )
    flags: str = config_field("", "more flags for both runs, e.g. '--model=tiny --num_epochs=1'")


def cli(argv=None) -> int:
    args = parse(
        Flags, argv, prog="python benchmarks/default_runs.py", description=__doc__.split("\n\n")[0]
    )
    path = args.out or results_path(args.example)
    if args.readme_only:
        results = json.loads(path.read_text())
    else:
        results = run(args.example, args.workdir, shlex.split(args.flags))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    if path == results_path(args.example):
        update_readme(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
