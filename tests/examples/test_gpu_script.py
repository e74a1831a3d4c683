"""benchmarks/gpu.sh at --quick size on this machine: every step runs and writes its file."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _committed_files() -> dict[str, bytes]:
    pages = [p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts]
    paths = [ROOT / "README.md", *pages]
    paths += (ROOT / "benchmarks" / "results").rglob("*")
    return {str(p): p.read_bytes() for p in paths if p.is_file()}


def test_gpu_script_runs_every_benchmark_at_quick_size(tmp_path):
    out = tmp_path / "gpu"
    before = _committed_files()
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--quick"],
        cwd=ROOT,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    for dtype in ("float32", "bfloat16"):
        result = json.loads((out / f"step_overhead-{dtype}" / "results.json").read_text())
        entry = result["configs"]["bert-tiny"]
        assert entry["spec"]["dtype"] == dtype and set(entry["variants"]) == {"adamw", "dsgd"}
        assert len(entry["times_s"]["dsgd"]) == 2
    for name in ("vmap_seeds.json", "vmap_seeds-bert.json"):
        seeds = json.loads((out / name).read_text())
        assert seeds["seeds"] == [42, 52] and seeds["same_predictions"] == "2/2"
        assert seeds["config"]["num_epochs"] == 2 and seeds["steady_epoch_s_vmapped"] > 0
    for example in ("bert", "vit"):
        runs = json.loads((out / f"{example}_default.json").read_text())["runs"]
        assert set(runs) == {"fft", "dsgd"} and all(r["finished"] for r in runs.values())
        assert runs["dsgd"]["config"]["num_epochs"] == 1  # the quick flags reached the runs
    assert "PyTorch peer" in log and not (out / "runs").exists()
    # The README, the docs pages and the results files are untouched by a run with its own OUT.
    assert _committed_files() == before
