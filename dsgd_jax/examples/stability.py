"""The paper's seed-stability protocol: every method x every seed, resumable.

:func:`run_protocol` trains an example's config once per (method variant,
seed), each run in its own workdir, skipping runs whose ``summary.json`` says
they finished with the same settings and resuming interrupted ones from their
last checkpoint. It then gathers the per-seed summaries, per-epoch evaluations
and gradient-conflict traces into one ``results.json`` and writes the table and
plots of :mod:`dsgd_jax.examples.stability_report`.

Method variants are written ``name[/field=value[/field=value...]]``, e.g.
``dsgd/scaler=cosine/beta=0.5`` or ``lora/lora_rank=16``; the fields are those of
the example's config. Shorthands: ``baselines`` (FFT, DSGD and the paper's
baselines) and ``dsgd-scalers`` (DSGD with every scaler, beta 0.5 and 1).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import typing
from collections.abc import Collection, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dsgd_jax.examples import files, readme_blocks
from dsgd_jax.examples.metrics import MetricsLog
from dsgd_jax.examples.train import (
    _RESUME_FREE,
    METHODS,
    TrainConfig,
    config_changes,
    train_and_evaluate,
)

__all__ = [
    "PAPER_SEEDS",
    "MethodSpec",
    "collect_results",
    "expand_methods",
    "machine_info",
    "previous_runs",
    "run_config",
    "run_protocol",
]

PAPER_SEEDS = tuple(range(42, 142, 10))  # 42, 52, ..., 132

SHORTHANDS = {
    "baselines": ("fft", "dsgd", "focal", "pcgrad", "noisytune", "lnsr", "swa", "lora"),
    "dsgd-scalers": (
        "dsgd",
        "dsgd/beta=0.5",
        "dsgd/scaler=cosine",
        "dsgd/scaler=cosine/beta=0.5",
        "dsgd/scaler=descending",
        "dsgd/scaler=descending/beta=0.5",
        "dsgd/scaler=constant/beta=0.0",
        "dsgd/scaler=constant/beta=0.1",
    ),
}

# The methods whose runs trace the gradient conflict (every seed, or --trace_seeds).
TRACED = ("fft", "dsgd")
_FREE = (*_RESUME_FREE, "conflict_every")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method variant: ``label`` as written, the method and its field overrides."""

    label: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def method(self) -> str:
        return dict(self.overrides)["method"]

    @classmethod
    def parse(cls, text: str, config_cls: type[TrainConfig]) -> MethodSpec:
        """Parses ``name[/field=value...]``; ValueError naming the bad part and the fix."""
        name, *parts = text.strip().split("/")
        if name not in METHODS:
            raise ValueError(f"Unknown method {name!r} in --methods; choose from {METHODS}.")
        hints = typing.get_type_hints(config_cls)
        fields = {f.name for f in dataclasses.fields(config_cls)}
        overrides: list[tuple[str, Any]] = [("method", name)]
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key not in fields or key in ("method", "seed"):
                raise ValueError(
                    f"{part!r} in --methods entry {text!r} is not field=value of a "
                    f"{config_cls.__name__} field (e.g. dsgd/scaler=cosine/beta=0.5)."
                )
            overrides.append((key, _convert(value, hints[key], part)))
        return cls(text.strip(), tuple(overrides))

    def apply(self, config: TrainConfig) -> TrainConfig:
        return dataclasses.replace(config, **dict(self.overrides))

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace("/", "__"))


def _convert(value: str, kind: Any, part: str) -> Any:
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{part!r}: {value!r} is not a valid {kind.__name__}.") from None


def expand_methods(text: str, config_cls: type[TrainConfig]) -> list[MethodSpec]:
    """The comma-separated ``--methods`` value as specs (shorthands expanded, no repeats)."""
    labels: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        for label in SHORTHANDS.get(item, (item,)):
            if label not in labels:
                labels.append(label)
    if not labels:
        raise ValueError("--methods is empty; e.g. --methods=fft,dsgd or --methods=baselines.")
    return [MethodSpec.parse(label, config_cls) for label in labels]


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


