"""Losses vs. independent NumPy (float64, explicit-loop) references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import (
  attention_mse,
  cross_entropy,
  embedding_mse,
  hidden_mse,
  minilm_relation_loss,
  mse_regression,
  soft_cross_entropy,
  uniform_layer_map,
  vanilla_kd_loss,
)

# ----------------------------------------------------------------------------- NumPy references


def np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.sum(np.exp(x - m)))


def np_kl(teacher_logits, student_logits):
  """KL(softmax(t) || softmax(s)) for one row, explicit loop."""
  p, q = np_softmax(teacher_logits), np_softmax(student_logits)
  return sum(p[j] * math.log(p[j] / q[j]) for j in range(len(p)) if p[j] > 0)


def head_slice(x, r, num_heads):
  d = x.shape[-1] // num_heads
  return x[..., r * d : (r + 1) * d], d


def ref_token(t, s, mask, num_heads):
  """MiniLMv2 token-token relation for one tensor pair; mean over (b, r, real i)."""
  total, count = 0.0, 0
  batch, seq = mask.shape
  for b in range(batch):
    keys = [j for j in range(seq) if mask[b, j]]
    for r in range(num_heads):
      xt, dt = head_slice(t[b], r, num_heads)
      xs, ds = head_slice(s[b], r, num_heads)
      for i in keys:  # real query rows
        lt = [xt[i] @ xt[j] / math.sqrt(dt) for j in keys]
        ls = [xs[i] @ xs[j] / math.sqrt(ds) for j in keys]
        total += np_kl(lt, ls)
        count += 1
  return total / max(count, 1)


def ref_head(t, s, mask, num_heads):
  """PP-MiniLM head-head relation for one tensor pair; mean over (b, real i, r)."""
  total, count = 0.0, 0
  batch, seq = mask.shape
  for b in range(batch):
    for i in range(seq):
      if not mask[b, i]:
        continue
      for r in range(num_heads):
        xt_r, dt = head_slice(t[b, i], r, num_heads)
        xs_r, ds = head_slice(s[b, i], r, num_heads)
        lt = [
          xt_r @ head_slice(t[b, i], r2, num_heads)[0] / math.sqrt(dt) for r2 in range(num_heads)
        ]
        ls = [
          xs_r @ head_slice(s[b, i], r2, num_heads)[0] / math.sqrt(ds) for r2 in range(num_heads)
        ]
        total += np_kl(lt, ls)
        count += 1
  return total / max(count, 1)


def ref_sample(t, s, mask, num_heads):
  """PP-MiniLM sample-sample relation for one tensor pair; mean over (i, r, real b)."""
  total, count = 0.0, 0
  batch, seq = mask.shape
  for i in range(seq):
    real = [c for c in range(batch) if mask[c, i]]
    for r in range(num_heads):
      for b in real:
        xt_b, dt = head_slice(t[b, i], r, num_heads)
        xs_b, ds = head_slice(s[b, i], r, num_heads)
        lt = [xt_b @ head_slice(t[c, i], r, num_heads)[0] / math.sqrt(dt) for c in real]
        ls = [xs_b @ head_slice(s[c, i], r, num_heads)[0] / math.sqrt(ds) for c in real]
        total += np_kl(lt, ls)
        count += 1
  return total / max(count, 1)


REFS = {"token": ref_token, "head": ref_head, "sample": ref_sample}

# ----------------------------------------------------------------------------- MiniLM fixtures

# Sample 1 and 2 are padded; position 5 is padding everywhere; position 4 only real in sample 0.
MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32)


def make_qkv(seed, hidden, mask=MASK, pad_scale=10.0):
  """Random (q, k, v) [B, L, hidden]; padded positions hold large garbage that must be ignored."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(3):
    x = rng.normal(size=mask.shape + (hidden,)).astype(np.float32)
    x = np.where(mask[..., None] > 0, x, pad_scale * x).astype(np.float32)
    out.append(x)
  return tuple(out)


def ref_terms(teacher, student, mask, num_heads):
  return {
    name: sum(
      fn(t.astype(np.float64), s.astype(np.float64), mask, num_heads)
      for t, s in zip(teacher, student)
    )
    for name, fn in REFS.items()
  }


def loss_of(student, teacher, mask, num_heads, **kw):
  """``minilm_relation_loss`` with the fixtures' (student, teacher, mask, R) order."""
  return minilm_relation_loss(
    student, teacher=teacher, attention_mask=mask, num_relation_heads=num_heads, **kw
  )


