"""``python -m dsgd_jax.examples.vit [pretrain]``: fine-tune (or pretrain) a ViT."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dsgd_jax.examples.cli import main as cli_main
from dsgd_jax.examples.vit.config import PretrainConfig, ViTExampleConfig

DESCRIPTION = (
    "Fine-tune a Vision Transformer on an imbalanced image set with DSGD or plain "
    "fine-tuning (FFT). Default: a small ViT pretrained on Fashion-MNIST (pretrained "
    "first if not cached), fine-tuned on long-tailed MNIST-5k. `pretrain` as the first "
    "argument runs only the pretraining."
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        return cli_main(
            PretrainConfig,
            argv[1:],
            prog="python -m dsgd_jax.examples.vit pretrain",
            description="Pretrain a ViT from random weights on a whole dataset (plain "
            "training), for the fine-tuning runs to start from.",
        )
    return cli_main(
        ViTExampleConfig, argv, prog="python -m dsgd_jax.examples.vit", description=DESCRIPTION
    )


if __name__ == "__main__":
    sys.exit(main())
