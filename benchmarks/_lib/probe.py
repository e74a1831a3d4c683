"""Linear probes on a pretrained model's frozen features: how far a new head alone gets.

A method that leaves the encoder (nearly) frozen, such as LoRA at a small rank,
can do little better than a linear classifier on the frozen features. This module
fits that classifier (multinomial logistic regression in plain NumPy) on two
representations of a freshly built example model:

- ``features``: what ``model.features(inputs)`` returns (BERT's [CLS] hidden
  state, the ViT's class token);
- ``head_input``: what the freshly initialised classifier sees when everything
  before it stays frozen (BERT: tanh of the pretrained pooler; ViT: encoder_norm).

``python benchmarks/frozen_probe.py --example=bert --task=drugs`` prints the
test accuracy of both probes next to the majority-class rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from dsgd_jax.examples.methods.base import needs_head_split
from dsgd_jax.examples.metrics import classification_metrics

__all__ = ["fit_softmax_probe", "frozen_representations", "probe_report"]


def fit_softmax_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    l2: float = 1e-2,
    max_steps: int = 10_000,
    tolerance: float = 1e-6,
):
    """Multinomial logistic regression on standardised ``features``, fitted by L-BFGS.

    Minimises ``mean cross-entropy + l2 / 2 * ||W||^2`` (the bias is not penalised)
    in float64 with SciPy's L-BFGS-B, until the gradient's largest entry is below
    ``tolerance`` or after ``max_steps`` iterations. Features are standardised with
    the training mean and std.

    Returns ``predict(x) -> class indices``; its attributes ``weights``, ``bias``,
    ``mean``, ``std`` and ``steps`` (iterations) hold the fit, ``gradient`` the
    largest entry of the objective's gradient at the returned weights and
    ``converged`` whether it is below ``tolerance`` (False when the iteration cap,
    or float precision, stopped the fit first).
    """
    from scipy.optimize import minimize

    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_softmax_probe: features must be [N, D] with N >= 1, got {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(
            f"fit_softmax_probe: labels must be [N] = [{len(x)}] to match features, got {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"fit_softmax_probe: labels must lie in 0..num_classes-1 = 0..{num_classes - 1}; "
            f"got {y.min()}..{y.max()} (pass the task's number of classes)"
        )
    for name, value, ok, want in (
        ("l2", l2, l2 >= 0, ">= 0"),
        ("max_steps", max_steps, max_steps >= 1, ">= 1"),
        ("tolerance", tolerance, tolerance > 0, "> 0"),
    ):
        if not ok:
            raise ValueError(f"fit_softmax_probe: {name} must be {want}, got {value!r}")
    mean, std = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / std
    onehot = np.eye(num_classes)[y]
    shape = (x.shape[1], num_classes)
    weights_size = shape[0] * shape[1]

    def objective(theta):
        weights, bias = theta[:weights_size].reshape(shape), theta[weights_size:]
        logits = z @ weights + bias
        top = logits.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        loss = np.mean(log_norm - logits[np.arange(len(y)), y]) + l2 / 2 * np.sum(weights**2)
        residual = np.exp(logits - log_norm[:, None]) - onehot
        grad = np.concatenate([(z.T @ residual / len(z) + l2 * weights).ravel(), residual.mean(0)])
        return loss, grad

    fit = minimize(
        objective,
        np.zeros(weights_size + num_classes),
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": max_steps,
            "gtol": tolerance,
            "ftol": 0.0,
            "maxcor": 20,
            "maxfun": 2 * max_steps + 20,
        },
    )
    weights, bias = fit.x[:weights_size].reshape(shape), fit.x[weights_size:]
    gradient = float(np.abs(objective(fit.x)[1]).max())

    def predict(inputs: np.ndarray) -> np.ndarray:
        return (((np.asarray(inputs, np.float64) - mean) / std) @ weights + bias).argmax(1)

    predict.weights, predict.bias, predict.mean, predict.std = weights, bias, mean, std
    predict.steps, predict.gradient = int(fit.nit), gradient
    predict.converged = gradient < tolerance
    return predict


def frozen_representations(
    model: nnx.Module, inputs: Mapping[str, np.ndarray], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """``{"features": ..., "head_input": ...}`` of ``model`` on ``inputs``, in float64.

    ``model`` needs ``features()``, ``classify()`` and ``head_name`` (as the BERT
    and ViT examples' models have). ``head_input`` runs ``classify`` on a clone
    whose head is replaced by the identity, so ``model`` itself is not touched.
    """
    import jax.numpy as jnp

    needs_head_split(model, "frozen_representations")
    if batch_size < 1:
        raise ValueError(f"frozen_representations: batch_size={batch_size} must be >= 1")
    headless = nnx.clone(model)
    owners = [
        module
        for _, module in nnx.iter_graph(headless)
        if isinstance(module, nnx.Module)
        and isinstance(vars(module).get(model.head_name), nnx.Module)
    ]
    if len(owners) != 1:
        raise ValueError(
            f"frozen_representations: expected one module holding the head "
            f"{model.head_name!r} in {type(model).__name__}, found {len(owners)}"
        )
    setattr(owners[0], model.head_name, lambda x: x)
    n = len(next(iter(inputs.values())))
    out: dict[str, list[np.ndarray]] = {"features": [], "head_input": []}
    for start in range(0, n, batch_size):
        batch = {k: jnp.asarray(v[start : start + batch_size]) for k, v in inputs.items()}
        feats = headless.features(batch)
        out["features"].append(np.asarray(feats, np.float64))
        out["head_input"].append(np.asarray(headless.classify(feats), np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def probe_report(config: Any, *, seed: int = 0, **probe_kwargs) -> dict[str, Any]:
    """Frozen-feature probes of ``config``'s example model on its task.

    Builds the model as training would (pretrained weights, new head from ``seed``),
    fits :func:`fit_softmax_probe` on the training split's representations and
    scores the test split. Returns the majority-class rate and, per representation,
    train and test accuracy, macro-F1 and the test prediction counts.
    """
    data = config.load_data()
    model = config.build_model(data, nnx.Rngs(seed))
    names = list(data.class_names)
    train = frozen_representations(model, data.train.inputs, batch_size=config.eval_batch_size)
    test = frozen_representations(model, data.test.inputs, batch_size=config.eval_batch_size)
    train_labels, test_labels = np.asarray(data.train.labels), np.asarray(data.test.labels)
    majority = int(np.bincount(train_labels, minlength=len(names)).argmax())
    report: dict[str, Any] = {
        "task": config.task_name,
        "train_examples": len(train_labels),
        "test_examples": len(test_labels),
        "majority_class": names[majority],
        "majority_rate": float(np.mean(test_labels == majority)),
        "probes": {},
    }
    for name in ("features", "head_input"):
        predict = fit_softmax_probe(train[name], train_labels, len(names), **probe_kwargs)
        predictions = predict(test[name])
        metrics = classification_metrics(test_labels, predictions, names)
        report["probes"][name] = {
            "dimensions": int(train[name].shape[1]),
            "train_accuracy": float(np.mean(predict(train[name]) == train_labels)),
            "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"],
            "test_prediction_counts": dict(
                zip(names, np.bincount(predictions, minlength=len(names)).tolist(), strict=True)
            ),
            "mean_abs": float(np.abs(train[name]).mean()),
            "mean_std_across_examples": float(train[name].std(0).mean()),
            "steps": int(predict.steps),
            "final_gradient": predict.gradient,
            "converged": bool(predict.converged),
        }
    return report
