"""The paper's seed-stability protocol: 10 seeds x methods, resumable, with table and plots.

    python benchmarks/stability.py --example=bert --task=drugs --methods=fft,dsgd \
        --seeds=10 --out=benchmarks/results/stability/bert-drugs --learning_rate=1e-4

Every flag besides the protocol's own is a field of the example's config. A run
that finished is not redone when the command is started again; an interrupted
one resumes from its last checkpoint. See dsgd_jax/examples/stability.py.
"""

import sys

from dsgd_jax.examples.stability import cli

if __name__ == "__main__":
    sys.exit(cli())
