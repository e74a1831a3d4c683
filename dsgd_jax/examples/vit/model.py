"""A Flax NNX Vision Transformer that loads the original ViT release's ``.npz`` checkpoints.

The model is the ViT of Dosovitskiy et al. as released in
google-research/vision_transformer (``vit_jax/models_vit.py``): a patch-embedding
convolution, a learned class token and position embeddings, pre-LayerNorm encoder
blocks, a final LayerNorm and a Linear head on the class token. The release's flat
``.npz`` names map onto the modules as::

    embedding/{kernel,bias}                               embedding (Conv)
    cls                                                   cls
    Transformer/posembed_input/pos_embedding              pos_embedding
    Transformer/encoderblock_{i}/LayerNorm_0              blocks[i].ln1
    .../MultiHeadDotProductAttention_1/{query,key,value}  blocks[i].{query,key,value}
    .../MultiHeadDotProductAttention_1/out                blocks[i].out
    Transformer/encoderblock_{i}/LayerNorm_2              blocks[i].ln2
    .../MlpBlock_3/Dense_0, .../MlpBlock_3/Dense_1        blocks[i].fc1, blocks[i].fc2
    Transformer/encoder_norm                              encoder_norm

The multi-head kernels ``[D, H, D/H]`` and ``[H, D/H, D]`` are stored here as plain
``[D, D]`` Linear kernels (row-major reshape). As in the release, the MLP uses the tanh
approximation of GELU and LayerNorm epsilon 1e-6. ``dtype`` is the compute dtype
(parameters stay float32); LayerNorm, attention softmax and the logits are float32.

>>> import jax.numpy as jnp
>>> model = ViT(ViTConfig.preset("tiny"), num_classes=10, rngs=nnx.Rngs(0))
>>> model({"image": jnp.zeros((2, 28, 28, 1))}).shape
(2, 10)
>>> num_params(model)
19658
"""

from __future__ import annotations

import dataclasses
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
    from_preset,
    head_noise,
)
from dsgd_jax.examples.nn import num_params as num_params  # part of this module's API


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT hyper-parameters; the defaults are the ``small`` preset (28x28 grey images)."""

    image_size: int = 28
    patch_size: int = 4
    num_channels: int = 1
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 128
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        check_config(self, rates=("dropout_rate", "attention_dropout_rate"))
        if self.image_size % self.patch_size:
            near = max(self.image_size // self.patch_size, 1) * self.patch_size
            raise ValueError(
                f"ViTConfig.image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}; use an image_size that is a multiple of "
                f"patch_size (e.g. {near}) or another patch_size"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def preset(cls, name: str, **overrides) -> ViTConfig:
        """A named size: ``tiny``, ``small`` (the defaults) or ``b16`` (ViT-B/16 at 224)."""
        return from_preset(cls, _PRESETS, name, "ViT", **overrides)


# fmt: off
_PRESETS = {
    "tiny": dict(patch_size=7, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64),
    "small": {},
    "b16": dict(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_layers=12,
                num_heads=12, mlp_dim=3072, dropout_rate=0.0),
}
# fmt: on


def _linear(n_in, n_out, rngs, dtype, bias_std=0.0):
    """Xavier-uniform kernel; zero bias, or normal(``bias_std``) as in the release's MLP."""
    init = nnx.initializers
    bias_init = init.normal(bias_std) if bias_std else init.zeros
    return nnx.Linear(n_in, n_out, kernel_init=init.xavier_uniform(), bias_init=bias_init,
                      dtype=dtype, param_dtype=jnp.float32, rngs=rngs)  # fmt: skip


def _head(n_in, num_classes, rngs, dtype):
    """The classifier, zero-initialised as in the ViT release."""
    zeros = nnx.initializers.zeros
    return nnx.Linear(n_in, num_classes, kernel_init=zeros, bias_init=zeros, dtype=dtype,
                      param_dtype=jnp.float32, rngs=rngs)  # fmt: skip


def _layer_norm(config, rngs):
    eps = config.layer_norm_eps
    return nnx.LayerNorm(config.hidden_size, epsilon=eps, dtype=jnp.float32, rngs=rngs)


