"""Plain-text corpus for task-agnostic distillation, with a checkpointable position.

Layout: ``input_dir`` holds text files (any depth of sub-directories), one
sentence or document per line.  Files are matched with ``pattern`` (a glob
applied recursively, default ``"*"``); hidden files and directories (names
starting with ``"."``) are ignored.  Files are ordered by their POSIX path
relative to ``input_dir``.

Reading
    Each file is a shard: it is read whole (as bytes), split on ``b"\\n"`` and
    decoded line by line.  A line that is not valid UTF-8 is skipped and counted
    in :attr:`TextCorpus.num_invalid_lines` (never fatal; cumulative over epochs,
    counted by each host for the files it reads).  Lines are stripped;
    empty / whitespace-only lines are dropped.  Every line is tokenized as a
    single sequence, ``[CLS] line [SEP]``, truncated to ``max_seq_length``.

Shuffling (deterministic from ``seed``)
    Epoch ``e`` visits the files in the order
    ``np.random.default_rng((seed, e)).permutation(num_files)``; the lines of the
    file with sorted index ``i`` are shuffled with
    ``np.random.default_rng((seed, e, i))``.  Iteration never ends; batches run
    across file and epoch boundaries (there are no partial batches).

Division among hosts (``process_index`` p of ``process_count`` P)
    * ``num_files >= P``: host p reads the files ``order[p::P]`` of the epoch's
      shuffled ``order`` -- disjoint files per host, every file read by exactly
      one host each epoch (a different assignment every epoch).  Hosts can then
      hold different numbers of lines per epoch; since the stream is infinite,
      every host still yields a batch on every step, hosts just reach epoch
      boundaries at different steps.
    * ``num_files < P``: every host reads every file and takes the lines
      ``shuffled_lines[p::P]`` of each (the shuffle is identical on all hosts, so
      the hosts' lines are disjoint and together cover the file).
    ``batch_size`` is the per-host batch size.

Checkpointing
    :meth:`TextCorpus.get_state` returns a JSON-serialisable dict (epoch, file
    cursor, line cursor, invalid-line count, corpus fingerprint, ...);
    :meth:`TextCorpus.set_state` on a fresh instance over the same corpus and
    with the same ``seed`` / ``process_index`` / ``process_count`` makes it yield
    exactly the batches the original would have yielded next.  The fingerprint
    hashes the relative paths and byte sizes of the files, so resuming against a
    changed corpus raises :class:`CorpusMismatchError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CorpusMismatchError", "TextCorpus"]

_STATE_VERSION = 1


class CorpusMismatchError(ValueError):
  """The saved corpus state does not belong to this corpus / configuration."""


def _list_files(root: Path, pattern: str) -> list[Path]:
  files = []
  for p in root.rglob(pattern):
    rel = p.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
      continue
    if p.is_file():
      files.append(p)
  files.sort(key=lambda p: p.relative_to(root).as_posix())
  return files


def _split_lines(data: bytes) -> tuple[list[str], int]:
  """Decode ``data`` into stripped non-empty lines; returns (lines, num_invalid)."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    lines, invalid = [], 0
    for raw in data.split(b"\n"):
      try:
        line = raw.decode("utf-8").strip()
      except UnicodeDecodeError:
        invalid += 1
        continue
      if line:
        lines.append(line)
    return lines, invalid
  # Split on "\n" only (not str.splitlines), to agree with the byte path above.
  return [s for s in (line.strip() for line in text.split("\n")) if s], 0


def _has_valid_line(path: Path) -> bool:
  with open(path, "rb") as f:
    for raw in f:
      try:
        if raw.decode("utf-8").strip():
          return True
      except UnicodeDecodeError:
        continue
  return False


