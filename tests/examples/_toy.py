"""A toy task and MLP for the loop's tests: 3 Gaussian classes, 4 features."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples.data import ArraySplit, TaskData
from dsgd_jax.examples.train import TrainConfig


class ToyMLP(nnx.Module):
    def __init__(self, num_features, num_classes, *, rngs):
        self.hidden = nnx.Linear(num_features, 16, rngs=rngs)
        self.dropout = nnx.Dropout(0.2)
        self.out = nnx.Linear(16, num_classes, rngs=rngs)

    head_name = "out"

    def features(self, inputs, *, rngs=None):
        return jnp.tanh(self.hidden(inputs["x"]))

    def classify(self, features, *, rngs=None, noise=(None, None)):
        h = features if noise[0] is None else features + noise[0]
        h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
        return self.out(h if noise[1] is None else h + noise[1])

    def __call__(self, inputs, *, rngs=None):
        return self.classify(self.features(inputs, rngs=rngs), rngs=rngs)


@dataclasses.dataclass
class ToyConfig(TrainConfig):
    task: str = "toy"
    num_train: int = 50
    poison: bool = False  # an infinite input, to make the loss NaN

    def load_data(self):
        rng = np.random.default_rng(0)

        def split(n):
            y = rng.integers(0, 3, n)
            x = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None].astype(np.float32)
            if self.poison:
                x[3] = np.inf
            return ArraySplit({"x": x}, y)

        return TaskData(split(self.num_train), split(30), ("a", "b", "c"))

    def build_model(self, data, rngs):
        return ToyMLP(4, data.num_classes, rngs=rngs)


def config(**overrides):
    base = dict(num_epochs=2, batch_size=8, learning_rate=1e-2, progress=False, log_every=3)
    return ToyConfig(**{**base, **overrides})


def saved_tree(workdir, epoch):
    """The ``{"model", "optimizer"}`` tree of a run's checkpoint of ``epoch``, on one device
    whatever mesh or process count wrote it."""
    return ckpt.read_tree(workdir / "checkpoints", epoch)


def truncate_largest_file(folder):
    """Cuts the largest file under ``folder`` (a checkpoint) to a third: it reads back as junk."""
    path = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
