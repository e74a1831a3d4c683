"""The one fine-tuning loop of the examples: ``train_and_evaluate(config, workdir)``.

Each example subclasses :class:`TrainConfig` and fills in two methods,
``load_data()`` (a :class:`~dsgd_jax.examples.data.TaskData`) and
``build_model(data, rngs)`` (an NNX module mapping a dict of input arrays to
logits, with dropout on when called with ``rngs``). Everything else is shared:

- AdamW with linear warm-up and linear decay (weight decay on matrices only),
  optional global-norm clipping and gradient accumulation via
  ``optax.MultiSteps``;
- ``method="fft"`` (plain fine-tuning: every example weighs 1) or
  ``method="dsgd"`` (correct examples weigh lambda(t), read off the optimizer's
  update count with :func:`dsgd_jax.step_count`, so lambda counts optimizer
  updates, not micro-batches);
- fixed-shape padded batches with a validity mask, ``nnx.jit`` steps, dropout
  keys folded from the seed and the step, data order from the seed and the epoch;
- evaluation after every epoch, a tqdm bar, JSON-lines metrics, an orbax
  checkpoint per epoch and exact resume; optional gradient-conflict logging.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dsgd_jax
from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples.data import TaskData, batches
from dsgd_jax.examples.metrics import MetricsLog, classification_metrics
from dsgd_jax.examples.nn import num_params

__all__ = ["METHODS", "SCALERS", "TrainConfig", "train_and_evaluate"]

METHODS = ("fft", "dsgd")
SCALERS = ("linear", "cosine", "descending", "constant")

# Fields that may differ between a run and its resumption.
_RESUME_FREE = ("resume", "stop_after_epochs", "progress", "log_every")


def config_field(default, help_text: str, **metadata):
    """A dataclass field with the help text (and choices) its command-line flag shows.

    ``choices`` are checked by :meth:`TrainConfig.validate` and by the command line.
    """
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


def override_default(base: type, name: str, default):
    """Field ``name`` of the config class ``base`` with another default, same help and choices."""
    (field,) = (f for f in dataclasses.fields(base) if f.name == name)
    return dataclasses.field(default=default, metadata=field.metadata)


@dataclasses.dataclass
class TrainConfig:
    """Settings of the shared loop; examples subclass it with model and data fields."""

    method: str = config_field("dsgd", "fft (plain fine-tuning) or dsgd", choices=METHODS)
    scaler: str = config_field("linear", "lambda(t) schedule for dsgd", choices=SCALERS)
    beta: float = config_field(1.0, "final lambda (the constant for scaler=constant)")
    learning_rate: float = config_field(5e-5, "peak AdamW learning rate")
    weight_decay: float = config_field(0.01, "AdamW weight decay (matrices only)")
    warmup_ratio: float = config_field(0.1, "share of optimizer updates spent warming up")
    max_grad_norm: float = config_field(1.0, "global-norm clipping; 0 turns it off")
    num_epochs: int = config_field(3, "epochs over the training split")
    batch_size: int = config_field(16, "examples per micro-batch")
    grad_accum_steps: int = config_field(1, "micro-batches per optimizer update (optax.MultiSteps)")
    eval_batch_size: int = config_field(64, "examples per evaluation batch")
    seed: int = config_field(42, "seeds the head's init, dropout and the data order")
    log_every: int = config_field(10, "steps between metric records and bar updates")
    conflict_every: int = config_field(0, "log cos(g_W, g_C) every N steps; 0 = never")
    collapse_threshold: float = config_field(
        0.95, "share of predictions in one class that counts as collapse"
    )
    save_checkpoints: bool = config_field(True, "save an orbax checkpoint after every epoch")
    resume: bool = config_field(False, "continue from the last checkpoint in the workdir")
    stop_after_epochs: int = config_field(0, "stop (resumably) after this many epochs; 0 = run all")
    progress: bool = config_field(True, "show a progress bar")

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
        for field in dataclasses.fields(self):  # every field declared with choices
            choices, value = field.metadata.get("choices"), getattr(self, field.name)
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
        for name in ("conflict_every", "stop_after_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off).")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0.")
        if not 0 < self.collapse_threshold <= 1:
            raise ValueError(
                f"collapse_threshold must be in (0, 1], got {self.collapse_threshold}."
            )
        if self.method == "dsgd":
            self.make_scaler(1)  # beta checks live in the core scalers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def make_scaler(self, total_updates: int) -> Callable[[jax.Array], jax.Array]:
        """lambda(t) for ``method="dsgd"``; the constant 1 for ``method="fft"``."""
        if self.method == "fft":
            return lambda count: jnp.ones((), jnp.float32)
        if self.scaler == "constant":
            return dsgd_jax.constant_scaler(self.beta)
        make = {
            "linear": dsgd_jax.linear_scaler,
            "cosine": dsgd_jax.cosine_scaler,
            "descending": dsgd_jax.descending_scaler,
        }[self.scaler]
        return make(self.beta, total_updates)


def make_optimizer(config: TrainConfig, total_updates: int) -> optax.GradientTransformation:
    """AdamW with warm-up and linear decay, clipping and accumulation as configured."""
    warmup = round(config.warmup_ratio * total_updates)
    lr = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
            optax.linear_schedule(config.learning_rate, 0.0, max(total_updates - warmup, 1)),
        ],
        boundaries=[warmup],
    )
    adamw = optax.adamw(
        lr,
        weight_decay=config.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params),
    )
    tx = adamw
    if config.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx


_dsgd_loss = dsgd_jax.make_dsgd_loss(
    optax.softmax_cross_entropy_with_integer_labels, dsgd_jax.argmax_correct, has_aux=True
)


def _per_example(model, inputs, labels, key):
    logits = model(inputs, rngs=nnx.Rngs(dropout=key))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses, dsgd_jax.argmax_correct(logits, labels)


def make_steps(scale_fn: Callable[[jax.Array], jax.Array]):
    """The jitted train, conflict and predict steps for one scaler."""

    @nnx.jit
    def train_step(model, optimizer, inputs, labels, valid, key):
        scale = scale_fn(dsgd_jax.step_count(optimizer.opt_state))

        def loss_fn(model):
            logits = model(inputs, rngs=nnx.Rngs(dropout=key))
            return _dsgd_loss(logits, labels, scale=scale, where=valid)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return {"loss": loss, "lambda": scale, "fraction_correct": aux.fraction_correct}

    @nnx.jit
    def conflict_step(model, optimizer, inputs, labels, valid, key):
        scale = scale_fn(dsgd_jax.step_count(optimizer.opt_state))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss_fn(params):
            return _per_example(nnx.merge(graphdef, params, rest), inputs, labels, key)

        return dsgd_jax.gradient_conflict(loss_fn, params, scale=scale, where=valid)._asdict()

    @nnx.jit
    def predict_step(model, inputs):
        return jnp.argmax(model(inputs), axis=-1)

    return train_step, conflict_step, predict_step


def _evaluate(predict_step, model, data: TaskData, config: TrainConfig) -> dict[str, Any]:
    predictions = []
    for inputs, _, valid in batches(data.test, config.eval_batch_size):
        predictions.append(np.asarray(predict_step(model, inputs))[valid])
    predictions = np.concatenate(predictions)
    metrics = classification_metrics(
        data.test.labels,
        predictions,
        data.class_names,
        collapse_threshold=config.collapse_threshold,
    )
    metrics["predictions"] = predictions.tolist()
    return metrics


def _check_finite(records: list[dict[str, Any]], last_saved: int) -> None:
    for record in records:
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"The training loss is {record['loss']} at step {record['step']} "
                f"(epoch {record['epoch']}); nothing was logged or saved from it. Lower "
                "--learning_rate or set --max_grad_norm; the last good checkpoint is "
                f"epoch {last_saved}."
            )


def _progress(config: TrainConfig, total: int, epoch: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"epoch {epoch}/{config.num_epochs}",
        disable=not config.progress,
        dynamic_ncols=True,
        leave=True,
    )


def _check_resume_config(config: TrainConfig, workdir: Path) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = config.to_dict()
    changed = {
        k: (saved.get(k), v) for k, v in now.items() if k not in _RESUME_FREE and saved.get(k) != v
    }
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(
            f"--resume with settings that differ from the run in {workdir} ({detail}). "
            "Resume with the same settings, or start a new --workdir."
        )


def train_and_evaluate(config: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Fine-tunes ``config``'s model on its data, evaluating after every epoch.

    Writes to ``workdir``: ``config.json``, ``metrics.jsonl`` (per-step loss,
    lambda and fraction correct every ``log_every`` steps; per-epoch evaluation
    with the collapse flag; gradient-conflict records if asked),
    ``checkpoints/`` (orbax, one per epoch) and ``summary.json``.

    Returns:
      The summary: test accuracy, macro-F1, per-class recall, collapse flag,
      test predictions, wall time and the settings.
    """
    config.validate()
    workdir = Path(workdir).absolute()
    with jax.numpy_dtype_promotion("standard"):
        return _train(config, workdir)


