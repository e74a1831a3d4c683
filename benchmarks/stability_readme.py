"""Rewrites README.md's seed-stability results from benchmarks/results/stability/*/results.json.

    python benchmarks/stability_readme.py

Run it after committing a protocol run (benchmarks/stability.py); the test suite
checks that the README's section equals what this writes.
"""

import sys
from pathlib import Path

from _lib.stability_readme import update_readme

if __name__ == "__main__":
    print(update_readme(Path(__file__).resolve().parents[1]))
    sys.exit(0)
