"""Orbax checkpoints of the train state plus every process's data-iterator position.

Layout under `workdir/checkpoints/<step>/`: `state/` (StandardSave of the TrainState) and
`data/` (JSON: {"process_count", "data": [state of process 0, 1, ...], "trainer": {...}}).
Orbax writes `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only once every
process has finished, so a save killed half-way never becomes `latest_step()`.
The frozen teacher is never saved: recipes reload it from its source.

Failures are loud and never hang: a save that fails (read-only directory, full disk) raises
`CheckpointSaveError` naming the directory and the OS error, in the save call itself or, for
the background part of an async save, at the next `poll()` (every training step, one
process) or the next save / `wait()` / `close()`. `restore_latest()` skips a checkpoint that
fails to restore: it logs one line, renames it `<step>.corrupt` and tries the previous one;
a checkpoint that is intact but does not fit the run's train state is an error (nothing is
moved).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
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


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed (the message names the directory and the OS error)."""


class CheckpointMismatchError(ValueError):
  """An intact checkpoint whose tree or shapes differ from the run's train state."""


def _root_cause(e: BaseException) -> BaseException:
  """The innermost OSError in the cause / context chain of `e` (else `e` itself)."""
  seen, cur, found = set(), e, None
  while cur is not None and id(cur) not in seen:
    seen.add(id(cur))
    if isinstance(cur, OSError):
      found = cur
    cur = cur.__cause__ or cur.__context__
  return found or e


