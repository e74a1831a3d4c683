"""Test-wide JAX settings: 8 fake CPU devices, set before any test or doctest runs JAX.

Strict dtype and rank promotion for the unit tests is in tests/conftest.py.
"""

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_num_cpu_devices", 8)

settings.register_profile("dsgd", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("dsgd")


@pytest.fixture(autouse=True)
def _numpy_print_options(doctest_namespace):
    """Doctests print arrays with numpy's default options."""
    with np.printoptions(legacy=False):
        yield
