"""Strict JAX for the unit tests, as equinox's tests do.

dsgd_jax's own code runs under strict dtype promotion and with rank promotion
as an error. optax itself is not written for strict promotion (its Adam bias
correction raises a float to an int32 power), so the tests run optimizer
updates inside ``_helpers.standard_promotion``.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield
