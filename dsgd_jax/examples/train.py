"""The one fine-tuning loop of the examples: ``train_and_evaluate(config, workdir)``.

Each example subclasses :class:`TrainConfig` and fills in two methods,
``load_data()`` (a :class:`~dsgd_jax.examples.data.TaskData`) and
``build_model(data, rngs)`` (an NNX module mapping a dict of input arrays to
logits, with dropout on when called with ``rngs``). Everything else is shared:

- AdamW (or, with ``optimizer="bertadam"``, BERT's original AdamW without bias
  correction) with linear warm-up and linear decay (weight decay on matrices
  only), optional global-norm clipping and gradient accumulation via
  ``optax.MultiSteps``;
- ``method="fft"`` (plain fine-tuning: every example weighs 1) or
  ``method="dsgd"`` (correct examples weigh lambda(t), read off the optimizer's
  update count with :func:`dsgd_jax.step_count`, so lambda counts optimizer
  updates, not micro-batches), or one of the paper's baselines (``focal``,
  ``pcgrad``, ``noisytune``, ``lnsr``, ``swa``, ``lora``): each method is a module
  of :mod:`dsgd_jax.examples.methods` whose hooks the loop calls;
- fixed-shape padded batches with a validity mask, ``jax.jit(jax.vmap(...))``
  steps over a leading seed axis (one seed for a single run), dropout keys
  folded from the seed and the step, data order from the seed and the epoch;
- evaluation after every epoch, a tqdm bar, JSON-lines metrics, an orbax
  checkpoint per epoch and exact resume; optional gradient-conflict logging.

The optimizer and the jitted steps are built in :mod:`dsgd_jax.examples.steps`,
the runs of one program (a single run is one seed, the vmapped seeds of
:mod:`dsgd_jax.examples.seeds` are several) in :mod:`dsgd_jax.examples.runs`, their
epochs in :mod:`dsgd_jax.examples.loop`, and the workdir and resume checks live in
:mod:`dsgd_jax.examples.workdir`; this module holds the config and the entry point.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Literal

import jax
from flax import nnx

from dsgd_jax.examples import distributed, files, methods
from dsgd_jax.examples.data import TaskData
from dsgd_jax.examples.fields import choices_of, config_field
from dsgd_jax.examples.methods.dsgd import SCALERS
from dsgd_jax.examples.multitask import MIXINGS
from dsgd_jax.examples.nn import check_dropout_bits
from dsgd_jax.examples.runs import train_runs

__all__ = [
    "METHODS",
    "SCALERS",
    "TrainConfig",
    "train_and_evaluate",
]

METHODS = methods.METHODS  # the registry: every name, and the Method the loop calls
METHOD_CONFIGS = tuple(m.config for m in METHODS.values() if m.config is not None)
OPTIMIZERS = ("adamw", "bertadam")


@dataclasses.dataclass
class LoopConfig:
    """The loop's own settings: the fields of :class:`TrainConfig` that no method owns."""

    method: str = config_field(
        "dsgd",
        "fft (plain fine-tuning), dsgd, or a baseline of the paper: one of the methods "
        "registered in dsgd_jax.examples.methods (" + ", ".join(METHODS) + ")",
    )
    optimizer: Literal[OPTIMIZERS] = config_field(
        "adamw",
        "adamw (optax.adamw, bias-corrected) or bertadam (BERT's original AdamW without bias "
        "correction, eps 1e-6)",
    )
    learning_rate: float = config_field(5e-5, "peak learning rate")
    weight_decay: float = config_field(0.01, "AdamW weight decay (matrices only)")
    warmup_ratio: float = config_field(0.1, "share of optimizer updates spent warming up")
    max_grad_norm: float = config_field(1.0, "global-norm clipping; 0 turns it off")
    reinit_layers: int = config_field(
        0, "re-initialise the top N encoder layers (and BERT's pooler) first, as Zhang et al."
    )
    num_epochs: int = config_field(3, "epochs over the training split")
    batch_size: int = config_field(16, "examples per micro-batch")
    grad_accum_steps: int = config_field(1, "micro-batches per optimizer update (optax.MultiSteps)")
    eval_batch_size: int = config_field(64, "examples per evaluation batch")
    seed: int = config_field(42, "seeds the head's init, dropout and the data order")
    log_every: int = config_field(
        10, "steps between writes of the per-step metrics (and of the bar's loss readout)"
    )
    conflict_every: int = config_field(0, "log cos(g_W, g_C) every N steps; 0 = never")
    dropout_bits: int = config_field(
        32,
        "random bits deciding each dropout element: 32 (flax's nnx.Dropout) or 16 (one "
        "32-bit draw for two elements, rate within 1/131072; faster, other masks)",
    )
    task_mixing: Literal[MIXINGS] = config_field(
        "proportional",
        "several tasks: proportional (one shuffle of all their examples) or round_robin "
        "(one example of each task in turn)",
    )
    one_class_share: float = config_field(
        0.95, "share of predictions in one class that flags a run as mostly one class"
    )
    save_checkpoints: bool = config_field(True, "save an orbax checkpoint after every epoch")
    resume: bool = config_field(False, "continue from the last checkpoint in the workdir")
    stop_after_epochs: int = config_field(0, "stop (resumably) after this many epochs; 0 = run all")
    progress: bool = config_field(True, "show a progress bar")
    mesh: str = config_field("", "data-parallel devices, data:N; '' = every device")
    coordinator_address: str = config_field("", "multi-host: host:port of process 0")
    num_processes: int = config_field(0, "multi-host: processes; -1 = detect (SLURM, MPI, TPU)")
    process_id: int = config_field(0, "multi-host: this process's index, 0..num_processes-1")


