"""Small numerically-safe helpers shared by the loss modules (float32 math)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Fill value for masked-out logits. It is finite (so `x - max` never produces
# `-inf - -inf = nan`) and low enough that `exp(_MASK_VALUE - max)` is exactly 0
# in float32 for any realistic row maximum.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def is_static_zero(weight) -> bool:
  """True only for a Python/NumPy scalar equal to 0 (a traced weight is never 'zero')."""
  if isinstance(weight, jax.core.Tracer):
    return False
  try:
    return float(weight) == 0.0
  except (TypeError, ValueError):
    return False


def masked_log_softmax(logits: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """float32 log-softmax over the last axis, masked keys excluded.

  Masked entries of the result are set to 0 (not -inf) so that downstream
  products and their gradients stay finite; callers must treat them as
  "probability exactly 0" via the same mask.
  """
  logits = logits.astype(jnp.float32)
  if key_mask is None:
    return jax.nn.log_softmax(logits, axis=-1)
  key_mask = jnp.broadcast_to(key_mask.astype(bool), logits.shape)
  logp = jax.nn.log_softmax(jnp.where(key_mask, logits, _MASK_VALUE), axis=-1)
  return jnp.where(key_mask, logp, 0.0)


def row_kl(
  teacher_logits: jax.Array, student_logits: jax.Array, key_mask: jax.Array | None
) -> jax.Array:
  """KL(softmax(teacher) || softmax(student)) over the last axis, per row.

  ``sum_j p_t[j] * (log p_t[j] - log p_s[j])`` over unmasked keys j; masked keys
  have p_t = p_s = 0 and contribute exactly 0. Returns float32 of shape
  ``logits.shape[:-1]``.

  Gradients are written out (``jax.custom_vjp``) rather than left to autodiff of the softmax
  chain: ``d KL / d s = p_s - p_t`` and ``d KL / d t = p_t * (log p_t - log p_s - KL)`` (masked
  keys 0), each one saved tensor. For MiniLMv2's ``B x R x L x L`` relations autodiff's several
  elementwise passes over those tensors were ~17 % of a BERT-base step on CPU; under ``jit`` a
  teacher behind ``stop_gradient`` costs nothing for its (unused) residual.
  """
  if teacher_logits.shape != student_logits.shape:
    raise ValueError(
      f"teacher logits {teacher_logits.shape} and student logits {student_logits.shape} "
      "must have the same shape"
    )
  if key_mask is None:
    return _row_kl_nomask(teacher_logits, student_logits)
  key_mask = jnp.broadcast_to(key_mask.astype(bool), student_logits.shape)
  return _row_kl_masked(teacher_logits, student_logits, key_mask)


def _row_kl_parts(t, s, mask):
  logp_t = masked_log_softmax(t, mask)
  logp_s = masked_log_softmax(s, mask)
  p_t = jnp.exp(logp_t)
  diff = logp_t - logp_s
  terms = p_t * diff
  if mask is not None:
    terms = jnp.where(mask, terms, 0.0)
  kl = jnp.sum(terms, axis=-1)
  r_s = jnp.exp(logp_s) - p_t
  r_t = terms - p_t * kl[..., None]
  if mask is not None:
    r_s = jnp.where(mask, r_s, 0.0)
    r_t = jnp.where(mask, r_t, 0.0)
  return kl, (r_t, r_s)


def _row_kl_vjp(masked: bool):
  """``row_kl`` as a ``custom_vjp`` of ``(t, s)`` or ``(t, s, mask)`` (the mask gets no
  cotangent); residuals ``d KL / d t`` and ``d KL / d s`` per entry."""

  def fwd(t, s, *mask):
    kl, (r_t, r_s) = _row_kl_parts(t, s, mask[0] if masked else None)
    return kl, (r_t.astype(t.dtype), r_s.astype(s.dtype))

  def bwd(res, g):
    r_t, r_s = res
    g = g[..., None]
    grads = (g.astype(r_t.dtype) * r_t, g.astype(r_s.dtype) * r_s)
    return grads + (None,) if masked else grads

  fn = jax.custom_vjp(lambda t, s, *mask: fwd(t, s, *mask)[0])
  fn.defvjp(fwd, bwd)
  return fn


_row_kl_nomask = _row_kl_vjp(masked=False)
_row_kl_masked = _row_kl_vjp(masked=True)


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """``sum(values * weights) / sum(weights)`` in float32 (weights broadcast to values; entries
  with weight 0 never reach the sum, so they may hold inf/nan); 0 when the weights sum to 0."""
  values = values.astype(jnp.float32)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
  denom = jnp.sum(weights)
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
  """``sum_b w_b x_b / sum_b w_b`` over the leading (batch) axis and the mean over any other
  axes, in float32; the plain mean when ``weights`` is None; 0 when every weight is 0."""
  x = per_example.astype(jnp.float32)
  if weights is None:
    return jnp.mean(x)
  w = jnp.broadcast_to(
    weights.astype(jnp.float32).reshape(weights.shape + (1,) * (x.ndim - weights.ndim)), x.shape
  )
  total = jnp.sum(jnp.where(w > 0, x * w, 0.0))
  denom = jnp.sum(w)
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def example_token_weights(attention_mask: jax.Array, weights: jax.Array | None) -> jax.Array:
  """float32 ``[B, L]``: the mask with every real token of example b weighted by ``w_b``."""
  m = attention_mask.astype(jnp.float32)
  return m if weights is None else m * weights.astype(jnp.float32)[:, None]
