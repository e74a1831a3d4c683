"""DSGD step time in JAX against the same step in PyTorch, interleaved in one process.

    python benchmarks/torch_peer.py                    # MiniLM-L6 BERT, batch 32 x 128, 20 rounds
    python benchmarks/torch_peer.py --quick            # tiny BERT, batch 8 x 32, 5 rounds
    python benchmarks/torch_peer.py --device=cuda --threads=8 --out=/tmp/peer

Builds the BERT example's model (``benchmarks/_lib/overhead.py``, random weights,
a random batch with half the examples padded to half length) and a PyTorch
``nn.Module`` of the same architecture, copies the JAX weights into it and checks
in eval mode that both give the same logits (and the same DSGD loss). Then times
four train steps in interleaved rounds (``benchmarks/_lib/timing.py``):

- ``jax_adamw``, ``jax_dsgd``: ``overhead.prepare(spec, "adamw" | "dsgd")``, the
  compiled JAX steps (masked-mean cross-entropy / the examples' DSGD step; global-norm
  clipping, AdamW with weight decay on matrices, warm-up and linear decay).
- ``jax_dsgd_dropout16``: ``jax_dsgd`` with the examples' ``--dropout_bits=16``
  (two dropout decisions per 32-bit random word instead of one; other masks, the
  same model and rate).
- ``jax_dsgd_nodropout``, ``torch_dsgd_nodropout``: both DSGD steps with every
  dropout off (JAX: rates 0; torch: the module in eval mode), which tells the cost
  of dropout in each framework from the cost of the rest.
- ``torch_adamw``, ``torch_dsgd``: the same steps as a PyTorch user writes them
  (eager mode): per-example ``F.cross_entropy``, DSGD weights lambda on correctly
  classified examples and 1 on the rest, the mean over the n valid examples,
  ``backward``, ``clip_grad_norm_``, ``torch.optim.AdamW`` (two param groups) with a
  ``LambdaLR`` warm-up/decay schedule.
- ``torch_dsgd_compiled``: ``torch_dsgd`` with the module under ``torch.compile``
  (inductor, which needs a C++ compiler on CPU; its eval-mode logits are checked
  against the eager module's first). Where compiling fails the variant is left out
  and the error is recorded in ``results.json`` (``--no-torch_compile`` skips it).

Reports each step's median and IQR, the JAX/PyTorch DSGD ratio (median of the
per-round ratios) and each framework's own DSGD/AdamW ratio; writes
``results.json`` and ``table.md`` to ``--out`` (default
``benchmarks/results/torch_peer/<quick|full>-<cpu|gpu>``).

On a CPU that other jobs keep busy, torch's default thread pool (one thread per
core) can stall on every parallel op while a worker waits to be scheduled, which
makes eager PyTorch look several times slower than it is; compare with
``--threads=1`` there (the load average is recorded in ``results.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import optax
import torch
import torch.nn.functional as F
from torch import nn

import dsgd_jax
from _lib import overhead, timing
from _lib.script import usage_error
from _lib.torch_bert import TorchBertClassifier, copy_jax_weights
from dsgd_jax.examples.bert.model import BertConfig
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability import machine_info
from dsgd_jax.examples.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "torch_peer"
ORDER = (
    "jax_adamw",
    "jax_dsgd",
    "jax_dsgd_dropout16",
    "jax_dsgd_nodropout",
    "torch_adamw",
    "torch_dsgd",
    "torch_dsgd_nodropout",
    "torch_dsgd_compiled",
)
BASELINE = "torch_dsgd"
# The ratios reported, "numerator/denominator" (medians of per-round ratios), where
# both steps ran.
RATIOS = (
    "jax_dsgd/torch_dsgd",
    "jax_dsgd_dropout16/torch_dsgd",
    "jax_dsgd_dropout16/jax_dsgd",
    "jax_dsgd_nodropout/torch_dsgd_nodropout",
    "jax_dsgd/jax_adamw",
    "torch_dsgd/torch_adamw",
    "jax_dsgd/torch_dsgd_compiled",
    "torch_dsgd_compiled/torch_dsgd",
)
# The JAX steps: (name, overhead.prepare variant, --dropout_bits, dropout on).
JAX_VARIANTS = (
    ("jax_adamw", "adamw", 32, True),
    ("jax_dsgd", "dsgd", 32, True),
    ("jax_dsgd_dropout16", "dsgd", 16, True),
    ("jax_dsgd_nodropout", "dsgd", 32, False),
)
LAMBDA = 0.5  # the torch step's fixed DSGD weight of correctly classified examples
MAX_LOGIT_DIFF = 1e-3
TOTAL_UPDATES = 1000  # overhead.prepare's default: sets both sides' lr schedules


def dsgd_loss(logits, labels, valid, lam: float) -> torch.Tensor:
    """dsgd_jax's reduction: sum over valid examples of w_i * CE_i, divided by n (not sum w)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    with torch.no_grad():
        correct = logits.argmax(-1) == labels
        weights = torch.where(correct, lam, 1.0)
    total = torch.where(valid, weights * ce, 0.0).sum()
    return total / valid.sum().clamp(min=1)


