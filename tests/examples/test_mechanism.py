"""The gradient-cancellation demonstration (benchmarks/mechanism.py) against references."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import load_benchmark

import dsgd_jax

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mech():
    return load_benchmark("mechanism")


@pytest.fixture(scope="module")
def result(mech):
    return mech.demonstrate()


def test_per_example_gradients_match_finite_differences(mech):
    theta = np.array([0.7, -0.2])

    def losses(t):
        z = t[0] * mech.X + t[1]
        return np.logaddexp(0.0, z) - mech.Y * z

    eps = 1e-6
    numeric = np.stack(
        [(losses(theta + eps * e) - losses(theta - eps * e)) / (2 * eps) for e in np.eye(2)],
        axis=1,
    )
    np.testing.assert_allclose(mech.per_example_grads(theta), numeric, atol=1e-8)


def test_at_ffts_fixed_point_the_two_groups_cancel_exactly(mech, result):
    assert result["total_gradient_norm"] < 1e-12
    assert np.linalg.norm(result["g_wrong"]) > 1.0  # far from zero on its own
    np.testing.assert_allclose(result["g_wrong"], -np.array(result["g_correct"]), atol=1e-12)
    assert result["cosine"] == pytest.approx(-1.0, abs=1e-12)
    # Collapsed: class 1 for every input, at the majority rate 8 of 10.
    assert result["fft_predicts_one_class"]
    assert result["fft_accuracy"] == result["majority_rate"] == 0.8


def test_plain_gradient_descent_does_not_move(result):
    assert result["largest_move"]["gd"] < 1e-12
    assert result["runs"]["gd"]["final_accuracy"] == 0.8


def test_dsgds_first_update_is_the_wrong_examples_gradient(mech, result):
    start = np.array(result["fft_fixed_point"])
    second = np.array(result["runs"]["dsgd_beta1"]["theta"][1])
    # Two-pass reference: lambda(0) = 0, so the update is -lr * g_W / n.
    expected = start - mech.LR * np.array(result["g_wrong"]) / len(mech.X)
    np.testing.assert_allclose(second, expected, atol=1e-12)
    assert np.linalg.norm(second - start) > 0.05


def test_the_demonstration_uses_the_librarys_dsgd_gradient(mech, result):
    """At points along the path, dsgd_jax.make_dsgd_loss gives the same gradient."""
    loss = dsgd_jax.make_dsgd_loss(optax.softmax_cross_entropy_with_integer_labels)
    x, y = jnp.asarray(mech.X, jnp.float32), jnp.asarray(mech.Y, jnp.int32)

    def library(theta, lam):
        z = theta[0] * x + theta[1]
        logits = jnp.stack([jnp.zeros_like(z), z], axis=1)  # class 1 iff z > 0
        return loss(logits, y, scale=lam)

    grad = jax.jit(jax.grad(library))
    run = result["runs"]["dsgd_beta0.5"]
    for t in (0, 17, 120, 500):
        theta, lam = np.array(run["theta"][t]), run["lambda"][t]
        got = grad(jnp.asarray(theta, jnp.float32), jnp.float32(lam))
        np.testing.assert_allclose(got, mech.dsgd_gradient(theta, lam), rtol=1e-4, atol=1e-6)


def test_beta_one_returns_to_ffts_fixed_point_and_beta_half_does_not(mech, result):
    start = np.array(result["fft_fixed_point"])
    beta1, half = result["runs"]["dsgd_beta1"], result["runs"]["dsgd_beta0.5"]
    # Both leave the fixed point while lambda < 1 ...
    assert result["largest_move"]["dsgd_beta1"] > 0.5
    assert max(beta1["accuracy"][: mech.RAMP]) == 0.9  # the class-0 point at -0.9 right
    # ... beta = 1 ends where FFT ends, collapsed again;
    np.testing.assert_allclose(beta1["final_theta"], start, atol=1e-6)
    assert beta1["final_accuracy"] == 0.8
    # beta = 0.5 ends elsewhere: the boundary right of the class-0 point at -0.9.
    assert np.linalg.norm(np.array(half["final_theta"]) - start) > 0.2
    assert half["final_accuracy"] == 0.9 and half["final_boundary"] > -0.9


def _assert_same_numbers(a, b, path="result"):
    """Equal structure and equal values; floats to float64 rounding, which differs in the
    last digits between machines (NumPy's SIMD paths), near zero to 1e-12."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same_numbers(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_committed_result_is_what_the_script_computes(result):
    import json

    committed = json.loads((ROOT / "benchmarks/results/mechanism/mechanism.json").read_text())
    _assert_same_numbers(committed, json.loads(json.dumps(result)))
    assert (ROOT / "benchmarks/results/mechanism/mechanism.png").exists()


def test_the_method_page_block_is_generated_from_the_demonstration(mech, result):
    from _lib import readme

    assert readme.current(mech.MARKER, mech.readme_text(result)), "run benchmarks/mechanism.py"