def _train(config: TrainConfig, workdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    manager = ckpt.open_manager(workdir / "checkpoints") if config.save_checkpoints else None
    last_saved = manager.latest_step() if manager is not None else None
    if last_saved is not None and not config.resume:
        raise FileExistsError(
            f"{workdir} already holds checkpoints up to epoch {last_saved}. Pass --resume "
            "to continue that run, or choose a new --workdir."
        )
    if config.resume:
        _check_resume_config(config, workdir)

    data = config.load_data()
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    model = config.build_model(data, nnx.Rngs(params=init_key, dropout=init_key))
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_updates = steps_per_epoch * config.num_epochs // config.grad_accum_steps
    if total_updates < 1:
        raise ValueError(
            f"grad_accum_steps={config.grad_accum_steps} exceeds the {steps_per_epoch} "
            f"micro-batches of {config.num_epochs} epoch(s); lower it or train longer."
        )
    optimizer = nnx.Optimizer(model, make_optimizer(config, total_updates), wrt=nnx.Param)
    train_step, conflict_step, predict_step = make_steps(config.make_scaler(total_updates))

    log = MetricsLog(workdir / "metrics.jsonl")
    first_epoch = 1
    if config.resume and last_saved is not None:
        ckpt.restore(manager, last_saved, model, optimizer)
        log.truncate_after(last_saved)
        first_epoch = last_saved + 1
    else:
        log.path.unlink(missing_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    eval_metrics: dict[str, Any] | None = None
    epochs_done = first_epoch - 1
    try:
        for epoch in range(first_epoch, config.num_epochs + 1):
            _run_epoch(
                config, epoch, data, model, optimizer, (train_step, conflict_step),
                dropout_key, log, steps_per_epoch, last_saved or 0,
            )  # fmt: skip
            eval_metrics = _evaluate(predict_step, model, data, config)
            log.write([{"kind": "epoch", "epoch": epoch, **_without(eval_metrics, "predictions")}])
            _check_params_finite(model, epoch)
            if manager is not None:
                ckpt.save(manager, epoch, model, optimizer)
                last_saved = epoch
            epochs_done = epoch
            if config.stop_after_epochs and epoch - first_epoch + 1 >= config.stop_after_epochs:
                break
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    if eval_metrics is None:  # resumed a finished run: evaluate what was restored
        eval_metrics = _evaluate(predict_step, model, data, config)
    summary = {
        "method": config.method,
        "task": config.task_name,
        "seed": config.seed,
        "epochs": epochs_done,
        "finished": epochs_done == config.num_epochs,
        "num_params": num_params(model),
        "wall_time_s": time.perf_counter() - start,
        **eval_metrics,
        "config": config.to_dict(),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def _check_params_finite(model: nnx.Module, epoch: int) -> None:
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    if not all(bool(jnp.all(jnp.isfinite(p))) for p in leaves):
        raise FloatingPointError(
            f"Non-finite parameters after epoch {epoch}; the checkpoint was not written. "
            "Lower --learning_rate or set --max_grad_norm."
        )


def _run_epoch(config, epoch, data, model, optimizer, steps, dropout_key, log, total, saved):
    train_step, conflict_step = steps
    order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train))
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    bar = _progress(config, total, epoch)

    def flush():
        records = [
            {"kind": "step", "epoch": epoch, "step": s, **{k: float(v) for k, v in m.items()}}
            for s, m in jax.device_get(pending)
        ]
        _check_finite(records, saved)
        log.write(records)
        if records:
            last = records[-1]
            bar.set_postfix(
                loss=f"{last['loss']:.4f}",
                acc=f"{last['fraction_correct']:.2f}",
                lam=f"{last['lambda']:.3f}",
            )
        pending.clear()

    with bar:
        for i, (inputs, labels, valid) in enumerate(
            batches(data.train, config.batch_size, order=order)
        ):
            step = (epoch - 1) * total + i + 1
            key = jax.random.fold_in(dropout_key, step)
            if config.conflict_every and step % config.conflict_every == 0:
                stats = conflict_step(model, optimizer, inputs, labels, valid, key)
                log.write(
                    [{"kind": "conflict", "epoch": epoch, "step": step}
                     | {k: float(v) for k, v in stats.items()}]
                )  # fmt: skip
            pending.append((step, train_step(model, optimizer, inputs, labels, valid, key)))
            if len(pending) >= config.log_every:
                flush()
            bar.update(1)
        flush()
