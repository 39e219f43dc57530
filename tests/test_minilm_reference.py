"""``reduction="reference"`` of the MiniLM losses vs. an independent NumPy port of PaddleNLP.

The port follows ``paddlenlp/transformers/distill_utils.py`` (``calc_multi_relation_loss``,
``calc_minilm_loss``) and the loss lines of the two ``general_distill.py`` scripts
(``examples/model_compression/pp-minilm/general_distill/`` and ``.../minilmv2/``) step by step:
Q/K/V as Paddle's ``MultiHeadAttention`` holds them (``[batch, heads, seq, head_dim]``), the
transpose / reshape regrouping into relation heads, the additive mask
``(input_ids == pad) * -1e4`` (PP-MiniLM; -1e9 in MiniLMv2) unsqueezed to ``[B, 1, 1, L]`` and
its transposes for the head and sample relations, ``KLDivLoss("sum")`` (Paddle's kernel: a
target <= 0 contributes 0), the ``alpha`` / ``beta`` combination, the sum over Q, K, V and the
division by ``num_relation_heads * pad_seq_len * batch_size``. It runs in float64, on padded
batches whose padding positions hold non-zero Q/K/V (as a real model's do).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import head_relation_kl, minilm_relation_loss, sample_relation_kl
from kdjax.losses import token_relation_kl as token_kl
from kdjax.losses.minilm import split_relation_heads

# Rows 1 and 2 padded; position 5 is padding in every sample.
MASK = np.array(
  [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32
)
T_HEADS, S_HEADS = 4, 2  # teacher hidden 48 (4 x 12), student hidden 32 (2 x 16)


# ------------------------------------------------------------------------- the NumPy port
def _log_softmax(x):
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _kl_div_sum(log_input, target):
  """paddle.nn.KLDivLoss("sum"): sum of target * (log(target) - input), 0 where target <= 0."""
  safe = np.where(target > 0, target, 1.0)
  return float(np.sum(np.where(target > 0, target * (np.log(safe) - log_input), 0.0)))


def _kl_fct(student_logits, teacher_logits):
  """loss_fct(F.log_softmax(student), F.softmax(teacher)) (softmax over the last axis)."""
  return _kl_div_sum(_log_softmax(student_logits), np.exp(_log_softmax(teacher_logits)))


def _regroup(x, num_relation_heads):
  """[bs, head_num, seq, head_dim] -> ([bs, seq, R, d_R], [bs, R, seq, d_R])."""
  x = x.transpose(0, 2, 1, 3)
  x = x.reshape(x.shape[0], x.shape[1], num_relation_heads, -1)
  return x, x.transpose(0, 2, 1, 3)


def _matmul_t(x):
  return x @ np.swapaxes(x, -1, -2)


def np_calc_multi_relation_loss(s, t, attn_mask, num_relation_heads, alpha, beta):
  assert num_relation_heads not in (s.shape[1], t.shape[1])  # else the reference fails (s1)
  s, s1 = _regroup(s, num_relation_heads)
  t, t1 = _regroup(t, num_relation_heads)
  s_dim, t_dim = s.shape[3], t.shape[3]
  token = head = sample = 0.0
  if alpha + beta != 1.0:
    token = _kl_fct(
      _matmul_t(s1) / math.sqrt(s_dim) + attn_mask, _matmul_t(t1) / math.sqrt(t_dim) + attn_mask
    )
  if alpha != 0.0:
    m = attn_mask.transpose(0, 3, 1, 2)  # [bs, seq, 1, 1]
    head = _kl_fct(_matmul_t(s) / math.sqrt(s_dim) + m, _matmul_t(t) / math.sqrt(t_dim) + m)
  if beta != 0.0:
    s2, t2 = s.transpose(1, 2, 0, 3), t.transpose(1, 2, 0, 3)  # [seq, R, bs, d_R]
    m = attn_mask.transpose(3, 1, 0, 2)  # [seq, 1, bs, 1]
    sample = _kl_fct(_matmul_t(s2) / math.sqrt(s_dim) + m, _matmul_t(t2) / math.sqrt(t_dim) + m)
  return (1 - alpha - beta) * token + alpha * head + beta * sample


def np_calc_minilm_loss(s, t, attn_mask, num_relation_heads):
  _, s = _regroup(s, num_relation_heads)
  _, t = _regroup(t, num_relation_heads)
  return _kl_fct(
    _matmul_t(s) / math.sqrt(s.shape[3]) + attn_mask,
    _matmul_t(t) / math.sqrt(t.shape[3]) + attn_mask,
  )


def _paddle_layout(x, heads):
  """kdjax [B, L, hidden] -> Paddle MultiHeadAttention's [B, heads, L, head_dim] (float64)."""
  b, l, h = x.shape
  return np.asarray(x, np.float64).reshape(b, l, heads, h // heads).transpose(0, 2, 1, 3)


def _additive_mask(mask, value):
  pad = (mask == 0).astype(np.float64) * value  # (input_ids == pad_token_id) * value
  return pad[:, None, None, :]  # paddle.unsqueeze(..., axis=[1, 2])


def ppminilm_step_loss(student_qkv, teacher_qkv, mask, num_relation_heads, alpha, beta):
  """The loss of one pp-minilm general_distill.py step (Q, K, V relations)."""
  attn = _additive_mask(mask, -1e4)
  batch_size, pad_seq_len = mask.shape
  loss = sum(
    np_calc_multi_relation_loss(
      _paddle_layout(s, S_HEADS), _paddle_layout(t, T_HEADS), attn, num_relation_heads, alpha, beta
    )
    for s, t in zip(student_qkv, teacher_qkv)
  )
  return loss / (num_relation_heads * pad_seq_len * batch_size)


def minilmv2_step_loss(student_qkv, teacher_qkv, mask, num_relation_heads):
  """The loss of one minilmv2 general_distill.py step."""
  attn = _additive_mask(mask, -1e9)
  batch_size, pad_seq_len = mask.shape
  loss = sum(
    np_calc_minilm_loss(
      _paddle_layout(s, S_HEADS), _paddle_layout(t, T_HEADS), attn, num_relation_heads
    )
    for s, t in zip(student_qkv, teacher_qkv)
  )
  return loss / (num_relation_heads * pad_seq_len * batch_size)


# ------------------------------------------------------------------------------- fixtures
def make_qkv(seed, hidden, mask=MASK):
  """(q, k, v) [B, L, hidden]; padding positions hold other (larger) values, as a model's do."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(3):
    x = rng.normal(size=mask.shape + (hidden,))
    out.append(np.where(mask[..., None] > 0, x, 2.5 * x + 0.5).astype(np.float32))
  return tuple(out)


@pytest.fixture(scope="module")
def qkv():
  return make_qkv(1, S_HEADS * 16), make_qkv(2, T_HEADS * 12)  # student, teacher


def kdjax_loss(student, teacher, mask, num_relation_heads, **kw):
  return minilm_relation_loss(
    tuple(jnp.asarray(x) for x in student),
    teacher=tuple(jnp.asarray(x) for x in teacher),
    attention_mask=jnp.asarray(mask),
    num_relation_heads=num_relation_heads,
    **kw,
  )


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("num_relation_heads", [8, 16])
@pytest.mark.parametrize(
  "term,alpha,beta", [("token", 0.0, 0.0), ("head", 1.0, 0.0), ("sample", 0.0, 1.0)]
)
def test_reference_terms_match_paddle_port_on_padded_input(
  qkv, term, alpha, beta, num_relation_heads
):
  student, teacher = qkv
  expected = ppminilm_step_loss(student, teacher, MASK, num_relation_heads, alpha, beta)
  loss, terms = kdjax_loss(
    student,
    teacher,
    MASK,
    num_relation_heads,
    alpha=alpha,
    beta=beta,
    reduction="reference",
    return_terms=True,
  )
  assert expected > 1e-3  # non-trivial
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(terms[term]), expected, rtol=1e-5, atol=1e-7)
  # The default reduction is a different number on this padded batch.
  _, default = kdjax_loss(student, teacher, MASK, num_relation_heads, return_terms=True)
  assert abs(float(default[term]) - expected) > 1e-3 * expected


def test_reference_alpha_beta_combination_matches_paddle_port(qkv):
  student, teacher = qkv
  alpha, beta = 0.3, 0.2
  expected = ppminilm_step_loss(student, teacher, MASK, 8, alpha, beta)
  got = kdjax_loss(student, teacher, MASK, 8, alpha=alpha, beta=beta, reduction="reference")
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-7)
  # jit + gradients: finite, and padding positions DO influence the reference loss.
  mask = jnp.asarray(MASK)

  @jax.jit
  def f(s):
    return minilm_relation_loss(
      s,
      teacher=tuple(map(jnp.asarray, teacher)),
      attention_mask=mask,
      num_relation_heads=8,
      alpha=alpha,
      beta=beta,
      reduction="reference",
    )

  value, grads = jax.value_and_grad(f)(tuple(map(jnp.asarray, student)))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5, atol=1e-7)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(g)[MASK == 0]).sum() > 0


def test_reference_token_term_matches_minilmv2_port(qkv):
  """MiniLMv2's calc_minilm_loss (mask -1e9) gives the same number as the token relation."""
  student, teacher = qkv
  expected = minilmv2_step_loss(student, teacher, MASK, 8)
  got = kdjax_loss(student, teacher, MASK, 8, reduction="reference")
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(expected, ppminilm_step_loss(student, teacher, MASK, 8, 0, 0), 1e-9)


def test_reductions_agree_without_padding():
  mask = np.ones((3, 5), np.int32)
  student, teacher = make_qkv(3, 32, mask), make_qkv(4, 48, mask)
  kw = dict(alpha=0.25, beta=0.25, return_terms=True)
  _, ref = kdjax_loss(student, teacher, mask, 8, reduction="reference", **kw)
  _, mine = kdjax_loss(student, teacher, mask, 8, **kw)
  for name in ("token", "head", "sample"):
    np.testing.assert_allclose(float(mine[name]), float(ref[name]), rtol=1e-6)
  np.testing.assert_allclose(
    float(kdjax_loss(student, teacher, mask, 8, alpha=0.25, beta=0.25, reduction="reference")),
    ppminilm_step_loss(student, teacher, mask, 8, 0.25, 0.25),
    rtol=1e-5,
  )


def test_per_term_functions_take_reduction(qkv):
  student, teacher = qkv
  split = lambda x, who: split_relation_heads(jnp.asarray(x), num_relation_heads=8, who=who)
  s, t = split(student[0], "student"), split(teacher[0], "teacher")
  mask = jnp.asarray(MASK)
  for fn, alpha, beta in ((token_kl, 0, 0), (head_relation_kl, 1, 0), (sample_relation_kl, 0, 1)):
    got = fn(s, teacher=t, attention_mask=mask, reduction="reference")
    attn = _additive_mask(MASK, -1e4)
    expected = np_calc_multi_relation_loss(
      _paddle_layout(student[0], S_HEADS), _paddle_layout(teacher[0], T_HEADS), attn, 8, alpha, beta
    ) / (8 * MASK.size)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-7)


def test_unknown_reduction_is_an_error(qkv):
  student, teacher = qkv
  with pytest.raises(ValueError, match="reduction must be one of kdjax, reference.*'mean'"):
    kdjax_loss(student, teacher, MASK, 8, reduction="mean")