@pytest.fixture
def xla_dots():
  """These tests count XLA dots; on CPU the relation einsums would otherwise be oneDNN custom
  calls (kdjax.kernels.cpu_matmul), which compute the same terms."""
  from kdjax.kernels import cpu_matmul

  cpu_matmul.set_mode("xla")
  yield
  cpu_matmul.set_mode(None)


@pytest.fixture(scope="module")
def qkv_pair():
  return make_qkv(0, 48), make_qkv(1, 32)


@pytest.mark.parametrize("num_heads", [4, 8])
@pytest.mark.parametrize("term", ["token", "head", "sample"])
def test_minilm_terms_match_numpy(qkv_pair, term, num_heads):
  teacher, student = qkv_pair  # teacher hidden 48, student hidden 32
  loss, terms = minilm_relation_loss(
    student,
    teacher=teacher,
    attention_mask=jnp.asarray(MASK),
    num_relation_heads=num_heads,
    return_terms=True,
  )
  expected = sum(
    REFS[term](t.astype(np.float64), s.astype(np.float64), MASK, num_heads)
    for t, s in zip(teacher, student)
  )
  assert terms[term].dtype == jnp.float32
  assert expected > 1e-3  # non-trivial
  np.testing.assert_allclose(float(terms[term]), expected, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(float(loss), float(terms["token"]), rtol=1e-7)  # alpha = beta = 0


def test_minilm_weighting_combination_exact(qkv_pair):
  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)
  alpha, beta = 0.2, 0.3
  loss, terms = minilm_relation_loss(
    student,
    teacher=teacher,
    attention_mask=mask,
    num_relation_heads=4,
    alpha=alpha,
    beta=beta,
    return_terms=True,
  )
  combo = (1 - alpha - beta) * terms["token"] + alpha * terms["head"] + beta * terms["sample"]
  np.testing.assert_allclose(float(loss), float(combo), rtol=1e-6)
  ref = ref_terms(teacher, student, MASK, 4)
  np.testing.assert_allclose(
    float(loss), 0.5 * ref["token"] + 0.2 * ref["head"] + 0.3 * ref["sample"], rtol=2e-5
  )
  # Without return_terms the same scalar comes back; pure head / pure sample weighting too.
  plain = minilm_relation_loss(
    student, teacher=teacher, attention_mask=mask, num_relation_heads=4, alpha=alpha, beta=beta
  )
  np.testing.assert_allclose(float(plain), float(loss), rtol=1e-6)
  np.testing.assert_allclose(
    float(loss_of(student, teacher, mask, 4, alpha=1.0)), ref["head"], rtol=2e-5
  )
  np.testing.assert_allclose(
    float(loss_of(student, teacher, mask, 4, beta=1.0)), ref["sample"], rtol=2e-5
  )


def test_minilm_zero_when_teacher_equals_student():
  x = make_qkv(3, 32)
  loss, terms = loss_of(x, x, jnp.asarray(MASK), 4, alpha=0.3, beta=0.3, return_terms=True)
  assert abs(float(loss)) < 1e-6
  for value in terms.values():
    assert abs(float(value)) < 1e-6


def test_minilm_bf16_inputs_give_float32_close_to_fp32(qkv_pair):
  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)
  bf = lambda xs: tuple(jnp.asarray(x, jnp.bfloat16) for x in xs)
  up = lambda xs: tuple(x.astype(jnp.float32) for x in xs)
  loss_bf, terms_bf = loss_of(bf(student), bf(teacher), mask, 4, return_terms=True)
  assert loss_bf.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in terms_bf.values())
  # Same (bf16-rounded) values in fp32: float32 accumulation makes these agree tightly.
  _, terms_up = loss_of(up(bf(student)), up(bf(teacher)), mask, 4, return_terms=True)
  _, terms_32 = loss_of(student, teacher, mask, 4, return_terms=True)
  for name in terms_bf:
    assert np.isfinite(float(terms_bf[name]))
    np.testing.assert_allclose(float(terms_bf[name]), float(terms_up[name]), rtol=1e-4)
    np.testing.assert_allclose(float(terms_bf[name]), float(terms_32[name]), rtol=5e-2)


