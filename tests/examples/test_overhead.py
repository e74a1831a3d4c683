"""The step-time benchmark: interleaving, statistics against NumPy, and --quick's files."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from _helpers import load_benchmark

from _lib import overhead, overhead_readme, timing


def _script():
    # Imported (benchmarks/ is on the path, see conftest.py), so that its flags' dataclass
    # finds its module in sys.modules.
    return load_benchmark("step_overhead")


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


def test_median_interval_uses_the_binomial_order_statistics():
    # Hand-computed: P(Binomial(20, 1/2) <= 5) = (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20,
    # so [x(6), x(15)] is the narrowest interval with coverage >= 95%; x(7)..x(14) has 88.5%.
    values = list(np.random.default_rng(1).permutation(np.arange(1.0, 21.0)))
    assert timing.median_interval(values) == pytest.approx((6.0, 15.0, 1 - 2 * 21700 / 2**20))
    # n = 10: P(B <= 1) = 11/1024 gives [x(2), x(9)]; P(B <= 2) = 56/1024 is too much.
    assert timing.median_interval(list(range(10, 0, -1))) == pytest.approx((2, 9, 1 - 22 / 1024))
    # n = 5 cannot reach 95%: the whole range, with its coverage 1 - 2/32.
    assert timing.median_interval([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0, 0.9375)
    # At 50%: P(B <= 7) = 0.132 keeps [x(8), x(13)]; P(B <= 8) = 0.252 would leave 49.7%.
    assert timing.median_interval(list(range(20)), confidence=0.5)[:2] == (7, 12)


def test_median_interval_covers_the_median_as_often_as_it_says():
    # Independent check by simulation: skewed data whose median is known (ln 2).
    rng = np.random.default_rng(0)
    draws = rng.exponential(1.0, (4000, 20))
    held = [low <= np.log(2) <= high for low, high, _ in map(timing.median_interval, draws)]
    coverage = timing.median_interval(draws[0])[2]
    assert np.mean(held) == pytest.approx(coverage, abs=0.012)  # about 4 standard errors


def test_summary_interval_is_the_sorted_ratios_sixth_and_fifteenth():
    rng = np.random.default_rng(2)
    base = rng.uniform(1.0, 2.0, 20)
    other = base * rng.uniform(0.9, 1.3, 20)
    s = timing.summarize({"base": list(base), "other": list(other)}, baseline="base")["other"]
    ordered = np.sort(other / base)
    assert (s["ratio_ci_low"], s["ratio_ci_high"]) == pytest.approx((ordered[5], ordered[14]))
    assert s["ratio_ci_low"] <= s["ratio_median"] <= s["ratio_ci_high"]


def test_verdict_reads_the_control_and_the_interval():
    base = [10.0, 11.0, 12.0, 13.0, 14.0]
    result = {
        "machine": {"device": "cpu"},
        "configs": {
            "m": {
                "variants": {
                    "adamw": {"flops": 2.0},
                    "dsgd": {"flops": 2.0, "hlo_diff_vs_adamw": {"fusion f32[8]": 2}},
                    "adamw-copy": {"hlo_diff_vs_adamw": {}},
                },
                "times_s": {
                    "adamw": base,
                    # ratios 1.05, 1.04, 1.03, 1.06, 1.07: all above 1
                    "dsgd": [10.5, 11.44, 12.36, 13.78, 14.98],
                    # ratios 0.99, 1.02, 1.0, 1.01, 0.98
                    "adamw-copy": [9.9, 11.22, 12.0, 13.13, 13.72],
                },
            }
        },
    }
    text = overhead_readme.verdict(result)
    assert "DSGD/AdamW 1.050 (misses the CPU target 1.02;" in text
    assert "[1.030, 1.070], excludes 1" in text
    assert "XLA flops DSGD/AdamW 1.0000" in text
    assert "the control, AdamW compiled twice, reads 1.000 (" in text
    assert "[0.980, 1.020], holds 1" in text
    assert "differs from AdamW's in 1 instruction kind (opcode and shape, count against " in text
    assert "AdamW's: fusion f32[8] +2)" in text
    assert "the control's optimized program has the same instructions as AdamW's" in text


HLO = """HloModule jit_step, is_scheduled=true

%fused_computation (param_0.2: f32[4,3]) -> f32[] {
  %param_0.2 = f32[4,3]{1,0} parameter(0)
  ROOT %reduce.0 = f32[] reduce(%param_0.2, %c), dimensions={0,1}, to_apply=%add
}

