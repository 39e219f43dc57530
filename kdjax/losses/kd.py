"""Classic logit distillation (Hinton et al.) and task losses. All math is float32.

Argument convention (every loss in ``kdjax.losses``): the student's array first and
positional; the teacher's arrays keyword-only (``teacher_logits=``), so a swap cannot pass
silently; labels follow the student's logits; masks, weights and hyper-parameters are
keyword-only.

Per-example ``weights`` (``[B]``, >= 0; None = all 1): every per-example loss ``l_b`` below is
reduced by the weighted mean ``sum_b w_b l_b / sum_b w_b`` (0 when all weights are 0), which
equals the plain mean ``mean_b l_b`` for equal weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._common import row_kl, weighted_mean

__all__ = ["cross_entropy", "kl_divergence", "mse_regression", "vanilla_kd_loss"]


def cross_entropy(logits: jax.Array, labels: jax.Array, *, weights=None) -> jax.Array:
  """Hard-label cross-entropy ``l_b = -log_softmax(logits_b)[labels_b]``, weighted mean
  over the batch (module docstring). ``logits`` ``[B, C]``, integer ``labels`` ``[B]``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return weighted_mean(-picked, weights)


def kl_divergence(
  student_logits: jax.Array, *, teacher_logits: jax.Array, temperature: float = 1.0, weights=None
) -> jax.Array:
  """``l_b = KL(softmax(t_b / T) || softmax(s_b / T))`` over ``[B, C]`` logits (no T^2),
  weighted mean over the batch; float32 scalar."""
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"logit shapes differ: student {student_logits.shape}, teacher {teacher_logits.shape}"
    )
  t = teacher_logits.astype(jnp.float32) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  return weighted_mean(row_kl(t, s, None), weights)


def vanilla_kd_loss(
  student_logits,
  *,
  teacher_logits,
  labels,
  temperature: float,
  alpha: float,
  weights=None,
):
  """Hinton KD (EasyNLP ``vanilla_kd``): ``loss = alpha * kd + (1 - alpha) * ce``.

  ``kd = T^2 * wmean_b KL(softmax(t_b/T) || softmax(s_b/T))`` (scaled by ``T^2``, not by
  ``alpha``) and ``ce = wmean_b CE(labels_b, s_b)`` at T=1, ``wmean`` the ``weights``-weighted
  mean (module docstring). Logits ``[B, C]``, integer labels ``[B]``.
  Returns ``(loss, {"kd": kd, "ce": ce})``, all float32 scalars.
  """
  kd = temperature**2 * kl_divergence(
    student_logits, teacher_logits=teacher_logits, temperature=temperature, weights=weights
  )
  ce = cross_entropy(student_logits, labels, weights=weights)
  return alpha * kd + (1.0 - alpha) * ce, {"kd": kd, "ce": ce}


def mse_regression(preds: jax.Array, targets: jax.Array, *, weights=None) -> jax.Array:
  """Regression-head loss (e.g. STS-B): ``l_b = (preds_b - targets_b)^2``, weighted mean over
  the batch; float32 scalar. ``preds`` ``[B]`` or ``[B, 1]`` (a trailing singleton is
  squeezed); ``targets`` ``[B]`` (labels, or the teacher's predictions)."""
  if preds.ndim == targets.ndim + 1 and preds.shape[-1] == 1:
    preds = preds[..., 0]
  if preds.shape != targets.shape:
    raise ValueError(f"preds {preds.shape} and targets {targets.shape} must match")
  sq = jnp.square(preds.astype(jnp.float32) - targets.astype(jnp.float32))
  return weighted_mean(sq, weights)
