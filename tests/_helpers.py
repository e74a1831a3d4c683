"""Shared pieces of the tests: a small MLP, NumPy references, promotion control."""

from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the scripts are not a package; the root
    conftest puts ``benchmarks/`` on the path, so they import as top-level modules, and
    their dataclasses can resolve their string annotations through ``sys.modules``)."""
    import importlib

    return importlib.import_module(name)


@contextlib.contextmanager
def standard_promotion():
    """Standard dtype promotion, for optax's own code (see tests/conftest.py)."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> dict:
    """Parameters of a tanh MLP with layer widths ``sizes``."""
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        key, k_w, k_b = jax.random.split(key, 3)
        params[f"w{i}"] = jax.random.normal(k_w, (n_in, n_out)) / np.sqrt(n_in)
        params[f"b{i}"] = 0.1 * jax.random.normal(k_b, (n_out,))
    return params


def mlp(params: dict, x: jax.Array) -> jax.Array:
    n_layers = len(params) // 2
    h = x
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"][None, :]
        if i < n_layers - 1:
            h = jnp.tanh(h)
    return h


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy per example, integer labels, in float64."""
    logp = np_log_softmax(logits)
    return -np.take_along_axis(logp, np.asarray(labels)[..., None], axis=-1)[..., 0]


def np_sigmoid_bce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def two_pass_grad(per_example_loss, params, wrong, correct, n, scale):
    """(1/n) * (sum_W grad l_i + scale * sum_C grad l_i) with two backward passes.

    ``wrong`` and ``correct`` are NumPy bool arrays of the loss's shape (already
    restricted to valid entries); ``per_example_loss(params)`` is a plain loss.
    """
    idx_w, idx_c = np.nonzero(wrong), np.nonzero(correct)
    g_w = jax.grad(lambda p: jnp.sum(per_example_loss(p)[idx_w]))(params)
    g_c = jax.grad(lambda p: jnp.sum(per_example_loss(p)[idx_c]))(params)
    scale, n = float(scale), float(n)
    return jax.tree.map(lambda a, b: (a + scale * b) / n, g_w, g_c)
