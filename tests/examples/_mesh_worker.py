"""One process of the scale-out test: ``_mesh_worker.py N_DEVICES [BERT example flags]``.

Fakes N CPU devices for this process, then runs the BERT example's command line
(which starts ``jax.distributed`` when given --coordinator_address and friends).
"""

import sys


def main() -> int:
    import jax

    jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
    from dsgd_jax.examples.bert.__main__ import main as bert_main

    return bert_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