def run_state(config: TrainConfig, workdir: Path) -> tuple[str, int | None]:
    """``("done", None)``, ``("resume", epoch)`` or ``("new", None)`` for one run's workdir.

    Raises ValueError when the workdir holds a run with other settings.
    """
    summary = workdir / "summary.json"
    saved_config = workdir / "config.json"
    if saved_config.exists():
        changed = config_changes(json.loads(saved_config.read_text()), config, _FREE)
        if changed:
            raise ValueError(
                f"{workdir} holds a run with other settings ({', '.join(sorted(changed))}); "
                "pass another --runs_dir, or delete that folder to redo it."
            )
    if summary.exists() and json.loads(summary.read_text()).get("finished"):
        return "done", None
    checkpoints = workdir / "checkpoints"
    epochs = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    return ("resume", max(epochs)) if epochs else ("new", None)


def run_config(
    config: TrainConfig,
    spec: MethodSpec,
    seed: int,
    conflict_every: int = 0,
    trace_seeds: Collection[int] | None = None,
) -> TrainConfig:
    """The settings of one (method, seed) run of the protocol.

    FFT and DSGD runs log the gradient conflict every ``conflict_every`` steps (0 =
    never) on every seed, or only on ``trace_seeds`` where given.
    """
    run = dataclasses.replace(spec.apply(config), seed=seed, progress=False)
    traced = trace_seeds is None or seed in trace_seeds
    if traced and spec.label in TRACED and conflict_every:
        run = dataclasses.replace(run, conflict_every=conflict_every)
    run.validate()
    return run


