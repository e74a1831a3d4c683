"""benchmarks/xla_flags.py: its flags, the parameter comparison and a --quick run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import load_benchmark


def _script():
    return load_benchmark("xla_flags")


def test_max_difference_compares_float_leaves_only():
    script = _script()
    a = {"w": np.array([1.0, 2.0, 3.0]), "step": np.array(7), "b": np.float32(0.5)}
    b = {"w": np.array([1.0, 2.5, 2.75]), "step": np.array(9), "b": np.float32(0.25)}
    assert script.max_difference(a, b) == 0.5  # |2 - 2.5|; the int leaf is not compared
    assert script.max_difference(a, a) == 0.0


@pytest.mark.parametrize(
    "argv",
    [["--options=default,nope"], ["--options=xnnpack,default"], ["--options=default,default"]],
)
def test_bad_option_lists_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_quick_run_times_each_known_set_and_leaves_out_an_unknown_one(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setitem(script.OPTION_SETS, "bogus", {"xla_cpu_no_such_option": True})
    out = tmp_path / "flags"
    argv = ["--quick", "--options=default,fast_math,bogus", "--steps=2", "--warmup=0"]
    assert script.main([*argv, "--no-progress", f"--out={out}"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["variants"]) == {"default", "fast_math"}
    assert "bogus" in result["failed"]
    assert {k: len(v) for k, v in result["times_s"].items()} == {"default": 2, "fast_math": 2}
    sets = result["option_sets"]
    assert sets["default"]["max_param_diff"] == 0.0
    # fast math may move the parameters, but only by rounding-sized amounts.
    assert 0.0 <= sets["fast_math"]["max_param_diff"] < 1e-4
    assert result["variants"]["default"]["ratio_median"] == 1.0
    assert (out / "table.md").read_text().count("\n| ") == 3  # header + 2 sets


def test_the_examples_cpu_options_compute_the_same_bits_as_xlas_defaults():
    import jax

    from _lib import overhead

    spec = overhead.CONFIGS["bert-tiny"]
    xla_default = overhead.prepare(spec, "dsgd", seed=0, compiler_options={})
    examples = overhead.prepare(spec, "dsgd", seed=0)  # runs.compiler_options()
    for _ in range(3):
        xla_default.step()
        examples.step()
    for a, b in zip(
        jax.tree.leaves(xla_default.state()), jax.tree.leaves(examples.state()), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("num", [1, 3])
def test_over_seeds_compiles_with_the_examples_options(num, monkeypatch):
    import jax.numpy as jnp

    from dsgd_jax.examples import runs

    x = jnp.ones((num, 4))
    assert float(runs.over_seeds(lambda x: 2 * x, num)(x).sum()) == 8 * num
    # An option XLA does not know makes the compilation fail: the options reach it.
    monkeypatch.setattr(runs, "compiler_options", lambda: {"xla_cpu_no_such_option": True})
    with pytest.raises(Exception, match="xla_cpu_no_such_option"):
        runs.over_seeds(lambda x: 2 * x, num)(x)