def plain_loss(logits, labels, valid) -> torch.Tensor:
    """Mean cross-entropy over the valid examples (the JAX adamw variant's loss)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(valid, ce, 0.0).sum() / valid.sum().clamp(min=1)


def make_torch_step(
    model: nn.Module, batch, *, dsgd: bool, device: torch.device, dropout: bool = True
):
    """One train step closure (model and optimizer state kept inside), like the JAX ones;
    ``dropout=False`` trains the module in eval mode (every dropout off)."""
    config = TrainConfig()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    warmup = round(config.warmup_ratio * TOTAL_UPDATES)

    def factor(step: int) -> float:  # optax.join_schedules of the two linear schedules
        if step < warmup:
            return step / max(warmup, 1)
        return max(0.0, 1.0 - (step - warmup) / max(TOTAL_UPDATES - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    params = list(model.parameters())
    inputs, labels, valid = batch
    model.train(dropout)

    def step() -> None:
        logits = model(inputs)
        if dsgd:
            loss = dsgd_loss(logits, labels, valid, LAMBDA)
        else:
            loss = plain_loss(logits, labels, valid)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


# ----------------------------------------------------------------------------- benchmark


def to_torch_batch(batch, device: torch.device):
    inputs, labels, valid, _ = batch
    tensors = {k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in inputs.items()}
    return (
        {k: v.to(device) for k, v in tensors.items()},
        torch.tensor(np.asarray(labels), dtype=torch.long).to(device),
        torch.tensor(np.asarray(valid), dtype=torch.bool).to(device),
    )


def check_equivalence(spec: overhead.ModelSpec, torch_model: nn.Module, device, seed: int):
    """Copies the JAX weights of ``overhead``'s model into ``torch_model`` and compares
    eval-mode features, logits and the DSGD loss on ``overhead``'s batch."""
    jax_model, batch = overhead.model_and_batch(spec, seed)
    n_params = copy_jax_weights(jax_model, torch_model)
    inputs, labels, valid, _ = batch
    jax_features = np.asarray(jax_model.features(inputs))
    jax_logits = jax_model(inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(jax_logits, labels)
    correct = dsgd_jax.argmax_correct(jax_logits, labels)
    jax_loss = float(dsgd_jax.scaled_mean(ce, correct, LAMBDA, where=valid))
    torch_batch = to_torch_batch(batch, device)
    torch_model.eval()
    with torch.no_grad():
        torch_features = torch_model.features(torch_batch[0]).cpu().numpy()
        torch_logits = torch_model(torch_batch[0])
        torch_loss = float(dsgd_loss(torch_logits, *torch_batch[1:], LAMBDA))
    torch_logits = torch_logits.cpu().numpy()
    jax_logits = np.asarray(jax_logits)
    check = {
        "params_copied": n_params,
        "max_abs_logit_diff": float(np.max(np.abs(torch_logits - jax_logits))),
        "max_abs_logit": float(np.max(np.abs(jax_logits))),
        "max_abs_cls_feature_diff": float(np.max(np.abs(torch_features - jax_features))),
        "dsgd_loss_jax": jax_loss,
        "dsgd_loss_torch": torch_loss,
        "dsgd_loss_abs_diff": abs(jax_loss - torch_loss),
    }
    return check, torch_batch


def compiled_step(torch_model: nn.Module, torch_batch, device) -> tuple[Any, dict[str, Any]]:
    """``torch_dsgd``'s step with a copy of ``torch_model`` under ``torch.compile``, and
    what building it found: its eval-mode logits against the eager module's and the
    seconds its first call (the compilation of the forward and backward graphs) took.
    Returns ``(None, {"torch_compile_error": ...})`` where compiling fails."""
    eager = copy.deepcopy(torch_model).eval()
    model = torch.compile(copy.deepcopy(torch_model))
    try:
        with torch.no_grad():
            want = eager(torch_batch[0]).cpu().numpy()
            got = model.eval()(torch_batch[0]).cpu().numpy()
        step = make_torch_step(model, torch_batch, dsgd=True, device=device)
        start = time.perf_counter()
        step()
        first_call_s = time.perf_counter() - start
    except Exception as error:  # inductor raises many kinds: record which
        first = (str(error).strip().splitlines() or [""])[0]
        return None, {"torch_compile_error": f"{type(error).__name__}: {first}"[:500]}
    diff = float(np.max(np.abs(got - want)))
    if not diff <= MAX_LOGIT_DIFF:
        raise SystemExit(
            f"torch.compile changed the eval-mode logits by {diff:.3e} > {MAX_LOGIT_DIFF:g}: "
            "the compiled step would not do the same work; rerun with --no-torch_compile"
        )
    return step, {"torch_compile_logit_diff": diff, "torch_compile_first_call_s": first_call_s}


def require_same_logits(check: dict[str, Any]) -> None:
    """SystemExit unless :func:`check_equivalence` found the two models' logits within
    MAX_LOGIT_DIFF: otherwise a comparison of the two steps would not be of the same work."""
    if not check["max_abs_logit_diff"] <= MAX_LOGIT_DIFF:
        raise SystemExit(
            f"torch and JAX logits differ by {check['max_abs_logit_diff']:.3e} > "
            f"{MAX_LOGIT_DIFF:g} with the same weights and batch: the torch model is not "
            "the JAX example's architecture, so the timings would not compare the same work."
        )


def markdown_table(summary: dict[str, Any], ratios: dict[str, float]) -> str:
    lines = [
        "| variant | median step (ms) | IQR (ms) | ratio to torch_dsgd (median [IQR]) |",
        "|---|---|---|---|",
    ]
    for name, s in summary.items():
        ratio = f"{s['ratio_median']:.3f} [{s['ratio_q25']:.3f}, {s['ratio_q75']:.3f}]"
        median, iqr = timing.format_ms(s["median_s"]), timing.format_ms(s["iqr_s"])
        lines.append(f"| {name} | {median} | {iqr} | {ratio} |")
    lines.append("")
    pairs = "; ".join(f"{name.replace('/', ' / ')}: {r:.3f}" for name, r in ratios.items())
    lines.append(f"{pairs} (medians of per-round ratios)")
    return "\n".join(lines) + "\n"


PROG = "python benchmarks/torch_peer.py"
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass
class Flags:
    """The flags of ``python benchmarks/torch_peer.py``."""

    config: Literal[overhead.BERT_CONFIGS] | None = config_field(
        None,
        "model config of benchmarks/_lib/overhead.py's CONFIGS (BERT ones); "
        "default minilm-l6, bert-tiny with --quick",
    )
    quick: bool = config_field(
        False, "smoke run: bert-tiny, 5 rounds, 1 warm-up call (explicit flags still win)"
    )
    steps: int | None = config_field(None, "timed interleaved rounds (default 20, 5 quick)")
    warmup: int | None = config_field(
        None, "untimed calls of each step before timing (default 2, 1 quick)"
    )
    device: Literal[DEVICES] = config_field(
        "auto",
        "torch device; auto is cuda when torch.cuda.is_available(), else cpu "
        "(JAX always uses its default device)",
    )
    threads: int | None = config_field(
        None,
        "torch.set_num_threads(N); default: leave torch's own default (on a busy "
        "CPU try 1, see the module docstring)",
    )
    seed: int = config_field(0, "seed of the model weights and the batch")
    out: Path | None = config_field(
        None, f"output folder (default {RESULTS}/<quick|full>-<cpu|gpu>)"
    )
    torch_compile: bool = config_field(
        True,
        "also time torch_dsgd under torch.compile (inductor; on CPU it needs a C++ "
        "compiler); off by default with --quick",
    )
    progress: bool = config_field(True, "a bar over the rounds")


def parse_args(argv: list[str]) -> Flags:
    """The flags ``argv`` ask for, with the defaults that depend on --quick and the
    machine filled in. A bad flag prints one line ``prog: error: ...`` and exits with 2."""
    args = parse(Flags, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    if args.config is None:
        args.config = "bert-tiny" if args.quick else "minilm-l6"
    if args.steps is None:
        args.steps = 5 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    named = {a.split("=")[0].replace("-", "_") for a in argv}
    if args.quick and not named & {"__torch_compile", "__no_torch_compile"}:
        args.torch_compile = False
    if args.steps < 1:
        usage_error(PROG, f"--steps={args.steps}: need at least 1 timed round")
    if args.warmup < 0:
        usage_error(PROG, f"--warmup={args.warmup}: must be 0 or more")
    if args.threads is not None and args.threads < 1:
        usage_error(PROG, f"--threads={args.threads}: must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        usage_error(
            PROG,
            f"--device=cuda, but torch {torch.__version__} sees no CUDA device; "
            "use --device=cpu or auto",
        )
    if args.out is None:
        kind = "gpu" if args.device == "cuda" else "cpu"
        args.out = RESULTS / f"{'quick' if args.quick else 'full'}-{kind}"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = overhead.CONFIGS[args.config]
    config = BertConfig.preset(spec.preset)
    jax_platform = jax.default_backend()
    if (jax_platform == "cpu") != (device.type == "cpu"):
        print(f"warning: JAX runs on {jax_platform} but torch on {device.type}; not a peer test")

    print(f"{args.config}: {spec.describe()}; torch on {device}, JAX on {jax_platform}")
    print("checking the torch model against the JAX model (eval mode, copied weights)")
    torch.manual_seed(args.seed)
    torch_model = TorchBertClassifier(config, spec.num_classes).to(device)
    check, torch_batch = check_equivalence(spec, torch_model, device, args.seed)
    print(
        f"  {check['params_copied']} tensors copied; max |logit diff| "
        f"{check['max_abs_logit_diff']:.2e} (logits up to {check['max_abs_logit']:.2f}), "
        f"max |[CLS] feature diff| {check['max_abs_cls_feature_diff']:.2e}, "
        f"|DSGD loss diff| {check['dsgd_loss_abs_diff']:.2e}"
    )
    require_same_logits(check)

    print(f"compiling jax_adamw, jax_dsgd and jax_dsgd_dropout16 ({spec.describe()})")
    prepared = {
        name: overhead.prepare(spec, variant, seed=args.seed, dropout_bits=bits, dropout=on)
        for name, variant, bits, on in JAX_VARIANTS
    }
    for name, p in prepared.items():
        print(f"  {name}: compiled in {p.compile_s:.1f} s")
    steps = {
        **{name: p.step for name, p in prepared.items()},
        "torch_adamw": make_torch_step(
            copy.deepcopy(torch_model), torch_batch, dsgd=False, device=device
        ),
        "torch_dsgd": make_torch_step(torch_model, torch_batch, dsgd=True, device=device),
        "torch_dsgd_nodropout": make_torch_step(
            copy.deepcopy(torch_model), torch_batch, dsgd=True, device=device, dropout=False
        ),
    }
    compiled: dict[str, Any] = {}
    if args.torch_compile:
        print("compiling torch_dsgd_compiled (torch.compile, first call)")
        step, compiled = compiled_step(torch_model, torch_batch, device)
        if step is None:
            print(f"  left out: {compiled['torch_compile_error']}")
        else:
            steps["torch_dsgd_compiled"] = step
            print(
                f"  compiled in {compiled['torch_compile_first_call_s']:.1f} s; max |logit "
                f"diff| against eager {compiled['torch_compile_logit_diff']:.2e}"
            )
    assert tuple(steps) == tuple(name for name in ORDER if name in steps)
    print(
        f"timing {args.steps} interleaved rounds of {', '.join(steps)} "
        f"after {args.warmup} warm-up calls each (torch threads: {torch.get_num_threads()})"
    )
    with timing.rounds_bar(args.steps, "timed rounds", args.progress) as bar:
        times = timing.interleaved(
            steps, steps=args.steps, warmup=args.warmup, on_round=lambda _: bar.update()
        )
    summary = timing.summarize(times, baseline=BASELINE)
    ratios = {
        pair: timing.summarize(times, baseline=pair.split("/")[1])[pair.split("/")[0]][
            "ratio_median"
        ]
        for pair in RATIOS
        if all(name in steps for name in pair.split("/"))
    }
    for name, p in prepared.items():
        summary[name].update(compile_s=p.compile_s, xla_memory=p.memory)

    machine = {
        **machine_info(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": str(device),
        "jax_backend": jax_platform,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        machine["torch_device_name"] = torch.cuda.get_device_name(device)
    result = {
        "command": "python benchmarks/torch_peer.py " + " ".join(argv),
        "machine": machine,
        "config": args.config,
        "spec": dataclasses.asdict(spec),
        "description": spec.describe(),
        "bert_config": dataclasses.asdict(config),
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
        "torch_dsgd_lambda": LAMBDA,
        "total_updates": TOTAL_UPDATES,
        **check,
        **compiled,
        "baseline": BASELINE,
        "ratios": ratios,
        "variants": summary,
        "compile_s": {name: p.compile_s for name, p in prepared.items()},
        "times_s": times,
        "peak_rss_bytes": timing.peak_rss_bytes(),
    }
    if device.type == "cuda":
        result["torch_cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    table = markdown_table(summary, ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "table.md").write_text(
        f"{spec.describe()}; {machine['device']} ({machine['cpu']}, {machine['cores']} cores), "
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads), "
        f"jax {machine['jax']}\n\n{table}"
    )
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, JAX device {machine['device']}, "
        f"jax {machine['jax']}, torch {torch.__version__} on {device} "
        f"({torch.get_num_threads()} threads)"
    )
    print(table)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'table.md'}")
    return 0 if all(math.isfinite(r) for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
