"""Test-wide settings, applied before any test or doctest runs JAX.

8 fake CPU devices for the data-parallel tests, ``benchmarks/`` on the path (for
its ``_lib``), a deterministic hypothesis profile, and a persistent compilation
cache for the session: the tests compile
the same tiny models' steps many times (in this process, in the processes they
start and in the notebooks' kernels), and a cache hit returns the very program
XLA compiled the first time. Each pytest-xdist worker keeps its own cache
folder, removed at exit, so no two workers write one file. Strict dtype and rank
promotion for the unit tests is in tests/conftest.py.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import jax
from hypothesis import settings

# The benchmarks' library (benchmarks/_lib), imported as the scripts import it.
sys.path.insert(0, str(pathlib.Path(__file__).parent / "benchmarks"))

jax.config.update("jax_num_cpu_devices", 8)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    _cache = tempfile.mkdtemp(prefix=f"dsgd-jax-test-cache-{worker}-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Every program is cached, however quick its compile or small its executable.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")),
)

settings.register_profile("dsgd", deadline=None, max_examples=40, derandomize=True, database=None)
settings.load_profile("dsgd")
