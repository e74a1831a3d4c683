"""The benchmarks' own library: what the scripts in ``benchmarks/`` share and users of
``dsgd_jax`` do not need, so it is not installed with the package.

- :mod:`_lib.readme`: the one writer of the generated blocks of the README and the
  documentation pages (``docs/``), and where each block lives;
- :mod:`_lib.stability_readme` and :mod:`_lib.overview`: the seed-stability block
  and the overview across protocol runs; :mod:`_lib.summary`: the README's results
  at a glance;
- :mod:`_lib.overhead`, :mod:`_lib.overhead_readme` and :mod:`_lib.timing`: the
  step-overhead benchmark (compiled steps, HLO diffs, interleaved timing) and its
  block of the performance page;
- :mod:`_lib.probe`: linear probes on frozen features.

The scripts import it as ``_lib`` (their folder is first on ``sys.path``); the
tests put ``benchmarks/`` on the path in the root ``conftest.py``.
"""
