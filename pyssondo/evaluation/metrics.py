"""Classification metrics and their mean with a 95% confidence interval over folds (numpy).

Single-label tasks report accuracy and macro-F1; multi-label tasks report mAP (the mean over
classes of average precision). Definitions follow scikit-learn's (``accuracy_score``,
``f1_score(average="macro")``, ``average_precision_score``), which the tests use as reference.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

MIN_CI_FOLDS = 3  # fewer folds: no confidence interval is reported
# Student's t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, 6 decimals).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959963984540054


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions; int arrays [N]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (a class with no true and no predicted example is not counted; 0/0 counts as 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        scores.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum, sum_n (R_n - R_{n-1}) P_n, over
    the distinct score thresholds (tied scores enter together). y_true binary [N], scores [N].
    NaN when there is no positive."""
    y_true = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the classes with at least one positive; multi-hot [N, C], scores [N, C]."""
    aps = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])]
    aps = [a for a in aps if a == a]
    return float(np.mean(aps)) if aps else float("nan")


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, multilabel: bool
                           ) -> Dict[str, float]:
    """The metrics of one test part. ``scores`` [N, C]: any monotone class scores (logits,
    probabilities, vote counts); single-label predictions are their argmax."""
    if multilabel:
        return {"mAP": mean_average_precision(y_true, scores)}
    pred = np.argmax(scores, axis=1)
    return {"accuracy": accuracy(y_true, pred), "macro_f1": macro_f1(y_true, pred)}


def primary_metric(multilabel: bool) -> str:
    """The metric that ranks models and chooses probe settings."""
    return "mAP" if multilabel else "accuracy"


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: table for df <= 30, else the Cornish-Fisher expansion
    around the normal quantile (error < 3e-6 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z, n = _Z975, float(df)
    return (z + (z ** 3 + z) / (4 * n) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * n ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * n ** 3))


def mean_ci95(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean over folds and the half-width of its 95% confidence interval,
    t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation. None below
    :data:`MIN_CI_FOLDS` folds: from 2 folds (t = 12.7) the interval is too wide to mean
    anything."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(v))
    if len(v) < MIN_CI_FOLDS:
        return {"mean": mean, "ci95": None}
    half = t_quantile_975(len(v) - 1) * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return {"mean": mean, "ci95": half}
