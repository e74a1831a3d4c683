"""The protocol's ``results.json``: what it keeps of each run, and how it grows.

:func:`collect_results` gathers the finished runs of a protocol
(:mod:`dsgd_jax.examples.stability`) from their workdirs: per run its summary,
per-epoch evaluations and gradient-conflict trace, with the machine it ran on.
:func:`merge_results` adds an earlier file's runs that a narrower rerun did not
ask for, so a results file never shrinks; :func:`check_same_settings` refuses to
mix settings in one file; :func:`read_results_file` moves a damaged file aside.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsgd_jax.examples.metrics import MetricsLog
from dsgd_jax.examples.stability_stats import load_results
from dsgd_jax.examples.train import TrainConfig
from dsgd_jax.examples.workdir import RESUME_FREE, config_changes

if TYPE_CHECKING:
    from dsgd_jax.examples.stability import MethodSpec

__all__ = [
    "EPOCH_KEYS",
    "FREE_FIELDS",
    "TRACE_KEYS",
    "check_same_settings",
    "collect_results",
    "machine_info",
    "merge_results",
    "read_results_file",
]

# Config fields a run's results do not depend on (a resumed or re-traced run is the same run).
FREE_FIELDS = (*RESUME_FREE, "conflict_every")


def machine_info() -> dict[str, str]:
    """The CPU, core count, JAX device and library versions of this machine."""
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


# What results.json keeps of each run's per-epoch evaluations and conflict records.
EPOCH_KEYS = (
    "epoch",
    "accuracy",
    "macro_f1",
    "collapsed",
    "failed",
    "top_share",
    "representation_cosine",
    "tasks",
)
# What results.json keeps of each task's evaluation in a multi-task run.
TASK_KEYS = ("accuracy", "macro_f1", "collapsed", "failed", "top_share", "representation_cosine")
TRACE_KEYS = ("step", "cosine", "wrong_norm", "correct_norm", "total_norm", "fraction_correct")


def collect_results(
    config: TrainConfig,
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    runs_dir: str | Path,
    *,
    example: str,
    command: str,
    previous: Mapping[tuple[str, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``results.json`` content from the finished runs under ``runs_dir``.

    A run missing there is taken from ``previous`` (see :func:`previous_runs`) if
    it is in it; runs found nowhere are left out and listed under ``missing``.
    """
    runs_dir = Path(runs_dir)
    data = config.load_data()
    machine = machine_info()
    runs, missing = [], []
    for spec in methods:
        for seed in seeds:
            workdir = runs_dir / spec.dirname / f"seed{seed}"
            path = workdir / "summary.json"
            summary = json.loads(path.read_text()) if path.exists() else None
            if not summary or not summary.get("finished"):
                if previous and (spec.label, seed) in previous:
                    runs.append(previous[(spec.label, seed)])
                else:
                    missing.append(_run_name(spec.label, seed))
                continue
            records = MetricsLog(workdir / "metrics.jsonl").read()
            summary.pop("confusion", None)
            for record in (summary, *records):  # a multi-task run's tasks: their numbers
                if "tasks" in record:
                    record["tasks"] = {
                        name: {k: m[k] for k in TASK_KEYS if k in m}
                        for name, m in record["tasks"].items()
                    }
            runs.append(
                {
                    "label": spec.label,
                    "machine": machine,
                    **summary,
                    "epoch_metrics": [
                        {k: r[k] for k in EPOCH_KEYS if k in r}
                        for r in records
                        if r["kind"] == "epoch"
                    ],
                    "conflict_trace": [
                        {k: r[k] for k in TRACE_KEYS} for r in records if r["kind"] == "conflict"
                    ],
                }
            )
    heads = [dataclasses.asdict(h) for h in data.heads]
    return {
        "example": example,
        "task": config.task_name,
        **({"heads": heads} if heads else {}),
        "command": command,
        "machine": machine,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(data.class_names),
        "test_labels": [int(x) for x in data.test.labels],
        "seeds": [int(s) for s in seeds],
        "methods": [spec.label for spec in methods],
        "base_config": config.to_dict(),
        "missing": missing,
        "runs": runs,
    }


def read_results_file(path: Path) -> dict[str, Any] | None:
    """An earlier ``results.json``, or None if there is none.

    A damaged one (a write cut short, say) is moved aside to
    ``results.json.damaged-<time>`` with a warning, never deleted, and counts as none:
    its finished runs are found again in their workdirs.
    """
    if not path.exists():
        return None
    try:
        return load_results(path)
    except ValueError as e:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        os.replace(path, aside)
        print(
            f"Warning: {path} is damaged ({str(e).splitlines()[0][:200]}); moved it to {aside} "
            "and took the finished runs from their workdirs.",
            file=sys.stderr,
        )
        return None


def check_same_settings(
    earlier: Mapping[str, Any] | None, path: Path, example: str, config: TrainConfig
) -> None:
    """Refuses to add to a results file of another example or other settings."""
    if earlier is None:
        return
    changed = config_changes(earlier.get("base_config") or {}, config, FREE_FIELDS)
    if earlier.get("example") != example:
        changed["example"] = (earlier.get("example"), example)
    if changed:
        raise ValueError(
            f"{path} holds the results of other settings ({', '.join(sorted(changed))}); pass "
            "another --out, or move that file away."
        )


def merge_results(earlier: Mapping[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` plus every run of the ``earlier`` results file that it lacks.

    A results file never shrinks: a rerun with fewer methods or seeds keeps the runs
    it did not ask for, and their methods and seeds stay listed; the commands that
    produced the file are all kept, the newest in ``command``.
    """
    if earlier is None:
        return results
    have = {(r["label"], r["seed"]) for r in results["runs"]}
    kept = [r for r in earlier["runs"] if (r["label"], r["seed"]) not in have]
    kept_names = {_run_name(r["label"], r["seed"]) for r in kept}
    commands = [*earlier.get("commands", [earlier.get("command")]), results["command"]]
    merged = {
        **results,
        "runs": results["runs"] + kept,
        "methods": list(dict.fromkeys([*results["methods"], *earlier.get("methods", [])])),
        "seeds": sorted({*results["seeds"], *earlier.get("seeds", [])}),
        "missing": [m for m in results["missing"] if m not in kept_names],
        "commands": list(dict.fromkeys(c for c in commands if c)),
    }
    return merged


def _run_name(label: str, seed: int) -> str:
    """A run as ``results.json``'s ``missing`` list names it: ``"dsgd seed 42"``."""
    return f"{label} seed {seed}"