def previous_runs(
    earlier: Mapping[str, Any] | None,
    config: TrainConfig,
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    *,
    conflict_every: int = 0,
    trace_seeds: Collection[int] | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """The runs of an earlier ``results.json`` (:func:`read_results_file`) that this
    protocol would train again.

    A run counts when its label and seed are asked for and its settings equal the
    ones this protocol would use, so a committed ``results.json`` lets a later
    session (or machine) add seeds or methods without redoing the finished ones.
    """
    if earlier is None:
        return {}
    wanted = {
        (spec.label, seed): run_config(config, spec, seed, conflict_every, trace_seeds)
        for spec in methods
        for seed in seeds
    }
    found = {}
    for run in earlier["runs"]:
        key = (run["label"], run["seed"])
        if (
            key in wanted
            and run.get("finished")
            and not config_changes(run["config"], wanted[key], _FREE)
        ):
            found[key] = run
    return found


def run_protocol(
    config: TrainConfig,
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    runs_dir: str | Path,
    *,
    conflict_every: int = 0,
    trace_seeds: Collection[int] | None = None,
    vmap_seeds: bool = False,
    progress: bool = True,
    skip: Collection[tuple[str, int]] = (),
) -> None:
    """Trains every (method, seed) not yet finished under ``runs_dir/<method>/seed<seed>``.

    With ``vmap_seeds`` the unfinished seeds of a method that stand at the same
    epoch train together as one vmapped program
    (:func:`dsgd_jax.examples.seeds.train_seeds`); otherwise one after another.
    FFT and DSGD runs log the gradient conflict every ``conflict_every`` steps, on
    every seed or on ``trace_seeds`` (it does not change their training). ``skip`` lists
    ``(label, seed)`` pairs already done elsewhere (see :func:`previous_runs`).
    """
    from tqdm.auto import tqdm

    runs_dir = Path(runs_dir)
    plan = []
    for spec in methods:
        groups: dict[Any, list[tuple[int, TrainConfig, Path]]] = {}
        for seed in seeds:
            run = run_config(config, spec, seed, conflict_every, trace_seeds)
            workdir = runs_dir / spec.dirname / f"seed{seed}"
            state, epoch = run_state(run, workdir)
            if state != "done" and (spec.label, seed) not in skip:
                run = dataclasses.replace(run, resume=True)
                groups.setdefault((epoch, run.conflict_every), []).append((seed, run, workdir))
        plan.append((spec, groups))
    total = len(methods) * len(seeds)
    todo = sum(len(g) for _, groups in plan for g in groups.values())
    with tqdm(
        total=total, initial=total - todo, desc="seeds x methods", disable=not progress
    ) as bar:
        for spec, groups in plan:
            for group in groups.values():
                if vmap_seeds and len(group) > 1:
                    from dsgd_jax.examples.seeds import train_seeds

                    bar.set_postfix_str(f"{spec.label}: {len(group)} seeds vmapped")
                    summaries = train_seeds(
                        group[0][1], [s for s, _, _ in group], [w for _, _, w in group]
                    )
                    bar.update(len(group))
                else:
                    summaries = []
                    for seed, run, workdir in group:
                        bar.set_postfix_str(f"{spec.label} seed {seed}")
                        summaries.append(train_and_evaluate(run, workdir))
                        bar.update(1)
                bar.write(_line(spec.label, summaries))


def _line(label: str, summaries: list[dict[str, Any]]) -> str:
    accuracies = ", ".join(f"{s['accuracy']:.4f}" for s in summaries)
    failed = sum(bool(s.get("failed")) for s in summaries)
    collapsed = sum(bool(s["collapsed"]) for s in summaries)
    return (
        f"{label}: seeds {[s['seed'] for s in summaries]} accuracy {accuracies}"
        + (f" ({failed} failed, {collapsed} of them collapsed)" if failed else "")
        + f"; {summaries[-1]['wall_time_s']:.0f} s per run"
    )


# What results.json keeps of each run's per-epoch evaluations and conflict records.
EPOCH_KEYS = (
    "epoch",
    "accuracy",
    "macro_f1",
    "collapsed",
    "failed",
    "top_share",
    "representation_cosine",
)
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
    return {
        "example": example,
        "task": config.task_name,
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


EXAMPLES = {
    "bert": "dsgd_jax.examples.bert.config:BertExampleConfig",
    "vit": "dsgd_jax.examples.vit.config:ViTExampleConfig",
}


def _config_class(example: str) -> type[TrainConfig]:
    import importlib

    module, name = EXAMPLES[example].split(":")
    return getattr(importlib.import_module(module), name)


def example_config(example: str, argv: Sequence[str], prog: str) -> TrainConfig:
    """``example``'s validated config from its command-line flags (``--workdir`` ignored)."""
    from dsgd_jax.examples.cli import build_parser

    config_cls = _config_class(example)
    fields = vars(build_parser(config_cls, prog, "").parse_args(list(argv)))
    fields.pop("workdir")
    config = config_cls(**fields)
    config.validate()
    return config


def _seeds(text: str) -> list[int]:
    if "," not in text and text.strip().isdigit() and int(text) <= len(PAPER_SEEDS):
        if int(text) < 1:
            raise ValueError("--seeds must be >= 1 (a count) or a list like 42,52.")
        return list(PAPER_SEEDS[: int(text)])
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds={text!r}: give a count (<= 10) or seeds like 42,52.") from None


def _trace_seeds(text: str) -> list[int] | None:
    if text.strip() == "all":
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--trace_seeds={text!r}: give all, or seeds like 42,52.") from None


def cli(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/stability.py``: run the protocol, then write results and report."""
    import argparse
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python benchmarks/stability.py",
        description="The paper's seed-stability protocol on an example: every method x seed "
        "(resumable), then results.json, table.md and plots in --out. Any other flag is a "
        "field of the example's config (see python -m dsgd_jax.examples.<example> --help).",
    )
    parser.add_argument("--example", choices=sorted(EXAMPLES), required=True)
    parser.add_argument("--methods", default="fft,dsgd", help="e.g. fft,dsgd or baselines")
    parser.add_argument("--seeds", default="10", help="a count of the paper's seeds, or 42,52")
    parser.add_argument("--out", required=True, type=Path, help="folder for results and plots")
    parser.add_argument("--runs_dir", type=Path, help="per-run workdirs; default runs/stability/")
    parser.add_argument(
        "--trace_seeds",
        default="all",
        help="seeds whose FFT and DSGD runs log cos(g_W, g_C): all, or a list like 42,52",
    )
    parser.add_argument(
        "--conflict_every", type=int, default=10, help="their conflict every N steps; 0 = never"
    )
    parser.add_argument("--vmap", action="store_true", help="train a method's seeds vmapped")
    parser.add_argument("--report_only", action="store_true", help="no training, only results")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args, rest = parser.parse_known_args(argv)
    from dsgd_jax.examples.cli import guarded

    def body() -> int:
        config = example_config(args.example, rest, parser.prog)
        methods = expand_methods(args.methods, type(config))
        seeds = _seeds(args.seeds)
        if args.conflict_every < 0:
            raise ValueError("--conflict_every must be >= 0.")
        runs_dir = args.runs_dir or Path("runs/stability") / args.out.name
        trace = {
            "conflict_every": args.conflict_every,
            "trace_seeds": _trace_seeds(args.trace_seeds),
        }
        path = args.out / "results.json"
        earlier = read_results_file(path)
        check_same_settings(earlier, path, args.example, config)
        previous = previous_runs(earlier, config, methods, seeds, **trace)
        if not args.report_only:
            run_protocol(
                config, methods, seeds, runs_dir, vmap_seeds=args.vmap, progress=args.progress,
                skip=previous, **trace,
            )  # fmt: skip
        command = "python benchmarks/stability.py " + shlex.join(
            a for a in argv if a not in ("--report_only", "--no-progress")
        )
        results = collect_results(
            config, methods, seeds, runs_dir, example=args.example, command=command,
            previous=previous,
        )  # fmt: skip
        results = merge_results(earlier, results)
        args.out.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path, json.dumps(results, indent=1) + "\n")
        if not results["runs"]:
            print(f"No finished runs under {runs_dir} yet.", file=sys.stderr)
            return 1
        from dsgd_jax.examples.stability_report import write_report

        paths = write_report(results, args.out)
        print((args.out / "table.md").read_text())
        if results["missing"]:
            print(f"Not finished yet: {', '.join(results['missing'])}")
        print(f"Wrote {path} and {', '.join(str(p) for p in paths.values())}")
        return 0

    return guarded(
        parser.prog,
        body,
        on_interrupt="Finished runs are kept in their workdirs, interrupted ones resume from "
        "their last epoch: run the same command again to continue.",
    )


def read_results_file(path: Path) -> dict[str, Any] | None:
    """An earlier ``results.json``, or None if there is none.

    A damaged one (a write cut short, say) is moved aside to
    ``results.json.damaged-<time>`` with a warning, never deleted, and counts as none:
    its finished runs are found again in their workdirs.
    """
    from dsgd_jax.examples.stability_report import load_results

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
    changed = config_changes(earlier.get("base_config") or {}, config, _FREE)
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


README_MARKER = "readme:stability-results"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _of(s: dict[str, Any], key: str) -> str:
    return f"{s[key]} of {s['n']}"


def _learned(s: dict[str, Any]) -> str:
    """``" (the others average 93.25)"``: the mean accuracy of the runs that did not fail."""
    if s["learned_mean"] is None or s["failed"] == 0:
        return ""
    learned = s["n"] - s["failed"]
    if learned == 1:
        return f" (the one that learns scores {_pct(s['learned_mean'])})"
    return f" (the {learned} that learn average {_pct(s['learned_mean'])})"


def _claim_test(f: dict[str, Any], d: dict[str, Any]) -> str:
    """Whether FFT's seeds fail in a way that can test DSGD's claim, and what DSGD does."""
    if f["failed"] == 0:
        return (
            "FFT fails on no seed here, so this setting cannot test whether DSGD removes "
            "failed seeds; it compares accuracy and spread only."
        )
    if f["failed"] == f["n"]:
        return (
            "FFT fails on every seed here, so the setting, not the seed, decides and it cannot "
            "test whether DSGD removes seed failures; DSGD fails on "
            f"{_of(d, 'failed')}{_learned(d)}."
        )
    return (
        f"FFT is seed-unstable here: {_of(f, 'failed')} seeds fail while the rest "
        f"learn{_learned(f)}; DSGD fails on {_of(d, 'failed')}{_learned(d)}."
    )


def verdict(results: dict[str, Any], *, base: str = "fft", dsgd: str = "dsgd") -> str:
    """What the numbers of one protocol run say about DSGD, in a few plain sentences.

    A run *failed* when its test accuracy is at or below the majority-class rate and
    *collapsed* when it predicts one class for every input
    (:mod:`dsgd_jax.examples.stability_report`).
    """
    from dsgd_jax.examples.stability_report import ensemble_stats, method_stats

    stats = method_stats(results)
    if base not in stats or dsgd not in stats:
        return "This run lacks FFT or DSGD, so it says nothing about DSGD against FFT."
    f, d = stats[base], stats[dsgd]
    gap = 100 * (d["accuracy_mean"] - f["accuracy_mean"])
    if _pct(d["accuracy_mean"]) == _pct(f["accuracy_mean"]):
        compared = f"equals FFT's ({_pct(d['accuracy_mean'])})"
    else:
        compared = (
            f"is {abs(gap):.2f} points {'above' if gap > 0 else 'below'} FFT's "
            f"({_pct(d['accuracy_mean'])} vs {_pct(f['accuracy_mean'])})"
        )
    labels = results["test_labels"]
    majority = max(labels.count(c) for c in set(labels)) / len(labels) if labels else 0.0
    lines = [
        f"DSGD's mean accuracy {compared}, with a standard deviation over seeds of "
        f"{_pct(d['accuracy_std'])} vs {_pct(f['accuracy_std'])}.",
        f"Failed runs (accuracy at or below the majority-class rate, {_pct(majority)}): DSGD "
        f"{_of(d, 'failed')}, FFT {_of(f, 'failed')}; collapsed onto one class: DSGD "
        f"{d['collapsed']}, FFT {f['collapsed']}.",
        _claim_test(f, d),
    ]
    if d["missing_class"] or f["missing_class"]:
        lines.append(
            f"Runs that never predict some class right: DSGD {_of(d, 'missing_class')}, "
            f"FFT {_of(f, 'missing_class')}."
        )
    others = [label for label in stats if label not in (base, dsgd)]
    if others:
        better = [o for o in others if stats[o]["accuracy_mean"] >= d["accuracy_mean"]]
        steadier = [o for o in others if stats[o]["accuracy_std"] <= d["accuracy_std"]]
        more = [o for o in others if stats[o]["failed"] > d["failed"]]
        fewer = [o for o in others if stats[o]["failed"] < d["failed"]]
        lines.append(
            "DSGD does not beat "
            + ", ".join(f"{o} ({_pct(stats[o]['accuracy_mean'])})" for o in better)
            + " in mean accuracy here."
            if better
            else f"None of the other {len(others)} methods reaches DSGD's mean accuracy."
        )
        if steadier:
            lines.append(
                "Lower or equal seed spread than DSGD: "
                + ", ".join(_spread(o, stats[o], d) for o in steadier)
                + "."
            )
        for word, group in (("More", more), ("Fewer", fewer)):
            if group:
                lines.append(
                    f"{word} failed runs than DSGD ({_of(d, 'failed')}): "
                    + ", ".join(f"{o} {_of(stats[o], 'failed')}" for o in group)
                    + "."
                )
    ens9, dsgd9 = ensemble_stats(results, base, 9), ensemble_stats(results, dsgd, 9)
    if ens9 is not None and dsgd9 is not None:
        lines.append(
            f"Majority votes of 9 seeds (mean over the {ens9['subsets']} and "
            f"{dsgd9['subsets']} subsets): FFT {_pct(ens9['accuracy_mean'])}, DSGD "
            f"{_pct(dsgd9['accuracy_mean'])}; the mean single DSGD run "
            f"{'reaches' if d['accuracy_mean'] >= ens9['accuracy_mean'] else 'stays below'} "
            "ENS(9)."
        )
    return " ".join(lines)


def _spread(label: str, s: dict[str, Any], dsgd: dict[str, Any]) -> str:
    """``label (std)``, saying so where the low spread comes from failed runs."""
    note = ""
    if s["failed"] == s["n"]:
        note = ", every run failed"
    elif s["failed"] > dsgd["failed"]:
        note = f", {_of(s, 'failed')} runs failed"
    return f"{label} ({_pct(s['accuracy_std'])}{note})"


def overview_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """What :func:`~dsgd_jax.examples.stability_report.overview_rows` say, in plain sentences.

    The settings are sorted by what FFT does there: fails on some seeds but not all
    (those can test whether DSGD removes failed seeds), on none, or on all.
    """
    if not rows:
        return "No setting has both FFT and DSGD runs yet."
    n = len(rows)
    higher = sum(r["dsgd"]["accuracy_mean"] > r["base"]["accuracy_mean"] for r in rows)
    steadier = sum(r["dsgd"]["accuracy_std"] < r["base"]["accuracy_std"] for r in rows)

    def total(group, side, key):
        return sum(r[side][key] for r in group)

    lines = [
        f"Over {n} setting{'s' if n > 1 else ''}, DSGD's mean accuracy is above FFT's in "
        f"{higher} and its seed spread (std) is below FFT's in {steadier}.",
        f"Failed runs (at or below the majority-class rate): FFT {total(rows, 'base', 'failed')} "
        f"of {total(rows, 'base', 'n')}, DSGD {total(rows, 'dsgd', 'failed')} of "
        f"{total(rows, 'dsgd', 'n')}; collapsed onto one class: FFT "
        f"{total(rows, 'base', 'collapsed')}, DSGD {total(rows, 'dsgd', 'collapsed')}.",
    ]
    testable = [r for r in rows if r["testable"]]
    never = [r for r in rows if r["base"]["failed"] == 0]
    always = [r for r in rows if r["base"]["failed"] == r["base"]["n"]]
    if testable:
        t_higher = sum(r["dsgd"]["accuracy_mean"] > r["base"]["accuracy_mean"] for r in testable)
        t_steadier = sum(r["dsgd"]["accuracy_std"] < r["base"]["accuracy_std"] for r in testable)
        t_fewer = sum(r["dsgd"]["failed"] < r["base"]["failed"] for r in testable)
        lines.append(
            f"FFT fails on some seeds but not all in {len(testable)} setting"
            f"{'s' if len(testable) > 1 else ''} ("
            + ", ".join(r["setting"] for r in testable)
            + f"), the kind that can test whether DSGD removes failed seeds: there FFT fails "
            f"on {total(testable, 'base', 'failed')} of {total(testable, 'base', 'n')} runs "
            f"and DSGD on {total(testable, 'dsgd', 'failed')} of {total(testable, 'dsgd', 'n')}; "
            f"DSGD has fewer failed runs in {t_fewer}, a higher mean in {t_higher} and a lower "
            f"spread in {t_steadier} of them."
        )
    else:
        lines.append(
            "No setting makes FFT fail on some seeds but not on others, so none of them can "
            "test whether DSGD removes failed seeds."
        )
    if never:
        lines.append(
            f"FFT fails on no seed in {len(never)} setting{'s' if len(never) > 1 else ''}."
        )
    if always:
        lines.append(
            "FFT fails on every seed on "
            + ", ".join(
                f"{r['setting']} (DSGD {r['dsgd']['failed']} of {r['dsgd']['n']})" for r in always
            )
            + ": there the setting decides, not the seed."
        )
    lines += [
        f"Runs that never predict some class right: FFT {total(rows, 'base', 'missing_class')}, "
        f"DSGD {total(rows, 'dsgd', 'missing_class')}.",
        _widest_spreads(rows),
    ]
    beaten = [
        r
        for r in rows
        if r["best_other"] and r["best_other"][1]["accuracy_mean"] >= r["dsgd"]["accuracy_mean"]
    ]
    with_others = [r["setting"] for r in rows if r["best_other"]]
    if with_others:
        lines.append("Other methods ran on " + ", ".join(with_others) + ".")
    if beaten:
        lines.append(
            "Where baselines ran, DSGD is matched or beaten in mean accuracy on "
            + ", ".join(f"{r['setting']} (by {r['best_other'][0]})" for r in beaten)
            + "."
        )
    return " ".join(lines)


def _widest_spreads(rows: Sequence[dict[str, Any]]) -> str:
    """Where FFT's seed spread is widest, per example where there are several."""
    examples = list(dict.fromkeys(r["example"] for r in rows))
    parts = []
    for example in examples:
        widest = max(
            (r for r in rows if r["example"] == example), key=lambda r: r["base"]["accuracy_std"]
        )
        among = f" among the {example} settings" if len(examples) > 1 else ""
        parts.append(
            f"on {widest['setting']} ({_pct(widest['base']['accuracy_std'])} points){among}"
        )
    return "FFT's seed spread is widest " + " and ".join(parts) + "."


def readme_section(folders: Sequence[Path], root: Path) -> str:
    """The README's results section from the committed ``results.json`` files in ``folders``.

    An overview of every setting (table, verdict, ``overview.png``; see
    :func:`update_readme`) comes first, then each setting's full table.
    """
    return _section(load_settings(folders), root)


def _section(settings: Sequence[tuple[Path, dict[str, Any]]], root: Path) -> str:
    """:func:`readme_section` from settings already read by :func:`load_settings`."""
    from dsgd_jax.examples.stability_report import (
        markdown_table,
        overview_rows,
        overview_table,
        setting_label,
    )

    parts = [f"<!-- {README_MARKER} -->"]
    timing = root / "benchmarks/results/vmap_seeds.json"
    if timing.exists():
        t = json.loads(timing.read_text())
        m = t["machine"]
        parts.append(
            f"Seeds vmapped: `{t['command'].strip()}` trained {len(t['seeds'])} seeds of "
            f"{t['task']} ({t['config']['model']} ViT, {t['config']['num_epochs']} epochs) in "
            f"{t['vmapped_s']:.0f} s as one vmapped program against {t['sequential_s']:.0f} s "
            f"one after another, a speed-up of {t['speedup']:.2f}x on {m['cpu']} "
            f"({m['cores']} cores, {m['device']}), with the same predictions for "
            f"{t['same_predictions']} seeds. Both times include compiling, once for the "
            "vmapped program and once per sequential run, which dominates so short a run; "
            "on a CPU the training itself is compute-bound, so for long runs expect less "
            "(the per-run times of the vmapped protocol runs below include it)."
        )
    if not settings:
        parts.append("No protocol run has been committed yet.")
    all_results = [results for _, results in settings]
    rows = overview_rows(all_results)
    if rows:
        parts += [
            "",
            "Every setting, FFT against DSGD: accuracy and macro-F1 in % as mean ± std over "
            "seeds; as FFT/DSGD, the failed runs (accuracy at or below the majority-class "
            "rate), the collapsed runs (one class for every input) and the runs missing a "
            "class (recall 0 on some class); whether FFT fails on some seeds but not all; "
            "the best of the other methods where they ran.",
            "",
            overview_table(all_results).strip(),
            "",
            overview_verdict(rows),
            "",
            f"![FFT against DSGD per seed, every setting]({OVERVIEW_PLOT})",
            "",
            "Each setting in full (click to open):",
        ]
    for folder, results in settings:
        config = results["base_config"]
        machine = results["machine"]
        rel = folder.relative_to(root).as_posix()
        parts += [
            "",
            "<details>",
            f"<summary>{setting_label(results)} · {config['num_epochs']} epochs</summary>",
            "",
            f"`{results['command']}` on {machine['cpu']} ({machine['cores']} cores, "
            f"{machine['device']}; jax {machine['jax']}, flax {machine['flax']}). Per-seed "
            f"results, plots: `{rel}/`." + _missing(results["missing"]),
            "",
            markdown_table(results).strip(),
            "",
            verdict(results)
            + " Time per run is wall time with loading, compiling and evaluation on a shared "
            "machine (a vmapped group's time divided by its seeds), not a speed comparison.",
            "",
            f"![per-seed accuracy]({rel}/seed_accuracy.png)",
            "",
            "</details>",
        ]
    parts.append(f"<!-- /{README_MARKER} -->")
    return "\n".join(parts)


def _missing(missing: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for entry in missing:  # "label seed N"
        label = entry.rsplit(" seed ", 1)[0]
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return ""
    return " Not run yet: " + ", ".join(f"{k} ({n} seeds)" for k, n in counts.items()) + "."


def results_folders(root: Path) -> list[Path]:
    """The committed protocol runs: ``benchmarks/results/stability/*/results.json``."""
    return sorted(p.parent for p in (root / "benchmarks/results/stability").glob("*/results.json"))


def load_settings(folders: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each folder with its ``results.json``, read once, in setting order.

    The order is :func:`~dsgd_jax.examples.stability_report.setting_key`'s
    (example, task, sequence length, learning rate), so a sweep reads top to bottom.
    """
    from dsgd_jax.examples.stability_report import load_results, setting_key

    loaded = [(folder, load_results(folder / "results.json")) for folder in folders]
    return sorted(loaded, key=lambda item: (setting_key(item[1]), item[0]))


OVERVIEW_PLOT = "benchmarks/results/stability/overview.png"


def update_readme(root: Path) -> str:
    """Rewrites the README's results section, ``OVERVIEW_PLOT`` and each committed
    setting's table and plots (:func:`~dsgd_jax.examples.stability_report.write_report`)
    from the committed ``results.json`` files, which it only reads.

    Returns the section.
    """
    from dsgd_jax.examples.stability_report import overview_rows, plot_overview, write_report

    settings = load_settings(results_folders(root))
    for folder, results in settings:
        write_report(results, folder)
    all_results = [results for _, results in settings]
    if overview_rows(all_results):
        plot_overview(all_results, root / OVERVIEW_PLOT)
    section = _section(settings, root)
    readme_blocks.fill_block(root / "README.md", README_MARKER, section)
    return section
