"""TinyBERT losses: prediction-layer soft cross-entropy, hidden/embedding MSE,
attention-score MSE and the uniform layer mapping. All math is float32.

Argument convention (all of ``kdjax.losses``): the student's array first and positional, the
teacher's keyword-only (``teacher_hidden=``, ``teacher_scores=``, ``teacher_logits=``); masks
and per-example ``weights`` (``[B]``, >= 0) keyword-only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._common import example_token_weights, masked_mean, weighted_mean

__all__ = [
  "attention_mse",
  "embedding_mse",
  "hidden_mse",
  "soft_cross_entropy",
  "uniform_layer_map",
]


def soft_cross_entropy(
  student_logits: jax.Array,
  *,
  teacher_logits: jax.Array,
  temperature: float = 1.0,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Soft-target cross-entropy (TinyBERT prediction-layer loss).

  ``l_b = -sum_c softmax(t_b / T)_c * log_softmax(s_b / T)_c`` over ``[B, C]`` logits,
  reduced by the ``weights``-weighted mean over the batch (``sum_b w_b l_b / sum_b w_b``; the
  plain mean when ``weights`` is None). Any extra leading dims are averaged like the batch.
  No ``T^2`` factor (as in TinyBERT's ``soft_cross_entropy``, which also averages over the
  batch).
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"logit shapes differ: student {student_logits.shape}, teacher {teacher_logits.shape}"
    )
  p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return weighted_mean(-jnp.sum(p_t * logp_s, axis=-1), weights)


def hidden_mse(
  student_hidden: jax.Array,
  *,
  teacher_hidden: jax.Array,
  attention_mask: jax.Array | None = None,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Mean squared error between hidden states ``[B, L, H]`` (float32 scalar).

  ``sum_{b,t,h} w_b m_bt (s - t)^2 / (H * sum_{b,t} w_b m_bt)``: every real token (``m``
  = ``attention_mask``, 1 = real; all tokens when None) of example b weighted by its
  per-example weight ``w_b`` (1 when ``weights`` is None, which gives the mean over real
  tokens and all H). TinyBERT's reference averages over every position, padding included;
  kdjax excludes padding so that the loss does not depend on how much padding a batch has.

  Widths must match: when they differ, the caller applies the learned projection ``W_h``
  (it lives in the recipe, not here) before calling.
  """
  if student_hidden.shape != teacher_hidden.shape:
    raise ValueError(
      f"hidden shapes differ: student {student_hidden.shape}, teacher {teacher_hidden.shape} "
      "(project the student hidden state to the teacher width first)"
    )
  sq = jnp.square(student_hidden.astype(jnp.float32) - teacher_hidden.astype(jnp.float32))
  if attention_mask is None:
    return weighted_mean(sq, weights)
  return masked_mean(sq, example_token_weights(attention_mask, weights)[..., None])


def embedding_mse(
  student_embeddings: jax.Array,
  *,
  teacher_embeddings: jax.Array,
  attention_mask: jax.Array | None = None,
  weights: jax.Array | None = None,
) -> jax.Array:
  """TinyBERT's embedding-layer loss: :func:`hidden_mse` of the embedding outputs
  ``[B, L, H]`` (student projected by the caller), same reduction."""
  return hidden_mse(
    student_embeddings,
    teacher_hidden=teacher_embeddings,
    attention_mask=attention_mask,
    weights=weights,
  )


def attention_mse(
  student_scores: jax.Array,
  *,
  teacher_scores: jax.Array,
  attention_mask: jax.Array,
  weights: jax.Array | None = None,
) -> jax.Array:
  """MSE between pre-softmax attention scores ``[B, heads, L, L]`` (float32 scalar).

  Scores already include the additive mask (padded keys hold very negative values). Pairs
  where the query *or* key is padding are excluded (TinyBERT's reference zeroes scores below
  -100 and averages over every pair instead, so its value depends on the padding): the mean
  of ``(s - t)^2`` over all ``(b, h, i, j)`` with ``mask[b, i] = mask[b, j] = 1``, each pair
  of example b weighted by ``w_b`` (``weights``; 1 when None). Head counts must match.
  """
  if student_scores.shape[1] != teacher_scores.shape[1]:
    raise ValueError(
      f"attention head counts differ: student {student_scores.shape[1]}, "
      f"teacher {teacher_scores.shape[1]}"
    )
  if student_scores.shape != teacher_scores.shape:
    raise ValueError(
      f"score shapes differ: student {student_scores.shape}, teacher {teacher_scores.shape}"
    )
  mask = attention_mask.astype(bool)
  pair = jnp.broadcast_to((mask[:, :, None] & mask[:, None, :])[:, None], student_scores.shape)
  # Zero excluded entries *before* subtracting so huge mask values never reach the square.
  s = jnp.where(pair, student_scores.astype(jnp.float32), 0.0)
  t = jnp.where(pair, teacher_scores.astype(jnp.float32), 0.0)
  w = pair.astype(jnp.float32)
  if weights is not None:
    w = w * weights.astype(jnp.float32)[:, None, None, None]
  return masked_mean(jnp.square(s - t), w)


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
  """TinyBERT uniform mapping: student layer ``i`` (0-based) <- teacher layer ``(i+1)*k - 1``.

  ``k = num_teacher_layers // num_student_layers``; e.g. (4, 12) -> [2, 5, 8, 11].
  Raises ``ValueError`` when the teacher depth is not a multiple of the student depth.
  """
  if num_student_layers <= 0 or num_teacher_layers <= 0:
    raise ValueError(
      f"layer counts must be positive, got student={num_student_layers}, teacher={num_teacher_layers}"
    )
  if num_teacher_layers % num_student_layers:
    raise ValueError(
      f"teacher layers ({num_teacher_layers}) not divisible by student layers "
      f"({num_student_layers}); give an explicit layer map list instead"
    )
  k = num_teacher_layers // num_student_layers
  return [(i + 1) * k - 1 for i in range(num_student_layers)]
