"""Defaults for every key the trainer reads; recipe configs start from these."""

from __future__ import annotations

import ml_collections

from kdjax.trainer.sharding import DEFAULT_RULES


def default_trainer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32  # global, over all processes and accumulation micro-steps
  # > 0: examples per device per update; batch_size = this x jax.device_count() (see
  # resolve_batch_size: batch_size must then be 0 or equal to that product).
  c.per_device_batch_size = 0
  c.max_steps = 1000
  c.learning_rate = 1e-4
  c.warmup_steps = 0  # < 0 or None: use warmup_proportion * max_steps
  c.warmup_proportion = 0.0
  c.lr_schedule = "linear"  # linear | cosine | constant (each after linear warm-up)
  c.weight_decay = 0.01  # decoupled; not applied to leaves with ndim < 2
  c.adam_b1 = 0.9  # AdamW beta1
  c.adam_b2 = 0.999  # AdamW beta2
  c.adam_eps = 1e-8  # AdamW epsilon (added to sqrt of the bias-corrected second moment)
  c.max_grad_norm = 1.0  # 0 / None: no clipping
  c.grad_accum_steps = 1
  c.save_steps = 1000  # 0: only at the end
  c.keep_checkpoints = 3
  c.logging_steps = 50
  c.eval_steps = 0  # 0: never (no final eval either)
  c.keep_best = True  # keep params with the highest evaluate()["score"] in workdir/best
  c.async_checkpoint = True
  # A NaN/Inf loss or gradient norm: "stop" the run (NonFiniteError naming the step), or
  # "skip" the update (params and optimizer state unchanged, counted as skipped_steps).
  c.nonfinite = "stop"
  c.max_skipped_steps = 10  # with nonfinite="skip": stop once more than this were skipped
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.logical_axis_rules = [tuple(rule) for rule in DEFAULT_RULES]
  c.progress_bar = True
  c.tensorboard = True
  # Trim each training batch's sequence axis to the smallest bucket (16, 32, 64, ... up to the
  # padded length) that holds its longest real sequence, for recipes that declare
  # `sequence_keys` (losses that exclude padding: same values, less compute; one compile per
  # bucket). False: every batch keeps the padded length.
  c.length_buckets = True
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


def resolve_batch_size(config, device_count: int | None = None) -> int:
  """Sets the global ``batch_size`` from ``per_device_batch_size`` (in place); returns it.

  ``per_device_batch_size`` <= 0 (default): ``batch_size`` is used as is. > 0: the global
  batch is ``per_device_batch_size * device_count`` (default ``jax.device_count()``, all
  devices of all processes; per update, i.e. summed over ``grad_accum_steps`` micro-steps);
  ``batch_size`` must then be 0 (derive it) or already equal that product, anything else is a
  ValueError naming both keys. Idempotent: a resolved config resolves to itself.
  """
  per_device = int(config.get("per_device_batch_size", 0) or 0)
  if per_device <= 0:
    return int(config.batch_size)
  if device_count is None:
    import jax

    device_count = jax.device_count()
  total = per_device * int(device_count)
  current = config.get("batch_size", 0) or 0
  if current not in (0, total):
    raise ValueError(
      f"config keys 'per_device_batch_size'={per_device} (x {device_count} devices = global "
      f"batch {total}) and 'batch_size'={current} disagree: set batch_size=0 (derived from "
      "per_device_batch_size) or per_device_batch_size=0 (batch_size is the global batch)"
    )
  config.batch_size = total
  return total
