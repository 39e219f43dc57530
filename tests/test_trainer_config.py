"""Trainer config keys of the reference recipes: per-device batch size and the AdamW settings."""

import helpers_env
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.trainer.config import default_trainer_config, resolve_batch_size
from kdjax.trainer.optim import decay_mask, make_optimizer, make_schedule


def _config(name, arg=None):
  return helpers_env.config(name, arg)


# ------------------------------------------------------------------------ batch size
def test_per_device_batch_size_default_is_unused():
  c = default_trainer_config()
  assert c.per_device_batch_size == 0
  c.batch_size = 48
  assert resolve_batch_size(c, device_count=8) == 48 and c.batch_size == 48


@pytest.mark.parametrize("devices", [1, 8, 16])
def test_per_device_batch_size_sets_the_global_batch(devices):
  c = default_trainer_config()
  c.per_device_batch_size, c.batch_size = 128, 0
  assert resolve_batch_size(c, device_count=devices) == 128 * devices
  assert c.batch_size == 128 * devices
  assert resolve_batch_size(c, device_count=devices) == 128 * devices  # idempotent
  c2 = default_trainer_config()
  c2.per_device_batch_size, c2.batch_size = 128, 128 * devices  # consistent: accepted
  assert resolve_batch_size(c2, device_count=devices) == 128 * devices


def test_per_device_batch_size_uses_jax_device_count():
  c = default_trainer_config()
  c.per_device_batch_size, c.batch_size = 3, 0
  assert resolve_batch_size(c) == 3 * jax.device_count()


def test_inconsistent_batch_sizes_are_an_error_naming_both_keys():
  c = default_trainer_config()
  c.per_device_batch_size, c.batch_size = 256, 1024
  with pytest.raises(
    ValueError, match=r"'per_device_batch_size'=256.*8 devices.*2048.*'batch_size'=1024"
  ):
    resolve_batch_size(c, device_count=8)
  assert c.batch_size == 1024  # untouched on error


@pytest.mark.parametrize(
  "name,arg,global_batch,per_gpu",
  [
    ("minilmv2", None, 2048, 256),
    ("ppminilm", None, 1024, 128),
    ("ppminilm", "layers=2", 1024, 128),
  ],
)
def test_reference_configs_reproduce_the_reference_global_batch(name, arg, global_batch, per_gpu):
  """minilmv2 README: --batch_size 256 per GPU on 8 GPUs; pp-minilm run.sh: bs=128 on 8 GPUs."""
  c = _config(name, arg)
  assert c.batch_size == global_batch and c.per_device_batch_size == 0
  assert resolve_batch_size(c, device_count=4) == global_batch  # on any device count
  c.per_device_batch_size, c.batch_size = per_gpu, 0  # the documented per-device alternative
  assert resolve_batch_size(c, device_count=8) == global_batch


# ------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize(
  "name,b1,b2,eps,wd",
  [("minilmv2", 0.9, 0.98, 1e-8, 0.01), ("ppminilm", 0.9, 0.999, 1e-8, 0.01)],
)
def test_reference_adamw_settings_reach_the_optimizer(name, b1, b2, eps, wd):
  """minilmv2/general_distill.py: AdamW(beta1=0.9, beta2=0.98, epsilon=1e-8);
  pp-minilm/general_distill/general_distill.py: AdamW(beta1=0.9, beta2=0.999, epsilon=1e-8)."""
  c = _config(name)
  assert (c.adam_b1, c.adam_b2, c.adam_eps, c.weight_decay) == (b1, b2, eps, wd)
  assert c.max_grad_norm == 1.0 and c.learning_rate == 6e-4 and c.warmup_steps == 4000
  # A few updates of the trainer's optimizer == a hand-built optax chain with these values,
  # and != one with optax's default b2 / eps (the keys are really used).
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-3, jnp.float32), params)
    for _ in range(3)
  ]
  c.warmup_steps, c.max_steps = 2, 10

  def run(opt):
    p, state = params, opt.init(params)
    for g in grads:
      updates, state = opt.update(g, state, p)
      p = optax.apply_updates(p, updates)
    return p

  def hand(b2_, eps_):
    return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(make_schedule(c), b1=b1, b2=b2_, eps=eps_, weight_decay=wd, mask=decay_mask),
    )

  mine, ref = run(make_optimizer(c)), run(hand(b2, eps))
  for k in params:
    np.testing.assert_allclose(np.asarray(mine[k]), np.asarray(ref[k]), rtol=1e-6, atol=1e-9)
  other = run(hand(0.999 if b2 != 0.999 else 0.98, 1e-6))
  assert any(np.max(np.abs(np.asarray(mine[k]) - np.asarray(other[k]))) > 1e-6 for k in params)
