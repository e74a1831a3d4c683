"""Rewrites the performance results of docs/results/performance.md, and the README's
summary line, from benchmarks/results/step_overhead/*/results.json.

    python benchmarks/performance_readme.py

Run it after committing a benchmarks/step_overhead.py run; the test suite checks
that the page's block and the README's summary equal what this writes.
"""

import sys
from pathlib import Path

from _lib.overhead_readme import update_readme

if __name__ == "__main__":
    print(update_readme(Path(__file__).resolve().parents[1]))
    sys.exit(0)
