"""DSGD: the correct examples' losses weigh lambda(t), rising over training (0 -> beta).

lambda(t) is read off the optimizer's update count (:func:`dsgd_jax.step_count`),
so it counts optimizer updates, not micro-batches, under gradient accumulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax

import dsgd_jax
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.methods.base import Method

__all__ = ["DSGD", "SCALERS", "DSGDConfig"]

SCALERS = ("linear", "cosine", "descending", "constant")
"""The lambda(t) schedules of ``--scaler`` (``constant`` holds ``beta`` throughout)."""


@dataclasses.dataclass
class DSGDConfig:
    """dsgd's settings: the schedule of lambda(t) and its final value.

    Fields (and flags) of every example's config.
    """

    scaler: Literal[SCALERS] = config_field("linear", "lambda(t) schedule for dsgd")
    beta: float = config_field(1.0, "final lambda (the constant for scaler=constant)")


class DSGD(Method):
    """DSGD with the ``scaler`` schedule of lambda(t) up to ``beta``."""

    name = "dsgd"
    config = DSGDConfig

    def validate(self, config) -> None:
        if config.method == self.name:
            self.scaler(config, 1)  # beta's checks live in the core scalers

    def scaler(self, config, total_updates: int) -> Callable[[jax.Array], jax.Array]:
        if config.scaler == "constant":
            return dsgd_jax.constant_scaler(config.beta)
        make = {
            "linear": dsgd_jax.linear_scaler,
            "cosine": dsgd_jax.cosine_scaler,
            "descending": dsgd_jax.descending_scaler,
        }[config.scaler]
        return make(config.beta, total_updates)
