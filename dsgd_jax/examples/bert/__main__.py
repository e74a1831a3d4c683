"""``python -m dsgd_jax.examples.bert``: fine-tune a BERT-style encoder with DSGD or FFT."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.cli import main as cli_main

DESCRIPTION = (
    "Fine-tune a BERT-style encoder (default: the bundled MiniLM-L6) on a text "
    "classification task (default: drug reviews) with DSGD or plain fine-tuning (FFT)."
)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(
        BertExampleConfig, argv, prog="python -m dsgd_jax.examples.bert", description=DESCRIPTION
    )


if __name__ == "__main__":
    sys.exit(main())
