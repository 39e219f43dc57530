"""TinyBERT losses: prediction-layer soft cross-entropy, hidden/embedding MSE,
attention-score MSE and the uniform layer mapping. All math is float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._common import masked_mean

__all__ = [
  "attention_mse",
  "embedding_mse",
  "hidden_mse",
  "soft_cross_entropy",
  "uniform_layer_map",
]


def soft_cross_entropy(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0
) -> jax.Array:
  """Soft-target cross-entropy (TinyBERT prediction-layer loss).

  ``mean_b [ -sum_c softmax(t_b / T)_c * log_softmax(s_b / T)_c ]``.
  Shapes ``[B, C]`` (any leading dims are averaged like the batch); returns a
  float32 scalar. No ``T^2`` factor (as in TinyBERT).
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f"logit shapes differ: student {student_logits.shape}, teacher {teacher_logits.shape}"
    )
  p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.mean(-jnp.sum(p_t * logp_s, axis=-1))


def hidden_mse(
  student_hidden: jax.Array, teacher_hidden: jax.Array, attention_mask: jax.Array | None = None
) -> jax.Array:
  """Mean squared error between hidden states ``[B, L, H]`` (float32 scalar).

  Without a mask: mean of ``(s - t)^2`` over all ``B * L * H`` elements. With
  ``attention_mask`` ``[B, L]`` (1 = real token): ``sum over real tokens and all H
  of (s - t)^2`` divided by ``(number of real tokens * H)``.

  Widths must match: when the student is narrower, the caller applies the
  learned projection ``W_h`` (it lives in the recipe, not here) before calling.
  """
  if student_hidden.shape != teacher_hidden.shape:
    raise ValueError(
      f"hidden shapes differ: student {student_hidden.shape}, teacher {teacher_hidden.shape} "
      "(project the student hidden state to the teacher width first)"
    )
  sq = jnp.square(student_hidden.astype(jnp.float32) - teacher_hidden.astype(jnp.float32))
  if attention_mask is None:
    return jnp.mean(sq)
  return masked_mean(sq, attention_mask[..., None])


#: Embedding-layer loss of TinyBERT: identical to :func:`hidden_mse` applied to
#: the embedding outputs ``[B, L, H]`` (student projected by the caller).
embedding_mse = hidden_mse


def attention_mse(
  student_scores: jax.Array, teacher_scores: jax.Array, attention_mask: jax.Array
) -> jax.Array:
  """MSE between pre-softmax attention scores ``[B, heads, L, L]`` (float32 scalar).

  Scores already include the additive mask (padded keys hold very negative
  values). Pairs where the query *or* key is padding are excluded (TinyBERT's
  reference zeroes them instead): mean of ``(s - t)^2`` over all ``(b, h, i, j)``
  with ``mask[b, i] = 1`` and ``mask[b, j] = 1``. Head counts must match.
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
  return masked_mean(jnp.square(s - t), pair)


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
