"""MiniLMv2 multi-head self-attention relation distillation (+ PP-MiniLM relations).

Argument convention (all of ``kdjax.losses``): the student's arrays first and positional; the
teacher's arrays keyword-only (``teacher=``); masks, weights and hyper-parameters keyword-only
(``attention_mask=``, ``num_relation_heads=``, ``alpha=``, ``reduction=``, ...), so a
teacher/student swap cannot pass silently.

Notation: ``x`` is one of the Q/K/V projections (before the attention-head split)
of shape ``[B, L, hidden]``. It is regrouped into ``R = num_relation_heads``
relation heads, ``x[b, i, r, :]`` of width ``d_R = hidden / R`` (teacher and
student may have different ``hidden``; the relation matrices have the same
shape regardless). All softmax / KL math is float32 whatever the input dtype;
matmuls accumulate in float32 (``preferred_element_type``).

Row KL is ``KL(p_t || p_s) = sum_j p_t[j] * (log p_t[j] - log p_s[j])`` with
masked keys given probability exactly 0 (they contribute exactly 0).

Reductions (``reduction=``):

* ``"kdjax"`` (default): padding is excluded everywhere. Token and head relations average
  their KL rows over real query tokens only (``mask[b, i] = 1``); the sample relation at
  position ``i`` only relates samples that are real at ``i`` (padded samples are neither rows
  nor keys). The value therefore does not depend on how much padding a batch carries (bucketed
  or max-length padding give the same loss, a short sentence is not diluted by a long one's
  padded length) and the Q/K/V of padding tokens get exactly zero gradient.
* ``"reference"``: PaddleNLP's numbers (``paddlenlp/transformers/distill_utils.py``
  ``calc_multi_relation_loss`` / ``calc_minilm_loss`` as called by the MiniLMv2 and PP-MiniLM
  ``general_distill.py`` scripts). There the additive mask ``[B, 1, 1, L]`` (-1e4 in
  PP-MiniLM, -1e9 in MiniLMv2) hides padding *keys* of the token relation (probability 0, as
  here); for the head relation it is transposed to ``[B, L, 1, 1]`` and for the sample relation
  to ``[L, 1, B, 1]``, i.e. onto the *query-row* axis, where a constant shift per row leaves
  the softmax unchanged. So padding query rows (token, head) and padded samples (sample
  relation, as rows and as keys) are all included. ``KLDivLoss("sum")`` summed over Q, K, V is
  divided by ``num_relation_heads * padded_seq_len * batch_size``: every term is the plain mean
  over all ``B * R * L`` rows, padding included. kdjax omits the constant row shift (a
  mathematical no-op; in float32 it only rounds those rows' logits to ~1e-3).

Memory (``chunk_heads=``): the token relation of one of Q/K/V is ``B x R x L x L`` float32 per
model (400 MiB at 8 x 512 and 96 MiB at 32 x 128 with 48 relation heads; several such
tensors live per term for the softmaxes and the backward pass). With ``chunk_heads=c`` the
token and sample terms run over ``R / c`` chunks of ``c`` relation heads in a ``lax.map`` whose
body is rematerialised (``jax.checkpoint``), so at most one chunk's relations are alive at a
time, forward and backward; the value is the same sum, up to float32 summation order. The
default (``None``) chunks only when one relation tensor exceeds ``AUTO_CHUNK_BYTES`` and picks
the largest ``c`` dividing ``R`` whose chunk fits ``CHUNK_BYTES``; ``0`` never chunks. The head
relation (``B x L x R x R``) is not chunked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kdjax.kernels import cpu_matmul
from kdjax.losses._common import is_static_zero, masked_mean, row_kl

__all__ = [
  "REDUCTIONS",
  "head_relation_kl",
  "minilm_relation_loss",
  "sample_relation_kl",
  "split_relation_heads",
  "token_relation_kl",
]

REDUCTIONS = ("kdjax", "reference")

# A relation tensor (one of Q/K/V, one model) larger than this is computed in chunks of
# relation heads by default; each chunk's tensor is at most CHUNK_BYTES. Measured with the peer
# harness (bf16, 2-core AMX Xeon): chunks of 8 MiB cost no step time and cut peak RSS from
# 3.6 to 2.8 GiB at 32 x 128 (48 relation heads, 96 MiB per relation); at 8 x 512 one 8 MiB
# head per chunk was as fast as 64 MiB chunks.
AUTO_CHUNK_BYTES = 16 * 2**20
CHUNK_BYTES = 8 * 2**20


def _check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def split_relation_heads(x: jax.Array, *, num_relation_heads: int, who: str = "input") -> jax.Array:
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


def resolve_chunk_heads(chunk_heads: int | None, heads: int, rows_x_keys: int) -> int:
  """Relation heads per chunk for a relation of ``heads * rows_x_keys`` float32 entries (see
  the module docstring); 0 = no chunking. An explicit ``chunk_heads`` must divide ``heads``."""
  if chunk_heads is None:
    if 4 * heads * rows_x_keys <= AUTO_CHUNK_BYTES:
      return 0
    fits = [c for c in range(1, heads + 1) if heads % c == 0 and 4 * c * rows_x_keys <= CHUNK_BYTES]
    return max(fits, default=1)
  if not isinstance(chunk_heads, int) or chunk_heads < 0 or (chunk_heads and heads % chunk_heads):
    raise ValueError(
      f"chunk_heads={chunk_heads!r} must be 0 (no chunking) or a positive divisor of "
      f"num_relation_heads={heads}"
    )
  return 0 if chunk_heads in (0, heads) else chunk_heads


def _sum_over_head_chunks(chunk_sum, student, teacher, chunk):
  """``sum_k chunk_sum(student[:, :, k], teacher[:, :, k])`` over chunks of ``chunk`` relation
  heads (axis 2), one chunk at a time, each rematerialised in the backward pass."""

  def split(x):
    b, l, r, d = x.shape
    return jnp.moveaxis(x.reshape(b, l, r // chunk, chunk, d), 2, 0)

  body = jax.checkpoint(lambda st: chunk_sum(*st))
  return jnp.sum(jax.lax.map(body, (split(student), split(teacher))))


def _safe_div(total, denom):
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def _scaled_scores(spec: str, x: jax.Array) -> jax.Array:
  """float32 ``einsum(spec, x, x) / sqrt(d_R)`` for ``x`` of shape ``[B, L, R, d_R]``
  (bfloat16 on CPU through oneDNN: ``kdjax.kernels.cpu_matmul.einsum``)."""
  scores = cpu_matmul.einsum(spec, x, x, preferred_element_type=jnp.float32)
  return scores.astype(jnp.float32) / math.sqrt(x.shape[-1])


def _relation_kl(spec, student, teacher, key_mask):
  return row_kl(
    teacher_logits=_scaled_scores(spec, teacher),
    student_logits=_scaled_scores(spec, student),
    key_mask=key_mask,
  )


def token_relation_kl(
  student: jax.Array,
  *,
  teacher: jax.Array,
  attention_mask: jax.Array,
  reduction: str = "kdjax",
  chunk_heads: int | None = None,
) -> jax.Array:
  """Token-token relation KL (MiniLMv2) for one of Q/K/V.

  ``A[b, r, i, j] = softmax_j(x[b,i,r] . x[b,j,r] / sqrt(d_R))`` with padding
  keys j (``mask[b, j] = 0``) excluded. Returns the mean of
  ``KL(A_t[b,r,i,:] || A_s[b,r,i,:])`` over all ``(b, r, i)`` with ``mask[b, i] = 1``
  (``"kdjax"``) or over all ``(b, r, i)`` (``"reference"``).
  Inputs ``[B, L, R, d_R]`` (d_R may differ between teacher and student); scalar float32.
  """
  _check_reduction(reduction)
  mask = attention_mask.astype(bool)
  batch, seq, heads, _ = student.shape

  def chunk_sum(s, t):  # sum of the KL rows of a chunk of relation heads
    kl = _relation_kl("bird,bjrd->brij", s, t, mask[:, None, None, :])  # [B, c, L]
    if reduction == "reference":
      return jnp.sum(kl)
    return jnp.sum(jnp.where(mask[:, None, :], kl, 0.0))

  chunk = resolve_chunk_heads(chunk_heads, heads, batch * seq * seq)
  if not chunk:
    kl = _relation_kl("bird,bjrd->brij", student, teacher, mask[:, None, None, :])  # [B, R, L]
    if reduction == "reference":
      return jnp.mean(kl)
    return masked_mean(kl, mask[:, None, :])
  total = _sum_over_head_chunks(chunk_sum, student, teacher, chunk)
  if reduction == "reference":
    return total / (batch * heads * seq)
  return _safe_div(total, heads * jnp.sum(mask.astype(jnp.float32)))


def head_relation_kl(
  student: jax.Array,
  *,
  teacher: jax.Array,
  attention_mask: jax.Array,
  reduction: str = "kdjax",
  chunk_heads: int | None = None,
) -> jax.Array:
  """Head-head relation KL (PP-MiniLM ``alpha`` term) for one of Q/K/V.

  ``H[b, i, r, s] = softmax_s(x[b,i,r] . x[b,i,s] / sqrt(d_R))`` (an ``R x R``
  relation per token; no key masking). Returns the mean of
  ``KL(H_t[b,i,r,:] || H_s[b,i,r,:])`` over all ``(b, i, r)`` with ``mask[b, i] = 1``
  (``"kdjax"``) or over all ``(b, i, r)`` (``"reference"``). ``chunk_heads`` is accepted for a
  uniform signature and ignored (the ``R x R`` relation is not chunked).
  """
  del chunk_heads
  _check_reduction(reduction)
  kl = _relation_kl("bird,bisd->birs", student, teacher, None)  # [B, L, R]
  if reduction == "reference":
    return jnp.mean(kl)
  return masked_mean(kl, attention_mask.astype(bool)[:, :, None])


def sample_relation_kl(
  student: jax.Array,
  *,
  teacher: jax.Array,
  attention_mask: jax.Array,
  reduction: str = "kdjax",
  chunk_heads: int | None = None,
) -> jax.Array:
  """Sample-sample relation KL (PP-MiniLM ``beta`` term) for one of Q/K/V.

  ``S[i, r, b, c] = softmax_c(x[b,i,r] . x[c,i,r] / sqrt(d_R))`` (a ``B x B`` relation per
  position and head; the reference's transpose to ``[seq_len, heads, batch, head_dim]``).
  ``"kdjax"``: samples c padded at position i (``mask[c, i] = 0``) are excluded as keys and
  the mean of ``KL(S_t[i,r,b,:] || S_s[i,r,b,:])`` runs over all ``(i, r, b)`` with
  ``mask[b, i] = 1`` (an all-padding position contributes nothing). ``"reference"``: every
  sample is a key and the mean runs over all ``(i, r, b)``.
  """
  _check_reduction(reduction)
  mask_t = attention_mask.astype(bool).T  # [L, B]
  key_mask = None if reduction == "reference" else mask_t[:, None, None, :]
  batch, seq, heads, _ = student.shape

  def chunk_sum(s, t):
    kl = _relation_kl("bird,cird->irbc", s, t, key_mask)  # [L, c, B]
    if reduction == "reference":
      return jnp.sum(kl)
    return jnp.sum(jnp.where(mask_t[:, None, :], kl, 0.0))

  chunk = resolve_chunk_heads(chunk_heads, heads, seq * batch * batch)
  if not chunk:
    kl = _relation_kl("bird,cird->irbc", student, teacher, key_mask)  # [L, R, B]
    if reduction == "reference":
      return jnp.mean(kl)
    return masked_mean(kl, mask_t[:, None, :])
  total = _sum_over_head_chunks(chunk_sum, student, teacher, chunk)
  if reduction == "reference":
    return total / (batch * heads * seq)
  return _safe_div(total, heads * jnp.sum(mask_t.astype(jnp.float32)))


_TERMS = {"token": token_relation_kl, "head": head_relation_kl, "sample": sample_relation_kl}


def minilm_relation_loss(
  student_qkv: Sequence[jax.Array],
  *,
  teacher: Sequence[jax.Array],
  attention_mask: jax.Array,
  num_relation_heads: int,
  alpha: float = 0.0,
  beta: float = 0.0,
  reduction: str = "kdjax",
  return_terms: bool = False,
  chunk_heads: int | None = None,
):
  """MiniLMv2 / PP-MiniLM relation distillation loss.

  Args:
    student_qkv: the student's ``(q, k, v)`` (any non-zero number of tensors is accepted),
      each ``[B, L, hidden]`` -- projections before the head split.
    teacher: the teacher's tensors, paired with ``student_qkv`` (same count, same
      ``[B, L]``; ``hidden`` may differ).
    attention_mask: ``[B, L]``, 1 for real tokens, 0 for padding.
    num_relation_heads: ``R`` (static Python int); each ``hidden`` must be divisible by it.
    alpha, beta: weights of the head-head and sample-sample relations. A term
      whose weight is a static 0 is not computed unless ``return_terms``, and then it is
      returned without gradient and left out of the loss (under jit it costs nothing when
      the caller drops it).
    reduction: ``"kdjax"`` (padding excluded) or ``"reference"`` (PaddleNLP's averaging over
      every row, padding included); see the module docstring for the exact difference.
    return_terms: also return the unweighted terms.
    chunk_heads: relation heads per chunk of the token and sample terms (memory; see the
      module docstring): ``None`` chooses by size, ``0`` never chunks.

  Returns:
    ``loss = (1 - alpha - beta) * token + alpha * head + beta * sample`` (float32
    scalar), where each term is the sum over the Q-Q, K-K, V-V relations of the
    corresponding ``*_relation_kl`` mean. With ``return_terms=True`` returns
    ``(loss, {"token", "head", "sample"})``.
  """
  _check_reduction(reduction)
  if len(teacher) != len(student_qkv) or not student_qkv:
    raise ValueError(
      f"student_qkv and teacher must be non-empty and of equal length, "
      f"got {len(student_qkv)} and {len(teacher)}"
    )
  if not isinstance(num_relation_heads, int) or num_relation_heads <= 0:
    raise ValueError(f"num_relation_heads must be a positive int, got {num_relation_heads!r}")
  resolve_chunk_heads(chunk_heads, num_relation_heads, 1)  # validates an explicit value
  weights = {"token": 1.0 - alpha - beta, "head": alpha, "sample": beta}
  pairs = []
  for s, t in zip(student_qkv, teacher):
    if t.shape[:2] != s.shape[:2] or t.shape[:2] != attention_mask.shape:
      raise ValueError(
        f"teacher {t.shape[:2]}, student {s.shape[:2]} and attention_mask "
        f"{attention_mask.shape} must agree on [batch, seq]"
      )
    pairs.append(
      (
        split_relation_heads(s, num_relation_heads=num_relation_heads, who="student"),
        split_relation_heads(t, num_relation_heads=num_relation_heads, who="teacher"),
      )
    )

  terms, loss = {}, jnp.float32(0.0)
  for name, fn in _TERMS.items():
    zero = is_static_zero(weights[name])
    if zero and not return_terms:
      continue
    terms[name] = sum(
      fn(s, teacher=t, attention_mask=attention_mask, reduction=reduction, chunk_heads=chunk_heads)
      for s, t in pairs
    )
    if zero:
      # Reported only: kept out of the loss (``0.0 * term`` would still be differentiated, as
      # XLA does not fold float multiplications by 0) and behind stop_gradient, so a caller
      # that drops the term pays nothing for it (dead code under jit).
      terms[name] = jax.lax.stop_gradient(terms[name])
      continue
    loss = loss + weights[name] * terms[name]
  loss = jnp.asarray(loss, jnp.float32)
  return (loss, terms) if return_terms else loss
