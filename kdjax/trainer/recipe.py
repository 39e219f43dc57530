"""What the trainer needs from a recipe (duck-typed; nothing here is imported by recipes).

A recipe is any object with the required methods below; the optional ones are looked up with
`getattr` and skipped when absent. The trainer never imports a recipe module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

PyTree = Any


@runtime_checkable
class DataIterator(Protocol):
  """Yields the PROCESS-LOCAL rows of each global batch: a dict of numpy arrays with
  `batch_size // process_count` rows. Its position must round-trip through JSON."""

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


@runtime_checkable
class Recipe(Protocol):
  """Required methods.

  init_params(rng) -> params
      Pytree of float32 arrays: the trainable student. Pure (run under `jax.jit` with output
      shardings, so big models are created already sharded) and also traced by
      `jax.eval_shape`. `rng` is a typed key (`jax.random.key`).
  param_logical_axes(params) -> pytree
      Same structure as params (may be called on ShapeDtypeStructs); each leaf a tuple of
      logical axis names / None of length ndim, e.g. ("embed", "mlp"), or None = replicate.
  loss_fn(params, frozen, batch, rng) -> (loss, metrics)
      Pure and jittable. `batch` is a dict of global arrays sharded along the batch; `frozen`
      is the teacher pytree (or None); `rng` a typed key, different every micro-step.
      `metrics` maps names to scalars (averaged over grad-accumulation micro-steps).
  train_data(process_index, process_count) -> DataIterator

  Optional methods.

  initial_params() -> pytree | None
      Loaded starting weights (host arrays, same structure as init_params' result): placed on
      the mesh directly rather than traced into the init program (init_params is then only
      used for shapes).
  init_frozen() -> pytree | None
      The frozen teacher (host numpy or jax arrays; every process returns the same values).
      Placed on the mesh, passed to every step (not donated), never differentiated, never
      checkpointed.
  frozen_logical_axes(frozen) -> pytree      (default: replicate every leaf)
  batch_logical_axes(name) -> tuple          (default: ("batch",) + (None,) * (ndim - 1))
  flops_per_example() -> float               training FLOPs per example, for MFU
  tokens_per_example(batch) -> float         average tokens per example of a process-local
                                             numpy batch, for tokens/s
  evaluate(params, frozen, step) -> dict[str, float]
      Called on every process every `eval_steps` (it may run jitted functions over the sharded
      params). A "score" entry (higher is better) selects the params kept in `workdir/best`.
  export(params, directory) -> None
      Called on process 0 only, with the final params gathered to host numpy arrays;
      `directory` is `workdir/export`.
  """

  def init_params(self, rng) -> PyTree: ...
  def param_logical_axes(self, params: PyTree) -> PyTree: ...
  def loss_fn(
    self, params: PyTree, frozen: PyTree, batch: Mapping[str, Any], rng
  ) -> tuple[Any, Mapping[str, Any]]: ...
  def train_data(self, process_index: int, process_count: int) -> DataIterator: ...
