"""The examples' Dropout: flax's draw at 32 bits, two elements per 32-bit word at 16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.bert.model import BertClassifier, BertConfig
from dsgd_jax.examples.nn import Dropout, set_dropout_bits
from dsgd_jax.examples.runs import build_run


def _numpy_keep16(key, shape, rate):
    """The 16-bit keep mask in NumPy: word w of the last axis decides elements 2w (its
    low 16 bits) and 2w + 1 (its high 16 bits)."""
    *lead, last = shape
    words = np.asarray(jax.random.bits(key, (*lead, (last + 1) // 2), jnp.uint32))
    threshold = round(rate * 65536)
    keep = np.empty((*lead, 2 * words.shape[-1]), bool)
    keep[..., 0::2] = (words & 0xFFFF) >= threshold
    keep[..., 1::2] = (words >> 16) >= threshold
    return keep[..., :last]


def _inputs(batch):
    ids = jnp.arange(batch * 16).reshape(batch, 16) % 50
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}


def test_32_bits_is_flax_dropout_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (4, 7, 9))
    ours = Dropout(0.1)(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
    flax = nnx.Dropout(0.1)(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
    np.testing.assert_array_equal(ours, flax)


@pytest.mark.parametrize("shape", [(3, 8), (5, 7), (2, 3, 1), (11,)])
@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_16_bits_against_numpy(shape, rate):
    key = jax.random.key(7)
    x = jax.random.normal(jax.random.key(1), shape)
    y = np.asarray(Dropout(rate, bits=16)(x, deterministic=False, rngs=key))
    keep = _numpy_keep16(key, shape, rate)
    scale = 65536 / (65536 - round(rate * 65536))
    np.testing.assert_array_equal(y, np.where(keep, np.asarray(x) * np.float32(scale), 0.0))


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_16_bits_drop_rate_mean_and_independent_halves(rate):
    n = 1 << 20
    x = jnp.ones((n // 2, 2))
    y = np.asarray(Dropout(rate, bits=16)(x, deterministic=False, rngs=jax.random.key(5)))
    dropped = y == 0
    p = round(rate * 65536) / 65536
    assert abs(p - rate) <= 1 / 131072
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(dropped.mean() - p) < 5 * sigma
    # Kept elements carry 1 / (1 - p), so the mean is 1 in expectation.
    assert set(np.unique(y)) == {0.0, np.float32(1 / (1 - p))}
    assert abs(y.mean() - 1.0) < 5 * sigma / (1 - p)
    # The two halves of one word decide independently: both dropped at rate p^2.
    both = (dropped[:, 0] & dropped[:, 1]).mean()
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / (n // 2))


def test_16_bits_keeps_dtype_broadcast_dims_and_the_off_switches():
    x = jnp.ones((4, 6, 8), jnp.bfloat16)
    drop = Dropout(0.5, bits=16, broadcast_dims=(1,))
    y = drop(x, deterministic=False, rngs=jax.random.key(0))
    assert y.dtype == jnp.bfloat16
    assert (y == y[:, :1, :]).all()  # one mask along the broadcast axis
    assert 0 < float((y == 0).mean()) < 1
    assert drop(x, deterministic=True) is x
    assert Dropout(0.0, bits=16)(x, deterministic=False) is x
    assert float(jnp.abs(Dropout(1.0, bits=16)(x, deterministic=False)).max()) == 0.0
    # A rate within 1/131072 of 1 rounds to every element dropped, not to a division by 0.
    almost = Dropout(1 - 1e-6, bits=16)(x, deterministic=False, rngs=jax.random.key(0))
    assert float(jnp.abs(almost).max()) == 0.0


def test_16_bits_differs_between_keys_and_calls():
    x = jnp.ones((64, 64))
    drop = Dropout(0.5, bits=16)
    rngs = nnx.Rngs(dropout=0)
    a, b = drop(x, deterministic=False, rngs=rngs), drop(x, deterministic=False, rngs=rngs)
    c = drop(x, deterministic=False, rngs=jax.random.key(1))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_bits_are_refused():
    with pytest.raises(ValueError, match=r"dropout_bits=8 .*\(16, 32\)"):
        Dropout(0.1, bits=8)
    with pytest.raises(ValueError, match="dropout_bits"):
        BertExampleConfig(dropout_bits=64).validate()


def test_set_dropout_bits_reaches_every_dropout_of_a_model():
    @nnx.jit
    def logits(model):
        return model(_inputs(2), rngs=nnx.Rngs(dropout=4))

    model = BertClassifier(BertConfig.preset("tiny", vocab_size=64), 3, rngs=nnx.Rngs(0))
    dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, Dropout)]
    assert dropouts and all(d.bits == 32 for d in dropouts)
    before = logits(model)
    assert set_dropout_bits(model, 16) is model
    assert all(d.bits == 16 for d in dropouts)
    assert not np.allclose(logits(model), before)  # other masks
    evaluate = nnx.jit(lambda model: model(_inputs(1)))  # no rngs: dropout off
    evaluated = evaluate(model)
    set_dropout_bits(model, 32)
    np.testing.assert_array_equal(evaluate(model), evaluated)


def test_a_run_sets_the_bits_of_every_dropout_also_of_reinitialised_layers():
    config = BertExampleConfig(
        model="tiny", task="synthetic", reinit_layers=1, dropout_bits=16, progress=False
    )
    run = build_run(config, config.load_data())
    dropouts = [m for _, m in nnx.iter_graph(run.model) if isinstance(m, Dropout)]
    assert len(dropouts) > 3 and all(d.bits == 16 for d in dropouts)
