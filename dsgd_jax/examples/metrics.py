"""Evaluation metrics and the JSON-lines metrics log of a run, in plain NumPy."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MetricsLog",
    "classification_metrics",
    "failure_flags",
    "format_summary",
    "mean_pairwise_cosine",
]


def failure_flags(
    labels: np.ndarray, predictions: np.ndarray, *, one_class_share: float = 0.95
) -> dict[str, Any]:
    """How a run's test predictions fail, if they do: three flags from strict to loose.

    - ``collapsed``: one class is predicted for every test input (the paper's
      Definition 2.3);
    - ``failed``: the accuracy is at or below the majority-class rate of the
      test labels, what always answering the most frequent class scores
      (collapsed runs and other degenerate ones);
    - ``mostly_one_class``: one class takes at least ``one_class_share`` of the
      predictions (a run can be so and still beat the majority rate).

    Also returns ``majority_rate`` (the share of the most frequent test label),
    ``top_class`` (the index of the most predicted class) and ``top_share`` (its
    share of the predictions). The comparisons are on counts, not rounded rates.

    Examples:
      >>> import numpy as np
      >>> labels = np.array([0, 0, 0, 1])
      >>> f = failure_flags(labels, np.array([0, 0, 0, 0]))
      >>> f["collapsed"], f["failed"], f["majority_rate"]
      (True, True, 0.75)
      >>> f = failure_flags(labels, np.array([0, 0, 1, 0]))  # 2 of 4 right, mixed
      >>> f["collapsed"], f["failed"], f["mostly_one_class"]
      (False, True, False)
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"labels and predictions must be the same non-empty [N] shape, got "
            f"{labels.shape} and {predictions.shape}."
        )
    if not 0 < one_class_share <= 1:
        raise ValueError(f"one_class_share must be in (0, 1], got {one_class_share}.")
    _, label_counts = np.unique(labels, return_counts=True)
    classes, predicted_counts = np.unique(predictions, return_counts=True)
    top = int(np.argmax(predicted_counts))
    correct = int(np.sum(labels == predictions))
    n = labels.size
    return {
        "collapsed": bool(classes.size == 1),
        "failed": bool(correct <= label_counts.max()),
        "mostly_one_class": bool(predicted_counts[top] >= one_class_share * n),
        "majority_rate": float(label_counts.max() / n),
        "top_class": int(classes[top]),
        "top_share": float(predicted_counts[top] / n),
    }


def classification_metrics(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    *,
    one_class_share: float = 0.95,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the failure flags of predictions.

    A class that never occurs and is never predicted is left out of the macro
    average; F1 is 0 for a class that occurs but is never predicted right. The
    flags ``collapsed``, ``failed`` and ``mostly_one_class`` (with
    ``majority_rate``, ``top_class`` as a name and ``top_share``) are
    :func:`failure_flags`'.

    Examples:
      >>> import numpy as np
      >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), ["a", "b"])
      >>> m["accuracy"], round(m["macro_f1"], 4), m["per_class_recall"], m["failed"]
      (0.75, 0.7333, {'a': 1.0, 'b': 0.5}, False)
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_pos = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    recall = np.divide(true_pos, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(true_pos, predicted, out=np.zeros(num_classes), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(num_classes), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    flags = failure_flags(labels, predictions, one_class_share=one_class_share)
    return {
        "accuracy": float(true_pos.sum() / max(labels.size, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {
            name: float(r) for name, r, s in zip(class_names, recall, support, strict=True) if s > 0
        },
        **flags,
        "top_class": class_names[flags["top_class"]],
        "confusion": confusion.tolist(),
    }


def mean_pairwise_cosine(features: np.ndarray) -> float:
    """The mean cosine similarity over all pairs of distinct rows of ``features`` [N, H].

    The paper's Figure 2a/2b statistic: a collapsed model maps every input to
    nearly the same representation, so its mean pairwise cosine nears 1. Rows of
    norm 0 count as orthogonal to every other row. Computed in float64 from the
    sum of the unit rows: ``(|sum u_i|^2 - sum |u_i|^2) / (N (N - 1))``.

    Examples:
      >>> round(mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])), 4)
      0.4714
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape [N, H] with N >= 2, got {x.shape}.")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    units = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    total = units.sum(axis=0)
    n = x.shape[0]
    return float((total @ total - (units * units).sum()) / (n * (n - 1)))


def _failure(metrics: Mapping[str, Any]) -> str:
    if metrics.get("collapsed"):
        return f"collapsed: predicts {metrics['top_class']!r} for every input"
    if metrics.get("failed"):
        return (
            f"failed: accuracy at or below the majority rate {metrics['majority_rate']:.4f} "
            f"({100 * metrics['top_share']:.0f}% of inputs predicted {metrics['top_class']!r})"
        )
    return "no"


def _metric_lines(metrics: Mapping[str, Any], indent: str) -> list[str]:
    recall = ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_class_recall"].items())
    return [
        f"{indent}accuracy          {metrics['accuracy']:.4f}",
        f"{indent}macro-F1          {metrics['macro_f1']:.4f}",
        f"{indent}per-class recall  {recall}",
        f"{indent}failed/collapsed  {_failure(metrics)}",
    ]


def format_summary(summary: Mapping[str, Any]) -> str:
    """The final summary of a run as a few human-readable lines (for several tasks:
    each task's, then their average accuracy and macro-F1)."""
    lines = [
        f"method {summary['method']}, task {summary['task']}, seed {summary['seed']}, "
        f"{summary['epochs']} epochs, {summary['num_params']:,} parameters",
    ]
    if "tasks" in summary:
        for name, metrics in summary["tasks"].items():
            lines += [f"  {name}", *_metric_lines(metrics, "    ")]
        lines += [
            f"  average accuracy  {summary['accuracy']:.4f}",
            f"  average macro-F1  {summary['macro_f1']:.4f}",
        ]
    else:
        lines += _metric_lines(summary, "  ")
    lines.append(f"  wall time         {summary['wall_time_s']:.1f} s")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class MetricsLog:
    """Appends one JSON object per line to ``path``; crash-safe and resumable.

    Each record has a ``kind`` ("step", "conflict" or "epoch") and an
    ``epoch``. :meth:`truncate_after` drops records of epochs later than the
    one a run resumes from (and a torn last line), so a resumed run's log equals
    an uninterrupted one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        for record in records:
            for key, value in record.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise FloatingPointError(
                        f"metric {key!r} is {value} in {dict(record)}; refusing to log a "
                        "non-finite value."
                    )
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """The records; a torn last line (a write cut short by a crash) is dropped with a
        warning, a damaged line before it is an error naming the file and the line."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                if number == len(lines):
                    print(
                        f"Warning: dropped the torn last line {number} of {self.path}.",
                        file=sys.stderr,
                    )
                    break
                raise ValueError(
                    f"{self.path} line {number} is damaged ({e}); only a torn last line can "
                    "be dropped. Remove the line, or start a new workdir."
                ) from None
        return records

    def truncate_after(self, epoch: int) -> None:
        """Keeps only the records of epochs ``<= epoch``."""
        kept = [r for r in self.read() if r["epoch"] <= epoch]
        with self.path.open("w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
