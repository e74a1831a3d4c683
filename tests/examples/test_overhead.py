"""The step-time benchmark: interleaving, statistics against NumPy, and --quick's files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dsgd_jax.examples import overhead, timing

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "step_overhead", ROOT / "benchmarks" / "step_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_warms_up_then_alternates():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved(variants, steps=3, warmup=2)
    warmup = ["a", "a", "b", "b", "c", "c"]
    assert calls == [*warmup, "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_interleaved_reports_each_round_after_its_calls():
    calls, rounds = [], []
    variants = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    timing.interleaved(
        variants, steps=3, warmup=1, on_round=lambda k: rounds.append((k, len(calls)))
    )
    # Two warm-up calls, then two calls per round before each report.
    assert rounds == [(1, 4), (2, 6), (3, 8)]


def test_summary_statistics_match_numpy():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 21)
    other = base * rng.uniform(0.9, 1.3, 21)
    s = timing.summarize({"base": list(base), "other": list(other)}, baseline="base")
    assert s["other"]["median_s"] == pytest.approx(np.median(other))
    q25, q75 = np.percentile(other, [25, 75])
    assert (s["other"]["q25_s"], s["other"]["q75_s"]) == pytest.approx((q25, q75))
    assert s["other"]["iqr_s"] == pytest.approx(q75 - q25)
    ratios = other / base
    assert s["other"]["ratio_median"] == pytest.approx(np.median(ratios))
    assert s["other"]["ratio_q75"] == pytest.approx(np.percentile(ratios, 75))
    assert s["base"]["ratio_median"] == 1.0
    # The per-pair median is not the ratio of the medians.
    assert s["other"]["ratio_median"] != pytest.approx(np.median(other) / np.median(base))


def test_timing_errors():
    with pytest.raises(ValueError, match="steps=0"):
        timing.interleaved({"a": lambda: None}, steps=0)
    with pytest.raises(ValueError, match="variants is empty"):
        timing.interleaved({}, steps=1)
    with pytest.raises(ValueError, match="baseline='x'"):
        timing.summarize({"a": [1.0]}, baseline="x")
    with pytest.raises(ValueError, match="b has 1 rounds"):
        timing.summarize({"a": [1.0, 2.0], "b": [1.0]}, baseline="a")


def test_benchmark_errors():
    with pytest.raises(ValueError, match="unknown configs"):
        overhead.run_benchmark(["bert-huge"])
    with pytest.raises(ValueError, match="include 'adamw'"):
        overhead.run_benchmark(["bert-tiny"], variants=["dsgd"])
    with pytest.raises(ValueError, match="variant='sgd'"):
        overhead.prepare(overhead.CONFIGS["bert-tiny"], "sgd")
    script = _script()
    with pytest.raises(SystemExit):
        script.parse_args(["--configs=bert-huge"])
    with pytest.raises(SystemExit):
        script.parse_args(["--steps=-1"])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("step_overhead") / "quick"
    assert _script().main(["--quick", "--steps=2", "--warmup=1", f"--out={out}"]) == 0
    return out


def test_quick_run_writes_the_files(quick):
    result = json.loads((quick / "results.json").read_text())
    assert result["steps"] == 2 and result["command"].endswith(f"--out={quick}")
    assert {"cpu", "cores", "device", "jax", "optax", "flax"} <= set(result["machine"])
    assert list(result["configs"]) == list(overhead.QUICK)
    for entry in result["configs"].values():
        assert list(entry["variants"]) == list(overhead.VARIANTS)
        assert {len(t) for t in entry["times_s"].values()} == {2}
        for name, s in entry["variants"].items():
            times = entry["times_s"][name]
            assert s["median_s"] == pytest.approx(np.median(times))
            assert s["compile_s"] > 0 and s["memory"]["argument"] > 0
        assert entry["variants"]["adamw"]["ratio_median"] == 1.0
        assert entry["peak_rss_bytes"] > 0
    table = (quick / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(overhead.QUICK) * len(overhead.VARIANTS)
    assert (quick / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dsgd_adds_no_model_work_and_pcgrad_a_backward_pass(quick):
    # XLA's own flop count of each compiled step: DSGD's extra work is an argmax,
    # a compare and a multiply on [batch, classes]; PCGrad's is a second backward.
    for entry in json.loads((quick / "results.json").read_text())["configs"].values():
        flops = {v: s["flops"] for v, s in entry["variants"].items()}
        assert flops["adamw"] > 0
        assert flops["dsgd"] / flops["adamw"] == pytest.approx(1.0, abs=0.01)
        assert flops["pcgrad"] / flops["adamw"] > 1.3
        assert flops["dsgd+diagnostics"] / flops["adamw"] > 1.5