class EncoderBlock(nnx.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, self.num_heads = config.hidden_size, config.num_heads
        self.ln1 = _layer_norm(config, rngs)
        self.query = _linear(d, d, rngs, dtype)
        self.key = _linear(d, d, rngs, dtype)
        self.value = _linear(d, d, rngs, dtype)
        self.out = _linear(d, d, rngs, dtype)
        self.ln2 = _layer_norm(config, rngs)
        self.fc1 = _linear(d, config.mlp_dim, rngs, dtype, bias_std=1e-6)
        self.fc2 = _linear(config.mlp_dim, d, rngs, dtype, bias_std=1e-6)
        self.dropout = Dropout(config.dropout_rate)
        self.attention_dropout = Dropout(config.attention_dropout_rate)

    def __call__(self, x, *, rngs=None):
        """``x``: [B, N, D] in the compute dtype."""
        det = rngs is None
        b, n, d = x.shape
        y = float32_norm(self.ln1, x)
        split = (b, n, self.num_heads, d // self.num_heads)
        q, k, v = (m(y).reshape(split) for m in (self.query, self.key, self.value))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * jnp.float32(1.0 / math.sqrt(split[-1]))
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        probs = self.attention_dropout(probs, deterministic=det, rngs=rngs)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d)
        x = x + self.dropout(self.out(context), deterministic=det, rngs=rngs)
        y = jax.nn.gelu(self.fc1(float32_norm(self.ln2, x)), approximate=True)
        y = self.fc2(self.dropout(y, deterministic=det, rngs=rngs))
        return x + self.dropout(y, deterministic=det, rngs=rngs)


class ViT(nnx.Module):
    """Vision Transformer classifier; float32 logits from the class token.

    ``__call__`` equals ``classify(features(inputs))``: :meth:`features` is the class
    token after the last block, and :meth:`classify` applies encoder_norm and the
    classifier ``head`` (an ``nnx.Linear``, named by ``head_name``).
    """

    head_name = "head"

    def __init__(self, config: ViTConfig, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config, self.dtype = config, dtype
        p, d = config.patch_size, config.hidden_size
        self.embedding = nnx.Conv(config.num_channels, d, kernel_size=(p, p), strides=(p, p),
                                  padding="VALID", dtype=dtype, param_dtype=jnp.float32,
                                  rngs=rngs)  # fmt: skip
        self.cls = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
        pos = nnx.initializers.normal(0.02)(rngs.params(), (1, config.num_patches + 1, d))
        self.pos_embedding = nnx.Param(pos)
        self.dropout = Dropout(config.dropout_rate)
        self.blocks = nnx.List(
            [EncoderBlock(config, rngs=rngs, dtype=dtype) for _ in range(config.num_layers)]
        )
        self.encoder_norm = _layer_norm(config, rngs)
        self.head = _head(d, num_classes, rngs, dtype)

    def __call__(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        """Float32 logits [B, num_classes] of ``inputs["image"]`` (float [B, H, W, C],
        already normalised); dropout is on iff ``rngs`` is given."""
        # The same function as head(features(inputs)) (encoder_norm is token-wise), kept
        # as the program it always was: under jit, bfloat16 rounding differs between the two.
        x = float32_norm(self.encoder_norm, self._tokens(inputs, rngs=rngs))
        return self.head(x[:, 0]).astype(jnp.float32)

    def reinit_top_layers(self, n: int, *, rngs: nnx.Rngs) -> None:
        """Re-initialises the top ``n`` encoder blocks from ``rngs`` (in place), as Zhang
        et al. (2021) do for BERT before fine-tuning."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(
                f"reinit_layers={n}: the ViT has {len(self.blocks)} blocks; pass 0 to "
                f"{len(self.blocks)}."
            )
        for i in range(len(self.blocks) - n, len(self.blocks)):
            self.blocks[i] = EncoderBlock(self.config, rngs=rngs, dtype=self.dtype)

    def features(self, inputs: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        """The class token after the last encoder block, before encoder_norm: [B, D] in
        the compute dtype."""
        return self._tokens(inputs, rngs=rngs)[:, 0]

    def _tokens(self, inputs, *, rngs=None):
        """All tokens after the last encoder block, [B, 1 + N, D]."""
        c = self.config
        image = jnp.asarray(inputs["image"])
        expected = (c.image_size, c.image_size, c.num_channels)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                f'inputs["image"] has shape {tuple(image.shape)}, expected (B, '
                f"{c.image_size}, {c.image_size}, {c.num_channels}) = (batch, height, width, "
                "channels); resize the images or build the model with a ViTConfig of that "
                "image_size / num_channels"
            )
        x = self.embedding(image.astype(self.dtype))  # [B, g, g, D]
        b, d = x.shape[0], x.shape[-1]
        x = x.reshape(b, -1, d)
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...].astype(x.dtype)
        x = self.dropout(x, deterministic=rngs is None, rngs=rngs)
        for block in self.blocks:
            x = block(x, rngs=rngs)
        return x

    def classify(self, features: jax.Array, *, rngs: nnx.Rngs | None = None, noise=(None, None)):
        """Float32 logits [B, num_classes] of :meth:`features`.

        ``noise[0]`` (or None) is added to encoder_norm's input, ``noise[1]`` (or None)
        to the classifier's input; both are cast to the compute dtype. encoder_norm is
        token-wise, so normalising the class token alone equals normalising all tokens.
        ``rngs`` is accepted for symmetry with BERT's classify (there is no dropout here).
        """
        del rngs
        noise_norm, noise_head = head_noise(noise, "encoder_norm", "head")
        x = float32_norm(self.encoder_norm, add_noise(features, noise_norm))
        return self.head(add_noise(x, noise_head)).astype(jnp.float32)


def with_new_head(model: ViT, num_classes: int, *, rngs: nnx.Rngs) -> ViT:
    """A copy of ``model`` (sharing the body's arrays) with a fresh, zero-initialised head."""
    new = nnx.clone(model)
    new.head = _head(model.config.hidden_size, num_classes, rngs, model.dtype)
    return new


def _grid_of(pos_embedding) -> int | None:
    """``g`` when ``pos_embedding`` is [1, 1 + g*g, D], else None."""
    shape = np.shape(pos_embedding)
    if len(shape) != 3 or shape[0] != 1 or shape[1] < 2:
        return None
    g = math.isqrt(shape[1] - 1)
    return g if g * g == shape[1] - 1 else None


def _resize_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` to ``n`` samples, corners aligned."""
    g = x.shape[axis]
    coords = np.arange(n) * ((g - 1) / (n - 1)) if n > 1 else np.zeros(1)
    lo = np.clip(np.floor(coords).astype(np.int64), 0, max(g - 2, 0))
    hi = np.minimum(lo + 1, g - 1)
    w = np.expand_dims(coords - lo, tuple(range(1, x.ndim - axis)))
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def interpolate_pos_embedding(pos_embedding: np.ndarray, new_grid: int) -> np.ndarray:
    """Resize [1, 1 + g*g, D] position embeddings to [1, 1 + new_grid**2, D].

    The class-token row is kept and the g x g grid is resized bilinearly with corners
    aligned, which is what the ViT release's ``scipy.ndimage.zoom(grid, zoom, order=1)``
    computes when it fine-tunes at another resolution.
    """
    pos = np.asarray(pos_embedding)
    g = _grid_of(pos)
    if g is None:
        raise ValueError(
            f"pos_embedding has shape {pos.shape}, expected [1, 1 + g*g, D] (a class-token "
            "row, then a square g x g grid)"
        )
    if not isinstance(new_grid, int) or new_grid <= 0:
        raise ValueError(f"new_grid must be a positive int, got {new_grid!r}")
    if new_grid == g:
        return pos.copy()
    grid = pos[0, 1:].reshape(g, g, -1).astype(np.float64)
    grid = _resize_axis(_resize_axis(grid, new_grid, 0), new_grid, 1)
    grid = grid.reshape(1, new_grid * new_grid, -1).astype(pos.dtype)
    return np.concatenate([pos[:, :1], grid], axis=1)


NPZ_HEAD = ("head/kernel", "head/bias")
_NPZ_IGNORED = ("head/", "pre_logits/")
_NPZ_POS = "Transformer/posembed_input/pos_embedding"


def _npz_targets(model: ViT) -> dict[str, tuple[nnx.Param, tuple[int, ...]]]:
    """Release tensor name -> (destination Param, shape the tensor has in the file)."""
    c = model.config
    heads, d = c.num_heads, c.hidden_size
    out = {}

    def put(name, param, shape=None):
        out[name] = (param, tuple(param.shape) if shape is None else shape)

    def norm(name, ln):
        put(f"{name}/scale", ln.scale)
        put(f"{name}/bias", ln.bias)

    put("embedding/kernel", model.embedding.kernel)
    put("embedding/bias", model.embedding.bias)
    put("cls", model.cls)
    put(_NPZ_POS, model.pos_embedding)
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        norm(p + "LayerNorm_0", block.ln1)
        for name in ("query", "key", "value"):
            lin, q = getattr(block, name), f"{p}MultiHeadDotProductAttention_1/{name}"
            put(q + "/kernel", lin.kernel, (d, heads, d // heads))
            put(q + "/bias", lin.bias, (heads, d // heads))
        put(p + "MultiHeadDotProductAttention_1/out/kernel", block.out.kernel,
            (heads, d // heads, d))  # fmt: skip
        put(p + "MultiHeadDotProductAttention_1/out/bias", block.out.bias)
        norm(p + "LayerNorm_2", block.ln2)
        for j, lin in enumerate((block.fc1, block.fc2)):
            put(f"{p}MlpBlock_3/Dense_{j}/kernel", lin.kernel)
            put(f"{p}MlpBlock_3/Dense_{j}/bias", lin.bias)
    norm("Transformer/encoder_norm", model.encoder_norm)
    return out


def load_npz(
    path: str | os.PathLike,
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    config: ViTConfig,
    dtype=jnp.float32,
) -> ViT:
    """Build a :class:`ViT` from a checkpoint of google-research/vision_transformer.

    ``config`` is the target architecture and image size, e.g.
    ``ViTConfig.preset("b16", image_size=384)``; every body tensor of the flat ``.npz``
    is copied, and the position embeddings are interpolated
    (:func:`interpolate_pos_embedding`) when the checkpoint's patch grid differs. The
    file's ``head/*`` (:data:`NPZ_HEAD`) and ``pre_logits/*`` (the tanh representation
    layer of ImageNet-21k checkpoints) are ignored: the model gets a fresh zero head for
    ``num_classes`` and feeds the class token straight into it. Any other tensor the
    model has no place for is an error, as it means ``config`` does not match the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ViT checkpoint {path} does not exist; pass the path of a .npz of the "
            "original ViT release (e.g. ViT-B_16.npz from gs://vit_models/imagenet21k)"
        )
    with np.load(path, allow_pickle=False) as f:
        tensors = {k: f[k] for k in f.files}
    # Build without initialising (every body tensor gets overwritten); the head is real.
    model = nnx.eval_shape(lambda: ViT(config, num_classes, rngs=nnx.Rngs(0), dtype=dtype))
    model.head = _head(config.hidden_size, num_classes, rngs, dtype)
    targets = _npz_targets(model)
    fix = (
        "pass a ViTConfig with the checkpoint's architecture, e.g. "
        "ViTConfig.preset('b16', image_size=...) for ViT-B_16.npz"
    )
    for name, (param, shape) in targets.items():
        if name not in tensors:
            raise KeyError(
                f"{path}: tensor {name!r} is missing; the file is not a ViT checkpoint "
                f"with {config.num_layers} layers in the original release's layout, or {fix}"
            )
        value = tensors[name]
        if name == _NPZ_POS and value.shape != shape:
            g = _grid_of(value)
            if g is None or value.shape[2] != shape[2]:
                raise ValueError(
                    f"{path}: tensor {name!r} has shape {value.shape}, expected (1, 1 + g*g, "
                    f"{shape[2]}) for a g x g patch grid ({shape} at this image_size); {fix}"
                )
            value = interpolate_pos_embedding(value, config.grid_size)
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(value.shape)}, expected {shape} "
                f"for {config}; {fix}"
            )
        param.set_value(jnp.asarray(np.asarray(value, np.float32).reshape(param.shape)))
    unused = sorted(k for k in tensors if k not in targets and not k.startswith(_NPZ_IGNORED))
    if unused:
        raise ValueError(
            f"{path}: {len(unused)} tensors have no place in a ViT with {config.num_layers} "
            f"layers, e.g. {unused[:3]}; {fix}"
        )
    return model
