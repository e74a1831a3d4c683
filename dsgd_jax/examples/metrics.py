"""Evaluation metrics and the JSON-lines metrics log of a run, in plain NumPy."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricsLog", "classification_metrics", "format_summary"]


def classification_metrics(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    *,
    collapse_threshold: float = 0.95,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the collapse flag of predictions.

    A class that never occurs and is never predicted is left out of the macro
    average; F1 is 0 for a class that occurs but is never predicted right. The
    run counts as collapsed when one class takes at least ``collapse_threshold``
    of the predictions.

    Examples:
      >>> import numpy as np
      >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), ["a", "b"])
      >>> m["accuracy"], round(m["macro_f1"], 4), m["per_class_recall"]
      (0.75, 0.7333, {'a': 1.0, 'b': 0.5})
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
    shares = predicted / max(predictions.size, 1)
    majority = int(np.argmax(shares))
    return {
        "accuracy": float(true_pos.sum() / max(labels.size, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {
            name: float(r) for name, r, s in zip(class_names, recall, support, strict=True) if s > 0
        },
        "majority_class": class_names[majority],
        "majority_share": float(shares[majority]),
        "collapsed": bool(shares[majority] >= collapse_threshold),
        "confusion": confusion.tolist(),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The final summary of a run as a few human-readable lines."""
    recall = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_class_recall"].items())
    collapsed = (
        f"YES (predicts {summary['majority_class']!r} for "
        f"{100 * summary['majority_share']:.0f}% of inputs)"
        if summary["collapsed"]
        else "no"
    )
    return "\n".join(
        [
            f"method {summary['method']}, task {summary['task']}, seed {summary['seed']}, "
            f"{summary['epochs']} epochs, {summary['num_params']:,} parameters",
            f"  accuracy          {summary['accuracy']:.4f}",
            f"  macro-F1          {summary['macro_f1']:.4f}",
            f"  per-class recall  {recall}",
            f"  collapsed         {collapsed}",
            f"  wall time         {summary['wall_time_s']:.1f} s",
        ]
    )


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
    one a run resumes from, so a resumed run's log equals an uninterrupted one.
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
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Keeps only the records of epochs ``<= epoch``."""
        kept = [r for r in self.read() if r["epoch"] <= epoch]
        with self.path.open("w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
