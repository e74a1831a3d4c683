"""A Flax NNX BERT encoder and classifier that loads Hugging Face BERT checkpoints.

The modules mirror the Hugging Face ``BertModel`` layout one-to-one, so loading a
checkpoint is a renaming plus a transpose of each Linear weight (PyTorch stores
``(out, in)``, Flax kernels are ``(in, out)``)::

    embeddings.{word,position,token_type}_embeddings    encoder.embeddings.<same name>
    embeddings.LayerNorm                                encoder.embeddings.layer_norm
    encoder.layer.{i}.attention.self.{query,key,value}  encoder.layers[i].<same name>
    encoder.layer.{i}.attention.output.dense            encoder.layers[i].attention_output
    encoder.layer.{i}.attention.output.LayerNorm        encoder.layers[i].attention_layer_norm
    encoder.layer.{i}.intermediate.dense                encoder.layers[i].intermediate
    encoder.layer.{i}.output.dense                      encoder.layers[i].output
    encoder.layer.{i}.output.LayerNorm                  encoder.layers[i].output_layer_norm
    pooler.dense                                        pooler (of BertClassifier)

:func:`load_pretrained` builds a :class:`BertClassifier` from a folder holding
``config.json``, ``model.safetensors`` and ``tokenizer.json``, copies every encoder
and pooler tensor, and leaves the classifier head freshly initialised. Blocks are
post-LayerNorm as in the original BERT; ``dtype`` is the compute dtype (parameters
stay float32), attention softmax and the returned logits are float32.

>>> from flax import nnx
>>> import jax.numpy as jnp
>>> model = BertClassifier(BertConfig.preset("tiny"), num_classes=3, rngs=nnx.Rngs(0))
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
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples.nn import (
    Dropout,
    add_noise,
    check_config,
    float32_norm,
    from_hf_config,
    from_preset,
    gelu,
    head_noise,
)
from dsgd_jax.examples.nn import num_params as num_params  # part of this module's API

_ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters; field names follow Hugging Face ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"

    def __post_init__(self):
        check_config(self, rates=("hidden_dropout_prob", "attention_probs_dropout_prob"))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                f"use one of {sorted(_ACTIVATIONS)}"
            )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Read a Hugging Face ``config.json``; unknown keys are ignored."""
        raw = json.loads(pathlib.Path(path).read_text())
        missing = [k for k in _REQUIRED_KEYS if k not in raw]
        if missing:
            raise KeyError(f"{path}: config.json lacks required BERT keys {missing}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{path}: only absolute position embeddings are supported, "
                f"got {raw['position_embedding_type']!r}"
            )
        return from_hf_config(cls, raw, path, "BERT")

    @classmethod
    def preset(cls, name: str, **overrides) -> BertConfig:
        """A named size: ``tiny``, ``minilm-l6`` (the defaults), ``base`` or ``large``."""
        return from_preset(cls, _PRESETS, name, "BERT", **overrides)


# fmt: off
_PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128),
    "minilm-l6": {},
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                  intermediate_size=4096),
}
# fmt: on


def _linear(n_in, n_out, rngs, dtype):
    init = nnx.initializers.normal(0.02)
    return nnx.Linear(
        n_in, n_out, kernel_init=init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )


def _layer_norm(config, rngs):
    eps = config.layer_norm_eps
    return nnx.LayerNorm(config.hidden_size, epsilon=eps, dtype=jnp.float32, rngs=rngs)


def _embed(n, config, rngs, dtype):
    init = nnx.initializers.normal(0.02)
    h = config.hidden_size
    return nnx.Embed(n, h, embedding_init=init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class BertEmbeddings(nnx.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.word_embeddings = _embed(config.vocab_size, config, rngs, dtype)
        self.position_embeddings = _embed(config.max_position_embeddings, config, rngs, dtype)
        self.token_type_embeddings = _embed(config.type_vocab_size, config, rngs, dtype)
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, *, rngs=None):
        positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)[None]
        return self.dropout(float32_norm(self.layer_norm, x), deterministic=rngs is None, rngs=rngs)


