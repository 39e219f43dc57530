"""Tokenized sentence(-pair) classification data: encoding, shuffled training batches with an
exact-resume position, and padded evaluation batches.

Pure numpy (no jax)::

    feats = encode_examples(load_split("tnews", data_dir, "train"), tokenizer, 128)
    data = ClassificationData(feats, batch_size=32, seed=0,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
    batch = next(data)            # this process's 32 rows of a 32 * process_count global batch
    state = data.get_state()      # JSON; ClassificationData(feats, ...).set_state(state) resumes

    for batch in eval_batches(dev_feats, 64):   # every row once, last batch zero-padded
      ...batch["valid"]...                      # bool [64]: False on padding rows

Features are a dict of equally long numpy arrays (rows = examples); any extra array a caller
adds (teacher logits, augmentation ids ...) is batched along with the others.

Every encoded feature dict, hence every training and evaluation batch, carries the
per-example ``weights`` (float32, ``Example.weight``: 1.0 unless the data file has a
``weight`` column) and ``domain_ids`` (int32, ``Example.domain``: 0 unless it has a
``domain`` column); see :mod:`kdjax.data.tasks` for the columns. Padding rows of
:func:`eval_batches` have weight 0 (and domain 0), so weighted sums ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ClassificationData", "encode_examples", "eval_batches", "num_rows"]


def encode_examples(
  examples: Sequence[Any], tokenizer, max_seq_length: int, *, regression: bool | None = None
) -> dict[str, np.ndarray]:
  """Tokenize ``examples`` (objects with ``text_a``, ``text_b``, ``label``, e.g.
  :class:`kdjax.data.tasks.Example`) into model inputs.

  Returns int32 ``input_ids`` / ``attention_mask`` / ``token_type_ids`` ``[N, L]``
  (``L = max_seq_length``; ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, pairs truncated
  longest-first), ``labels`` ``[N]``, ``example_index`` int32 ``[N]`` (the position in
  ``examples``, to map predictions back to ids), ``weights`` float32 ``[N]`` and
  ``domain_ids`` int32 ``[N]`` (each example's ``weight`` / ``domain``; 1.0 / 0 for objects
  without those attributes).

  ``labels`` is int32 for classification (``None`` -> -1) and float32 for regression
  (``None`` -> nan). ``regression=None`` infers it: float when any label is a non-integral
  Python/numpy float. Examples with and without ``text_b`` may be mixed.
  """
  n = len(examples)
  length = int(max_seq_length)
  out = {
    k: np.zeros((n, length), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")
  }
  out["input_ids"][:] = tokenizer.pad_id
  singles = [i for i, ex in enumerate(examples) if ex.text_b is None]
  pairs = [i for i, ex in enumerate(examples) if ex.text_b is not None]
  for rows, with_b in ((singles, False), (pairs, True)):
    if not rows:
      continue
    enc = tokenizer.encode(
      [examples[i].text_a for i in rows],
      [examples[i].text_b for i in rows] if with_b else None,
      max_seq_length=length,
    )
    for k in out:
      out[k][rows] = enc[k]
  labels = [ex.label for ex in examples]
  if regression is None:
    regression = any(
      isinstance(y, (float, np.floating)) and not float(y).is_integer()
      for y in labels
      if y is not None
    )
  if regression:
    out["labels"] = np.array([np.nan if y is None else float(y) for y in labels], np.float32)
  else:
    out["labels"] = np.array([-1 if y is None else int(y) for y in labels], np.int32)
  out["example_index"] = np.arange(n, dtype=np.int32)
  out["weights"] = np.array([float(getattr(ex, "weight", 1.0)) for ex in examples], np.float32)
  out["domain_ids"] = np.array([int(getattr(ex, "domain", 0)) for ex in examples], np.int32)
  if n and not (np.all(np.isfinite(out["weights"])) and np.all(out["weights"] >= 0)):
    bad = int(np.flatnonzero(~(np.isfinite(out["weights"]) & (out["weights"] >= 0)))[0])
    w = out["weights"][bad]
    raise ValueError(f"example {bad} of {n}: weight {w} is not a finite number >= 0")
  return out


def num_rows(features: Mapping[str, np.ndarray]) -> int:
  """Row count of a feature dict (every array must have it as its first dimension)."""
  sizes = {k: len(v) for k, v in features.items()}
  if not sizes:
    raise ValueError("features is empty")
  if len(set(sizes.values())) != 1:
    raise ValueError(f"feature arrays differ in row count: {sizes}")
  return next(iter(sizes.values()))


class ClassificationData:
  """Infinite iterator over shuffled epochs of a feature dict, sliced per process.

  Epoch ``e`` visits the rows in the order ``np.random.default_rng((seed, e)).permutation(N)``
  (``arange(N)`` when ``shuffle=False``), cut into global batches of
  ``batch_size * process_count`` consecutive rows; this process yields rows
  ``[process_index * batch_size, (process_index + 1) * batch_size)`` of each global batch, so
  the processes together see every global batch exactly once. The last partial global batch
  of every epoch is dropped (``N mod (batch_size * process_count)`` rows, different ones each
  epoch when shuffling); ``steps_per_epoch = N // (batch_size * process_count)``.

  ``batch_size`` is the PER-PROCESS batch size. The position (``epoch``, ``step`` = global
  batches already yielded in that epoch) round-trips through JSON via :meth:`get_state` /
  :meth:`set_state` for an exact resume.
  """

  def __init__(
    self,
    features: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
  ):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
      raise ValueError(
        f"process_index={process_index} out of range for process_count={process_count}"
      )
    self.features = {k: np.asarray(v) for k, v in features.items()}
    self.num_rows = num_rows(self.features)
    self.batch_size = int(batch_size)
    self.global_batch_size = self.batch_size * int(process_count)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.shuffle = bool(shuffle)
    self.steps_per_epoch = self.num_rows // self.global_batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"{self.num_rows} examples cannot fill one global batch of "
        f"{self.global_batch_size} (batch_size {self.batch_size} x "
        f"{self.process_count} processes); use a smaller batch size"
      )
    self.epoch = 0
    self.step = 0
    self._order_epoch = -1
    self._order = None

  def _epoch_order(self) -> np.ndarray:
    if self._order_epoch != self.epoch:
      if self.shuffle:
        self._order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_rows)
      else:
        self._order = np.arange(self.num_rows)
      self._order_epoch = self.epoch
    return self._order

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.step >= self.steps_per_epoch:
      self.epoch += 1
      self.step = 0
    start = self.step * self.global_batch_size + self.process_index * self.batch_size
    rows = self._epoch_order()[start : start + self.batch_size]
    self.step += 1
    return {k: v[rows] for k, v in self.features.items()}

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position (plus the shape facts :meth:`set_state` checks)."""
    return {
      "epoch": self.epoch,
      "step": self.step,
      "num_rows": self.num_rows,
      "global_batch_size": self.global_batch_size,
      "seed": self.seed,
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continue from a :meth:`get_state` snapshot taken over the same data and batch size."""
    for key in ("num_rows", "global_batch_size", "seed"):
      if key in state and int(state[key]) != getattr(self, key):
        raise ValueError(
          f"data state was saved with {key}={state[key]} but this iterator has "
          f"{key}={getattr(self, key)}: the data or batch size changed"
        )
    epoch, step = int(state["epoch"]), int(state["step"])
    if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
      raise ValueError(f"invalid data state {dict(state)} (steps_per_epoch={self.steps_per_epoch})")
    self.epoch, self.step = epoch, step


def eval_batches(
  features: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """Every row once, in order, in batches of exactly ``batch_size`` rows.

  The last batch is padded with all-zero rows (so ``weights`` is 0 and ``domain_ids`` 0 on
  them); each batch carries ``valid`` (bool ``[batch_size]``, False on padding). Fixed
  shapes keep one compiled forward.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = num_rows(features)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    batch = {}
    for k, v in features.items():
      v = np.asarray(v)
      chunk = v[start:stop]
      if stop - start < batch_size:
        pad = np.zeros((batch_size - (stop - start),) + v.shape[1:], v.dtype)
        chunk = np.concatenate([chunk, pad])
      batch[k] = chunk
    valid = np.zeros(batch_size, bool)
    valid[: stop - start] = True
    batch["valid"] = valid
    yield batch


def num_eval_batches(features: Mapping[str, np.ndarray], batch_size: int) -> int:
  return math.ceil(num_rows(features) / batch_size)
