"""Teacher logits saved to a TSV (EasyNLP vanilla KD: predict mode writes them, the student
reads them as ``logits_saved_path``).

Format: a header line ``id<TAB>label<TAB>logits``, then one row per example of the split in
file order: the example id, its gold label as written in the data ('' when the split has
none) and the logits as space-separated floats (``%.9g``: float32 round-trips exactly).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

HEADER = ("id", "label", "logits")


def write_logits_tsv(
  path: str, examples: Sequence, logits: np.ndarray, label_string: Callable[[object], str]
) -> None:
  """Writes ``logits[i]`` for ``examples[i]`` (objects with ``id`` and ``label``)."""
  logits = np.asarray(logits, np.float32)
  if logits.ndim != 2 or len(examples) != len(logits):
    raise ValueError(f"{len(examples)} examples but logits of shape {logits.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write("\t".join(HEADER) + "\n")
    for ex, row in zip(examples, logits):
      fields = [str(ex.id), label_string(ex.label)]
      if any(("\t" in s or "\n" in s or "\r" in s) for s in fields):
        raise ValueError(f"id / label of example {ex.id!r} contains a tab or newline")
      f.write("\t".join(fields + [" ".join(format(float(x), ".9g") for x in row)]) + "\n")
  os.replace(tmp, path)


def read_logits_tsv(
  path: str,
  examples: Sequence,
  num_labels: int,
  label_string: Callable[[object], str],
  source: str = "the training split",
) -> np.ndarray:
  """float32 ``[len(examples), num_labels]`` logits from ``path``, checked row by row against
  ``examples``: same row count, same ids in the same order, same gold labels (where both
  have one) and exactly ``num_labels`` finite logits per row. Any mismatch raises
  ValueError naming the file and the 1-based line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"teacher logits file {path} does not exist (write it with "
      "`python -m kdjax.evaluate --split=train --logits_output=...`)"
    )
  with open(path, encoding="utf-8", newline="") as f:
    lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(f, start=1)]
  while lines and not lines[-1][1].strip():
    lines.pop()
  if not lines or tuple(lines[0][1].split("\t")) != HEADER:
    got = lines[0][1] if lines else ""
    raise ValueError(f"{path}:1: expected the header 'id<TAB>label<TAB>logits', got {got!r}")
  rows = lines[1:]
  if len(rows) != len(examples):
    raise ValueError(
      f"{path}: {len(rows)} rows of logits but {source} has {len(examples)} "
      "examples: the file does not line up with the training data"
    )
  out = np.empty((len(rows), num_labels), np.float32)
  for k, ((lineno, line), ex) in enumerate(zip(rows, examples)):
    where = f"{path}:{lineno}"
    fields = line.split("\t")
    if len(fields) != 3:
      raise ValueError(
        f"{where}: expected 3 tab-separated fields (id, label, logits), got {len(fields)}"
      )
    if fields[0] != str(ex.id):
      raise ValueError(
        f"{where}: id {fields[0]!r} but example {k} of {source} has id "
        f"{str(ex.id)!r}: the file does not line up with the training data"
      )
    gold = label_string(ex.label)
    if fields[1] and gold and fields[1] != gold:
      raise ValueError(
        f"{where}: label {fields[1]!r} but example {k} ({ex.id!r}) of {source} has label {gold!r}"
      )
    try:
      values = [float(v) for v in fields[2].split()]
    except ValueError:
      raise ValueError(f"{where}: logits {fields[2]!r} are not space-separated floats") from None
    if len(values) != num_labels:
      raise ValueError(f"{where}: {len(values)} logits but the task has {num_labels} labels")
    if not all(np.isfinite(values)):
      raise ValueError(f"{where}: non-finite logits {fields[2]!r}")
    out[k] = values
  return out