ENTRY %main.2 (x.1: f32[4,3], y.1: f32[3,2]) -> (f32[], f32[4,2]) {
  %x.1 = f32[4,3]{1,0} parameter(0), metadata={op_name="x"}
  %y.1 = f32[3,2]{1,0} parameter(1), metadata={op_name="y"}
  %fusion.1 = f32[] fusion(%x.1), kind=kLoop, calls=%fused_computation
  %fusion.2 = f32[] fusion(%y.1), kind=kLoop, calls=%fused_computation
  %dot.1 = f32[4,2]{1,0} dot(%x.1, %y.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tuple.1 = (f32[], f32[4,2]{1,0}, /*index=2*/s32[]) tuple(%fusion.1, %dot.1, %c)
}
"""


def test_hlo_entry_ops_counts_the_entry_computation_only():
    ops = overhead.hlo_entry_ops(HLO)
    # By hand: the fused computation's parameter and reduce are not counted.
    assert ops == {
        "parameter f32[4,3]": 1,
        "parameter f32[3,2]": 1,
        "fusion f32[]": 2,
        "dot f32[4,2]": 1,
        "tuple tuple/3": 1,
    }
    other = overhead.hlo_entry_ops(HLO.replace("%fusion.2 = f32[] fusion", "%f = s32[8] copy"))
    assert overhead.hlo_difference(ops, other) == {"copy s32[8]": 1, "fusion f32[]": -1}
    assert overhead.hlo_difference(ops, ops) == {}
    with pytest.raises(ValueError, match="no ENTRY"):
        overhead.hlo_entry_ops("HloModule m")


def test_the_control_compiles_to_the_same_program_as_adamw():
    spec = overhead.CONFIGS["bert-tiny"]
    adamw, copy = (overhead.prepare(spec, v) for v in ("adamw", overhead.CONTROL))
    assert sum(adamw.hlo_ops.values()) > 100
    assert overhead.hlo_difference(adamw.hlo_ops, copy.hlo_ops) == {}
    assert copy.flops == adamw.flops


def test_timing_errors():
    with pytest.raises(ValueError, match="steps=0"):
        timing.interleaved({"a": lambda: None}, steps=0)
    with pytest.raises(ValueError, match="variants is empty"):
        timing.interleaved({}, steps=1)
    with pytest.raises(ValueError, match="baseline='x'"):
        timing.summarize({"a": [1.0]}, baseline="x")
    with pytest.raises(ValueError, match=r"confidence=1\.5"):
        timing.median_interval([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="empty"):
        timing.median_interval([])
    with pytest.raises(ValueError, match="b has 1 rounds"):
        timing.summarize({"a": [1.0, 2.0], "b": [1.0]}, baseline="a")


def test_benchmark_errors(capsys):
    with pytest.raises(ValueError, match="unknown configs"):
        overhead.run_benchmark(["bert-huge"])
    with pytest.raises(ValueError, match="include 'adamw'"):
        overhead.run_benchmark(["bert-tiny"], variants=["dsgd"])
    with pytest.raises(ValueError, match="at most once"):
        overhead.run_benchmark(["bert-tiny"], variants=["adamw", "adamw"])
    with pytest.raises(ValueError, match="variant='sgd'"):
        overhead.prepare(overhead.CONFIGS["bert-tiny"], "sgd")
    script = _script()
    for argv, message in [
        (["--configs=bert-huge"], "--configs: unknown ['bert-huge']; choose from bert-tiny"),
        (["--steps=-1"], "--steps=-1: give at least 1 timed round"),
        (["--warmup=-1"], "--warmup=-1: give 0 or more"),
        (["--dtype=float16"], "--dtype='float16' is not one of float32, bfloat16"),
    ]:
        with pytest.raises(SystemExit) as e:
            script.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith("python benchmarks/step_overhead.py: error: " + message), err
    for bad in ("dsgd", "adamw,sgd", "adamw,dsgd,dsgd"):
        with pytest.raises(SystemExit) as e:
            script.parse_args([f"--variants={bad}"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"{script.PROG}: error: --variants: "), err
    args = script.parse_args(["--variants=adamw,adamw-copy,dsgd"])
    assert args.variants == ["adamw", "adamw-copy", "dsgd"]
    assert script.parse_args([]).variants == list(overhead.VARIANTS)


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
            assert s["ratio_ci_low"] <= s["ratio_median"] <= s["ratio_ci_high"]
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
        # The instructions DSGD's compiled program has that AdamW's lacks (or the
        # reverse) are the output tuple (DSGD returns lambda and the fraction correct
        # too) or act on arrays no larger than the [batch, classes] logits: nothing
        # of the size of an activation ([batch, seq, ...]) or a weight matrix.
        spec = entry["spec"]
        logits_size = spec["batch_size"] * spec["num_classes"]
        diff = entry["variants"]["dsgd"]["hlo_diff_vs_adamw"]
        assert diff, "the two programs should differ at least in their outputs"
        for kind in diff:
            shape = kind.split(" ", 1)[1]
            if shape.startswith("tuple/"):
                continue
            dims = re.fullmatch(r"[a-z]+\d*\[([\d,]*)\]", shape)
            assert dims, kind
            size = math.prod(int(d) for d in dims.group(1).split(",") if d)
            assert size <= logits_size, kind
        assert entry["variants"]["pcgrad"]["hlo_kinds_differing"] > 5


def test_the_peer_paragraph_reports_the_compiled_torch_step_or_why_it_is_missing():
    sentence = overhead_readme._compiled_sentence
    timed = {
        "variants": {"torch_dsgd_compiled": {"median_s": 0.0308}},
        "ratios": {"torch_dsgd_compiled/torch_dsgd": 1.325, "jax_dsgd/torch_dsgd_compiled": 0.471},
        "torch_compile_first_call_s": 44.04,
    }
    numbers = re.findall(r"\d+(?:\.\d+)?", sentence(timed))
    assert numbers == ["44", "30.8", "1.32", "0.47"]  # 1.325 is stored just below 1.325
    failed = {"variants": {}, "ratios": {}, "torch_compile_error": "InductorError: no cc"}
    assert "InductorError: no cc" in sentence(failed)
    assert "torch.compile" in sentence({"variants": {}, "ratios": {}})


def test_the_step_profile_paragraph_orders_parts_by_their_gap():
    r = {
        "command": "python benchmarks/step_profile.py",
        "description": "toy",
        "machine": {"cpu": "cpu", "cores": "2", "load_average_1_5_15": [0.5, 0.4, 0.3]},
        "threads": 1,
        "steps": 3,
        # gaps JAX - PyTorch: a +10, b -30, c +200, d +0.5 (left out), e -4
        "jax": {"op_ms_per_step": 400.0, "parts_ms": {"a": 20, "b": 70, "c": 300, "d": 1, "e": 9}},
        "torch": {
            "op_ms_per_step": 250.0,
            "parts_ms": {"a": 10, "b": 100, "c": 100, "d": 0.5, "e": 13},
        },
    }
    text = overhead_readme.step_profile_paragraph(r, "t.md")
    assert "JAX/PyTorch 1.60" in text  # 400 / 250
    slower, faster = text.split("JAX spends more on ")[1].split(", and less on ")
    assert re.findall(r"(\w) (\d+) against (\d+)", slower) == [
        ("c", "300", "100"),
        ("a", "20", "10"),
    ]
    assert re.findall(r"(\w) (\d+) against (\d+)", faster) == [("b", "70", "100"), ("e", "9", "13")]


def test_the_xla_flags_paragraph_names_the_sets_that_are_faster_with_the_same_bits():
    def s(median, low, high):
        return {"ratio_median": median, "ratio_ci_low": low, "ratio_ci_high": high}

    r = {
        "command": "python benchmarks/xla_flags.py",
        "description": "toy",
        "machine": {"cpu": "cpu", "cores": "2"},
        "steps": 10,
        "baseline": "default",
        "variants": {
            "default": s(1.0, 1.0, 1.0),
            "a": s(0.9, 0.85, 0.95),  # faster, same bits
            "b": s(0.8, 0.7, 0.9),  # faster, other bits
            "c": s(1.01, 0.97, 1.04),  # within noise
        },
        "option_sets": {
            "default": {"max_param_diff": 0.0},
            "a": {"max_param_diff": 0.0},
            "b": {"max_param_diff": 3e-7},
            "c": {"max_param_diff": 0.0},
        },
        "failed": {"d": "No such compile option"},
    }
    text = overhead_readme.xla_flags_paragraph(r)
    assert text.endswith("Faster with the same bits: a.")
    assert "3.0e-07" in text and "Not known to this XLA: d." in text
    r["option_sets"]["a"]["max_param_diff"] = 1e-9
    assert overhead_readme.xla_flags_paragraph(r).endswith(
        "No option set is faster than the default while computing the same bits."
    )
