"""Orbax checkpoints of the train state plus every process's data-iterator position.

Layout under `workdir/checkpoints/<step>/`: `state/` (StandardSave of the TrainState) and
`data/` (JSON: {"process_count", "data": [state of process 0, 1, ...], "trainer": {...}}).
Orbax writes `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only once every
process has finished, so a save killed half-way never becomes `latest_step()`.
The frozen teacher is never saved: recipes reload it from its source.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


def allgather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order (a collective)."""
  if jax.process_count() == 1:
    return [json.loads(json.dumps(obj))]
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[: raw.size] = raw
  gathered = multihost_utils.process_allgather(padded)
  return [
    json.loads(bytes(row[: int(n)]).decode())
    for row, n in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1))
  ]


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items `state` and `data`."""

  def __init__(self, directory, *, max_to_keep: int | None = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep or None,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # leftovers of a save killed half-way
    )
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, trainer_state: dict | None = None) -> bool:
    """Saves (asynchronously if configured). All processes must call it."""
    payload = {
      "process_count": jax.process_count(),
      "data": allgather_json(data_state),
      "trainer": trainer_state or {},
    }
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
      step,
      force=True,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(payload)),
    )

  def restore(self, step: int, abstract_state):
    """Returns (state in the shardings of `abstract_state`, this process's data state, trainer)."""
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
      ),
    )
    payload = out.data
    if payload["process_count"] != jax.process_count():
      raise ValueError(
        f"Checkpoint {step} was written by {payload['process_count']} processes but this run "
        f"has {jax.process_count()}; the data-iterator positions cannot be mapped."
      )
    return out.state, payload["data"][jax.process_index()], payload.get("trainer", {})

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class BestCheckpointer:
  """Keeps only the params with the highest eval `score` under `workdir/best/<step>/params`."""

  def __init__(self, directory):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=1,
      best_fn=lambda m: m["score"],
      best_mode="max",
      keep_checkpoints_without_metrics=False,
      enable_async_checkpointing=False,
      create=True,
    )
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=("params",))

  def save(self, step: int, params, score: float) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(
      step,
      force=True,
      metrics={"score": float(score)},
      args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
    )
    logging.info("best checkpoint: step %d score %.6g", step, score)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
