"""Test-wide settings, applied before any test or doctest runs JAX.

8 fake CPU devices for the data-parallel tests, and a deterministic hypothesis
profile. Strict dtype and rank promotion for the unit tests is in
tests/conftest.py.
"""

import jax
from hypothesis import settings

jax.config.update("jax_num_cpu_devices", 8)

settings.register_profile("dsgd", deadline=None, max_examples=40, derandomize=True, database=None)
settings.load_profile("dsgd")
