"""dsgd_jax: Dynamic Scaled Gradient Descent (DSGD) for JAX and Optax.

DSGD stabilises fine-tuning of classifiers by scaling down the loss of the
examples the model already classifies correctly by lambda(t), which rises from
0 to beta over training. It is a change of the loss line of a training step:

    scale = scaler(dsgd_jax.step_count(opt_state))
    loss = dsgd_loss(logits, labels, scale=scale)

References:
    Bui & Wang, *Dynamic Scaled Gradient Descent for Stable Fine-Tuning for
    Classifications*, arXiv 2604.27987, 2026.
"""

from dsgd_jax._correct import argmax_correct, sigmoid_correct
from dsgd_jax._diagnostics import (
    CollapseStats,
    GradientConflict,
    collapse_check,
    gradient_conflict,
    mean_pairwise_cosine,
)
from dsgd_jax._loss import DSGDAux, dsgd_weights, make_dsgd_loss, scaled_mean
from dsgd_jax._scalers import constant_scaler, cosine_scaler, descending_scaler, linear_scaler
from dsgd_jax._step import step_count

__version__ = "0.1.0"

__all__ = (
    "CollapseStats",
    "DSGDAux",
    "GradientConflict",
    "argmax_correct",
    "collapse_check",
    "constant_scaler",
    "cosine_scaler",
    "descending_scaler",
    "dsgd_weights",
    "gradient_conflict",
    "linear_scaler",
    "make_dsgd_loss",
    "mean_pairwise_cosine",
    "scaled_mean",
    "sigmoid_correct",
    "step_count",
)
