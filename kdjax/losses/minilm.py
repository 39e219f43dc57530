"""MiniLMv2 multi-head self-attention relation distillation (+ PP-MiniLM relations).

Notation: ``x`` is one of the Q/K/V projections (before the attention-head split)
of shape ``[B, L, hidden]``. It is regrouped into ``R = num_relation_heads``
relation heads, ``x[b, i, r, :]`` of width ``d_R = hidden / R`` (teacher and
student may have different ``hidden``; the relation matrices have the same
shape regardless). All softmax / KL math is float32 whatever the input dtype;
matmuls accumulate in float32 (``preferred_element_type``).

Row KL is ``KL(p_t || p_s) = sum_j p_t[j] * (log p_t[j] - log p_s[j])`` with
masked keys given probability exactly 0 (they contribute exactly 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses._common import is_static_zero, masked_mean, row_kl

__all__ = [
  "head_relation_kl",
  "minilm_relation_loss",
  "sample_relation_kl",
  "split_relation_heads",
  "token_relation_kl",
]


def split_relation_heads(x: jax.Array, num_relation_heads: int, who: str = "input") -> jax.Array:
  """Regroup ``[B, L, hidden]`` into ``[B, L, R, hidden // R]``.

  Raises ``ValueError`` if ``hidden`` is not divisible by ``R`` (message names
  ``who`` -- "teacher"/"student" -- the hidden size and R).
  """
  if x.ndim != 3:
    raise ValueError(f"{who} Q/K/V must be [batch, seq, hidden], got shape {x.shape}")
  batch, seq, hidden = x.shape
  if hidden % num_relation_heads:
    raise ValueError(
      f"{who} hidden size {hidden} is not divisible by num_relation_heads={num_relation_heads}"
    )
  return x.reshape(batch, seq, num_relation_heads, hidden // num_relation_heads)


def _scaled_scores(spec: str, x: jax.Array) -> jax.Array:
  """float32 ``einsum(spec, x, x) / sqrt(d_R)`` for ``x`` of shape ``[B, L, R, d_R]``."""
  scores = jnp.einsum(spec, x, x, preferred_element_type=jnp.float32)
  return scores.astype(jnp.float32) / math.sqrt(x.shape[-1])


def token_relation_kl(
  teacher: jax.Array, student: jax.Array, attention_mask: jax.Array
) -> jax.Array:
  """Token-token relation KL (MiniLMv2) for one of Q/K/V.

  ``A[b, r, i, j] = softmax_j(x[b,i,r] . x[b,j,r] / sqrt(d_R))`` with padding
  keys j (``mask[b, j] = 0``) excluded. Returns the mean of
  ``KL(A_t[b,r,i,:] || A_s[b,r,i,:])`` over all ``(b, r, i)`` with ``mask[b, i] = 1``.
  Inputs ``[B, L, R, d_R]`` (d_R may differ between teacher and student); scalar float32.
  """
  mask = attention_mask.astype(bool)
  spec = "bird,bjrd->brij"
  kl = row_kl(_scaled_scores(spec, teacher), _scaled_scores(spec, student), mask[:, None, None, :])
  return masked_mean(kl, mask[:, None, :])  # kl: [B, R, L]


def head_relation_kl(
  teacher: jax.Array, student: jax.Array, attention_mask: jax.Array
) -> jax.Array:
  """Head-head relation KL (PP-MiniLM ``alpha`` term) for one of Q/K/V.

  ``H[b, i, r, s] = softmax_s(x[b,i,r] . x[b,i,s] / sqrt(d_R))`` (an ``R x R``
  relation per token; no key masking). Returns the mean of
  ``KL(H_t[b,i,r,:] || H_s[b,i,r,:])`` over all ``(b, i, r)`` with ``mask[b, i] = 1``.
  """
  mask = attention_mask.astype(bool)
  spec = "bird,bisd->birs"
  kl = row_kl(_scaled_scores(spec, teacher), _scaled_scores(spec, student), None)
  return masked_mean(kl, mask[:, :, None])  # kl: [B, L, R]


def sample_relation_kl(
  teacher: jax.Array, student: jax.Array, attention_mask: jax.Array
) -> jax.Array:
  """Sample-sample relation KL (PP-MiniLM ``beta`` term) for one of Q/K/V.

  ``S[i, r, b, c] = softmax_c(x[b,i,r] . x[c,i,r] / sqrt(d_R))`` (a ``B x B``
  relation per position and head) with samples c padded at position i
  (``mask[c, i] = 0``) excluded as keys. Returns the mean of
  ``KL(S_t[i,r,b,:] || S_s[i,r,b,:])`` over all ``(i, r, b)`` with ``mask[b, i] = 1``;
  an all-padding position contributes nothing.
  """
  mask_t = attention_mask.astype(bool).T  # [L, B]
  spec = "bird,cird->irbc"
  kl = row_kl(
    _scaled_scores(spec, teacher), _scaled_scores(spec, student), mask_t[:, None, None, :]
  )
  return masked_mean(kl, mask_t[:, None, :])  # kl: [L, R, B]


_TERMS = {"token": token_relation_kl, "head": head_relation_kl, "sample": sample_relation_kl}


def minilm_relation_loss(
  teacher_qkv: Sequence[jax.Array],
  student_qkv: Sequence[jax.Array],
  attention_mask: jax.Array,
  num_relation_heads: int,
  alpha: float = 0.0,
  beta: float = 0.0,
  return_terms: bool = False,
):
  """MiniLMv2 / PP-MiniLM relation distillation loss.

  Args:
    teacher_qkv, student_qkv: ``(q, k, v)`` tuples (any equal, non-zero number
      of paired tensors is accepted), each ``[B, L, hidden]`` -- projections
      before the head split; teacher and student ``hidden`` may differ.
    attention_mask: ``[B, L]``, 1 for real tokens, 0 for padding.
    num_relation_heads: ``R`` (static Python int); each ``hidden`` must be divisible by it.
    alpha, beta: weights of the head-head and sample-sample relations. A term
      whose weight is a static 0 is not computed unless ``return_terms``.
    return_terms: also return the unweighted terms.

  Returns:
    ``loss = (1 - alpha - beta) * token + alpha * head + beta * sample`` (float32
    scalar), where each term is the sum over the Q-Q, K-K, V-V relations of the
    corresponding ``*_relation_kl`` mean. With ``return_terms=True`` returns
    ``(loss, {"token", "head", "sample"})``.
  """
  if len(teacher_qkv) != len(student_qkv) or not teacher_qkv:
    raise ValueError(
      f"teacher_qkv and student_qkv must be non-empty and of equal length, "
      f"got {len(teacher_qkv)} and {len(student_qkv)}"
    )
  if not isinstance(num_relation_heads, int) or num_relation_heads <= 0:
    raise ValueError(f"num_relation_heads must be a positive int, got {num_relation_heads!r}")
  weights = {"token": 1.0 - alpha - beta, "head": alpha, "sample": beta}
  pairs = []
  for t, s in zip(teacher_qkv, student_qkv):
    if t.shape[:2] != s.shape[:2] or t.shape[:2] != attention_mask.shape:
      raise ValueError(
        f"teacher {t.shape[:2]}, student {s.shape[:2]} and attention_mask "
        f"{attention_mask.shape} must agree on [batch, seq]"
      )
    pairs.append(
      (
        split_relation_heads(t, num_relation_heads, "teacher"),
        split_relation_heads(s, num_relation_heads, "student"),
      )
    )

  terms, loss = {}, jnp.float32(0.0)
  for name, fn in _TERMS.items():
    if not return_terms and is_static_zero(weights[name]):
      continue
    terms[name] = sum(fn(t, s, attention_mask) for t, s in pairs)
    loss = loss + weights[name] * terms[name]
  loss = jnp.asarray(loss, jnp.float32)
  return (loss, terms) if return_terms else loss
