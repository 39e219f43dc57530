"""kdjax.models.bert.dropout / keep_mask: 16-bit Bernoulli masks and exact inverted scaling."""

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
  assert p == round(keep_prob * 65536) / 65536 and abs(p - keep_prob) <= 2**-17
  np.testing.assert_array_equal(keep, keep_mask(key, keep_prob, shape)[0])  # a function of the key
  if np.prod(shape) > 10_000:
    n = keep.size  # the kept fraction within 5 binomial standard deviations of p
    assert abs(float(jnp.mean(keep)) - p) < 5 * np.sqrt(p * (1 - p) / n)
    other = keep_mask(jax.random.key(4), keep_prob, shape)[0]
    assert float(jnp.mean(keep != other)) > 0.5 * 2 * p * (1 - p)  # another key, other mask


def test_keep_mask_halves_are_independent():
  """Each 32 random bits decide two neighbouring entries: their agreement must be what two
  independent Bernoulli(p) draws give (p^2 + (1-p)^2), not more."""
  keep, p = keep_mask(jax.random.key(0), 0.5, (200_000,))
  k = np.asarray(keep).reshape(-1, 2)
  agree = float(np.mean(k[:, 0] == k[:, 1]))
  assert abs(agree - (p * p + (1 - p) * (1 - p))) < 0.01


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_scales_kept_entries_by_the_exact_probability(dtype):
  x = jnp.full((128, 256), 3.0, dtype)
  key = jax.random.key(1)
  y = dropout(x, 0.1, key, deterministic=False)
  keep, p = keep_mask(key, 0.9, x.shape)
  assert y.dtype == dtype
  want = np.where(np.asarray(keep), np.float32(3.0 / p), 0.0)
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
