"""The one training loop. It knows nothing about any method: a recipe supplies params, loss,
data and optional hooks (see `kdjax.trainer.recipe.Recipe`).

Config keys read (defaults in `kdjax.trainer.config.default_trainer_config()`):
  seed                 PRNG seed for init and the per-step keys
  batch_size           global batch (all processes, all micro-steps)
  max_steps            number of optimizer updates
  learning_rate, lr_schedule ("linear" | "cosine" | "constant"), warmup_steps (int; < 0 or
                       None: warmup_proportion * max_steps), warmup_proportion
  weight_decay         decoupled AdamW decay, not on leaves with ndim < 2
  adam_b1, adam_b2, adam_eps
  max_grad_norm        global-norm clipping; 0 / None disables
  grad_accum_steps     micro-batches per update (batch_size must be divisible)
  save_steps           checkpoint every n steps (and always at the end); keep_checkpoints
  async_checkpoint     orbax async saves (waited for before train() returns)
  logging_steps        metrics line / TensorBoard / metrics.jsonl every n steps
  eval_steps           recipe.evaluate every n steps and at the end (0: off); keep_best
  mesh                 {"data", "fsdp", "tensor"}: sizes, one may be -1 (= the rest)
  logical_axis_rules   [(logical name, mesh axis | tuple of axes | None)]
  progress_bar, tensorboard
  nonfinite            "stop" (default): a NaN/Inf loss or gradient norm stops the run with
                       NonFiniteError naming the step; "skip": that update is not applied
                       (params and optimizer state unchanged; counted as skipped_steps in
                       the metrics and the checkpoints) and the run goes on
  max_skipped_steps    with "skip": stop once more updates than this were skipped

Non-finite checks cost no host sync of their own: the step's loss and grad_norm are fetched
together with the metrics, at every logging, eval and save step and at the last step,
always before anything is evaluated, checkpointed or exported; params are also checked for
NaN/Inf right before each checkpoint, best checkpoint and export. So a diverged run writes
nothing from non-finite params and its last good checkpoint stays the latest. A failed
checkpoint save stops the run with CheckpointSaveError (see checkpoint.py); a checkpoint
that fails to restore is moved aside and the previous one is resumed from.

Workdir layout: checkpoints/<step>/{state,data}, best/<step>/params, export/, tb/,
metrics.jsonl.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from kdjax.trainer import checkpoint as checkpoint_lib
from kdjax.trainer import sharding as sharding_lib
from kdjax.trainer import state as state_lib
from kdjax.trainer.config import resolve_trainer_config
from kdjax.trainer.distributed import maybe_initialize_distributed
from kdjax.trainer.host_memory import CompileFirstCall, release_free_host_memory
from kdjax.trainer.metrics import MetricsLogger
from kdjax.trainer.optim import make_optimizer, make_schedule
from kdjax.trainer.step import NonFiniteError, check_accumulation, make_train_step

NONFINITE_MODES = ("stop", "skip")
_MAX_UNCHECKED = 1000  # steps between non-finite checks when nothing else is due


def bucket_length(longest: int, padded: int, smallest: int = 16) -> int:
  """The smallest of ``smallest * 2**k`` that is >= ``longest``, capped at ``padded``."""
  length = smallest
  while length < longest:
    length *= 2
  return min(length, padded)


def _is_due(step: int, every: int | None) -> bool:
  return bool(every) and step % every == 0


def _kept(last_checkpoint: int | None) -> str:
  if last_checkpoint is None:
    return "no checkpoint was written"
  return f"the latest checkpoint is step {last_checkpoint}"


class _NonFiniteGuard:
  """Keeps each step's (loss, grad_norm) device scalars until `check()` fetches them (when
  the loop fetches metrics anyway); then stops or counts the non-finite ones."""

  def __init__(self, mode: str, max_skipped: int, skipped: int = 0):
    self.mode, self.max_skipped, self.skipped = mode, int(max_skipped), int(skipped)
    self._pending: list[tuple[int, dict]] = []
    self.checked_step: int | None = None

  def record(self, step: int, metrics) -> None:
    self._pending.append((step, {k: metrics[k] for k in ("loss", "grad_norm")}))

  def __len__(self) -> int:
    return len(self._pending)

  def check(self, last_good: int | None = None) -> None:
    if not self._pending:
      return
    steps = [s for s, _ in self._pending]
    fetched = jax.device_get([m for _, m in self._pending])
    self._pending = []
    self.checked_step = steps[-1]
    bad = [
      (s, m)
      for s, m in zip(steps, fetched)
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]))
    ]
    if not bad:
      return
    step, m = bad[0]
    values = f"loss={float(m['loss']):.4g} grad_norm={float(m['grad_norm']):.4g}"
    kept = _kept(last_good)
    if self.mode == "stop":
      raise NonFiniteError(
        f"non-finite {values} at step {step}: stopped (config nonfinite='stop'); {kept}. "
        "Lower learning_rate, or set nonfinite='skip' to skip such updates"
      )
    self.skipped += len(bad)
    logging.warning(
      "skipped %d non-finite update(s) at step(s) %s (first: %s); %d skipped in all, "
      "max_skipped_steps=%d",
      len(bad),
      ", ".join(str(s) for s, _ in bad[:10]) + (" ..." if len(bad) > 10 else ""),
      values,
      self.skipped,
      self.max_skipped,
    )
    if self.skipped > self.max_skipped:
      last_step, last_m = bad[-1]
      raise NonFiniteError(
        f"{self.skipped} non-finite updates skipped, more than max_skipped_steps="
        f"{self.max_skipped} (the last at step {last_step}: loss={float(last_m['loss']):.4g} "
        f"grad_norm={float(last_m['grad_norm']):.4g}): stopped; {kept}"
      )


class Trainer:
  """`Trainer(config, recipe, workdir).train()`; `step_fn(state, frozen, batch)` is the jitted
  step (state donated), usable directly in tests with `init_state()`, `init_frozen()` and
  `global_batch()`."""

  def __init__(self, config, recipe, workdir):
    maybe_initialize_distributed()
    self.config = cfg = resolve_trainer_config(config)
    self.recipe = recipe
    self.workdir = os.path.abspath(os.fspath(workdir))  # orbax needs absolute paths
    self.mesh = sharding_lib.make_mesh(cfg.mesh)
    self.rules = tuple(cfg.logical_axis_rules)
    self._check_batch()

    self.optimizer = make_optimizer(cfg)
    self.schedule = make_schedule(cfg)
    init_key, self._train_key = jax.random.split(jax.random.key(cfg.seed))
    self._init_key = init_key
    abstract_params = jax.eval_shape(recipe.init_params, init_key)
    param_logical = getattr(recipe, "param_logical_axes", lambda _: None)(abstract_params)
    param_shardings = sharding_lib.tree_shardings(
      abstract_params, param_logical, self.rules, self.mesh
    )
    abstract_state = jax.eval_shape(
      lambda k1, k2: state_lib.create_state(recipe.init_params(k1), self.optimizer, k2),
      init_key,
      self._train_key,
    )
    self.param_shardings = param_shardings
    self.state_shardings = state_lib.state_shardings(abstract_state, param_shardings, self.mesh)
    self.abstract_state = state_lib.with_shardings(abstract_state, self.state_shardings)
    self.num_params = state_lib.num_params(abstract_params)

    step = make_train_step(
      recipe.loss_fn,
      self.optimizer,
      cfg.grad_accum_steps,
      self.schedule,
      skip_nonfinite=cfg.nonfinite == "skip",
    )
    # The state is pinned (a mismatch is an error, not a silent reshard); frozen and batch
    # (None = unspecified) keep the shardings they were placed with.
    self.step_fn = CompileFirstCall(
      jax.jit(
        step,
        in_shardings=(self.state_shardings, None, None),
        out_shardings=(self.state_shardings, sharding_lib.replicated(self.mesh)),
        donate_argnums=0,
      )
    )
    self._batch_shardings: dict = {}
    self._finite_fn = jax.jit(
      state_lib.finite_flags, out_shardings=sharding_lib.replicated(self.mesh)
    )

  # -- building blocks -------------------------------------------------------------------------

  def _check_batch(self) -> None:
    cfg = self.config
    if cfg.nonfinite not in NONFINITE_MODES:
      raise ValueError(
        f"config key 'nonfinite'={cfg.nonfinite!r}: expected one of "
        f"{', '.join(repr(m) for m in NONFINITE_MODES)}"
      )
    if cfg.max_skipped_steps is None or int(cfg.max_skipped_steps) < 0:
      raise ValueError(
        f"config key 'max_skipped_steps'={cfg.max_skipped_steps!r}: expected an int >= 0"
      )
    check_accumulation(cfg.batch_size, cfg.grad_accum_steps)
    if cfg.batch_size % jax.process_count():
      raise ValueError(
        f"batch_size={cfg.batch_size} must be divisible by the number of "
        f"processes ({jax.process_count()})."
      )
    shards = sharding_lib.num_batch_shards(self.mesh, self.rules)
    micro = cfg.batch_size // cfg.grad_accum_steps
    if micro % shards:
      raise ValueError(
        f"batch_size={cfg.batch_size} / grad_accum_steps={cfg.grad_accum_steps} = {micro} "
        f"rows per micro-batch must be divisible by the {shards} batch shards of mesh "
        f"{dict(self.mesh.shape)}."
      )

  def init_state(self) -> state_lib.TrainState:
    """Fresh state, created directly in its shardings.

    A recipe that starts from loaded weights provides ``initial_params()`` (host arrays):
    they are placed on the mesh as they are instead of being baked into the init program.
    """
    initial = getattr(self.recipe, "initial_params", lambda: None)()
    if initial is not None:
      params = sharding_lib.place(initial, self.param_shardings)
      init = jax.jit(
        lambda p, k2: state_lib.create_state(p, self.optimizer, k2),
        out_shardings=self.state_shardings,
      )
      state = init(params, self._train_key)
      del initial, params
      release_free_host_memory()
      return state
    init = jax.jit(
      lambda k1, k2: state_lib.create_state(self.recipe.init_params(k1), self.optimizer, k2),
      out_shardings=self.state_shardings,
    )
    state = init(self._init_key, self._train_key)
    release_free_host_memory()
    return state

  def init_frozen(self):
    """The recipe's frozen pytree placed on the mesh (None when the recipe has none)."""
    frozen = getattr(self.recipe, "init_frozen", lambda: None)()
    if frozen is None:
      return None
    logical = getattr(self.recipe, "frozen_logical_axes", lambda _: None)(frozen)
    shardings = sharding_lib.tree_shardings(frozen, logical, self.rules, self.mesh)
    placed = sharding_lib.place(frozen, shardings)
    del frozen
    release_free_host_memory()  # what loading the teacher freed
    return placed

  def _batch_sharding(self, name: str, global_shape: tuple[int, ...]):
    key = (name, global_shape)
    if key not in self._batch_shardings:
      axes = None
      if hasattr(self.recipe, "batch_logical_axes"):
        axes = self.recipe.batch_logical_axes(name)
      if axes is None:
        axes = ("batch",) + (None,) * (len(global_shape) - 1)
      self._batch_shardings[key] = sharding_lib.batch_sharding(
        self.mesh, self.rules, tuple(axes), global_shape
      )
    return self._batch_shardings[key]

  def trim_batch(self, local_batch):
    """``length_buckets``: the recipe's ``sequence_keys`` cut to ``bucket_length`` of the
    longest real sequence in the global batch (right padding: ``attention_mask`` columns that
    are 0 in every row); other entries and recipes without ``sequence_keys`` unchanged."""
    keys = getattr(self.recipe, "sequence_keys", ()) or ()
    mask = local_batch.get("attention_mask")
    if not (self.config.length_buckets and keys and mask is not None):
      return local_batch
    mask = np.asarray(mask)
    if mask.ndim != 2:
      return local_batch
    real = np.flatnonzero(mask.any(axis=0))
    longest = int(real[-1]) + 1 if real.size else 1
    if jax.process_count() > 1:  # every process must cut the global batch alike
      from jax.experimental import multihost_utils

      longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
    length = bucket_length(longest, mask.shape[1])
    if length == mask.shape[1]:
      return local_batch
    return {k: (np.asarray(v)[:, :length] if k in keys else v) for k, v in local_batch.items()}

  def global_batch(self, local_batch):
    """Process-local numpy rows -> global arrays sharded along the batch."""
    out = {}
    for name, value in local_batch.items():
      value = np.asarray(value)
      global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
      if global_shape[0] != self.config.batch_size:
        raise ValueError(
          f"Batch entry {name!r} has {value.shape[0]} rows in this process; expected "
          f"batch_size={self.config.batch_size} / {jax.process_count()} processes."
        )
      out[name] = jax.make_array_from_process_local_data(
        self._batch_sharding(name, global_shape), value, global_shape
      )
    return out

  def host_params(self, params):
    """Params as host numpy arrays on every process (a collective when multi-host)."""
    if all(x.is_fully_addressable for x in jax.tree.leaves(params)):
      return jax.device_get(params)
    return multihost_utils.process_allgather(params, tiled=True)

  # -- the loop --------------------------------------------------------------------------------

  def check_params_finite(self, params, what: str, last_checkpoint: int | None = None) -> None:
    """Raises NonFiniteError naming the first leaves of ``params`` holding NaN / Inf
    (``what``: e.g. "at step 10"). A collective: every process calls it."""
    bad = state_lib.nonfinite_paths(params, self._finite_fn(params))
    if bad:
      more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
      raise NonFiniteError(
        f"non-finite parameters {', '.join(bad[:3])}{more} {what}: stopped before writing "
        f"anything from them; {_kept(last_checkpoint)}"
      )

  def train(self) -> state_lib.TrainState:
    cfg = self.config
    ckpt = checkpoint_lib.Checkpointer(
      os.path.join(self.workdir, "checkpoints"),
      max_to_keep=cfg.keep_checkpoints,
      async_save=cfg.async_checkpoint,
    )
    try:
      return self._train(ckpt)
    except BaseException:
      ckpt.abort()  # the checkpoints written before the error complete; nothing new
      raise

  def _train(self, ckpt) -> state_lib.TrainState:
    cfg, recipe = self.config, self.recipe
    best = None
    has_eval = bool(cfg.eval_steps) and callable(getattr(recipe, "evaluate", None))
    if cfg.keep_best and has_eval:
      best = checkpoint_lib.BestCheckpointer(os.path.join(self.workdir, "best"))

    logging.info(
      "mesh %s over %d devices (%d processes); %s trainable parameters",
      dict(self.mesh.shape),
      jax.device_count(),
      jax.process_count(),
      f"{self.num_params:,}",
    )
    had = ckpt.latest_step()
    restored = ckpt.restore_latest(self.abstract_state)
    data_state, trainer_state = None, {}
    if restored is None:
      state = self.init_state()
    else:
      latest, state, data_state, trainer_state = restored
      fallback = "" if latest == had else f" (the newest intact checkpoint; newest was {had})"
      logging.info("resumed from %s at step %d%s", ckpt.directory, latest, fallback)
    start = int(jax.device_get(state["step"]))
    best_score = trainer_state.get("best_score")
    guard = _NonFiniteGuard(
      cfg.nonfinite, cfg.max_skipped_steps, trainer_state.get("skipped_steps", 0)
    )
    frozen = self.init_frozen()

    if start >= cfg.max_steps:
      logging.warning(
        "checkpoint step %d >= max_steps=%d: nothing to train; exporting.", start, cfg.max_steps
      )
      self._finish(state, ckpt, best, start)
      return state

    data = recipe.train_data(jax.process_index(), jax.process_count())
    if not all(hasattr(data, name) for name in ("__next__", "get_state", "set_state")):
      raise TypeError(
        "recipe.train_data() must return an iterator with get_state() and "
        f"set_state(); got {type(data).__name__}."
      )
    if data_state is not None:
      data.set_state(data_state)
    logger = MetricsLogger(
      self.workdir,
      batch_size=cfg.batch_size,
      max_steps=cfg.max_steps,
      start_step=start,
      flops_per_example=getattr(recipe, "flops_per_example", lambda: None)(),
      tensorboard=cfg.tensorboard,
      progress_bar=cfg.progress_bar,
    )
    tokens_fn = getattr(recipe, "tokens_per_example", None)
    rows = cfg.batch_size
    extra = (lambda: {"skipped_steps": guard.skipped}) if cfg.nonfinite == "skip" else dict

    try:
      for step in range(start + 1, cfg.max_steps + 1):
        try:
          local = next(data)
        except StopIteration:
          raise RuntimeError(f"train_data ran out at step {step} of {cfg.max_steps}.") from None
        local = self.trim_batch(local)
        tokens = float(tokens_fn(local)) * rows if tokens_fn else 0.0
        t0 = time.perf_counter()
        state, metrics = self.step_fn(state, frozen, self.global_batch(local))
        guard.record(step, metrics)
        logger.record(metrics, tokens)
        ckpt.poll()  # a failed background save stops the run here
        if step == start + 1:  # first step compiles: keep it out of the throughput numbers
          jax.block_until_ready(metrics)
          logger.log_text(f"step {step} (compile + run) took {time.perf_counter() - t0:.1f}s")
          logger.reset_timer()
        last = step == cfg.max_steps
        preempted = ckpt.reached_preemption(step)
        due_log = _is_due(step, cfg.logging_steps) or last
        due_eval = has_eval and (_is_due(step, cfg.eval_steps) or last)
        due_save = _is_due(step, cfg.save_steps) or last or preempted
        if due_log or due_eval or due_save or len(guard) >= _MAX_UNCHECKED:
          guard.check(ckpt.last_step)  # before anything is logged, evaluated or saved
        if due_eval or due_save:
          self.check_params_finite(state["params"], f"at step {step}", ckpt.last_step)
        if due_log:
          logger.write(step, extra())
        if due_eval:
          best_score = self._evaluate(state, frozen, step, logger, best, best_score)
        if due_save:
          trainer_state = {"best_score": best_score}
          if cfg.nonfinite == "skip":
            trainer_state["skipped_steps"] = guard.skipped
          ckpt.save(step, state, data.get_state(), trainer_state)
        if preempted:
          logging.warning("preemption at step %d: checkpoint saved, stopping.", step)
          ckpt.close()
          return state
    finally:
      logger.close()
    self._finish(state, ckpt, best, cfg.max_steps)
    return state

  def _evaluate(self, state, frozen, step, logger, best, best_score):
    results = self.recipe.evaluate(state["params"], frozen, step) or {}
    logger.write_eval(step, results)
    score = results.get("score")
    if score is not None and (best_score is None or float(score) > best_score):
      best_score = float(score)
      if best is not None:
        best.save(step, state["params"], best_score)
    return best_score

  def _finish(self, state, ckpt, best, step) -> None:
    ckpt.close()
    if best is not None:
      best.close()
    export = getattr(self.recipe, "export", None)
    if export is not None:
      self.check_params_finite(state["params"], f"at step {step}", ckpt.last_step)
      params = self.host_params(state["params"])
      if jax.process_index() == 0:
        directory = os.path.join(self.workdir, "export")
        os.makedirs(directory, exist_ok=True)
        export(params, directory)
        logging.info("exported final params to %s", directory)
      multihost_utils.sync_global_devices("kdjax_export_done")
    jax.block_until_ready(state)