def _one_line(e: BaseException, limit: int = 300) -> str:
  text = " ".join(str(e).split()).split(" [tensorstore_spec=")[0]
  if len(text) > limit:
    text = text[: limit - 3] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _path_key(entry) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """{"params/dense1/kernel": shape, ...}: dict keys, sequence indices and namedtuple
  fields all written alike (orbax metadata turns namedtuples into dicts)."""
  return {
    "/".join(_path_key(k) for k in path): tuple(getattr(leaf, "shape", ()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


_quiet_installed = False


def _silence_closed_loop_noise() -> None:
  """A restore that fails inside tensorstore leaves callbacks that fire on orbax's closed
  asyncio loop; each prints an 'Event loop is closed' traceback that buries the real error.
  Drop exactly those (other unraisable exceptions still reach the previous hook)."""
  global _quiet_installed
  if _quiet_installed:
    return
  _quiet_installed = True
  previous = sys.unraisablehook

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook


# What a damaged checkpoint raises while restoring (tensorstore: ValueError, a missing file:
# OSError, a truncated JSON: ValueError, a missing _METADATA: TypeError / KeyError). A
# RuntimeError (e.g. out of device memory) is not taken for damage and propagates.
_DAMAGE = (ValueError, OSError, KeyError, TypeError, EOFError, IndexError)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items `state` and `data`."""

  def __init__(self, directory, *, max_to_keep: int | None = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep or None,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # leftovers of a save killed half-way
      # The step directory is made in the calling thread: a read-only or missing directory
      # fails in save() itself. (Made in the background, a failed mkdir left orbax's writer
      # threads waiting for it, and the process could not exit.)
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    self.directory = directory
    self.async_save = async_save
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))
    self._closed = False
    self._pending: int | None = None  # step of an async save not yet known to have succeeded
    self._saved: int | None = None  # newest step known to be written completely

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  @property
  def last_step(self) -> int | None:
    """The newest checkpoint restored or saved by this object (an async one may still be
    being written: `wait()` / `abort()` complete it)."""
    return self._pending if self._pending is not None else self._saved

  # -- saving ---------------------------------------------------------------------------------

  def _save_error(self, step, e: BaseException) -> CheckpointSaveError:
    last = self._saved
    kept = "no checkpoint was completed"
    if last is not None:
      kept = f"the newest complete checkpoint is step {last}"
    return CheckpointSaveError(
      f"saving checkpoint step {step} in {self.directory} failed: "
      f"{_one_line(_root_cause(e))} ({kept})"
    )

  def _finish_pending(self) -> str | None:
    """Waits for the in-flight save; returns its failure as a message (None: fine)."""
    if self._pending is None:
      return None
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # reported to every process, then raised
      return str(self._save_error(step, e))
    self._saved = step
    return None

  def _probe(self, step: int) -> str | None:
    """Multi-host: process 0 checks the directory is writable before the collective save
    starts, so that every process fails at the same point instead of one waiting in a
    barrier for the other."""
    if jax.process_count() == 1 or jax.process_index() != 0 or "://" in str(self.directory):
      return None
    try:
      os.makedirs(self.directory, exist_ok=True)
      with tempfile.TemporaryFile(dir=self.directory):
        pass
    except OSError as e:
      return str(self._save_error(step, e))
    return None

  def save(self, step: int, state, data_state: dict, trainer_state: dict | None = None) -> bool:
    """Saves (asynchronously if configured). All processes must call it. Raises
    `CheckpointSaveError` if this save or the previous async one failed."""
    error = self._finish_pending() or self._probe(step)
    gathered = allgather_json({"data": data_state, "error": error})
    errors = [g["error"] for g in gathered if g["error"]]
    if errors:
      raise CheckpointSaveError(errors[0])
    payload = {
      "process_count": jax.process_count(),
      "data": [g["data"] for g in gathered],
      "trainer": trainer_state or {},
    }
    if step in self.manager.all_steps():
      return False
    try:
      saved = self.manager.save(
        step,
        force=True,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(payload)
        ),
      )
    except Exception as e:
      raise self._save_error(step, e) from e
    if saved:
      if self.async_save:
        self._pending = step
      else:
        self._saved = step
    return saved

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def poll(self) -> None:
    """Cheap (no wait): raises `CheckpointSaveError` once the background part of the last
    async save has failed. One process only: with several, a failure surfaces at the next
    save / wait, where all processes agree."""
    if self._pending is None or jax.process_count() > 1:
      return
    if not self.manager.is_saving_in_progress():
      error = self._finish_pending()
      if error:
        raise CheckpointSaveError(error)

  def wait(self) -> None:
    """Blocks until the in-flight save is written; raises `CheckpointSaveError` if it failed."""
    error = self._finish_pending()
    if jax.process_count() > 1:
      errors = [e for e in allgather_json(error) if e]
      error = errors[0] if errors else None
    if error:
      raise CheckpointSaveError(error)

  def close(self) -> None:
    """Waits for the in-flight save (raising if it failed), then closes the manager."""
    if self._closed:
      return
    try:
      self.wait()
    finally:
      self._closed = True
      self.manager.close()

  def abort(self) -> None:
    """For error paths: lets an in-flight save finish (its failure is logged, not raised),
    so the checkpoints written before the error stay complete; then closes."""
    if self._closed:
      return
    self._closed = True
    error = self._finish_pending()
    if error:
      logging.error("%s", error)
    try:
      self.manager.close()
    except Exception as e:  # already failing: do not mask the first error
      logging.error("closing %s: %s", self.directory, _one_line(e))

  # -- restoring ------------------------------------------------------------------------------

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
      raise CheckpointMismatchError(
        f"Checkpoint {step} was written by {payload['process_count']} processes but this run "
        f"has {jax.process_count()}; the data-iterator positions cannot be mapped."
      )
    self._saved = step
    return out.state, payload["data"][jax.process_index()], payload.get("trainer", {})

  def _check_fits(self, step: int, abstract_state) -> None:
    """Reads the checkpoint's tree metadata: raises a `_DAMAGE` error when it is unreadable
    and `CheckpointMismatchError` when the tree or a shape differs from `abstract_state`."""
    path = epath.Path(self.directory) / str(step) / "state"
    metadata = ocp.StandardCheckpointHandler().metadata(path)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
      raise ValueError(f"no tree metadata in {path}")
    have, want = _shapes(tree), _shapes(abstract_state)
    if have == want:
      return
    diffs = [
      f"{k}: {have[k]} in the checkpoint, {want[k]} here"
      for k in want
      if k in have and have[k] != want[k]
    ]
    only_ckpt = sorted(set(have) - set(want))
    only_run = sorted(set(want) - set(have))
    if only_ckpt:
      diffs.append(f"only in the checkpoint: {', '.join(only_ckpt[:3])}")
    if only_run:
      diffs.append(f"only in this run: {', '.join(only_run[:3])}")
    raise CheckpointMismatchError(
      f"checkpoint {path.parent} does not fit this run's train state (was it written with "
      f"another model or optimizer config?): {'; '.join(diffs[:4])}"
    )

  def _move_aside(self, step: int) -> str:
    """Renames `<step>` to `<step>.corrupt` (process 0; `.corrupt.1`, ... if taken)."""
    src = os.path.join(self.directory, str(step))
    dst = src + ".corrupt"
    n = 0
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.corrupt.{n}"
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:
      dst = allgather_json(dst)[0]
      multihost_utils.sync_global_devices(f"kdjax_ckpt_move_aside_{step}")
    return dst

  def restore_latest(self, abstract_state):
    """(step, state, data state, trainer state) of the newest checkpoint that restores, or
    None when there is none. A damaged one is reported in one warning line, moved to
    `<step>.corrupt` and the previous one is tried."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if steps:
      _silence_closed_loop_noise()
    for step in steps:
      error, out = None, None
      try:
        self._check_fits(step, abstract_state)
        out = self.restore(step, abstract_state)
      except CheckpointMismatchError:
        raise
      except _DAMAGE as e:
        error = _one_line(e)
      errors = (
        [x for x in allgather_json(error) if x]
        if jax.process_count() > 1
        else ([error] if error else [])
      )
      if not errors:
        return (step, *out)
      moved = self._move_aside(step)
      self.manager.reload()
      older = [s for s in self.manager.all_steps() if s < step]
      then = f"trying step {max(older)}" if older else "no older checkpoint: starting afresh"
      logging.warning(
        "checkpoint %s cannot be restored (%s); moved it to %s; %s",
        os.path.join(self.directory, str(step)),
        errors[0],
        moved,
        then,
      )
    return None


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
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=("params",))

  def save(self, step: int, params, score: float) -> None:
    if step in self.manager.all_steps():
      return
    try:
      self.manager.save(
        step,
        force=True,
        metrics={"score": float(score)},
        args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
      )
    except Exception as e:
      raise CheckpointSaveError(
        f"saving the best checkpoint step {step} in {self.directory} failed: "
        f"{_one_line(_root_cause(e))}"
      ) from e
    logging.info("best checkpoint: step %d score %.6g", step, score)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
