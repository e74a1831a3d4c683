"""FFT: plain fine-tuning, every example weighs 1 (the hooks' defaults)."""

from __future__ import annotations

from dsgd_jax.examples.methods.base import Method

__all__ = ["FFT"]


class FFT(Method):
    """Plain fine-tuning: cross-entropy over the batch, the examples' optimizer."""

    name = "fft"
