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
import json
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dsgd_jax.examples import files
from dsgd_jax.examples.cli import field_value
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability_results import (
    FREE_FIELDS,
    check_same_settings,
    collect_results,
    machine_info,
    merge_results,
    read_results_file,
)
from dsgd_jax.examples.train import METHODS, TrainConfig, train_and_evaluate
from dsgd_jax.examples.workdir import config_changes

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
            raise ValueError(f"Unknown method {name!r} in --methods; choose from {tuple(METHODS)}.")
        fields = {f.name for f in dataclasses.fields(config_cls)}
        overrides: list[tuple[str, Any]] = [("method", name)]
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key not in fields or key in ("method", "seed"):
                raise ValueError(
                    f"{part!r} in --methods entry {text!r} is not field=value of a "
                    f"{config_cls.__name__} field (e.g. dsgd/scaler=cosine/beta=0.5)."
                )
            overrides.append((key, field_value(config_cls, key, value, part)))
        return cls(text.strip(), tuple(overrides))

    def apply(self, config: TrainConfig) -> TrainConfig:
        return dataclasses.replace(config, **dict(self.overrides))

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace("/", "__"))


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


def run_state(config: TrainConfig, workdir: Path) -> tuple[str, int | None]:
    """``("done", None)``, ``("resume", epoch)`` or ``("new", None)`` for one run's workdir.

    Raises ValueError when the workdir holds a run with other settings.
    """
    summary = workdir / "summary.json"
    saved_config = workdir / "config.json"
    if saved_config.exists():
        changed = config_changes(json.loads(saved_config.read_text()), config, FREE_FIELDS)
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
            and not config_changes(run["config"], wanted[key], FREE_FIELDS)
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
    vmap_max: int = 0,
    progress: bool = True,
    skip: Collection[tuple[str, int]] = (),
) -> None:
    """Trains every (method, seed) not yet finished under ``runs_dir/<method>/seed<seed>``.

    With ``vmap_seeds`` the unfinished seeds of a method that stand at the same
    epoch train together as one vmapped program
    (:func:`dsgd_jax.examples.seeds.train_seeds`), at most ``vmap_max`` seeds per
    program if it is > 0 (S seeds take S times one run's memory); otherwise one
    after another.
    FFT and DSGD runs log the gradient conflict every ``conflict_every`` steps, on
    every seed or on ``trace_seeds`` (it does not change their training). ``skip`` lists
    ``(label, seed)`` pairs already done elsewhere (see :func:`previous_runs`).
    """
    from tqdm.auto import tqdm

    if vmap_max < 0:
        raise ValueError(f"vmap_max={vmap_max}: give N > 0 seeds per program, or 0 for all.")
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
            for whole in groups.values():
                size = (vmap_max or len(whole)) if vmap_seeds else 1
                for group in (whole[i : i + size] for i in range(0, len(whole), size)):
                    _train_group(spec, group, bar)


def _train_group(spec: MethodSpec, group: list[tuple[int, TrainConfig, Path]], bar) -> None:
    """One program: the group's seeds vmapped, or its one seed alone."""
    if len(group) > 1:
        from dsgd_jax.examples.seeds import train_seeds

        bar.set_postfix_str(f"{spec.label}: {len(group)} seeds vmapped")
        summaries = train_seeds(group[0][1], [s for s, _, _ in group], [w for _, _, w in group])
    else:
        ((seed, run, workdir),) = group
        bar.set_postfix_str(f"{spec.label} seed {seed}")
        summaries = [train_and_evaluate(run, workdir)]
    bar.update(len(group))
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


EXAMPLES = {
    "bert": "dsgd_jax.examples.bert.config:BertExampleConfig",
    "vit": "dsgd_jax.examples.vit.config:ViTExampleConfig",
}
EXAMPLE_NAMES = tuple(EXAMPLES)


def _config_class(example: str) -> type[TrainConfig]:
    import importlib

    module, name = EXAMPLES[example].split(":")
    return getattr(importlib.import_module(module), name)


def example_config(example: str, argv: Sequence[str], prog: str) -> TrainConfig:
    """``example``'s validated config from its command-line flags (``--workdir`` ignored)."""
    from dsgd_jax.examples.cli import parse_config

    config, _ = parse_config(_config_class(example), argv, prog, "")
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


@dataclasses.dataclass
class ProtocolFlags:
    """The protocol's own flags; every other flag is a field of the example's config."""

    example: Literal[EXAMPLE_NAMES] = dataclasses.field(metadata={"help": "the example to run"})
    out: Path = dataclasses.field(
        metadata={"help": "folder for results.json, table.md and the plots"}
    )
    methods: str = config_field("fft,dsgd", "e.g. fft,dsgd, baselines, or dsgd/beta=0.5")
    seeds: str = config_field("10", "a count of the paper's seeds, or a list like 42,52")
    runs_dir: Path | None = dataclasses.field(
        default=None, metadata={"help": "per-run workdirs; default runs/stability/<out>"}
    )
    trace_seeds: str = config_field(
        "all", "seeds whose FFT and DSGD runs log cos(g_W, g_C): all, or a list like 42,52"
    )
    conflict_every: int = config_field(10, "their conflict every N steps; 0 = never")
    vmap: bool = config_field(False, "train a method's seeds vmapped, in one program")
    vmap_max: int = config_field(
        0, "with --vmap: at most N seeds per program (S seeds take S times the memory); 0 = all"
    )
    report_only: bool = config_field(False, "no training, only the results and the report")
    progress: bool = config_field(True, "show progress bars")


def cli(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/stability.py``: run the protocol, then write results and report."""
    import shlex

    from dsgd_jax.examples.cli import parse

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python benchmarks/stability.py"
    args, rest = parse(
        ProtocolFlags,
        argv,
        prog=prog,
        description="The paper's seed-stability protocol on an example: every method x seed "
        "(resumable), then results.json, table.md and plots in --out. Any other flag is a "
        "field of the example's config (see python -m dsgd_jax.examples.<example> --help).",
        known_only=True,
    )
    from dsgd_jax.examples.cli import guarded

    def body() -> int:
        config = example_config(args.example, rest, prog)
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
                config, methods, seeds, runs_dir, vmap_seeds=args.vmap, vmap_max=args.vmap_max,
                progress=args.progress,
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
        prog,
        body,
        on_interrupt="Finished runs are kept in their workdirs, interrupted ones resume from "
        "their last epoch: run the same command again to continue.",
    )
