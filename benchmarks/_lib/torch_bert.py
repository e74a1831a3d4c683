"""The BERT example's encoder classifier in PyTorch, for ``benchmarks/torch_peer.py``.

Attribute names follow :mod:`dsgd_jax.examples.bert.model` one-to-one, so
:func:`copy_jax_weights` is a renaming (kernel/embedding/scale -> weight) plus a
transpose of each Linear kernel. Needs ``torch`` (the ``bench`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx, traverse_util
from torch import nn

from dsgd_jax.examples.bert.model import BertConfig

__all__ = ["TorchBertClassifier", "copy_jax_weights"]

_GELU = {"gelu": "none", "gelu_new": "tanh"}  # BertConfig.hidden_act -> F.gelu's approximate


class TorchBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)[None]
        return self.dropout(self.layer_norm(x))


class TorchBertLayer(nn.Module):
    """One post-LayerNorm transformer block: self-attention, then the feed-forward net."""

    def __init__(self, config: BertConfig):
        super().__init__()
        h, self.num_heads = config.hidden_size, config.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attention_output = nn.Linear(h, h)
        self.attention_layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(h, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, h)
        self.output_layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.attention_dropout_p = config.attention_probs_dropout_prob
        self.hidden_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.gelu_approximate = _GELU[config.hidden_act]

    def forward(self, x, additive_mask):
        """``x``: [B, L, H]; ``additive_mask``: [B, 1, 1, L], 0 for tokens, a large negative
        for padding (Hugging Face's convention; the JAX side replaces those scores)."""
        b, seq, h = x.shape
        q, k, v = (
            m(x).view(b, seq, self.num_heads, h // self.num_heads).transpose(1, 2)
            for m in (self.query, self.key, self.value)
        )
        p = self.attention_dropout_p if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask, dropout_p=p)
        context = context.transpose(1, 2).reshape(b, seq, h)
        x = self.attention_layer_norm(x + self.hidden_dropout(self.attention_output(context)))
        y = self.output(F.gelu(self.intermediate(x), approximate=self.gelu_approximate))
        return self.output_layer_norm(x + self.hidden_dropout(y))


class TorchBertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = TorchBertEmbeddings(config)
        self.layers = nn.ModuleList(
            [TorchBertLayer(config) for _ in range(config.num_hidden_layers)]
        )

    def forward(self, input_ids, token_type_ids, attention_mask):
        x = self.embeddings(input_ids, token_type_ids)
        keep = attention_mask[:, None, None, :].to(x.dtype)
        additive_mask = (1.0 - keep) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, additive_mask)
        return x


class TorchBertClassifier(nn.Module):
    """Encoder, then [CLS] hidden -> pooler (Linear, tanh) -> dropout -> Linear head."""

    def __init__(self, config: BertConfig, num_classes: int):
        super().__init__()
        self.encoder = TorchBertEncoder(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_classes)

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(
            inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"]
        )
        return hidden[:, 0]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(self.features(inputs)))
        return self.classifier(self.dropout(pooled))


def copy_jax_weights(jax_model: nnx.Module, torch_model: nn.Module) -> int:
    """Copies every ``nnx.Param`` into the same-named torch parameter; returns the count.

    Raises ValueError when a name or a shape has no counterpart on the other side.
    """
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(jax_model, nnx.Param)))
    rename = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
    targets = dict(torch_model.named_parameters())
    copied = set()
    with torch.no_grad():
        for path, value in flat.items():
            name = ".".join(str(p) for p in (*path[:-1], rename[path[-1]]))
            if name not in targets:
                raise ValueError(f"JAX parameter {'/'.join(map(str, path))} has no torch {name}")
            array = np.array(value, dtype=np.float32)  # a writable copy
            if path[-1] == "kernel":
                array = array.T  # flax [in, out] -> torch [out, in]
            if tuple(array.shape) != tuple(targets[name].shape):
                raise ValueError(
                    f"{name}: JAX shape {array.shape} (after transpose) != torch "
                    f"{tuple(targets[name].shape)}"
                )
            targets[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
            copied.add(name)
    missing = sorted(set(targets) - copied)
    if missing:
        raise ValueError(f"torch parameters without a JAX counterpart: {missing}")
    return len(copied)


# ----------------------------------------------------------------------------- torch steps
