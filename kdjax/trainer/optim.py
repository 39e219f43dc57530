"""Optimizer and learning-rate schedule built from the trainer config."""

from __future__ import annotations

import jax
import optax


def warmup_steps(config) -> int:
  """`warmup_steps` if >= 0, else `warmup_proportion * max_steps`."""
  steps = config.get("warmup_steps", None)
  if steps is not None and steps >= 0:
    return int(steps)
  return round(float(config.get("warmup_proportion", 0.0) or 0.0) * config.max_steps)


def make_schedule(config) -> optax.Schedule:
  """Learning rate per optimizer update (step 0 is the first update).

  "linear": 0 -> lr over the warm-up, then linear decay to 0 at `max_steps` (the BERT/HF and
  PaddleNLP `LinearDecayWithWarmup` schedule). "cosine": same warm-up, cosine decay to 0.
  "constant": same warm-up, then flat.
  """
  lr = float(config.learning_rate)
  total = int(config.max_steps)
  warm = min(warmup_steps(config), total)
  kind = config.get("lr_schedule", "linear")
  decay = max(total - warm, 1)
  if kind == "linear":
    after = optax.linear_schedule(lr, 0.0, decay)
  elif kind == "cosine":
    after = optax.cosine_decay_schedule(lr, decay)
  elif kind == "constant":
    after = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown lr_schedule {kind!r}; expected linear, cosine or constant.")
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def decay_mask(params):
  """Weight decay only on matrices: biases and LayerNorm scales/offsets (ndim < 2) are exempt."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config, params=None) -> optax.GradientTransformation:
  """Global-norm clipping followed by AdamW with decoupled, masked weight decay.

  `params` is unused (the mask is computed from the tree at init); it is accepted so that a
  recipe-specific optimizer with per-parameter settings can share the signature.
  """
  del params
  parts = []
  if config.get("max_grad_norm", None):
    parts.append(optax.clip_by_global_norm(float(config.max_grad_norm)))
  parts.append(
    optax.adamw(
      make_schedule(config),
      b1=float(config.adam_b1),
      b2=float(config.adam_b2),
      eps=float(config.adam_eps),
      weight_decay=float(config.weight_decay),
      mask=decay_mask,
    )
  )
  return optax.chain(*parts)
