"""Classic logit distillation (Hinton et al.) and task losses. All math is float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._common import row_kl

__all__ = ["cross_entropy", "kl_divergence", "mse_regression", "vanilla_kd_loss"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Hard-label cross-entropy ``mean_b [ -log_softmax(logits_b)[labels_b] ]``.

  ``logits`` ``[B, C]``, integer ``labels`` ``[B]``; float32 scalar.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return -jnp.mean(picked)


def kl_divergence(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0
) -> jax.Array:
  """``mean_b KL(softmax(t_b / T) || softmax(s_b / T))`` over ``[B, C]`` logits (no T^2); float32 scalar."""
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"logit shapes differ: student {student_logits.shape}, teacher {teacher_logits.shape}"
    )
  t = teacher_logits.astype(jnp.float32) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  return jnp.mean(row_kl(t, s, None))


def vanilla_kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
  """Hinton KD: ``loss = alpha * kd + (1 - alpha) * ce``.

  ``kd = T^2 * mean_b KL(softmax(t_b/T) || softmax(s_b/T))`` (already scaled
  by ``T^2``, not by ``alpha``) and ``ce = mean_b CE(labels_b, s_b)`` at T=1.
  Shapes: logits ``[B, C]``, integer labels ``[B]``.
  Returns ``(loss, {"kd": kd, "ce": ce})``, all float32 scalars.
  """
  kd = temperature**2 * kl_divergence(student_logits, teacher_logits, temperature)
  ce = cross_entropy(student_logits, labels)
  return alpha * kd + (1.0 - alpha) * ce, {"kd": kd, "ce": ce}


def mse_regression(preds: jax.Array, targets: jax.Array) -> jax.Array:
  """Regression-head loss (e.g. STS-B): ``mean_b (preds_b - targets_b)^2``; float32 scalar.

  ``preds`` ``[B]`` or ``[B, 1]`` (a trailing singleton is squeezed); ``targets`` ``[B]``.
  """
  if preds.ndim == targets.ndim + 1 and preds.shape[-1] == 1:
    preds = preds[..., 0]
  if preds.shape != targets.shape:
    raise ValueError(f"preds {preds.shape} and targets {targets.shape} must match")
  return jnp.mean(jnp.square(preds.astype(jnp.float32) - targets.astype(jnp.float32)))
