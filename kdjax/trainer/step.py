"""The train step: value_and_grad of the recipe's loss, micro-batch accumulation, one update."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kdjax.trainer.state import step_rng


class NonFiniteError(RuntimeError):
  """A non-finite loss, gradient norm or parameter: the run stops (config key ``nonfinite``)."""


def is_finite_update(metrics) -> jax.Array:
  """True when the step's loss and gradient norm are finite (what ``nonfinite`` checks)."""
  return jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])


def check_accumulation(batch_size: int, grad_accum_steps: int) -> None:
  if grad_accum_steps < 1 or batch_size % grad_accum_steps:
    raise ValueError(
      f"batch_size={batch_size} must be divisible by "
      f"grad_accum_steps={grad_accum_steps} (both from the config)."
    )


def split_micro_batches(batch, grad_accum_steps: int):
  """[B, ...] -> [A, B/A, ...] with micro-batch i = rows i, i+A, i+2A, ...

  Strided rather than contiguous so that every device keeps its share of each micro-batch:
  with B sharded over D devices, rows j*A+i of a device's block stay on that device.
  """

  def split(x):
    check_accumulation(x.shape[0], grad_accum_steps)
    x = x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def make_train_step(
  loss_fn: Callable,
  optimizer: optax.GradientTransformation,
  grad_accum_steps: int = 1,
  schedule: optax.Schedule | None = None,
  skip_nonfinite: bool = False,
):
  """Returns the pure `step(state, frozen, batch) -> (state, metrics)` (not jitted).

  `loss_fn(params, frozen, batch, rng) -> (loss, metrics)`; gradients are taken w.r.t.
  params only, so the frozen teacher is never differentiated. Micro-step i gets the key
  `fold_in(step_rng, i)`. Metrics (loss, the recipe's terms) are averaged over micro-steps;
  `grad_norm` is the norm of the averaged gradient before clipping.

  `skip_nonfinite`: when the loss or `grad_norm` is NaN/Inf, the update is not applied (params
  and optimizer state come back unchanged, selected inside the step: no host sync); the
  step counter still advances (the batch is consumed). The host tells a skipped step by its
  non-finite loss / grad_norm metrics (`is_finite_update`).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grads(params, frozen, batch, rng):
    (loss, aux), grads = grad_fn(params, frozen, batch, rng)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
    metrics["loss"] = jnp.asarray(loss, jnp.float32)
    return grads, metrics

  def step(state, frozen, batch):
    params = state["params"]
    rng = step_rng(state)
    if grad_accum_steps == 1:
      grads, metrics = loss_and_grads(params, frozen, batch, jax.random.fold_in(rng, 0))
    else:
      micro = split_micro_batches(batch, grad_accum_steps)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(loss_and_grads, params, frozen, first, rng),
      )

      def body(carry, xs):
        i, mb = xs
        out = loss_and_grads(params, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, out), None

      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      metrics = jax.tree.map(lambda m: m / grad_accum_steps, metrics)

    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    if skip_nonfinite:
      ok = is_finite_update(metrics)
      keep = lambda new, old: jnp.where(ok, new, old)
      new_params = jax.tree.map(keep, new_params, params)
      opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
    new_state = {
      "params": new_params,
      "opt_state": opt_state,
      "step": state["step"] + 1,
      "rng": state["rng"],
    }
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(_schedule_count(state)), jnp.float32)
    return new_state, metrics

  return step


def _schedule_count(state):
  """The step the optimizer's schedule is at: its ``ScaleByScheduleState.count`` (the number
  of updates applied; it lags the trainer step by the updates ``skip_nonfinite`` skipped), so
  the ``learning_rate`` metric is the rate this step's update used; the trainer step for
  optimizers without one."""
  found = optax.tree_utils.tree_get_all_with_path(state["opt_state"], "count")
  by_schedule = [v for path, v in found if "ScaleBySchedule" in str(path)]
  if by_schedule:
    return by_schedule[0]
  return found[0][1] if found else state["step"]