@pytest.mark.parametrize("who,t_hidden,s_hidden", [("teacher", 50, 32), ("student", 48, 30)])
def test_minilm_non_divisible_hidden_raises(who, t_hidden, s_hidden):
  teacher, student = make_qkv(0, t_hidden), make_qkv(1, s_hidden)
  with pytest.raises(
    ValueError,
    match=rf"{who} hidden size {t_hidden if who == 'teacher' else s_hidden}"
    r" is not divisible by num_relation_heads=4",
  ):
    loss_of(student, teacher, jnp.asarray(MASK), 4)


def test_minilm_jit_and_finite_grads_with_padding():
  # Adds a fully padded sample on top of MASK (all-padding rows, keys and positions).
  mask = np.concatenate([MASK, np.zeros((1, MASK.shape[1]), np.int32)])
  teacher, student = make_qkv(5, 48, mask), make_qkv(6, 32, mask)

  @jax.jit
  def f(student, alpha, beta):
    return loss_of(student, teacher, jnp.asarray(mask), 8, alpha=alpha, beta=beta)

  value, grads = jax.value_and_grad(f)(student, 0.25, 0.25)
  ref = ref_terms(teacher, student, mask, 8)
  np.testing.assert_allclose(
    float(value), 0.5 * ref["token"] + 0.25 * ref["head"] + 0.25 * ref["sample"], rtol=2e-5
  )
  for g in grads:
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert np.abs(g[mask > 0]).sum() > 0
    np.testing.assert_array_equal(g[mask == 0], 0.0)  # padding never influences the loss
  # Gradient vs. central finite difference along a random direction (float64 NumPy reference).
  rng = np.random.default_rng(7)
  direction = tuple(rng.normal(size=x.shape) * mask[..., None] for x in student)
  eps = 1e-3

  def ref_loss(xs):
    r = ref_terms(teacher, xs, mask, 8)
    return 0.5 * r["token"] + 0.25 * r["head"] + 0.25 * r["sample"]

  plus = tuple(x.astype(np.float64) + eps * d for x, d in zip(student, direction))
  minus = tuple(x.astype(np.float64) - eps * d for x, d in zip(student, direction))
  fd = (ref_loss(plus) - ref_loss(minus)) / (2 * eps)
  analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(grads, direction))
  np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-5)


def test_minilm_zero_weight_terms_are_not_computed(qkv_pair, xla_dots):
  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)

  def count_dots(**kw):
    jaxpr = jax.make_jaxpr(lambda t, s: loss_of(s, t, mask, 4, **kw))(teacher, student)
    return str(jaxpr).count("dot_general")

  assert count_dots() == 6  # token only: (q, k, v) x (teacher, student)
  assert count_dots(alpha=0.5) == 12
  assert count_dots(alpha=0.1, beta=0.1) == 18
  assert count_dots(alpha=1.0) == 6  # token weight is exactly 0
  assert count_dots(return_terms=True) == 18


def _compiled_dots(fn, *args):
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return hlo.count(" dot(")


def test_minilm_zero_weight_terms_cost_nothing_when_dropped(qkv_pair, xla_dots):
  """The recipe asks for every term (``return_terms``) but logs only the weighted ones: the
  zero-weight terms must neither enter the gradient nor survive compilation."""
  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)

  def grad_of(return_terms):
    def f(s):
      if return_terms:
        loss, terms = loss_of(s, teacher, mask, 4, return_terms=True)
        return loss, terms["token"]
      return loss_of(s, teacher, mask, 4), jnp.float32(0)

    return jax.grad(f, has_aux=True)

  plain = _compiled_dots(grad_of(False), student)
  assert plain > 0
  assert _compiled_dots(grad_of(True), student) == plain
  # The reported zero-weight terms are still the NumPy values, and carry no gradient.
  loss, terms = loss_of(student, teacher, mask, 4, return_terms=True)
  ref = ref_terms(teacher, student, MASK, 4)
  np.testing.assert_allclose(float(terms["sample"]), ref["sample"], rtol=2e-5)
  np.testing.assert_allclose(float(loss), ref["token"], rtol=2e-5)
  g = jax.grad(lambda s: loss_of(s, teacher, mask, 4, return_terms=True)[1]["head"])(student)
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in g)


