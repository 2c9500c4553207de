"""Classification metrics: one implementation for ``evaluate`` and the training loop's
validation (checked against scikit-learn in tests/test_metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Metrics:
    """Classification metrics over K true classes.

    confusion: int64 [K, P] (rows: true classes ``classes``; columns: ``predicted_classes``,
    whose first K are ``classes``). precision / recall / f1: float64 [K]; support: int64 [K].
    """

    classes: tuple[str, ...]
    predicted_classes: tuple[str, ...]
    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        k = len(self.classes)
        return float(np.trace(self.confusion[:, :k]) / self.n) if self.n else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present (support > 0)."""
        m = self.support > 0
        return float(self.recall[m].mean()) if m.any() else float("nan")

    @property
    def macro_precision(self) -> float:
        m = self.support > 0
        return float(self.precision[m].mean()) if m.any() else float("nan")

    @property
    def macro_recall(self) -> float:
        return self.balanced_accuracy

    @property
    def macro_f1(self) -> float:
        m = self.support > 0
        return float(self.f1[m].mean()) if m.any() else float("nan")

    @property
    def weighted_f1(self) -> float:
        s = self.support.sum()
        return float((self.f1 * self.support).sum() / s) if s else float("nan")


def compute_metrics(true: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                    predicted_classes: Sequence[str] | None = None) -> Metrics:
    """Metrics of integer predictions.

    true: int [N] indices into ``classes``; pred: int [N] indices into ``predicted_classes``
    (default ``classes``), whose first len(classes) entries must equal ``classes``.
    Precision of a class never predicted is 0; recall of a class without samples is 0 (such
    classes are left out of the macro averages).
    """
    classes = tuple(classes)
    pcls = tuple(predicted_classes) if predicted_classes is not None else classes
    if pcls[: len(classes)] != classes:
        raise ValueError(f"predicted_classes must start with classes {list(classes)}, got {list(pcls)}")
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"true and pred must be equal-length 1-D arrays, got {true.shape} and {pred.shape}")
    k, p = len(classes), len(pcls)
    if true.size and (true.min() < 0 or true.max() >= k or pred.min() < 0 or pred.max() >= p):
        raise ValueError("class index out of range")
    cm = np.zeros((k, p), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm[:, :k].sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return Metrics(classes, pcls, cm, precision, recall, f1, support)