class TextCorpus:
  """Infinite, shuffled, host-sharded, resumable stream of tokenized text batches.

  Yields dicts of int32 numpy arrays ``input_ids``, ``attention_mask``,
  ``token_type_ids``, each ``[batch_size, max_seq_length]``.  ``tokenizer`` is a
  :class:`kdjax.data.Tokenizer` (anything with
  ``encode(texts, max_seq_length=..., padding="max_length")`` works).  The
  object is its own iterator: ``iter(corpus)`` does not rewind.  See the module
  docstring for the file layout, shuffling and host-division rules.
  """

  def __init__(
    self,
    input_dir: str | os.PathLike,
    tokenizer: Any,
    batch_size: int,
    max_seq_length: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    pattern: str = "*",
  ):
    if int(batch_size) <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if int(max_seq_length) < 2:
      raise ValueError(f"max_seq_length must be >= 2, got {max_seq_length}")
    if int(seed) < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if int(process_count) <= 0 or not 0 <= int(process_index) < int(process_count):
      raise ValueError(
        f"need 0 <= process_index < process_count, got {process_index} / {process_count}"
      )
    self.input_dir = Path(input_dir)
    if not self.input_dir.is_dir():
      raise FileNotFoundError(f"corpus directory {str(self.input_dir)!r} does not exist")
    self.tokenizer = tokenizer
    self.batch_size = int(batch_size)
    self.max_seq_length = int(max_seq_length)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.pattern = pattern

    self.files: list[Path] = _list_files(self.input_dir, pattern)
    if not self.files:
      raise ValueError(
        f"corpus directory {str(self.input_dir)!r} contains no files matching {pattern!r}"
      )
    # Cheap in the normal case: stops at the first valid non-empty line.
    if not any(_has_valid_line(p) for p in self.files):
      raise ValueError(
        f"corpus directory {str(self.input_dir)!r} has {len(self.files)} file(s) "
        "but no non-empty valid UTF-8 lines"
      )
    self.relative_paths = [p.relative_to(self.input_dir).as_posix() for p in self.files]
    h = hashlib.sha256()
    for rel, p in zip(self.relative_paths, self.files):
      h.update(json.dumps([rel, p.stat().st_size]).encode("utf-8"))
    self.fingerprint = h.hexdigest()
    self.split_by_files = self.num_files >= self.process_count

    # Position: the next line to yield is line `_line` of the `_file`-th file
    # of this host's file list for epoch `_epoch`.
    self._epoch = 0
    self._file = 0
    self._line = 0
    self.num_invalid_lines = 0
    self._counted: tuple[int, int] | None = None  # (epoch, file cursor) already counted
    self.num_batches = 0
    # caches
    self._order_cache: tuple[int, list[int]] | None = None
    self._lines_cache: tuple[tuple[int, int], list[str]] | None = None

  # ----------------------------------------------------------------- layout
  @property
  def num_files(self) -> int:
    return len(self.files)

  @property
  def epoch(self) -> int:
    return self._epoch

  def host_files(self, epoch: int) -> list[int]:
    """Sorted-file indices this host reads in ``epoch``, in visiting order."""
    if self._order_cache is not None and self._order_cache[0] == epoch:
      return self._order_cache[1]
    order = np.random.default_rng((self.seed, epoch)).permutation(self.num_files).tolist()
    if self.split_by_files:
      order = order[self.process_index :: self.process_count]
    self._order_cache = (epoch, order)
    return order

  def _load(self, epoch: int, cursor: int) -> list[str]:
    key = (epoch, cursor)
    if self._lines_cache is not None and self._lines_cache[0] == key:
      return self._lines_cache[1]
    file_index = self.host_files(epoch)[cursor]
    lines, invalid = _split_lines(self.files[file_index].read_bytes())
    if self._counted != key:
      self.num_invalid_lines += invalid
      self._counted = key
    perm = np.random.default_rng((self.seed, epoch, file_index)).permutation(len(lines))
    lines = [lines[i] for i in perm]
    if not self.split_by_files:
      lines = lines[self.process_index :: self.process_count]
    self._lines_cache = (key, lines)
    return lines

  # -------------------------------------------------------------- iteration
  def __iter__(self) -> TextCorpus:
    return self

  def next_lines(self) -> list[str]:
    """The raw text lines of the next batch (advances the position)."""
    out: list[str] = []
    empty_epochs = 0
    whole_epoch = False  # did this call start the current epoch at its beginning?
    got_line = False
    while len(out) < self.batch_size:
      files = self.host_files(self._epoch)
      if self._file >= len(files):
        if whole_epoch and not got_line:
          empty_epochs += 1
          # With the line split every epoch gives this host the same
          # number of lines; with the file split an epoch can be empty
          # by chance, but not a hundred in a row.
          if not self.split_by_files or empty_epochs >= 100:
            raise ValueError(
              f"process {self.process_index} of {self.process_count} gets no "
              f"lines from corpus directory {str(self.input_dir)!r} "
              f"({self.num_files} file(s)); use fewer processes or more data"
            )
        whole_epoch, got_line = True, False
        self._epoch += 1
        self._file = 0
        self._line = 0
        continue
      lines = self._load(self._epoch, self._file)
      if self._line >= len(lines):
        self._file += 1
        self._line = 0
        continue
      take = min(self.batch_size - len(out), len(lines) - self._line)
      out.extend(lines[self._line : self._line + take])
      self._line += take
      got_line = True
    # Normalise an exhausted file to the start of the next one, so a saved
    # state does not make a resumed run re-read the finished file.
    if self._lines_cache is not None and self._line >= len(self._lines_cache[1]):
      self._file += 1
      self._line = 0
    self.num_batches += 1
    return out

  def __next__(self) -> dict[str, np.ndarray]:
    lines = self.next_lines()
    batch = self.tokenizer.encode(lines, max_seq_length=self.max_seq_length, padding="max_length")
    return {
      k: np.asarray(batch[k], dtype=np.int32)
      for k in ("input_ids", "attention_mask", "token_type_ids")
    }

  # ---------------------------------------------------------- checkpointing
  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position; restore with :meth:`set_state`."""
    return {
      "version": _STATE_VERSION,
      "epoch": self._epoch,
      "file_cursor": self._file,
      "line_cursor": self._line,
      "num_invalid_lines": self.num_invalid_lines,
      "invalid_counted": list(self._counted) if self._counted is not None else None,
      "num_batches": self.num_batches,
      "fingerprint": self.fingerprint,
      "num_files": self.num_files,
      "seed": self.seed,
      "process_index": self.process_index,
      "process_count": self.process_count,
      "batch_size": self.batch_size,
      "max_seq_length": self.max_seq_length,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Continue from a :meth:`get_state` snapshot.

    Raises :class:`CorpusMismatchError` (a ``ValueError``) if the corpus files
    changed or ``seed`` / ``process_index`` / ``process_count`` differ.  The
    position is counted in lines, so ``batch_size`` / ``max_seq_length`` may
    be changed on resume (the batches then differ from the original run's).
    """
    if state.get("version") != _STATE_VERSION:
      raise CorpusMismatchError(
        f"unsupported corpus state version {state.get('version')!r} (expected {_STATE_VERSION})"
      )
    if state["fingerprint"] != self.fingerprint:
      raise CorpusMismatchError(
        f"corpus directory {str(self.input_dir)!r} does not match the saved state: "
        f"fingerprint of the file list (relative paths and sizes) changed "
        f"({state.get('num_files')} file(s) then, {self.num_files} now); "
        "cannot resume the data position on a modified corpus"
      )
    for key in ("seed", "process_index", "process_count"):
      if state[key] != getattr(self, key):
        raise CorpusMismatchError(
          f"corpus state was saved with {key}={state[key]!r}, this corpus has "
          f"{key}={getattr(self, key)!r}"
        )
    self._epoch = int(state["epoch"])
    self._file = int(state["file_cursor"])
    self._line = int(state["line_cursor"])
    self.num_invalid_lines = int(state["num_invalid_lines"])
    counted = state.get("invalid_counted")
    self._counted = tuple(counted) if counted is not None else None
    self.num_batches = int(state.get("num_batches", 0))

  def __repr__(self) -> str:
    return (
      f"TextCorpus({str(self.input_dir)!r}, files={self.num_files}, "
      f"batch_size={self.batch_size}, max_seq_length={self.max_seq_length}, "
      f"seed={self.seed}, process={self.process_index}/{self.process_count})"
    )