@pytest.mark.parametrize("reduction", ["kdjax", "reference"])
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_minilm_chunked_relations_equal_unchunked(qkv_pair, reduction, chunk):
  """Chunks of relation heads (lax.map + remat) give the same loss and gradients as the whole
  relation tensors, and the same as NumPy; padding rows / samples handled the same way."""
  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)
  kw = dict(alpha=0.2, beta=0.3, reduction=reduction)

  def value_and_grad(c):
    return jax.value_and_grad(lambda s: loss_of(s, teacher, mask, 8, chunk_heads=c, **kw))(student)

  v0, g0 = value_and_grad(0)
  v, g = value_and_grad(chunk)
  np.testing.assert_allclose(float(v), float(v0), rtol=1e-6)
  for a, b in zip(g, g0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
  if reduction == "kdjax":
    ref = ref_terms(teacher, student, MASK, 8)
    np.testing.assert_allclose(
      float(v), 0.5 * ref["token"] + 0.2 * ref["head"] + 0.3 * ref["sample"], rtol=2e-5
    )


def test_minilm_chunking_bounds_the_relation_memory():
  """At a long length the chunked loss+gradient needs a fraction of the temporary memory of
  the whole relation tensors (XLA's own buffer assignment, so no timing or RSS noise)."""
  rng = np.random.default_rng(0)
  B, L, H, R = 2, 256, 64, 16
  t = tuple(jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32) for _ in range(3))
  s = tuple(jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32) for _ in range(3))
  mask = jnp.ones((B, L), jnp.int32)

  def temp_bytes(c):
    f = jax.grad(lambda s: loss_of(s, t, mask, R, chunk_heads=c))
    return jax.jit(f).lower(s).compile().memory_analysis().temp_size_in_bytes

  whole = 4 * B * R * L * L  # one relation tensor
  full, chunked = temp_bytes(0), temp_bytes(2)
  assert full >= 2 * whole
  assert chunked < full / 4


def test_minilm_chunk_heads_auto_and_validation():
  from kdjax.losses.minilm import AUTO_CHUNK_BYTES, CHUNK_BYTES, resolve_chunk_heads

  # 8 x 32 x 32 x 48 heads (1.5 MiB): whole; 32 x 128 x 128 x 48 (96 MiB) and
  # 8 x 512 x 512 x 48 (400 MiB): chunked.
  assert resolve_chunk_heads(None, 48, 8 * 32 * 32) == 0
  assert AUTO_CHUNK_BYTES < 4 * 48 * 32 * 128 * 128
  c = resolve_chunk_heads(None, 48, 32 * 128 * 128)
  assert c and 48 % c == 0 and 4 * c * 32 * 128 * 128 <= CHUNK_BYTES
  c = resolve_chunk_heads(None, 48, 8 * 512 * 512)
  assert c and 48 % c == 0 and 4 * c * 8 * 512 * 512 <= CHUNK_BYTES
  assert 4 * 2 * c * 8 * 512 * 512 > CHUNK_BYTES or 48 % (2 * c)  # the largest that fits
  assert resolve_chunk_heads(None, 7, 10**9) == 1  # nothing fits: one head at a time
  assert resolve_chunk_heads(0, 48, 10**9) == 0
  assert resolve_chunk_heads(48, 48, 1) == 0  # one chunk is no chunking
  assert resolve_chunk_heads(6, 48, 1) == 6
  for bad in (5, -2, 1.5):
    with pytest.raises(ValueError, match="chunk_heads"):
      resolve_chunk_heads(bad, 48, 1)
  with pytest.raises(ValueError, match="divisor of num_relation_heads=4"):
    loss_of(*[make_qkv(i, 32) for i in range(2)], jnp.asarray(MASK), 4, chunk_heads=3)


def test_minilm_teacher_and_hyper_parameters_are_keyword_only(qkv_pair):
  """The convention: student positional, teacher / mask / hyper-parameters keyword-only."""
  from kdjax.losses import head_relation_kl, sample_relation_kl, token_relation_kl

  teacher, student = qkv_pair
  mask = jnp.asarray(MASK)
  with pytest.raises(TypeError):
    minilm_relation_loss(student, teacher, mask, 4)  # the old (teacher, student, ...) order
  with pytest.raises(TypeError):
    minilm_relation_loss(student, teacher=teacher, attention_mask=mask)  # R is required
  s = jnp.asarray(student[0]).reshape(3, 6, 4, -1)
  t = jnp.asarray(teacher[0]).reshape(3, 6, 4, -1)
  for fn in (token_relation_kl, head_relation_kl, sample_relation_kl):
    with pytest.raises(TypeError):
      fn(s, t, mask)
    assert np.isfinite(float(fn(s, teacher=t, attention_mask=mask)))
  # Swapping the roles changes the value (KL is not symmetric): the names are the contract.
  a = loss_of(student, teacher, mask, 4)
  b = minilm_relation_loss(teacher, teacher=student, attention_mask=mask, num_relation_heads=4)
  assert abs(float(a) - float(b)) > 1e-4


