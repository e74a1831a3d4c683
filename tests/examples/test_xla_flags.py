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
