"""kdjax.models.bert.dropout / keep_mask: keyed counter-hash Bernoulli masks and exact inverted
scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models.bert import dropout, keep_mask


@pytest.mark.parametrize("keep_prob", [0.9, 0.5, 0.123457])
@pytest.mark.parametrize("shape", [(64, 33, 17), (2, 3), (1,)])
def test_keep_mask_probability_and_determinism(keep_prob, shape):
  key = jax.random.key(3)
  keep, p = keep_mask(key, keep_prob, shape)
  assert keep.shape == shape and keep.dtype == jnp.bool_
  assert p == round(keep_prob * 2**32) / 2**32 and abs(p - keep_prob) <= 2**-33
  np.testing.assert_array_equal(keep, keep_mask(key, keep_prob, shape)[0])  # a function of the key
  if np.prod(shape) > 10_000:
    n = keep.size  # the kept fraction within 5 binomial standard deviations of p
    assert abs(float(jnp.mean(keep)) - p) < 5 * np.sqrt(p * (1 - p) / n)
    other = keep_mask(jax.random.key(4), keep_prob, shape)[0]
    assert float(jnp.mean(keep != other)) > 0.5 * 2 * p * (1 - p)  # another key, other mask


def test_keep_mask_neighbours_and_keys_look_independent():
  """Entries at every small lag agree as often as two independent Bernoulli(p) draws
  (p^2 + (1-p)^2), along the last axis and across rows; keys derived from one another
  (fold_in, as the model's layers do) give uncorrelated masks; each position is kept with
  frequency p over many keys."""
  p_want = 0.5
  keep, p = keep_mask(jax.random.key(0), p_want, (400, 500))
  k = np.asarray(keep)
  agree = p * p + (1 - p) * (1 - p)
  for lag in (1, 2, 3, 16, 500 - 1):
    flat = k.reshape(-1)
    assert abs(float(np.mean(flat[lag:] == flat[:-lag])) - agree) < 0.01, lag
  assert abs(float(np.mean(k[1:] == k[:-1])) - agree) < 0.01  # across rows
  base = jax.random.key(7)
  masks = [np.asarray(keep_mask(jax.random.fold_in(base, j), 0.9, (50_000,))[0]) for j in range(4)]
  for a in range(4):
    for b in range(a + 1, 4):
      c = np.corrcoef(masks[a].astype(np.float64), masks[b].astype(np.float64))[0, 1]
      assert abs(c) < 0.03, (a, b, c)
  many = np.stack([np.asarray(keep_mask(jax.random.key(s), 0.9, (64,))[0]) for s in range(2000)])
  freq = many.mean(0)  # per position over 2000 keys: binomial sd ~0.0067
  assert np.all(np.abs(freq - 0.9) < 6 * np.sqrt(0.9 * 0.1 / 2000))


def test_keep_mask_is_computed_in_the_fusion_without_a_bits_tensor():
  """The mask is an elementwise function of an iota: the compiled dropout needs no temporary
  as large as the input (Threefry bits needed one, 4 bytes per entry)."""
  x = jnp.ones((64, 256, 256), jnp.float32)
  f = jax.jit(lambda x, k: dropout(x, 0.1, k, deterministic=False))
  m = f.lower(x, jax.random.key(0)).compile().memory_analysis()
  assert m.temp_size_in_bytes < x.nbytes // 8


def test_keep_mask_edges():
  keep, p = keep_mask(jax.random.key(0), 1.0, (3, 4))
  assert p == 1.0 and bool(jnp.all(keep))
  keep, p = keep_mask(jax.random.key(0), 0.0, (3, 4))
  assert p == 0.0 and not bool(jnp.any(keep))
  keep, p = keep_mask(jax.random.key(0), 0.5, ())
  assert keep.shape == ()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_scales_kept_entries_by_the_exact_probability(dtype):
  x = jnp.full((128, 256), 3.0, dtype)
  key = jax.random.key(1)
  y = dropout(x, 0.1, key, deterministic=False)
  keep, p = keep_mask(key, 0.9, x.shape)
  assert y.dtype == dtype
  want = np.where(np.asarray(keep), np.float32(3.0) * np.float32(1.0 / p), 0.0)  # in float32
  want = np.asarray(jnp.asarray(want, dtype), np.float32)  # one rounding, of the product
  np.testing.assert_array_equal(np.asarray(y, np.float32), want)
  assert abs(float(jnp.mean(y.astype(jnp.float32))) - 3.0) < 0.05  # E[dropout(x)] = x


def test_dropout_identity_and_edges():
  x = jnp.arange(6.0).reshape(2, 3)
  key = jax.random.key(0)
  assert dropout(x, 0.1, key, deterministic=True) is x
  assert dropout(x, 0.0, key, deterministic=False) is x
  np.testing.assert_array_equal(dropout(x, 1.0, key, deterministic=False), np.zeros((2, 3)))
  with pytest.raises(ValueError, match="dropout_rng is required"):
    dropout(x, 0.1, None, deterministic=False)
