"""Per-example weights in the task losses, against independent NumPy computations, and the
argument convention (the teacher's arrays are keyword-only)."""

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import (
  attention_mse,
  cross_entropy,
  embedding_mse,
  hidden_mse,
  kl_divergence,
  mse_regression,
  soft_cross_entropy,
  vanilla_kd_loss,
)

RNG = np.random.default_rng(7)
W = np.array([0.5, 2.0, 0.0, 1.5], np.float32)
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.int32)


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def wmean(per_example, w):
  return float(np.sum(w * per_example) / np.sum(w))


def test_label_losses_weighted_mean():
  logits, labels = RNG.normal(size=(4, 3)) * 2, np.array([0, 2, 1, 1])
  per = np.array([-np_log_softmax(logits[b])[labels[b]] for b in range(4)])
  got = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), weights=jnp.asarray(W))
  np.testing.assert_allclose(float(got), wmean(per, W), rtol=1e-5)
  ones = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), weights=jnp.ones(4))
  np.testing.assert_allclose(float(ones), per.mean(), rtol=1e-5)
  zero = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), weights=jnp.zeros(4))
  assert float(zero) == 0.0

  preds, targets = RNG.normal(size=(4, 1)), RNG.normal(size=(4,))
  per = (preds[:, 0] - targets) ** 2
  got = mse_regression(jnp.asarray(preds), jnp.asarray(targets), weights=jnp.asarray(W))
  np.testing.assert_allclose(float(got), wmean(per, W), rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_logit_distillation_weighted_mean(temperature):
  s, t = RNG.normal(size=(4, 5)) * 2, RNG.normal(size=(4, 5)) * 2
  labels = np.array([1, 0, 4, 2])
  p_t = np.exp(np_log_softmax(t / temperature))
  logp_s = np_log_softmax(s / temperature)
  soft = -(p_t * logp_s).sum(-1)
  kl = (p_t * (np.log(p_t) - logp_s)).sum(-1)
  ce = np.array([-np_log_softmax(s[b])[labels[b]] for b in range(4)])
  js, jt, jw = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(W)
  got = soft_cross_entropy(js, teacher_logits=jt, temperature=temperature, weights=jw)
  np.testing.assert_allclose(float(got), wmean(soft, W), rtol=1e-5)
  got = kl_divergence(js, teacher_logits=jt, temperature=temperature, weights=jw)
  np.testing.assert_allclose(float(got), wmean(kl, W), rtol=1e-5)
  loss, parts = vanilla_kd_loss(
    js,
    teacher_logits=jt,
    labels=jnp.asarray(labels),
    temperature=temperature,
    alpha=0.3,
    weights=jw,
  )
  kd_ref = temperature**2 * wmean(kl, W)
  np.testing.assert_allclose(float(parts["kd"]), kd_ref, rtol=1e-5)
  np.testing.assert_allclose(float(parts["ce"]), wmean(ce, W), rtol=1e-5)
  np.testing.assert_allclose(float(loss), 0.3 * kd_ref + 0.7 * wmean(ce, W), rtol=1e-5)


def test_hidden_and_attention_mse_weight_tokens_by_their_example():
  s, t = RNG.normal(size=(4, 5, 6)), RNG.normal(size=(4, 5, 6))
  num = den = 0.0
  for b in range(4):
    for i in range(5):
      if MASK[b, i]:
        num += W[b] * np.sum((s[b, i] - t[b, i]) ** 2)
        den += W[b] * 6
  kw = dict(attention_mask=jnp.asarray(MASK), weights=jnp.asarray(W))
  got = hidden_mse(jnp.asarray(s), teacher_hidden=jnp.asarray(t), **kw)
  np.testing.assert_allclose(float(got), num / den, rtol=1e-5)
  got = embedding_mse(jnp.asarray(s), teacher_embeddings=jnp.asarray(t), **kw)
  np.testing.assert_allclose(float(got), num / den, rtol=1e-5)

  heads = 2
  additive = np.where(MASK > 0, 0.0, -1e9)[:, None, None, :]
  ss = RNG.normal(size=(4, heads, 5, 5)) + additive
  ts = RNG.normal(size=(4, heads, 5, 5)) + additive
  num = den = 0.0
  for b in range(4):
    for h in range(heads):
      for i in range(5):
        for j in range(5):
          if MASK[b, i] and MASK[b, j]:
            num += W[b] * (ss[b, h, i, j] - ts[b, h, i, j]) ** 2
            den += W[b]
  got = attention_mse(
    jnp.asarray(ss, jnp.float32), teacher_scores=jnp.asarray(ts, jnp.float32), **kw
  )
  np.testing.assert_allclose(float(got), num / den, rtol=1e-5)
  unweighted = attention_mse(
    jnp.asarray(ss, jnp.float32),
    teacher_scores=jnp.asarray(ts, jnp.float32),
    attention_mask=jnp.asarray(MASK),
  )
  same = attention_mse(
    jnp.asarray(ss, jnp.float32),
    teacher_scores=jnp.asarray(ts, jnp.float32),
    attention_mask=jnp.asarray(MASK),
    weights=jnp.ones(4),
  )
  np.testing.assert_allclose(float(unweighted), float(same), rtol=1e-6)


def test_teacher_arguments_are_keyword_only():
  x = jnp.zeros((2, 3))
  with pytest.raises(TypeError):
    soft_cross_entropy(x, x)  # a swapped (student, teacher) pair cannot pass silently
  with pytest.raises(TypeError):
    kl_divergence(x, x)
  with pytest.raises(TypeError):
    hidden_mse(x[None], x[None])
  with pytest.raises(TypeError):
    vanilla_kd_loss(x, x, jnp.zeros(2, jnp.int32), 1.0, 0.5)
