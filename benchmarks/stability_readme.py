"""Rewrites the seed-stability results of docs/results/stability.md, and the README's
summary of them, from benchmarks/results/stability/*/results.json.

    python benchmarks/stability_readme.py

Run it after committing a protocol run (benchmarks/stability.py); the test suite
checks that the page's block and the README's summary equal what this writes.
"""

import sys
from pathlib import Path

from _lib.stability_readme import update_readme

if __name__ == "__main__":
    print(update_readme(Path(__file__).resolve().parents[1]))
    sys.exit(0)