# ----------------------------------------------------------------------------- TinyBERT


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_matches_numpy(temperature):
  rng = np.random.default_rng(10)
  s, t = rng.normal(size=(4, 5)) * 3, rng.normal(size=(4, 5)) * 3
  expected = np.mean(
    [
      -sum(
        np_softmax(t[b] / temperature)[c] * np_log_softmax(s[b] / temperature)[c] for c in range(5)
      )
      for b in range(4)
    ]
  )
  got = soft_cross_entropy(
    jnp.asarray(s, jnp.float32), teacher_logits=jnp.asarray(t, jnp.float32), temperature=temperature
  )
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  bf = soft_cross_entropy(
    jnp.asarray(s, jnp.bfloat16),
    teacher_logits=jnp.asarray(t, jnp.bfloat16),
    temperature=temperature,
  )
  assert bf.dtype == jnp.float32
  np.testing.assert_allclose(float(bf), expected, rtol=3e-2)


def test_hidden_mse_matches_numpy():
  rng = np.random.default_rng(11)
  s, t = rng.normal(size=(3, 6, 8)), rng.normal(size=(3, 6, 8))
  sq_sum, count = 0.0, 0
  for b in range(3):
    for i in range(6):
      if MASK[b, i]:
        for h in range(8):
          sq_sum += (s[b, i, h] - t[b, i, h]) ** 2
        count += 1
  s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
  np.testing.assert_allclose(
    float(hidden_mse(s32, teacher_hidden=t32, attention_mask=jnp.asarray(MASK))),
    sq_sum / (count * 8),
    rtol=1e-5,
  )
  full = sum(
    (s[b, i, h] - t[b, i, h]) ** 2 for b in range(3) for i in range(6) for h in range(8)
  ) / (3 * 6 * 8)
  np.testing.assert_allclose(float(hidden_mse(s32, teacher_hidden=t32)), full, rtol=1e-5)
  assert float(embedding_mse(s32, teacher_embeddings=t32)) == float(
    hidden_mse(s32, teacher_hidden=t32)
  )
  assert (
    hidden_mse(s32.astype(jnp.bfloat16), teacher_hidden=t32.astype(jnp.bfloat16)).dtype
    == jnp.float32
  )
  with pytest.raises(ValueError, match="project"):
    hidden_mse(s32[..., :4], teacher_hidden=t32)


def test_attention_mse_matches_numpy_and_excludes_padding():
  rng = np.random.default_rng(12)
  batch, heads, seq = 3, 2, 6
  additive = np.where(MASK > 0, 0.0, np.finfo(np.float32).min)[:, None, None, :]
  s = (rng.normal(size=(batch, heads, seq, seq)) + additive).astype(np.float32)
  t = (rng.normal(size=(batch, heads, seq, seq)) + 0.5 * additive).astype(np.float32)
  sq_sum, count = 0.0, 0
  for b in range(batch):
    for h in range(heads):
      for i in range(seq):
        for j in range(seq):
          if MASK[b, i] and MASK[b, j]:
            sq_sum += (float(s[b, h, i, j]) - float(t[b, h, i, j])) ** 2
            count += 1
  fn = jax.jit(
    jax.value_and_grad(lambda s, t, m: attention_mse(s, teacher_scores=t, attention_mask=m))
  )
  value, grad = fn(jnp.asarray(s), jnp.asarray(t), jnp.asarray(MASK))
  np.testing.assert_allclose(float(value), sq_sum / count, rtol=1e-5)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  pair = (MASK[:, :, None] * MASK[:, None, :])[:, None].repeat(heads, 1)
  np.testing.assert_array_equal(grad[pair == 0], 0.0)
  with pytest.raises(ValueError, match="head counts differ"):
    attention_mse(
      jnp.asarray(s[:, :1]), teacher_scores=jnp.asarray(t), attention_mask=jnp.asarray(MASK)
    )


def test_uniform_layer_map():
  assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
  assert uniform_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]
  assert uniform_layer_map(3, 3) == [0, 1, 2]
  with pytest.raises(ValueError, match="explicit"):
    uniform_layer_map(5, 12)


# ----------------------------------------------------------------------------- vanilla KD


