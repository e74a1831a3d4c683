"""The NNX ViT of dsgd_jax.examples.vit.model and its loader for the ViT release's ``.npz``.

The checkpoints here are small random ones written in the layout of
google-research/vision_transformer. The name mapping and the float64 NumPy forward pass
below are written from that layout and share no code with the model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsgd_jax.examples.vit.model import (
    NPZ_HEAD,
    ViT,
    ViTConfig,
    interpolate_pos_embedding,
    load_npz,
    num_params,
    with_new_head,
)

# The checkpoint: 16x16 RGB images, 4x4 patches (a 4x4 grid), 2 layers, 2 heads.
CKPT = dict(image=16, patch=4, channels=3, hidden=16, layers=2, heads=2, mlp=32)
# One jitted forward for every test: it compiles once per model structure and input.
_forward = nnx.jit(lambda model, batch, rngs=None: model(batch, rngs=rngs))
TARGET = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_layers=2,
                   num_heads=2, mlp_dim=32)  # fmt: skip


def _release_tensors(seed=0, image=16, patch=4, channels=3, hidden=16, layers=2, heads=2, mlp=32):
    """Random tensors with the names and shapes of a vit_jax checkpoint."""
    rng = np.random.default_rng(seed)
    d, dh, grid = hidden, hidden // heads, image // patch

    def r(*shape, scale=0.2, loc=0.0):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

    t = {
        "embedding/kernel": r(patch, patch, channels, d),
        "embedding/bias": r(d),
        "cls": r(1, 1, d),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, d),
        "Transformer/encoder_norm/scale": r(d, loc=1.0),
        "Transformer/encoder_norm/bias": r(d),
        "head/kernel": r(d, 1000),
        "head/bias": r(1000),
        "pre_logits/kernel": r(d, d),
        "pre_logits/bias": r(d),
    }
    for i in range(layers):
        p = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            t[p + ln + "/scale"], t[p + ln + "/bias"] = r(d, loc=1.0), r(d)
        a = p + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            t[a + name + "/kernel"], t[a + name + "/bias"] = r(d, heads, dh), r(heads, dh)
        t[a + "out/kernel"], t[a + "out/bias"] = r(heads, dh, d), r(d)
        t[p + "MlpBlock_3/Dense_0/kernel"], t[p + "MlpBlock_3/Dense_0/bias"] = r(d, mlp), r(mlp)
        t[p + "MlpBlock_3/Dense_1/kernel"], t[p + "MlpBlock_3/Dense_1/bias"] = r(mlp, d), r(d)
    return t


def _save(tmp_path, tensors, name="ckpt.npz"):
    path = tmp_path / name
    np.savez(path, **tensors)
    return path


@pytest.fixture(scope="module")
def tensors():
    return _release_tensors(**CKPT)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory, tensors):
    return _save(tmp_path_factory.mktemp("vit"), tensors)


def _expected_params(t, layers, hidden):
    """Model parameter path -> the checkpoint array it must hold (pos_embedding excluded)."""
    d = hidden
    out = {
        "embedding/kernel": t["embedding/kernel"],
        "embedding/bias": t["embedding/bias"],
        "cls": t["cls"],
        "encoder_norm/scale": t["Transformer/encoder_norm/scale"],
        "encoder_norm/bias": t["Transformer/encoder_norm/bias"],
    }
    for i in range(layers):
        p, m = f"blocks/{i}/", f"Transformer/encoderblock_{i}/"
        a = m + "MultiHeadDotProductAttention_1/"
        out |= {
            p + "ln1/scale": t[m + "LayerNorm_0/scale"],
            p + "ln1/bias": t[m + "LayerNorm_0/bias"],
            p + "ln2/scale": t[m + "LayerNorm_2/scale"],
            p + "ln2/bias": t[m + "LayerNorm_2/bias"],
            p + "out/kernel": t[a + "out/kernel"].reshape(d, d),
            p + "out/bias": t[a + "out/bias"],
            p + "fc1/kernel": t[m + "MlpBlock_3/Dense_0/kernel"],
            p + "fc1/bias": t[m + "MlpBlock_3/Dense_0/bias"],
            p + "fc2/kernel": t[m + "MlpBlock_3/Dense_1/kernel"],
            p + "fc2/bias": t[m + "MlpBlock_3/Dense_1/bias"],
        }
        for name in ("query", "key", "value"):
            out[p + name + "/kernel"] = t[a + name + "/kernel"].reshape(d, d)
            out[p + name + "/bias"] = t[a + name + "/bias"].reshape(d)
    return out


def _flat_params(model):
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in flat}


def _numpy_vit(t, images, head_kernel, head_bias, *, patch, heads, eps=1e-6):
    """Reference vit_jax forward in float64 with the given head."""

    def w(name):
        return t[name].astype(np.float64)

    def layer_norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w(name + "/scale") + w(name + "/bias")

    def gelu(x):  # flax.linen.gelu: the tanh approximation
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = images.astype(np.float64)
    b, h, _, c = x.shape
    g = h // patch
    x = x.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    x = x @ w("embedding/kernel").reshape(-1, w("embedding/kernel").shape[-1])
    x = x + w("embedding/bias")
    x = np.concatenate([np.broadcast_to(w("cls"), (b, 1, x.shape[-1])), x], axis=1)
    x = x + w("Transformer/posembed_input/pos_embedding")
    num_layers = len({k.split("/")[1] for k in t if k.startswith("Transformer/encoderblock_")})
    for i in range(num_layers):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        y = layer_norm(x, p + "LayerNorm_0")
        q, k, v = (
            np.einsum("bnd,dhk->bnhk", y, w(a + n + "/kernel")) + w(a + n + "/bias")
            for n in ("query", "key", "value")
        )
        s = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = np.einsum("bhqs,bshk->bqhk", s, v)
        x = x + np.einsum("bqhk,hkd->bqd", ctx, w(a + "out/kernel")) + w(a + "out/bias")
        y = layer_norm(x, p + "LayerNorm_2")
        y = gelu(y @ w(p + "MlpBlock_3/Dense_0/kernel") + w(p + "MlpBlock_3/Dense_0/bias"))
        x = x + y @ w(p + "MlpBlock_3/Dense_1/kernel") + w(p + "MlpBlock_3/Dense_1/bias")
    x = layer_norm(x, "Transformer/encoder_norm")
    return x[:, 0] @ head_kernel.astype(np.float64) + head_bias.astype(np.float64)


# ---------------------------------------------------------------- the .npz loader


def test_load_npz_places_every_tensor_and_matches_numpy_forward(tensors, npz_path):
    model = load_npz(npz_path, 5, rngs=nnx.Rngs(0), config=TARGET)
    got = _flat_params(model)
    expected = _expected_params(tensors, CKPT["layers"], CKPT["hidden"])
    expected["pos_embedding"] = tensors["Transformer/posembed_input/pos_embedding"]
    assert set(got) == set(expected) | {"head/kernel", "head/bias"}
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    # A fresh zero head for 5 classes: the 1000-class head and pre_logits are dropped.
    assert got["head/kernel"].shape == (16, 5) and got["head/bias"].shape == (5,)
    assert not got["head/kernel"].any() and not got["head/bias"].any()
    assert NPZ_HEAD == ("head/kernel", "head/bias")

    rng = np.random.default_rng(1)
    hk, hb = rng.standard_normal((16, 5)), rng.standard_normal(5)
    model.head.kernel.set_value(jnp.asarray(hk, jnp.float32))
    model.head.bias.set_value(jnp.asarray(hb, jnp.float32))
    images = rng.standard_normal((3, 16, 16, 3)).astype(np.float32)
    logits = _forward(model, {"image": jnp.asarray(images)})
    assert logits.dtype == jnp.float32 and logits.shape == (3, 5)
    want = _numpy_vit(tensors, images, hk, hb, patch=4, heads=2)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)


def test_load_npz_interpolates_position_embeddings(tensors, npz_path):
    pos = tensors["Transformer/posembed_input/pos_embedding"]
    model = load_npz(
        npz_path, 5, rngs=nnx.Rngs(0), config=dataclasses.replace(TARGET, image_size=24)
    )
    new = np.asarray(model.pos_embedding[...])
    assert new.shape == (1, 1 + 6 * 6, 16)
    np.testing.assert_array_equal(new[:, 0], pos[:, 0])
    # The release resizes the grid with scipy.ndimage.zoom(grid, zoom, order=1).
    from scipy import ndimage  # a dependency of jax

    want = ndimage.zoom(pos[0, 1:].reshape(4, 4, 16), (6 / 4, 6 / 4, 1), order=1)
    np.testing.assert_allclose(new[0, 1:].reshape(6, 6, 16), want, rtol=1e-5, atol=1e-6)
    # Every other tensor is unchanged, and the model runs at the new size.
    got = _flat_params(model)
    for name, value in _expected_params(tensors, 2, 16).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert _forward(model, {"image": jnp.ones((2, 24, 24, 3))}).shape == (2, 5)


def test_interpolate_pos_embedding_on_a_ramp():
    # Bilinear with aligned corners keeps a linear ramp a linear ramp over the same range.
    g, n, d = 4, 7, 3
    i, j = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    coef = np.array([1.0, -2.0, 0.5])
    grid = (i[..., None] * coef + 3.0 * j[..., None] + 0.25).reshape(1, g * g, d)
    pos = np.concatenate([np.full((1, 1, d), 9.0), grid], axis=1).astype(np.float32)
    out = interpolate_pos_embedding(pos, n)
    assert out.shape == (1, 1 + n * n, d) and out.dtype == np.float32
    ii, jj = np.meshgrid(np.arange(n) * (g - 1) / (n - 1), np.arange(n) * (g - 1) / (n - 1),
                         indexing="ij")  # fmt: skip
    want = (ii[..., None] * coef + 3.0 * jj[..., None] + 0.25).reshape(1, n * n, d)
    np.testing.assert_allclose(out[:, 1:], want, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(out[:, 0], pos[:, 0])
    np.testing.assert_array_equal(interpolate_pos_embedding(pos, g), pos)  # same grid
    # Downsizing to 2 keeps the corners.
    small = interpolate_pos_embedding(pos, 2)[0, 1:].reshape(2, 2, d)
    np.testing.assert_allclose(small, grid.reshape(g, g, d)[:: g - 1, :: g - 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"pos_embedding has shape \(1, 16, 3\)"):
        interpolate_pos_embedding(pos[:, 1:], 3)


def test_load_npz_same_grid_keeps_values_exactly(tensors, npz_path):
    model = load_npz(npz_path, 2, rngs=nnx.Rngs(3), config=TARGET)
    np.testing.assert_array_equal(
        np.asarray(model.pos_embedding[...]), tensors["Transformer/posembed_input/pos_embedding"]
    )


# ---------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"image_size=30 is not divisible by patch_size=4.*e\.g\. 28"
    ):
        ViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by num_heads=4"):
        ViTConfig(hidden_size=30)
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        ViTConfig(dropout_rate=1.0)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        ViTConfig(num_layers=0)
    with pytest.raises(ValueError, match=r"unknown ViT preset 'huge'.*\['b16', 'small', 'tiny'\]"):
        ViTConfig.preset("huge")
    assert ViTConfig.preset("b16", image_size=384).grid_size == 24


def test_load_npz_errors(tmp_path, tensors):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz does not exist"):
        load_npz(tmp_path / "nope.npz", 2, rngs=nnx.Rngs(0), config=TARGET)

    name = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel"
    path = _save(tmp_path, {k: v for k, v in tensors.items() if k != name}, "missing.npz")
    with pytest.raises(KeyError, match=name):
        load_npz(path, 2, rngs=nnx.Rngs(0), config=TARGET)

    # Same number of elements, wrong layout: [H, D, D/H] instead of [D, H, D/H].
    bad = dict(tensors, **{name: tensors[name].transpose(1, 0, 2)})
    path = _save(tmp_path, bad, "misshaped.npz")
    with pytest.raises(ValueError, match=rf"{name}' has shape \(2, 16, 8\), expected \(16, 2, 8\)"):
        load_npz(path, 2, rngs=nnx.Rngs(0), config=TARGET)

    match = r"'embedding/kernel' has shape \(4, 4, 3, 16\), expected \(4, 4, 1, 16\)"
    with pytest.raises(ValueError, match=match):
        load_npz(_save(tmp_path, tensors), 2, rngs=nnx.Rngs(0),
                 config=dataclasses.replace(TARGET, num_channels=1))  # fmt: skip

    pos = "Transformer/posembed_input/pos_embedding"
    path = _save(tmp_path, dict(tensors, **{pos: tensors[pos][:, :-1]}), "pos.npz")
    with pytest.raises(ValueError, match=r"pos_embedding' has shape \(1, 16, 16\)"):
        load_npz(path, 2, rngs=nnx.Rngs(0), config=TARGET)

    # A checkpoint deeper than the config would silently lose layers.
    with pytest.raises(ValueError, match=r"have no place in a ViT with 1 layers.*encoderblock_1"):
        load_npz(_save(tmp_path, tensors), 2, rngs=nnx.Rngs(0),
                 config=dataclasses.replace(TARGET, num_layers=1))  # fmt: skip


# ---------------------------------------------------------------- the tiny preset

TINY = ViTConfig.preset("tiny")


def _images(n=3, seed=0):
    return {"image": jax.random.normal(jax.random.key(seed), (n, 28, 28, 1))}


@pytest.fixture(scope="module")
def fresh():
    """The tiny preset as the constructor initialises it (the suite's only real init)."""
    return ViT(TINY, 4, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny(fresh):
    """``fresh`` with a random head, so that the logits depend on the body."""
    model = nnx.clone(fresh)
    model.head.kernel.set_value(jax.random.normal(jax.random.key(7), (32, 4)))
    return model


def _like(model, dtype=jnp.float32):
    """An uninitialised tiny ViT (``nnx.eval_shape``) holding ``model``'s arrays."""
    other = nnx.eval_shape(lambda: ViT(TINY, 4, rngs=nnx.Rngs(0), dtype=dtype))
    nnx.update(other, nnx.state(model))
    return other


def test_fresh_model(fresh):
    assert TINY.num_patches == 16 and TINY.grid_size == 4
    assert fresh.pos_embedding.shape == (1, 17, 32) and fresh.cls.shape == (1, 1, 32)
    assert len(fresh.blocks) == 2 and fresh.embedding.kernel.shape == (7, 7, 1, 32)
    params = _flat_params(fresh)
    assert not params["head/kernel"].any() and not params["head/bias"].any()  # as the release
    assert not params["cls"].any() and 0.01 < params["pos_embedding"].std() < 0.03
    assert num_params(fresh) == sum(v.size for v in params.values())
    assert ViTConfig.preset("small") == ViTConfig()


def test_tiny_forward_dropout_and_determinism(tiny):
    batch = _images()
    eval1, eval2 = _forward(tiny, batch), _forward(tiny, batch)
    assert eval1.shape == (3, 4) and eval1.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(eval1), np.asarray(eval2))
    train1 = _forward(tiny, batch, nnx.Rngs(dropout=1))
    train2 = _forward(tiny, batch, nnx.Rngs(dropout=2))
    assert not np.allclose(train1, eval1) and not np.allclose(train1, train2)
    np.testing.assert_array_equal(np.asarray(train1), _forward(tiny, batch, nnx.Rngs(dropout=1)))


def test_wrong_image_shape(tiny):
    with pytest.raises(ValueError, match=r"shape \(2, 32, 32, 1\), expected \(B, 28, 28, 1\)"):
        tiny({"image": jnp.zeros((2, 32, 32, 1))})
    with pytest.raises(ValueError, match=r"shape \(28, 28, 1\), expected \(B, 28, 28, 1\)"):
        tiny({"image": jnp.zeros((28, 28, 1))})


def test_with_new_head(tiny):
    new = with_new_head(tiny, 7, rngs=nnx.Rngs(1))
    assert new.head.kernel.shape == (32, 7) and tiny.head.kernel.shape == (32, 4)
    old, got = _flat_params(tiny), _flat_params(new)
    assert set(old) == set(got) and not got["head/kernel"].any()
    for name in old:
        if not name.startswith("head/"):
            np.testing.assert_array_equal(got[name], old[name], err_msg=name)
    assert new.config == tiny.config


def test_bfloat16_compute(tiny):
    model = _like(tiny, jnp.bfloat16)  # the same float32 parameters, bfloat16 compute
    assert model.blocks[0].query.kernel[...].dtype == jnp.float32
    logits = _forward(model, _images())
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    np.testing.assert_allclose(np.asarray(logits), np.asarray(_forward(tiny, _images())), atol=0.1)


def test_split_merge_and_pure_dict_round_trip(tiny):
    graphdef, state = nnx.split(tiny)
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(
        np.asarray(_forward(merged, _images())), np.asarray(_forward(tiny, _images()))
    )
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tiny)))  # as orbax saves it
    other = nnx.eval_shape(lambda: ViT(TINY, 4, rngs=nnx.Rngs(0)))
    state = nnx.state(other)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(other, state)
    np.testing.assert_array_equal(
        np.asarray(_forward(other, _images())), np.asarray(_forward(tiny, _images()))
    )


# ---------------------------------------------------------------- ViT-B/16


def test_b16_parameter_count_without_allocating():
    model = nnx.eval_shape(lambda: ViT(ViTConfig.preset("b16"), 1000, rngs=nnx.Rngs(0)))
    assert isinstance(model.blocks[0].fc1.kernel.get_value(), jax.ShapeDtypeStruct)
    assert num_params(model) == 86_567_656
    assert model.pos_embedding.shape == (1, 197, 768)
