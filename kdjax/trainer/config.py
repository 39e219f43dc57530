"""Defaults for every key the trainer reads; recipe configs start from these."""

from __future__ import annotations

import ml_collections

from kdjax.trainer.sharding import DEFAULT_RULES


def default_trainer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32  # global, over all processes and accumulation micro-steps
  c.max_steps = 1000
  c.learning_rate = 1e-4
  c.warmup_steps = 0  # < 0 or None: use warmup_proportion * max_steps
  c.warmup_proportion = 0.0
  c.lr_schedule = "linear"  # linear | cosine | constant (each after linear warm-up)
  c.weight_decay = 0.01  # decoupled; not applied to leaves with ndim < 2
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.max_grad_norm = 1.0  # 0 / None: no clipping
  c.grad_accum_steps = 1
  c.save_steps = 1000  # 0: only at the end
  c.keep_checkpoints = 3
  c.logging_steps = 50
  c.eval_steps = 0  # 0: never (no final eval either)
  c.keep_best = True  # keep params with the highest evaluate()["score"] in workdir/best
  c.async_checkpoint = True
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.logical_axis_rules = [tuple(rule) for rule in DEFAULT_RULES]
  c.progress_bar = True
  c.tensorboard = True
  return c


def resolve_trainer_config(config) -> ml_collections.ConfigDict:
  """The trainer keys of `config`, missing ones filled from the defaults (mesh merged per axis)."""
  out = default_trainer_config()
  for key in out:
    if key not in config:
      continue
    value = config[key]
    if key == "mesh":
      merged = dict(out.mesh)
      merged.update(dict(value))
      out.mesh = ml_collections.ConfigDict(merged)
    elif key == "logical_axis_rules":
      out[key] = [(name, tuple(t) if isinstance(t, list) else t) for name, t in value]
    else:
      with out.ignore_type():
        out[key] = value
  return out
