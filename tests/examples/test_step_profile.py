"""The op-by-op step profile: HLO source attribution, trace sums, the parts each op is
filed under, and a --quick --no-torch run of the script."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from _helpers import load_benchmark

from _lib import op_profile, overhead
from _lib.op_profile import Source

ROOT = Path(__file__).resolve().parents[2]

# A hand-written module in the shape compiled.as_text() prints: two instructions with a
# source, one without; the dot's op_name is under transpose(...), the add's is not.
HLO = """HloModule jit_f, is_scheduled=true

ENTRY %main.3 (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %dot.1 = f32[2,2]{1,0} dot(%p0, %p0), metadata={op_name="jit(f)/transpose(jvp())/dot_general" \
stack_frame_id=2}
  ROOT %add_fusion = f32[2,2]{1,0} fusion(%dot.1, %p0), kind=kLoop, calls=%fc, \
metadata={op_name="jit(f)/jvp()/add" stack_frame_id=3}
}

FileNames
1 "/x/site-packages/flax/nnx/nn/linear.py"
2 "/work/dsgd_jax/examples/bert/model.py"

FunctionNames
1 "Linear.__call__"
2 "BertLayer.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=422 end_line=422 column=4 end_column=9}
2 {file_name_id=2 function_name_id=2 line=194 end_line=194 column=8 end_column=60}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=1 parent_frame_id=1}
3 {file_location_id=2 parent_frame_id=2}
"""


def test_hlo_sources_reads_the_frame_tables():
    sources = op_profile.hlo_sources(HLO)
    assert sources == {
        "dot.1": Source("/x/site-packages/flax/nnx/nn/linear.py", "Linear.__call__", 422, True),
        "add_fusion": Source(
            "/work/dsgd_jax/examples/bert/model.py", "BertLayer.__call__", 194, False
        ),
    }
    assert sources["dot.1"].short() == "flax/nnx/nn/linear.py:422 (Linear.__call__)"
    assert (
        sources["add_fusion"].short() == "dsgd_jax/examples/bert/model.py:194 (BertLayer.__call__)"
    )


def _matmul_then_tanh(x, w):
    y = x @ w
    return jnp.tanh(y).sum()


def test_hlo_sources_points_at_the_line_that_made_the_op():
    # A real compile: the backward pass's dot comes from the line `y = x @ w`.
    x = jnp.ones((8, 16))
    text = (
        jax.jit(jax.grad(_matmul_then_tanh, argnums=1))
        .lower(x, jnp.ones((16, 4)))
        .compile()
        .as_text()
    )
    sources = op_profile.hlo_sources(text)
    lines, first = inspect.getsourcelines(_matmul_then_tanh)
    matmul_line = first + next(i for i, s in enumerate(lines) if "x @ w" in s)
    here = [s for s in sources.values() if s.file == __file__]
    assert here, sources
    assert {s.line for s in here} <= {matmul_line, matmul_line + 1}
    dots = [name for name in sources if "dot" in name or "ynn" in name]
    assert any(sources[n].line == matmul_line and sources[n].backward for n in dots), dots


def test_instruction_times_sums_complete_events_of_known_names():
    events = [
        {"ph": "X", "name": "dot.1", "dur": 10.0},
        {"ph": "X", "name": "dot.1", "dur": 5.5},
        {"ph": "X", "name": "add_fusion", "dur": 2.0},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 100.0},  # the runtime's own
        {"ph": "B", "name": "dot.1"},  # not a complete event
        {"ph": "X", "name": "add_fusion"},  # no duration: 0
    ]
    times = op_profile.instruction_times(events, ["dot.1", "add_fusion", "unused"])
    assert dict(times) == {"dot.1": 15.5, "add_fusion": 2.0}


@pytest.mark.parametrize(
    "file, function, text, part",
    [
        (
            "/s/flax/nnx/nn/linear.py",
            "Linear.__call__",
            "y = dot(x, k)",
            "dense layers (matmul, bias)",
        ),
        ("/s/flax/nnx/nn/linear.py", "Embed.__call__", "return take(e, i)", "embeddings"),
        ("/s/flax/nnx/nn/normalization.py", "_normalize", "y = x * mul", "layer norm"),
        ("/s/flax/nnx/nn/stochastic.py", "Dropout.__call__", "mask = bernoulli(...)", "dropout"),
        ("/r/dsgd_jax/examples/nn.py", "Dropout._keep16", "bits = ...", "dropout"),
        ("/r/dsgd_jax/examples/nn.py", "float32_norm", "return norm(x)", "other"),
        (
            "/s/optax/_src/transform.py",
            "scale_by_adam.update_fn",
            "mu = ...",
            "optimizer, clipping",
        ),
        ("/s/optax/losses/_classification.py", "softmax_cross_entropy", "...", "loss"),
        ("/r/dsgd_jax/_loss.py", "_masked_mean_parts", "...", "loss"),
        ("/r/m/model.py", "Layer.__call__", "probs = jax.nn.softmax(scores)", "attention softmax"),
        (
            "/r/m/model.py",
            "Layer.__call__",
            's = jnp.einsum("bqnd,bknd->bnqk", q, k)',
            "attention matmuls",
        ),
        ("/r/m/model.py", "<lambda>", '"gelu": lambda x: jax.nn.gelu(x)', "activation (GELU)"),
        (
            "/r/m/model.py",
            "Layer.__call__",
            "scores = jnp.where(mask, scores, m)",
            "attention scale, mask, heads",
        ),
        ("/r/m/model.py", "Layer.__call__", "x = norm(x + y)", "other"),
    ],
)
def test_jax_category(file, function, text, part):
    assert op_profile.jax_category(Source(file, function, 1, False), text) == part


@pytest.mark.parametrize(
    "chain, forward, part",
    [
        (
            ["aten::mm", "AddmmBackward0", "autograd::engine::evaluate_function: AddmmBackward0"],
            [],
            "dense layers (matmul, bias)",
        ),
        (["aten::addmm", "aten::linear"], [], "dense layers (matmul, bias)"),
        (
            ["aten::bmm", "aten::matmul", "aten::_scaled_dot_product_attention_math"],
            [],
            "attention matmuls",
        ),
        (
            ["aten::bernoulli_", "aten::dropout", "aten::_scaled_dot_product_attention_math"],
            [],
            "dropout",
        ),
        (
            ["aten::where", "aten::_safe_softmax", "aten::_scaled_dot_product_attention_math"],
            [],
            "attention softmax",
        ),
        (
            ["aten::mul", "aten::_scaled_dot_product_attention_math"],
            [],
            "attention scale, mask, heads",
        ),
        (["aten::sqrt", "Optimizer.step#AdamW.step"], [], "optimizer, clipping"),
        (["aten::linalg_vector_norm", "aten::_foreach_norm"], [], "optimizer, clipping"),
        (["aten::gelu_backward", "GeluBackward0"], [], "activation (GELU)"),
        (["aten::nll_loss", "aten::cross_entropy_loss"], [], "loss"),
        # the backward of dropout's multiply: placed by the forward op it differentiates
        (
            ["aten::mul", "MulBackward0", "autograd::engine::evaluate_function: MulBackward0"],
            ["aten::dropout"],
            "dropout",
        ),
        (
            ["aten::mul", "MulBackward0", "autograd::engine::evaluate_function: MulBackward0"],
            [],
            "other",
        ),
        (["aten::copy_", "aten::clone"], [], "other"),
    ],
)
def test_torch_category(chain, forward, part):
    assert op_profile.torch_category(chain, forward) == part


def test_flags_refuse_bad_counts(capsys):
    script = load_benchmark("step_profile")
    for argv, message in [
        (["--steps=0"], "--steps=0: must be at least 1"),
        (["--warmup=-1"], "--warmup=-1: must be at least 0"),
    ]:
        with pytest.raises(SystemExit) as e:
            script.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"{script.PROG}: error: {message}"), err
    args = script.parse_args(["--quick"])
    assert (args.config, args.steps, args.warmup) == ("bert-tiny", 1, 1)


def test_profile_refuses_a_trace_without_op_events(monkeypatch):
    # A JAX whose CPU runtime does not trace its instructions gives no op events: the
    # profile says so instead of writing an empty table.
    script = load_benchmark("step_profile")
    monkeypatch.setattr(op_profile, "instruction_times", lambda events, names: {})
    with pytest.raises(SystemExit, match="no per-instruction events"):
        script.JaxSide(overhead.CONFIGS["bert-tiny"], seed=0).profile_step()


def test_quick_run_accounts_for_the_step(tmp_path):
    out = tmp_path / "profile"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/step_profile.py",
            "--quick",
            "--no-torch",
            "--steps=2",
            f"--out={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    side = result["jax"]
    assert "torch" not in result and result["steps"] == 2 and result["threads"] == 1
    # The executed instructions account for the step: their summed time is most of the
    # wall time of the profiled steps (one thread, so they do not overlap much).
    assert 0.5 * side["wall_ms_per_step"] < side["op_ms_per_step"] < 1.5 * side["wall_ms_per_step"]
    assert sum(side["parts_ms"].values()) == pytest.approx(side["op_ms_per_step"])
    lines = {line["source"]: line for line in side["lines"]}
    assert sum(x["forward"] + x["backward"] for x in lines.values()) == pytest.approx(
        side["op_ms_per_step"]
    )
    assert set(side["parts_ms"]) <= set(op_profile.CATEGORIES)
    # the model's parts are all found: its dense layers' forward and backward, softmax, GELU
    dense = [x for s, x in lines.items() if s.startswith("flax/nnx/nn/linear.py") and "Linear" in s]
    assert dense and sum(x["forward"] for x in dense) > 0 and sum(x["backward"] for x in dense) > 0
    assert {
        "attention softmax",
        "activation (GELU)",
        "layer norm",
        "dropout",
        "optimizer, clipping",
    } <= set(side["parts_ms"])
    table = (out / "table.md").read_text()
    assert table.count("\n| ") >= len(side["parts_ms"]) + 2
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
