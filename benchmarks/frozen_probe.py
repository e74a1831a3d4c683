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

import argparse
import json
import sys
from pathlib import Path

from _lib.probe import probe_report
from dsgd_jax.examples.stability import EXAMPLES, example_config, machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "frozen_probe"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", choices=sorted(EXAMPLES), required=True)
    parser.add_argument("--l2", type=float, default=1e-2, help="probe's L2 penalty on weights")
    parser.add_argument(
        "--max_steps", type=int, default=10_000, help="the probe's cap on L-BFGS iterations"
    )
    parser.add_argument("--out", type=Path, help="JSON file; default results/frozen_probe/...")
    args, rest = parser.parse_known_args(argv)
    try:
        config = example_config(args.example, rest, "frozen_probe")
        report = probe_report(config, seed=config.seed, l2=args.l2, max_steps=args.max_steps)
    except (ValueError, OSError) as e:
        print(f"frozen_probe: {e}", file=sys.stderr)
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
