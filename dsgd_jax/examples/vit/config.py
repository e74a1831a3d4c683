"""Settings of the ViT example, and how they turn into data and a model.

The default run is an offline stand-in for "ImageNet-pretrained ViT, fine-tuned
on an imbalanced set": a small ViT pretrained on all of Fashion-MNIST (done once
and cached in ``runs/vit-pretrain-fashion_mnist-small``), then fine-tuned on a
long-tailed (ratio 100) version of MNIST-5k, tested on a balanced split::

    python -m dsgd_jax.examples.vit                      # pretrains first if needed
    python -m dsgd_jax.examples.vit --method=fft
    python -m dsgd_jax.examples.vit pretrain             # just the pretraining

Both run on a 2-core CPU (docs/guides/examples.md gives the measured times and accuracies).
With the original ViT release's weights, on a GPU::

    python -m dsgd_jax.examples.vit --init=npz --npz=ViT-B_16.npz --model=b16 \\
        --dataset=cifar10 --imbalance=longtail --ratio=100 --batch_size=128 --dtype=bfloat16
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples.data import TaskData
from dsgd_jax.examples.fields import config_field, override_default
from dsgd_jax.examples.train import TrainConfig
from dsgd_jax.examples.vit import data as image_data
from dsgd_jax.examples.vit import model as vit_model

DATASETS = ("mnist_5k", "fashion_mnist", "digits", "cifar10", "cifar100")
IMBALANCE = ("longtail", "step", "none")
INITS = ("pretrained", "random", "npz")
MODELS = ("tiny", "small", "b16")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_NAMES = tuple(DTYPES)


class ResizeInputs(nnx.Module):
    """Resizes ``inputs["image"]`` to the model's image size before calling it.

    ``features`` resizes, then runs the wrapped ViT's ``features``; ``classify`` and
    ``head_name`` are the wrapped model's (LNSR and LoRA use them).
    """

    def __init__(self, model: vit_model.ViT):
        self.model = model

    @property
    def head_name(self) -> str:
        return self.model.head_name

    def classify(self, features, *, rngs=None, noise=(None, None)):
        """The wrapped ViT's ``classify``."""
        return self.model.classify(features, rngs=rngs, noise=noise)

    def reinit_top_layers(self, n: int, *, rngs: nnx.Rngs) -> None:
        """The wrapped ViT's ``reinit_top_layers``."""
        self.model.reinit_top_layers(n, rngs=rngs)

    def _resize(self, inputs):
        image = inputs["image"]
        size = self.model.config.image_size
        image = jax.image.resize(image, (image.shape[0], size, size, image.shape[-1]), "bilinear")
        return {**inputs, "image": image}

    def __call__(self, inputs, *, rngs=None):
        return self.model(self._resize(inputs), rngs=rngs)

    def features(self, inputs, *, rngs=None):
        """The wrapped ViT's features of the resized images."""
        return self.model.features(self._resize(inputs), rngs=rngs)


