"""Evaluation metrics for CLUE / GLUE tasks, in plain NumPy (no scipy/sklearn).

Conventions follow sklearn / scipy where they differ from a naive formula:

* ``f1_binary``: 0.0 when there are no true and no predicted positives.
* ``matthews_corrcoef``: multiclass (Gorodkin) form, 0.0 when undefined
  (a constant prediction or constant labels), like sklearn.
* ``pearson``: NaN when either input is constant, like scipy.
* ``spearman``: Pearson on average ranks (ties get the mean of their ranks).

``compute_metrics(task, predictions, labels)`` returns the task's metrics plus
``"main"`` (the model-selection metric): accuracy for CLUE, SST-2, RTE, MNLI,
QNLI; F1 for MRPC/QQP (accuracy also reported); MCC for CoLA; and for STS-B
``combined`` = (Pearson + Spearman) / 2, the number the GLUE leaderboard uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
  "accuracy",
  "compute_metrics",
  "f1_binary",
  "matthews_corrcoef",
  "pearson",
  "rankdata",
  "spearman",
]


def _pair(predictions: Any, labels: Any, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(predictions, dtype=dtype).reshape(-1)
  y = np.asarray(labels, dtype=dtype).reshape(-1)
  if p.shape != y.shape:
    raise ValueError(f"{p.size} predictions but {y.size} labels")
  if p.size == 0:
    raise ValueError("empty predictions")
  return p, y


def accuracy(predictions: Any, labels: Any) -> float:
  p, y = _pair(predictions, labels)
  return float(np.mean(p == y))


def f1_binary(predictions: Any, labels: Any, pos_label: int = 1) -> float:
  """F1 of the positive class: 2TP / (2TP + FP + FN)."""
  p, y = _pair(predictions, labels)
  pp, yp = p == pos_label, y == pos_label
  tp = int(np.sum(pp & yp))
  fp = int(np.sum(pp & ~yp))
  fn = int(np.sum(~pp & yp))
  denom = 2 * tp + fp + fn
  return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
  """Matthews correlation coefficient (binary or multiclass)."""
  p, y = _pair(predictions, labels)
  classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
  k = classes.size
  yi, pi = inv[: y.size], inv[y.size :]
  cm = np.zeros((k, k), dtype=np.float64)
  np.add.at(cm, (yi, pi), 1.0)
  t = cm.sum(axis=1)  # true counts per class
  q = cm.sum(axis=0)  # predicted counts per class
  c = np.trace(cm)
  s = cm.sum()
  cov_yp = c * s - t @ q
  cov_yy = s * s - t @ t
  cov_pp = s * s - q @ q
  denom = cov_yy * cov_pp
  if denom == 0:
    return 0.0
  return float(cov_yp / np.sqrt(denom))


def pearson(x: Any, y: Any) -> float:
  a, b = _pair(x, y, dtype=np.float64)
  a = a - a.mean()
  b = b - b.mean()
  denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
  if not np.isfinite(denom) or denom == 0:
    return float("nan")
  r = float(np.dot(a, b) / denom)
  return max(-1.0, min(1.0, r))


def rankdata(x: Any) -> np.ndarray:
  """1-based ranks, ties receive the average of the ranks they span."""
  a = np.asarray(x, dtype=np.float64).reshape(-1)
  order = np.argsort(a, kind="mergesort")
  s = a[order]
  n = a.size
  # start index of each run of equal values in the sorted array
  new_run = np.concatenate([[True], s[1:] != s[:-1]]) if n else np.zeros(0, bool)
  starts = np.flatnonzero(new_run)
  ends = np.concatenate([starts[1:], [n]])  # exclusive
  avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
  run_id = np.cumsum(new_run) - 1
  ranks = np.empty(n, dtype=np.float64)
  ranks[order] = avg[run_id]
  return ranks


def spearman(x: Any, y: Any) -> float:
  a, b = _pair(x, y, dtype=np.float64)
  if np.isnan(a).any() or np.isnan(b).any():
    return float("nan")
  return pearson(rankdata(a), rankdata(b))


def compute_metrics(task: Any, predictions: Any, labels: Any) -> dict[str, float]:
  """Metrics for ``task`` (name or TaskSpec) plus a ``"main"`` key.

  ``predictions`` may be class indices ``[N]`` or logits ``[N, num_labels]``
  (argmax is taken) for classification, and ``[N]`` / ``[N, 1]`` scores for
  STS-B.  ``labels`` are the ``Example.label`` values (ints / floats).
  """
  from kdjax.data.tasks import get_task

  spec = get_task(task)
  y = np.asarray(labels)
  if y.dtype == object:
    raise ValueError(f"{spec.name}: labels contain None / non-numeric values (test split?)")
  p = np.asarray(predictions)
  if spec.is_regression:
    p = p.astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
      p = p[:, 0]
    elif p.ndim != 1:
      raise ValueError(f"{spec.name}: regression predictions must be [N] or [N, 1], got {p.shape}")
    pr, sp = pearson(p, y), spearman(p, y)
    out = {"pearson": pr, "spearman": sp, "combined": (pr + sp) / 2.0}
  else:
    if p.ndim == y.ndim + 1:
      p = np.argmax(p, axis=-1)
    out = {}
    for m in spec.metrics:
      if m == "accuracy":
        out[m] = accuracy(p, y)
      elif m == "f1":
        out[m] = f1_binary(p, y)
      elif m == "mcc":
        out[m] = matthews_corrcoef(p, y)
      else:  # pragma: no cover - registry/metrics mismatch
        raise ValueError(f"{spec.name}: unknown metric {m!r}")
  out["main"] = out[spec.main_metric]
  return out