def np_cross_entropy(logits, labels):
  return np.mean([-np_log_softmax(logits[b])[labels[b]] for b in range(len(labels))])


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(20)
  logits, labels = rng.normal(size=(5, 3)) * 2, np.array([0, 2, 1, 1, 0])
  got = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), np_cross_entropy(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9)])
def test_vanilla_kd_loss_matches_numpy(temperature, alpha):
  rng = np.random.default_rng(21)
  s, t = rng.normal(size=(5, 3)) * 2, rng.normal(size=(5, 3)) * 2
  labels = np.array([0, 2, 1, 1, 0])
  kl = np.mean([np_kl(t[b] / temperature, s[b] / temperature) for b in range(5)])
  kd_ref = temperature**2 * kl
  ce_ref = np_cross_entropy(s, labels)
  fn = jax.jit(
    lambda s, t, y: vanilla_kd_loss(
      s, teacher_logits=t, labels=y, temperature=temperature, alpha=alpha
    )
  )
  loss, parts = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(float(parts["kd"]), kd_ref, rtol=1e-5)
  np.testing.assert_allclose(float(parts["ce"]), ce_ref, rtol=1e-5)
  np.testing.assert_allclose(float(loss), alpha * kd_ref + (1 - alpha) * ce_ref, rtol=1e-5)
  same, parts = vanilla_kd_loss(
    jnp.asarray(s),
    teacher_logits=jnp.asarray(s),
    labels=jnp.asarray(labels),
    temperature=temperature,
    alpha=1.0,
  )
  assert abs(float(parts["kd"])) < 1e-6 and abs(float(same)) < 1e-6


def test_mse_regression_matches_numpy():
  preds, targets = np.array([[0.5], [2.0], [3.5]]), np.array([1.0, 2.0, 5.0])
  expected = sum((preds[b, 0] - targets[b]) ** 2 for b in range(3)) / 3
  np.testing.assert_allclose(
    float(mse_regression(jnp.asarray(preds), jnp.asarray(targets))), expected, rtol=1e-6
  )
  np.testing.assert_allclose(
    float(mse_regression(jnp.asarray(preds[:, 0]), jnp.asarray(targets))), expected, rtol=1e-6
  )
  assert mse_regression(jnp.asarray(preds, jnp.bfloat16), jnp.asarray(targets)).dtype == jnp.float32


@pytest.mark.parametrize("masked", [False, True])
def test_row_kl_custom_gradients_match_numpy(masked):
  """``row_kl``'s written-out gradients: d/ds = p_s - p_t, d/dt = p_t (log p_t - log p_s - KL),
  masked keys exactly 0, against float64 NumPy (including a row with every key masked)."""
  from kdjax.losses._common import row_kl

  rng = np.random.default_rng(0)
  t, s = rng.normal(size=(2, 3, 4, 6)) * 3, rng.normal(size=(2, 3, 4, 6)) * 3
  mask = rng.random((2, 1, 1, 6)) > 0.3 if masked else np.ones((2, 1, 1, 6), bool)
  if masked:
    mask[1] = False  # a sample with no real key: KL 0, gradients 0
  w = rng.normal(size=(2, 3, 4))
  kl, (gt, gs) = jax.value_and_grad(
    lambda t, s: jnp.sum(jnp.asarray(w, jnp.float32) * row_kl(t, s, mask if masked else None)),
    (0, 1),
  )(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32))
  m = np.broadcast_to(mask, t.shape)

  def logp(x):
    x = np.where(m, x, -np.inf)
    mx = np.max(np.where(m, x, -1e300), -1, keepdims=True)
    lse = mx + np.log(np.sum(np.where(m, np.exp(x - mx), 0.0), -1, keepdims=True))
    return np.where(m, x - lse, 0.0)

  with np.errstate(invalid="ignore", divide="ignore"):
    lt, ls = logp(t), logp(s)
  pt, ps = np.where(m, np.exp(lt), 0.0), np.where(m, np.exp(ls), 0.0)
  ref_kl = np.sum(pt * (lt - ls), -1)
  np.testing.assert_allclose(float(kl), np.sum(w * ref_kl), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gs), w[..., None] * (ps - pt), atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(gt), w[..., None] * np.where(m, pt * (lt - ls - ref_kl[..., None]), 0.0), atol=1e-5
  )
  if masked:
    assert np.all(np.asarray(gs)[~m] == 0) and np.all(np.asarray(gt)[~m] == 0)