@dataclasses.dataclass
class ViTExampleConfig(TrainConfig):
    """The shared loop's settings plus the ViT example's model and data."""

    learning_rate: float = override_default(TrainConfig, "learning_rate", 2e-3)
    num_epochs: int = override_default(TrainConfig, "num_epochs", 20)
    batch_size: int = override_default(TrainConfig, "batch_size", 32)
    eval_batch_size: int = override_default(TrainConfig, "eval_batch_size", 256)
    dataset: Literal[DATASETS] = config_field("mnist_5k", "the image dataset")
    imbalance: Literal[IMBALANCE] = config_field("longtail", "imbalance of the training split")
    ratio: float = config_field(100.0, "largest / smallest class size (>= 1)")
    subset_seed: int = config_field(0, "which examples the imbalanced subset keeps")
    model: Literal[MODELS] = config_field("small", "architecture preset")
    image_size: int = config_field(0, "model input size; 0 = the preset's")
    init: Literal[INITS] = config_field("pretrained", "where the body's weights come from")
    pretrain_workdir: str = config_field(
        "", "init=pretrained: the pretrain run ('' = runs/vit-pretrain-<dataset>-<model>)"
    )
    pretrain_dataset: Literal[DATASETS] = config_field(
        "fashion_mnist", "init=pretrained: the dataset to pretrain on"
    )
    npz: str = config_field("", "init=npz: a checkpoint of the original ViT release")
    num_classes: int = config_field(0, "head size; 0 = the dataset's number of classes")
    dtype: Literal[DTYPE_NAMES] = config_field("float32", "compute dtype")
    data_dir: str = config_field("", "tfds data_dir for cifar10/cifar100 ('' = tfds' default)")

    @property
    def task_name(self) -> str:
        if self.imbalance == "none":
            return self.dataset
        return f"{self.dataset}-{self.imbalance}{self.ratio:g}"

    def model_config(self) -> vit_model.ViTConfig:
        overrides = {"image_size": self.image_size} if self.image_size else {}
        return vit_model.ViTConfig.preset(self.model, **overrides)

    def pretrain_dir(self) -> Path:
        if self.pretrain_workdir:
            return Path(self.pretrain_workdir)
        return PretrainConfig(dataset=self.pretrain_dataset, model=self.model).default_workdir()

    def validate(self) -> None:
        super().validate()
        if self.ratio < 1:
            raise ValueError(
                f"ratio={self.ratio} is below 1; it is the largest class size over the "
                "smallest (1 = balanced, 100 = the paper's setting)."
            )
        if self.init == "npz" and not self.npz:
            raise ValueError("init=npz needs --npz=<checkpoint of the original ViT release>.")
        self.model_config()  # image size / patch size checks

    def load_data(self) -> TaskData:
        task = image_data.load_dataset(self.dataset, data_dir=self.data_dir or None)
        return image_data.to_task_data(
            task, imbalance=self.imbalance, ratio=self.ratio, seed=self.subset_seed
        )

    def build_model(self, data: TaskData, rngs: nnx.Rngs) -> nnx.Module:
        config = self.model_config()
        num_classes = self.num_classes or data.num_classes
        if data.num_classes < num_classes:
            raise ValueError(
                f"The dataset {self.dataset} has {data.num_classes} classes but the head has "
                f"{num_classes} (--num_classes); pass --num_classes={data.num_classes} or 0."
            )
        if num_classes < data.num_classes:
            raise ValueError(
                f"--num_classes={num_classes} is below the {data.num_classes} classes of "
                f"{self.dataset}; pass 0 to size the head from the data."
            )
        channels = data.meta["num_channels"]
        if channels != config.num_channels:
            config = dataclasses.replace(config, num_channels=channels)
        dtype = DTYPES[self.dtype]
        if self.init == "npz":
            model = vit_model.load_npz(self.npz, num_classes, rngs=rngs, config=config, dtype=dtype)
        elif self.init == "pretrained":
            model = self._pretrained(config, num_classes, rngs, dtype)
        else:
            model = vit_model.ViT(config, num_classes, rngs=rngs, dtype=dtype)
        if data.meta["image_size"] != config.image_size:
            return ResizeInputs(model)
        return model

    def _pretrained(self, config, num_classes, rngs, dtype) -> vit_model.ViT:
        workdir = self.pretrain_dir()
        if not (workdir / "summary.json").exists():
            print(f"No pretrained ViT in {workdir}: pretraining it first.", flush=True)
            run_pretraining(self, workdir)
        saved = json.loads((workdir / "summary.json").read_text())["config"]
        if saved["model"] != self.model or saved.get("image_size", 0) != self.image_size:
            raise ValueError(
                f"The pretrained ViT in {workdir} is model={saved['model']!r}, image_size="
                f"{saved.get('image_size', 0)}; fine-tune with the same --model and "
                "--image_size, or pass another --pretrain_workdir."
            )
        tree = ckpt.latest_model_tree(workdir / "checkpoints")
        if "model" in tree and "head" not in tree:  # saved behind ResizeInputs
            tree = tree["model"]
        pretrained_classes = int(np.shape(tree["head"]["bias"])[0])
        pretrained_channels = int(np.shape(tree["embedding"]["kernel"])[2])
        if pretrained_channels != config.num_channels:
            raise ValueError(
                f"The pretrained ViT takes {pretrained_channels}-channel images "
                f"but {self.dataset} has {config.num_channels}; use --init=random or "
                "pretrain on a dataset with the same channels."
            )
        model = nnx.eval_shape(
            lambda: vit_model.ViT(config, pretrained_classes, rngs=nnx.Rngs(0), dtype=dtype)
        )
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, tree)
        nnx.update(model, state)
        return vit_model.with_new_head(model, num_classes, rngs=rngs)


@dataclasses.dataclass
class PretrainConfig(ViTExampleConfig):
    """Pretraining: plain training from random weights on a whole balanced dataset."""

    method: str = override_default(ViTExampleConfig, "method", "fft")
    learning_rate: float = override_default(ViTExampleConfig, "learning_rate", 1e-3)
    num_epochs: int = override_default(ViTExampleConfig, "num_epochs", 2)
    batch_size: int = override_default(ViTExampleConfig, "batch_size", 128)
    warmup_ratio: float = override_default(ViTExampleConfig, "warmup_ratio", 0.05)
    dataset: str = override_default(ViTExampleConfig, "dataset", "fashion_mnist")
    imbalance: str = override_default(ViTExampleConfig, "imbalance", "none")
    ratio: float = override_default(ViTExampleConfig, "ratio", 1.0)
    init: str = override_default(ViTExampleConfig, "init", "random")

    def default_workdir(self) -> Path:
        return Path("runs") / f"vit-pretrain-{self.dataset}-{self.model}"


def run_pretraining(finetune: ViTExampleConfig, workdir: Path) -> dict:
    """Pretrains the fine-tuning run's model on its ``pretrain_dataset`` into ``workdir``."""
    from dsgd_jax.examples.train import train_and_evaluate
    from dsgd_jax.examples.workdir import SettingsDiffer

    config = PretrainConfig(
        dataset=finetune.pretrain_dataset,
        model=finetune.model,
        image_size=finetune.image_size,
        dtype=finetune.dtype,
        progress=finetune.progress,
        resume=True,  # an interrupted pretraining continues
    )
    try:
        return train_and_evaluate(config, workdir)
    except SettingsDiffer as e:
        raise ValueError(
            f"{workdir} holds another run than the pretraining this fine-tuning needs "
            f"({e.detail}); pass another --pretrain_workdir, or move that folder away."
        ) from None
