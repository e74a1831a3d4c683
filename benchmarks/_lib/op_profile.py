"""Where a train step's time goes: per-op times from a JAX trace and a PyTorch profile,
attributed to the parts of a transformer both frameworks have.

JAX side: the optimized HLO module (``compiled.as_text()``) names each instruction the
CPU runtime executes and, through ``stack_frame_id``, the Python line that created it
(its FileNames / FunctionNames / FileLocations / StackFrames tables). A
``jax.profiler`` trace taken with ``--xla_cpu_enable_xprof_traceme=true`` has one event
per executed instruction, named after it. :func:`hlo_sources` reads the first,
:func:`instruction_times` sums the second, :func:`jax_category` files each source line
under one of :data:`CATEGORIES`.

PyTorch side: ``torch.profiler`` events with their callers (``cpu_parent``);
:func:`torch_category` files each op by the first of its own name and its callers'
names that marks a part (``aten::bmm`` under ``aten::scaled_dot_product_attention`` is
an attention matmul, ``aten::mm`` under ``AddmmBackward0`` a dense layer's).

Nothing here imports torch; the benchmark (``benchmarks/step_profile.py``) passes plain
tuples.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CATEGORIES",
    "Source",
    "hlo_sources",
    "instruction_times",
    "jax_category",
    "torch_category",
]

CATEGORIES = (
    "dense layers (matmul, bias)",
    "attention matmuls",
    "attention softmax",
    "attention scale, mask, heads",
    "activation (GELU)",
    "layer norm",
    "dropout",
    "embeddings",
    "loss",
    "optimizer, clipping",
    "other",
)
(DENSE, ATT_MATMUL, SOFTMAX, ATT_OTHER, ACT, NORM, DROPOUT, EMBED, LOSS, OPT, OTHER) = CATEGORIES


@dataclasses.dataclass(frozen=True)
class Source:
    """The Python line an HLO instruction came from, and whether it is a backward op."""

    file: str
    function: str
    line: int
    backward: bool

    def short(self) -> str:
        """``file:line (function)`` with site-packages and the checkout stripped."""
        path = self.file.split("site-packages/")[-1]
        for marker in ("/dsgd_jax/", "/benchmarks/"):
            if marker in path:
                path = marker[1:] + path.split(marker, 1)[1]
        return f"{path}:{self.line} ({self.function})"


_SECTION = r"^{name}\n(.*?)(?=^[A-Za-z]|\Z)"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$", re.M)


def _table(hlo_text: str, name: str, pattern: str) -> dict[int, tuple[str, ...]]:
    section = re.search(_SECTION.format(name=name), hlo_text, re.M | re.S)
    if section is None:
        return {}
    return {int(m[0]): m[1:] for m in re.findall(pattern, section.group(1), re.M)}


def hlo_sources(hlo_text: str) -> dict[str, Source]:
    """Instruction name -> the innermost Python frame that created it, for every
    instruction of ``hlo_text`` that has a ``stack_frame_id``. ``backward`` is True when
    its ``op_name`` is under a ``transpose(...)`` (reverse-mode autodiff)."""
    files = {k: v[0] for k, v in _table(hlo_text, "FileNames", r'^(\d+) "(.*)"$').items()}
    functions = {k: v[0] for k, v in _table(hlo_text, "FunctionNames", r'^(\d+) "(.*)"$').items()}
    locations = _table(
        hlo_text,
        "FileLocations",
        r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)",
    )
    frames = _table(hlo_text, "StackFrames", r"^(\d+) \{file_location_id=(\d+)")
    sources = {}
    for name, rest in _INSTRUCTION.findall(hlo_text):
        frame = re.search(r"\bstack_frame_id=(\d+)", rest)
        if frame is None or int(frame[1]) not in frames:
            continue
        file_id, function_id, line = locations[int(frames[int(frame[1])][0])]
        op_name = re.search(r'\bop_name="([^"]*)"', rest)
        sources[name] = Source(
            files[int(file_id)],
            functions[int(function_id)],
            int(line),
            backward=bool(op_name and "transpose(" in op_name[1]),
        )
    return sources


def instruction_times(events: Iterable[Mapping], names: Iterable[str]) -> collections.Counter:
    """Microseconds per instruction: the summed ``dur`` of the trace's complete events
    (``"ph": "X"``) whose name is one of ``names`` (other events, the runtime's own and
    Python's, are left out)."""
    names = set(names)
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            times[event["name"]] += float(event.get("dur", 0.0))
    return times


_ACTIVATION = re.compile(r"\b(gelu|relu|silu|tanh)\b")


def jax_category(source: Source, text: str) -> str:
    """The part of the model ``source`` belongs to; ``text`` is its line of code.

    Library code decides by where it lives (flax's Linear, Embed, normalisation and
    dropout, optax); the model's own lines by what they call: softmax, einsum (the
    attention matmuls), an activation, or the attention's scores, mask and head split.
    """
    file, function = source.file.replace("\\", "/"), source.function
    if "optax/losses/" in file or re.search(r"/dsgd_jax/_\w+\.py$", file):
        return LOSS
    if "/optax/" in file or "flax/nnx/training/" in file:
        return OPT
    if (
        "flax/nnx/nn/stochastic" in file
        or "flax/nnx/rnglib" in file
        or (
            file.endswith("dsgd_jax/examples/nn.py")
            and ("Dropout" in function or "_keep" in function)
        )
    ):
        return DROPOUT
    if "flax/nnx/nn/normalization" in file:
        return NORM
    if "flax/nnx/nn/linear" in file:
        return EMBED if function.startswith("Embed") else DENSE
    if "softmax" in text:
        return SOFTMAX
    if "einsum" in text:
        return ATT_MATMUL
    if _ACTIVATION.search(text):
        return ACT
    if re.search(r"\b(scores|split|mask|context)\b", text):
        return ATT_OTHER
    return OTHER


_TORCH_MARKS = {
    OPT: ("Optimizer.", "aten::_foreach_"),
    DROPOUT: ("aten::dropout", "aten::native_dropout", "aten::bernoulli_", "NativeDropoutBackward"),
    SOFTMAX: (
        "aten::softmax",
        "aten::_softmax",
        "aten::_safe_softmax",
        "SoftmaxBackward",
        "SafeSoftmaxBackward",
    ),
    ATT_MATMUL: ("aten::bmm", "BmmBackward"),
    ATT_OTHER: ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_attention"),
    ACT: ("aten::gelu", "GeluBackward"),
    NORM: ("aten::layer_norm", "aten::native_layer_norm", "NativeLayerNormBackward"),
    DENSE: ("aten::linear", "aten::addmm", "aten::mm", "AddmmBackward", "MmBackward"),
    EMBED: ("aten::embedding", "EmbeddingBackward"),
    LOSS: (
        "aten::cross_entropy",
        "aten::nll_loss",
        "aten::log_softmax",
        "aten::_log_softmax",
        "NllLoss",
        "LogSoftmax",
    ),
}
AUTOGRAD_NODE = "autograd::engine::evaluate_function: "  # a backward node's event


def _torch_mark(name: str) -> str | None:
    name = name.removeprefix(AUTOGRAD_NODE)
    for category, marks in _TORCH_MARKS.items():
        if any(name == m or name.startswith(m) for m in marks):
            return category
    return None


def torch_category(chain: Sequence[str], forward: Sequence[str] = ()) -> str:
    """The part of the model a PyTorch op belongs to; ``chain`` is its name, then its
    caller's, up to the outermost. The first name that marks a part decides. An op of
    the backward pass that its own chain does not place (``aten::mul`` under
    ``MulBackward0``) takes the part of the forward op it differentiates: ``forward`` is
    that op's chain (the autograd node's sequence number links the two)."""
    for name in (*chain, *forward):
        category = _torch_mark(name)
        if category is not None:
            return category
    return OTHER
