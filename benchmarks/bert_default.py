"""Runs the README's main job twice, FFT and DSGD on the same seed, and records both.

    python benchmarks/bert_default.py            # about 2 x 10 minutes on a 2-core CPU

Writes ``benchmarks/results/bert_default.json`` (both summaries, the command
lines, the machine and the library versions) and rewrites the results block of
README.md (after ``<!-- readme:main-job-results -->``) from that file.
``--readme-only`` redoes the README block from the saved JSON without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bert_default.json"
MARKER = "<!-- readme:main-job-results -->"
END = "<!-- /readme:main-job-results -->"


def machine() -> dict[str, str]:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "device": str(jax.devices()[0].device_kind),
        "python": platform.python_version(),
        **{pkg: metadata.version(pkg) for pkg in ("jax", "optax", "flax", "dsgd-jax")},
    }


def run(workdir_root: Path) -> dict:
    from dsgd_jax.examples.bert.__main__ import main

    results = {"machine": machine(), "runs": {}}
    for method in ("fft", "dsgd"):
        workdir = workdir_root / f"drugs-{method}-s42"
        done = workdir / "summary.json"
        if not (done.exists() and json.loads(done.read_text())["finished"]):
            # --resume starts afresh in an empty workdir and continues an interrupted run.
            status = main([f"--method={method}", f"--workdir={workdir}", "--resume"])
            if status != 0:
                sys.exit(status)
        summary = json.loads(done.read_text())
        summary["command"] = "python -m dsgd_jax.examples.bert " + f"--method={method}"
        results["runs"][method] = summary
    return results


def markdown(results: dict) -> str:
    m = results["machine"]
    rows = [
        "| method | accuracy | macro-F1 | recall negative / neutral / positive | collapsed "
        "| wall time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, s in results["runs"].items():
        recall = " / ".join(f"{s['per_class_recall'][c]:.3f}" for c in s["per_class_recall"])
        rows.append(
            f"| {method.upper()} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {recall} "
            f"| {'yes' if s['collapsed'] else 'no'} | {s['wall_time_s'] / 60:.1f} min |"
        )
    any_run = next(iter(results["runs"].values()))
    cfg = any_run["config"]
    missed = [
        c
        for c in any_run["per_class_recall"]
        if all(s["per_class_recall"][c] == 0.0 for s in results["runs"].values())
    ]
    missed_line = (
        f"No run recognises the {', '.join(missed)} class{'es' if len(missed) > 1 else ''}: "
        "accuracy alone would hide that, hence macro-F1 and per-class recall. "
        if missed
        else ""
    )
    return "\n".join(
        [
            MARKER,
            f"Measured with `python benchmarks/bert_default.py`, which runs the default "
            f"command with `--method=fft` and `--method=dsgd` (seed {cfg['seed']}, "
            f"{cfg['num_epochs']} epochs, learning rate {cfg['learning_rate']:g}, batch "
            f"{cfg['batch_size']}, {cfg['max_length']} tokens) on {m['cpu']} "
            f"({m['cores']} cores, no GPU; jax {m['jax']}, flax {m['flax']}); raw results "
            "in `benchmarks/results/bert_default.json`:",
            "",
            *rows,
            "",
            f"{missed_line}Wall time includes loading, compiling and evaluating; it is "
            "not a speed comparison. One seed is one sample: the seed-stability protocol "
            "(10 seeds, the paper's baselines) is what says whether DSGD helps on a task.",
            END,
        ]
    )


def update_readme(results: dict) -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(MARKER)
    end = readme.index(END) + len(END) if END in readme else start + len(MARKER)
    (ROOT / "README.md").write_text(readme[:start] + markdown(results) + readme[end:])


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/bert_default", type=Path)
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args(argv)
    if args.readme_only:
        results = json.loads(RESULTS.read_text())
    else:
        results = run(args.workdir)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    update_readme(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
