"""Training metrics: console, tqdm, TensorBoard and `workdir/metrics.jsonl` (process 0 writes).

Device metrics are kept as arrays between logging steps and fetched only when a line is
written, so the host never blocks on the device in between.

On resume, `metrics.jsonl` is first cut back to the rows of steps <= the restored step
(rows of steps the run is about to redo, and a line cut short by a kill, are dropped), so it
never holds two rows for one step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

# Dense peak FLOP/s per device (bf16 unless the chip has no bf16 units), from vendor sheets.
_PEAK_FLOPS = (
  ("v6", 918e12),  # TPU v6e (Trillium); device_kind "TPU v6 lite"
  ("v5 lite", 197e12),  # v5e
  ("v5e", 197e12),
  ("v5", 459e12),  # v5p reports "TPU v5" (or "TPU v5p")
  ("v4", 275e12),
  ("v3", 123e12),
  ("v2", 45e12),
  ("h200", 989e12),
  ("h100", 989e12),
  ("gh200", 989e12),
  ("a100", 312e12),
  ("l4", 121e12),
  ("a10", 125e12),
  ("v100", 125e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
  """Peak FLOP/s of one device, or None when unknown (e.g. CPU)."""
  kind = device_kind.lower()
  if "cpu" in kind:
    return None
  for key, flops in _PEAK_FLOPS:
    if key in kind:
      return flops
  return None


_CHECKED = ("loss", "grad_norm")  # a row with either non-finite is a skipped update


def truncate_metrics(path: str, last_step: int) -> int:
  """Rewrites the JSON-lines file ``path`` without the rows whose ``step`` is beyond
  ``last_step`` and without lines that do not parse (a write cut short by a kill).
  Returns the number of lines dropped; a missing file is left missing."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
  except FileNotFoundError:
    return 0
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
      keep = isinstance(row, dict) and int(row.get("step", 0)) <= last_step
    except (ValueError, TypeError):
      keep = False
    if keep:
      kept.append(line if line.endswith("\n") else line + "\n")
  dropped = len(lines) - len(kept)
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
    logging.info("%s: dropped %d rows beyond step %d (resumed there)", path, dropped, last_step)
  return dropped


class MetricsLogger:
  """Accumulates step metrics and writes one record every `logging_steps`."""

  def __init__(
    self,
    workdir,
    *,
    batch_size: int,
    max_steps: int,
    start_step: int,
    flops_per_example: float | None = None,
    tensorboard: bool = True,
    progress_bar: bool = True,
  ):
    self.is_main = jax.process_index() == 0
    self.batch_size = batch_size
    self.flops_per_example = flops_per_example
    devices = jax.devices()
    peak = peak_flops_per_device(devices[0].device_kind)
    self.peak_flops = None if peak is None else peak * len(devices)
    self._pending: list[Mapping[str, jax.Array]] = []
    self._timed_steps = 0
    self._tokens = 0.0
    self._t0 = time.perf_counter()
    self._jsonl = self._writer = self._bar = None
    if self.is_main:
      os.makedirs(workdir, exist_ok=True)
      truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start_step)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
      if tensorboard:
        from tensorboardX import SummaryWriter

        # On resume, TensorBoard drops the events a killed run wrote past the checkpoint it
        # resumes from (purge_step: the first step this run writes again), so curves do not
        # show those steps twice; metrics.jsonl is truncated the same way above.
        purge = start_step + 1 if start_step > 0 else None
        self._writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)
      if progress_bar and sys.stderr.isatty():
        from tqdm import tqdm

        self._bar = tqdm(total=max_steps, initial=start_step, dynamic_ncols=True)

  def reset_timer(self) -> None:
    """Restart the throughput window (e.g. after compilation, so it does not count)."""
    self._t0 = time.perf_counter()
    self._timed_steps = 0
    self._tokens = 0.0

  def record(self, metrics: Mapping[str, jax.Array], tokens: float = 0.0) -> None:
    self._pending.append(metrics)
    self._timed_steps += 1
    self._tokens += tokens
    if self._bar is not None:
      self._bar.update(1)

  def write(self, step: int, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """Fetches the pending metrics (one sync), averages them, writes every sink.

    Steps whose loss or grad_norm is not finite (updates skipped with nonfinite="skip") are
    left out of the averages; `extra` entries (e.g. skipped_steps) are added as they are."""
    if not self._pending:
      return {}
    fetched = jax.device_get(self._pending)
    self._pending = []
    finite = [m for m in fetched if all(np.isfinite(m.get(k, 0.0)) for k in _CHECKED)]
    rows = finite or fetched
    record = {k: float(np.mean([m[k] for m in rows])) for k in fetched[-1]}
    if "learning_rate" in fetched[-1]:
      record["learning_rate"] = float(fetched[-1]["learning_rate"])
    for k, v in (extra or {}).items():
      record[k] = float(v)
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    if self._timed_steps:  # zero right after the compile step was excluded
      record["examples_per_sec"] = self._timed_steps * self.batch_size / elapsed
      record["steps_per_sec"] = self._timed_steps / elapsed
      if self._tokens:
        record["tokens_per_sec"] = self._tokens / elapsed
      if self.flops_per_example and self.peak_flops:
        record["mfu"] = self.flops_per_example * record["examples_per_sec"] / self.peak_flops
    self.reset_timer()
    self._emit(step, record, prefix="train")
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{record.get('loss', math.nan):.4g}")
    return record

  def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
    self._emit(step, {f"eval/{k}": float(v) for k, v in metrics.items()}, prefix=None)

  def _emit(self, step: int, record: dict[str, float], prefix: str | None) -> None:
    if not self.is_main:
      return
    text = " ".join(f"{k}={v:.5g}" for k, v in record.items())
    message = f"step {step}: {text}"
    if self._bar is not None:
      self._bar.write(message)
    else:
      logging.info(message)
    self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
    self._jsonl.flush()
    if self._writer is not None:
      for k, v in record.items():
        tag = k if prefix is None else f"{prefix}/{k}"
        self._writer.add_scalar(tag, v, step)
      self._writer.flush()

  def log_text(self, message: str) -> None:
    if self.is_main:
      (self._bar.write if self._bar is not None else logging.info)(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
    if self._jsonl is not None:
      self._jsonl.close()
