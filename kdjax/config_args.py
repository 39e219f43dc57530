"""The ``:arg`` string of ``--config=configs/<recipe>.py:<arg>``.

``ml_collections.config_flags`` splits the flag value at the FIRST ':' and passes the rest,
unparsed, to ``get_config(arg)``. Configs that use :func:`apply_arg` accept a comma-separated
list of items:

  * a bare word names a variant (``tiny``, ``demo``), applied first, in order;
  * ``key=value`` sets a config key (dotted for nested keys: ``model.path=/m``), after the
    variants; short aliases (``model`` -> ``model.path``) are config specific. The value is
    converted to the type of the key's current value (bool: true/false/1/0/yes/no;
    tuple / list: ``a;b;c``).

  --config=configs/finetune.py:task=tnews,model=/models/ppminilm,data_dir=/data/clue
  --config=configs/finetune.py:tiny,task=sst-2

Values cannot contain ',' (use the ``--config.<key>=`` flags for those).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_collections

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(key: str, text: str, current):
  if isinstance(current, bool):
    low = text.lower()
    if low not in _TRUE + _FALSE:
      raise ValueError(f"config arg {key}={text!r}: expected a boolean")
    return low in _TRUE
  if isinstance(current, (tuple, list)):
    items = [t for t in text.split(";") if t]
    kind = type(current[0]) if current else str
    return type(current)(kind(t) for t in items)
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  return text


def _set(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise ValueError(f"config arg {key}={text!r}: no such config key {key!r}")
    node = node[p]
  if leaf not in node:
    raise ValueError(f"config arg {key}={text!r}: no such config key {key!r}")
  current = node[leaf]
  if current is None:
    ref = node.get_ref(leaf)
    kind = getattr(ref, "_field_type", None)
    value = kind(text) if kind in (int, float) else text
  else:
    try:
      value = _convert(key, text, current)
    except ValueError as e:
      raise ValueError(f"config arg {key}={text!r}: {e}") from None
  node[leaf] = value


def apply_arg(
  config: ml_collections.ConfigDict,
  arg: str | None,
  variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
  aliases: Mapping[str, str] | None = None,
) -> ml_collections.ConfigDict:
  """Applies ``arg`` (see the module docstring) to ``config`` in place and returns it."""
  if not arg:
    return config
  items = [s.strip() for s in arg.split(",") if s.strip()]
  words = [s for s in items if "=" not in s]
  pairs = [s.split("=", 1) for s in items if "=" in s]
  for w in words:
    if w not in variants:
      raise ValueError(
        f"unknown config variant {w!r} (known: {', '.join(sorted(variants))}; or key=value pairs)"
      )
    variants[w](config)
  for key, value in pairs:
    key = key.strip()
    _set(config, (aliases or {}).get(key, key), value.strip())
  return config


# ---------------------------------------------------------------------------- shared blocks
def optional(kind):
  """An unset (None) config value of a fixed type, settable from the command line."""
  return ml_collections.FieldReference(None, field_type=kind)


def student_block(**defaults) -> ml_collections.ConfigDict:
  """``student`` (meanings: ``kdjax.models.loading``): ``path`` = the weights the student
  starts from (its architecture fixed by them); else a random student with the architecture of
  ``config_path`` (default: the teacher's) and the shape overrides (HF names; None = keep the
  base value). ``dtype`` is the compute dtype, ``seed`` seeds random parts."""
  block = dict(
    path="",
    config_path="",
    num_hidden_layers=optional(int),
    hidden_size=optional(int),
    num_attention_heads=optional(int),
    attention_head_size=optional(int),  # None: hidden_size / num_attention_heads
    intermediate_size=optional(int),
    hidden_act=optional(str),
    hidden_dropout_prob=optional(float),
    attention_probs_dropout_prob=optional(float),
    dtype="float32",
    seed=0,
  )
  block.update(defaults)
  return ml_collections.ConfigDict(block)


def task_schedule(c: ml_collections.ConfigDict) -> None:
  """Keys of the task-level recipes (finetune, tinybert, vanilla_kd), in place. -1 means
  "resolved by the recipe from the task": learning rate, epochs and max_seq_length from the
  task's table, max_steps = epochs * steps_per_epoch, eval_steps -1 = once per epoch,
  save_steps -1 = eval_steps, warm-up = warmup_proportion * max_steps. Dev evaluation runs
  every 100 steps (PaddleNLP's run_clue / the seeds' scripts) and at the end; the best is kept.
  ``train_file`` replaces the training split with a file in the task's format."""
  c.train_file = ""
  c.max_seq_length = -1
  c.num_train_epochs = -1.0
  c.learning_rate = -1.0
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_steps = -1
  c.warmup_steps = -1
  c.warmup_proportion = 0.1
  c.weight_decay = 0.01
  c.max_grad_norm = 1.0
  c.eval_steps = 100
  c.save_steps = -1
  c.keep_checkpoints = 1
  c.logging_steps = 50
  c.seed = 42


def tiny_task_schedule(c: ml_collections.ConfigDict, batch_size: int, epochs: float) -> None:
  """The ``:tiny`` test shapes of the task-level recipes."""
  c.max_seq_length = 16
  c.batch_size = batch_size
  c.eval_batch_size = 2 * batch_size
  c.learning_rate = 1e-3
  c.num_train_epochs = epochs
  c.eval_steps = -1  # once per (tiny) epoch
  c.logging_steps = 1
  c.async_checkpoint = False
  c.progress_bar = False
  c.tensorboard = False
