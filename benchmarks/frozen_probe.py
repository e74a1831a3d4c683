"""Linear probes on a pretrained example model's frozen features, against the majority class.

    python benchmarks/frozen_probe.py --example=bert --task=drugs --max_length=64
    python benchmarks/frozen_probe.py --example=vit --imbalance=longtail --ratio=100

Builds the example's model as a run would (pretrained weights, new head), keeps
everything frozen, and fits a multinomial logistic regression (NumPy) on the
training split's ``features`` (BERT's [CLS] state, the ViT's class token) and
``head_input`` (what the new classifier sees: BERT's pooler output, the ViT's
encoder_norm). Prints the test accuracy of both next to the majority-class rate
and writes ``benchmarks/results/frozen_probe/<example>-<task>.json``. It shows how
far a method that barely moves the encoder (LoRA at a small rank) can get.
Any further flag is a field of the example's config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

from _lib.probe import probe_report
from dsgd_jax.examples.cli import parse
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.stability import EXAMPLE_NAMES, example_config, machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "frozen_probe"


@dataclasses.dataclass
class Flags:
    """The probe's own flags; every other flag is a field of the example's config."""

    example: Literal[EXAMPLE_NAMES] = dataclasses.field(
        metadata={"help": "the example whose pretrained model is probed"}
    )
    l2: float = config_field(1e-2, "probe's L2 penalty on weights")
    max_steps: int = config_field(10_000, "the probe's cap on L-BFGS iterations")
    out: Path | None = config_field(None, "JSON file; default results/frozen_probe/...")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python benchmarks/frozen_probe.py"
    args, rest = parse(
        Flags, argv, prog=prog, description=__doc__.split("\n\n")[0], known_only=True
    )
    try:
        config = example_config(args.example, rest, prog)
        report = probe_report(config, seed=config.seed, l2=args.l2, max_steps=args.max_steps)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    report.update(
        example=args.example,
        command="python benchmarks/frozen_probe.py " + " ".join(argv),
        l2=args.l2,
        machine=machine_info(),
    )
    print(f"{args.example} {report['task']}: {report['train_examples']} train, "
          f"{report['test_examples']} test examples")  # fmt: skip
    print(f"  majority class ({report['majority_class']}): {report['majority_rate']:.2%}")
    for name, probe in report["probes"].items():
        print(
            f"  probe on frozen {name} ({probe['dimensions']} dims): test accuracy "
            f"{probe['test_accuracy']:.2%}, macro-F1 {probe['test_macro_f1']:.2%}, train "
            f"accuracy {probe['train_accuracy']:.2%}, predictions {probe['test_prediction_counts']}"
        )
        if not probe["converged"]:
            print(
                f"  warning: the {name} probe stopped after {probe['steps']} iterations with a "
                f"gradient of {probe['final_gradient']:.1e}, short of its optimum"
            )
    out = args.out or RESULTS / f"{args.example}-{report['task']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