@dataclasses.dataclass
class TrainConfig(*reversed(METHOD_CONFIGS), LoopConfig):
    """Settings of the shared loop; examples subclass it with model and data fields.

    The settings of the methods (``--beta``, ``--focal_alpha``, ...) are declared by the
    methods themselves (each method's ``config``, in :mod:`dsgd_jax.examples.methods`)
    and inherited from them, so every method's flags are fields here.
    """

    def load_data(self) -> TaskData:
        """The task to train on (examples override this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_data().")

    def build_model(self, data: TaskData, rngs: nnx.Rngs) -> nnx.Module:
        """The model, initialised from ``rngs`` (examples override this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model().")

    @property
    def task_name(self) -> str:
        return getattr(self, "task", type(self).__name__)

    def default_workdir(self) -> Path:
        """Where the command line writes when no ``--workdir`` is given."""
        task = str(self.task_name).replace("/", "_")
        return Path("runs") / f"{task}-{self.method}-s{self.seed}"

    def validate(self) -> None:
        """Raises ValueError naming the bad field and the fix."""
        for field in dataclasses.fields(self):  # every Literal field, and the method
            choices = METHODS if field.name == "method" else choices_of(type(self), field.name)
            value = getattr(self, field.name)
            if choices is not None and value not in choices:
                raise ValueError(
                    f"{field.name}={value!r} is unknown; choose one of {tuple(choices)}."
                )
        for name in (
            "num_epochs",
            "batch_size",
            "grad_accum_steps",
            "eval_batch_size",
            "log_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("conflict_every", "stop_after_epochs", "reinit_layers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off).")
        check_dropout_bits(self.dropout_bits)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0.")
        if not 0 < self.one_class_share <= 1:
            raise ValueError(f"one_class_share must be in (0, 1], got {self.one_class_share}.")
        for method in METHODS.values():  # each checks its own fields, whichever method runs
            method.validate(self)
        distributed.parse_mesh(self.mesh)
        if self.num_processes < -1:
            raise ValueError(
                f"num_processes={self.num_processes}: give N > 1, 0 for one process, or -1 "
                "to let JAX detect the cluster."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_and_evaluate(config: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Fine-tunes ``config``'s model on its data, evaluating after every epoch.

    Writes to ``workdir``: ``config.json``, ``metrics.jsonl`` (per-step loss,
    lambda and fraction correct every ``log_every`` steps; per-epoch evaluation
    with the failure flags; gradient-conflict records if asked),
    ``checkpoints/`` (orbax, one per epoch) and ``summary.json``.

    Returns:
      The summary, a dict of the test accuracy, macro-F1, per-class recall, failure flags,
      the mean pairwise cosine of the test features,
      test predictions, wall time and the settings.
    """
    config.validate()
    workdir = Path(workdir).absolute()
    lock = files.workdir_lock(workdir) if distributed.is_primary() else contextlib.nullcontext()
    with lock, jax.numpy_dtype_promotion("standard"):
        return train_runs([config], [workdir])[0]