class BertLayer(nnx.Module):
    """One post-LayerNorm transformer block: self-attention, then the feed-forward net."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        h, self.num_heads = config.hidden_size, config.num_attention_heads
        self.query = _linear(h, h, rngs, dtype)
        self.key = _linear(h, h, rngs, dtype)
        self.value = _linear(h, h, rngs, dtype)
        self.attention_output = _linear(h, h, rngs, dtype)
        self.attention_layer_norm = _layer_norm(config, rngs)
        self.intermediate = _linear(h, config.intermediate_size, rngs, dtype)
        self.output = _linear(config.intermediate_size, h, rngs, dtype)
        self.output_layer_norm = _layer_norm(config, rngs)
        self.attention_dropout = Dropout(config.attention_probs_dropout_prob)
        self.hidden_dropout = Dropout(config.hidden_dropout_prob)
        self.hidden_act = config.hidden_act

    def __call__(self, x, mask, position_bias=None, *, rngs=None):
        """``x``: [B, L, H]; ``mask``: bool [B, 1, 1, L], True for real tokens;
        ``position_bias``: float32 [1, heads, L, L] added to the attention scores (MPNet's
        relative-position bias), or None."""
        det = rngs is None
        b, seq, h = x.shape
        split = (b, seq, self.num_heads, h // self.num_heads)
        q, k, v = (m(x).reshape(split) for m in (self.query, self.key, self.value))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * jnp.float32(1.0 / math.sqrt(split[-1]))
        if position_bias is not None:
            scores = scores + position_bias
        # A finite large negative keeps rows without any real token finite (uniform).
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        probs = self.attention_dropout(probs, deterministic=det, rngs=rngs)
        context = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, seq, h)
        attn = self.hidden_dropout(self.attention_output(context), deterministic=det, rngs=rngs)
        x = float32_norm(self.attention_layer_norm, x + attn)
        y = self.output(_ACTIVATIONS[self.hidden_act](self.intermediate(x)))
        y = self.hidden_dropout(y, deterministic=det, rngs=rngs)
        return float32_norm(self.output_layer_norm, x + y)


class BertEncoder(nnx.Module):
    """Embeddings and a stack of :class:`BertLayer`; returns the last hidden states."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs, dtype=dtype)
        self.layers = nnx.List(
            [BertLayer(config, rngs=rngs, dtype=dtype) for _ in range(config.num_hidden_layers)]
        )

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *, rngs=None):
        """Hidden states [B, L, H] in the compute dtype; dropout is on iff ``rngs`` is given.

        ``attention_mask`` is 1 for tokens and 0 for padding (default: all tokens);
        ``token_type_ids`` defaults to zeros.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate the inputs"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask = (jnp.asarray(attention_mask) != 0)[:, None, None, :]
        x = self.embeddings(input_ids, jnp.asarray(token_type_ids, jnp.int32), rngs=rngs)
        for layer in self.layers:
            x = layer(x, mask, rngs=rngs)
        return x


class BertClassifier(nnx.Module):
    """Encoder, then [CLS] hidden -> pooler (Linear, tanh) -> dropout -> Linear head.

    ``__call__`` is ``classify(features(inputs))``; the split lets a penalty such as LNSR
    (:func:`dsgd_jax.examples.baselines.lnsr_penalty`) perturb the inputs of the pooler
    and of the classifier, and ``head_name`` names the freshly initialised layer that
    LoRA fine-tuning keeps trainable.

    LoRA fine-tuning also trains the pooler in full (``lora_also_trains``). RoBERTa's
    classification head (dense + tanh + out_proj) is new and fully trained under PEFT;
    our pooler plays the dense layer's part. A checkpoint's pooler may never have been
    trained for classification: all-MiniLM-L6-v2 ships one, but was tuned with mean
    pooling, and frozen its outputs barely vary (per-dimension std 0.035 over the drug
    reviews against 0.196 for [CLS]: ``benchmarks/results/frozen_probe/bert-drugs.json``).
    """

    head_name = "classifier"
    lora_also_trains = ("pooler",)
    encoder_class = BertEncoder  # MPNetClassifier swaps in its encoder

    def __init__(
        self,
        config: BertConfig,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        classifier_dropout: float | None = None,
        dtype=jnp.float32,
    ):
        self.config = config
        self.encoder = self.encoder_class(config, rngs=rngs, dtype=dtype)
        self.pooler = _linear(config.hidden_size, config.hidden_size, rngs, dtype)
        rate = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = Dropout(rate)
        self.classifier = _linear(config.hidden_size, num_classes, rngs, dtype)

    def __call__(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        """Float32 logits [B, num_classes]; dropout is on iff ``rngs`` is given."""
        return self.classify(self.features(inputs, rngs=rngs), rngs=rngs)

    def reinit_top_layers(self, n: int, *, rngs: nnx.Rngs) -> None:
        """Re-initialises the top ``n`` encoder layers and, if ``n > 0``, the pooler, from
        ``rngs`` (in place), as Zhang et al. (2021) do before fine-tuning."""
        layers = self.encoder.layers
        if not 0 <= n <= len(layers):
            raise ValueError(
                f"reinit_layers={n}: the encoder has {len(layers)} layers; pass 0 to {len(layers)}."
            )
        dtype = self.pooler.dtype
        for i in range(len(layers) - n, len(layers)):
            layers[i] = BertLayer(self.encoder.config, rngs=rngs, dtype=dtype)
        if n:
            h = self.config.hidden_size
            self.pooler = _linear(h, h, rngs, dtype)

    def features(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        """The encoder's last hidden state of the [CLS] token, [B, H] in the compute dtype."""
        hidden = self.encoder(
            inputs["input_ids"], inputs.get("token_type_ids"), inputs["attention_mask"], rngs=rngs
        )
        return hidden[:, 0]

    def classify(self, features: jax.Array, *, rngs: nnx.Rngs | None = None, noise=(None, None)):
        """Float32 logits [B, num_classes] of :meth:`features`' output.

        ``noise[0]`` (or None) is added to the pooler's input, ``noise[1]`` (or None) to
        the classifier's input, after dropout; both are cast to the compute dtype.
        """
        noise_pooler, noise_classifier = head_noise(noise, "pooler", "classifier")
        x = add_noise(features, noise_pooler)
        pooled = jnp.tanh(self.pooler(x))
        pooled = self.dropout(pooled, deterministic=rngs is None, rngs=rngs)
        return self.classifier(add_noise(pooled, noise_classifier)).astype(jnp.float32)


CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def check_checkpoint_folder(folder: str | os.PathLike) -> pathlib.Path:
    """Return ``folder`` as a path, or raise FileNotFoundError naming what is missing."""
    folder = pathlib.Path(folder)
    missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {folder} lacks {', '.join(missing)}; a Hugging Face "
            f"BERT-layout checkpoint folder needs {', '.join(CHECKPOINT_FILES)}"
        )
    return folder


def add_linear(out: dict, name: str, lin: nnx.Linear) -> None:
    """Adds Hugging Face's ``name.weight`` (transposed) and ``name.bias`` targets of ``lin``."""
    out[f"{name}.weight"], out[f"{name}.bias"] = (lin.kernel, True), (lin.bias, False)


def add_norm(out: dict, name: str, ln: nnx.LayerNorm) -> None:
    """Adds Hugging Face's ``name.weight`` and ``name.bias`` targets of a LayerNorm."""
    out[f"{name}.weight"], out[f"{name}.bias"] = (ln.scale, False), (ln.bias, False)


def _targets(model: BertClassifier) -> dict[str, tuple[nnx.Param, bool]]:
    """Hugging Face tensor name -> (destination Param, transpose?)."""
    out = {}
    linear, norm = functools.partial(add_linear, out), functools.partial(add_norm, out)
    emb = model.encoder.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out[f"embeddings.{name}.weight"] = (getattr(emb, name).embedding, False)
    norm("embeddings.LayerNorm", emb.layer_norm)
    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            linear(p + "attention.self." + name, getattr(layer, name))
        linear(p + "attention.output.dense", layer.attention_output)
        norm(p + "attention.output.LayerNorm", layer.attention_layer_norm)
        linear(p + "intermediate.dense", layer.intermediate)
        linear(p + "output.dense", layer.output)
        norm(p + "output.LayerNorm", layer.output_layer_norm)
    linear("pooler.dense", model.pooler)
    return out


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file; ValueError naming the file if it is not one."""
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} is not a readable safetensors file ({reason}); reinstall or re-download "
            "the checkpoint."
        ) from None


def _canonical(name: str) -> str:
    name = name.removeprefix("bert.")
    if ".LayerNorm." in name or name.startswith("LayerNorm."):
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def load_pretrained(
    folder: str | os.PathLike,
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    classifier_dropout: float | None = None,
    dtype=jnp.float32,
) -> BertClassifier:
    """Build a :class:`BertClassifier` from a Hugging Face BERT checkpoint folder.

    Every encoder and pooler tensor of ``model.safetensors`` is copied (names may carry
    a ``bert.`` prefix, LayerNorms may use ``gamma``/``beta``); the classifier head, and
    the pooler when the file has none, are initialised from ``rngs``. Tensors the model
    has no place for (``position_ids``, task heads) are ignored.
    """
    folder = check_checkpoint_folder(folder)
    config = BertConfig.from_json(folder / "config.json")
    source = folder / "model.safetensors"
    tensors = {_canonical(k): v for k, v in read_safetensors(source).items()}
    # Build without initialising (every encoder tensor gets overwritten), then give the
    # head, and the pooler when the file has none, real values from ``rngs``.
    model = nnx.eval_shape(
        lambda: BertClassifier(
            config,
            num_classes,
            rngs=nnx.Rngs(0),
            classifier_dropout=classifier_dropout,
            dtype=dtype,
        )
    )
    return copy_into(model, _targets, tensors, num_classes, rngs, dtype, source, "a BERT")


def copy_into(model, targets, tensors, num_classes, rngs, dtype, source, kind: str):
    """Fills an abstract (``nnx.eval_shape``) classifier from a checkpoint's ``tensors``.

    The classifier head, and the pooler when ``tensors`` has none, get real values
    from ``rngs``; every other destination of ``targets(model)`` (Hugging Face name ->
    (Param, transpose?)) must be in ``tensors`` with the right shape (``kind`` names
    the expected layout in the error).
    """
    h = model.config.hidden_size
    model.classifier = _linear(h, num_classes, rngs, dtype)
    if not any(k.startswith("pooler.") for k in tensors):
        model.pooler = _linear(h, h, rngs, dtype)
    for name, (param, transpose) in targets(model).items():
        if not isinstance(param.get_value(), jax.ShapeDtypeStruct):
            continue  # the fresh pooler
        if name not in tensors:
            raise KeyError(
                f"{source}: tensor {name!r} is missing; the file does not match "
                f"config.json ({kind}-layout checkpoint with "
                f"{model.config.num_hidden_layers} layers is expected)"
            )
        value = tensors[name]
        expected = tuple(param.shape[::-1]) if transpose else tuple(param.shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(value.shape)}, "
                f"expected {expected} from config.json; fix config.json or "
                f"use the matching checkpoint"
            )
        value = np.asarray(value, dtype=np.float32)
        param.set_value(jnp.asarray(value.T if transpose else value))
    return model
