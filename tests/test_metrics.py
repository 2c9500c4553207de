"""The one implementation of the classification metrics, against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from exe_stream.metrics import compute_metrics

CLASSES = ("angry", "happy", "sad", "neutral")


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    true = rng.integers(0, 4, n)
    # Mostly right, some classes never predicted or absent from the truth in some seeds.
    pred = np.where(rng.random(n) < 0.6, true, rng.integers(0, 4 if seed % 2 else 3, n))
    if seed == 3:
        true = np.where(true == 2, 1, true)  # class 'sad' has no samples
    m = compute_metrics(true, pred, CLASSES)
    labels = list(range(4))
    np.testing.assert_array_equal(m.confusion, confusion_matrix(true, pred, labels=labels))
    assert m.accuracy == pytest.approx(accuracy_score(true, pred))
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    np.testing.assert_array_equal(m.support, s)
    present = [c for c in labels if (true == c).any()]
    with warnings.catch_warnings():  # scikit-learn warns when a predicted class has no samples
        warnings.simplefilter("ignore")
        assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(true, pred))
    _, _, f_macro, _ = precision_recall_fscore_support(true, pred, labels=present, average="macro", zero_division=0)
    assert m.macro_f1 == pytest.approx(f_macro)
    _, _, f_w, _ = precision_recall_fscore_support(true, pred, labels=labels, average="weighted", zero_division=0)
    assert m.weighted_f1 == pytest.approx(f_w)


def test_training_loop_and_evaluate_share_the_implementation():
    import exe_stream.evaluate as evaluate
    import exe_stream.train.loop as loop

    assert evaluate.compute_metrics is compute_metrics and loop.compute_metrics is compute_metrics
    assert not hasattr(loop, "macro_f1") and not hasattr(loop, "confusion")
