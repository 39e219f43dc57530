"""Teacher logits saved to a file (EasyNLP vanilla KD: predict mode writes them, the student
reads them as ``logits_saved_path``). Two formats, both one row per example of the split in
file order; :func:`read_logits_tsv` tells them apart by the first line.

``kdjax`` (the default of ``python -m kdjax.evaluate --logits_output``): a header line
``id<TAB>label<TAB>logits``, then per example its id, its gold label as written in the data
('' when the split has none) and the logits as space-separated floats (``%.9g``: float32
round-trips exactly). The reader checks ids and labels against the training examples.

``easynlp``: the file EasyNLP's predictor writes with ``--mode=predict --output_schema=logits``
(and no ``--append_cols``): no header, one line per input row, a single field holding the
logits joined by commas (``",".join(str(x) for x in logits)``, easynlp/appzoo/
sequence_classification/predictor.py ``postprocess``; rows written in input order by
``SimplePredictorManager``, easynlp/core/predictor.py). EasyNLP's student
(easynlp/distillation/distill_dataset.py) reads it with ``skip_first_line=False`` and appends
line ``i`` to training row ``i``, parsing it as the last ``logits:float:<num_labels>`` field
of ``input_schema``. There is no id to check, so alignment is by line number alone: line
``i`` belongs to example ``i`` of the split as kdjax reads it (CMNLI / OCNLI ``"-"`` rows
already dropped); the row count and the logit count per line are checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

HEADER = ("id", "label", "logits")
FORMATS = ("kdjax", "easynlp")

__all__ = ["FORMATS", "HEADER", "detect_logits_format", "read_logits_tsv", "write_logits_tsv"]


def _check_format(fmt: str, allow_auto: bool) -> str:
  allowed = FORMATS + (("auto",) if allow_auto else ())
  if fmt not in allowed:
    raise ValueError(f"unknown logits file format {fmt!r}; expected one of {', '.join(allowed)}")
  return fmt


def write_logits_tsv(
  path: str,
  examples: Sequence,
  logits: np.ndarray,
  label_string: Callable[[object], str],
  *,
  format: str = "kdjax",
) -> None:
  """Writes ``logits[i]`` for ``examples[i]`` (objects with ``id`` and ``label``) in
  ``format`` "kdjax" (header, id, label, logits) or "easynlp" (comma-joined logits only)."""
  _check_format(format, allow_auto=False)
  logits = np.asarray(logits, np.float32)
  if logits.ndim != 2 or len(examples) != len(logits):
    raise ValueError(f"{len(examples)} examples but logits of shape {logits.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    if format == "easynlp":
      # str(np.float32) is the shortest string that round-trips: what EasyNLP writes.
      for row in logits:
        f.write(",".join(str(x) for x in row) + "\n")
    else:
      f.write("\t".join(HEADER) + "\n")
      for ex, row in zip(examples, logits):
        fields = [str(ex.id), label_string(ex.label)]
        if any(("\t" in s or "\n" in s or "\r" in s) for s in fields):
          raise ValueError(f"id / label of example {ex.id!r} contains a tab or newline")
        f.write("\t".join(fields + [" ".join(_format_float(x) for x in row)]) + "\n")
  os.replace(tmp, path)


def _format_float(x) -> str:
  return format(float(x), ".9g")


def _read_lines(path: str) -> list[tuple[int, str]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"teacher logits file {path} does not exist (write it with "
      "`python -m kdjax.evaluate --split=train --logits_output=...`)"
    )
  with open(path, encoding="utf-8", newline="") as f:
    lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(f, start=1)]
  while lines and not lines[-1][1].strip():
    lines.pop()
  return lines


def _detect(path: str, lines: list[tuple[int, str]]) -> str:
  first = lines[0][1] if lines else ""
  if tuple(first.split("\t")) == HEADER:
    return "kdjax"
  if first.strip() and "\t" not in first:
    return "easynlp"
  raise ValueError(
    f"{path}:1: expected the header 'id<TAB>label<TAB>logits' (kdjax format) or one "
    f"comma-separated logits field per line (EasyNLP format), got {first!r}"
  )


def detect_logits_format(path: str) -> str:
  """ "kdjax" or "easynlp" from the first line of ``path`` (ValueError when neither)."""
  return _detect(path, _read_lines(path))


def read_logits_tsv(
  path: str,
  examples: Sequence,
  num_labels: int,
  label_string: Callable[[object], str],
  source: str = "the training split",
  *,
  format: str = "auto",
) -> np.ndarray:
  """float32 ``[len(examples), num_labels]`` logits from ``path``, checked row by row against
  ``examples``: same row count and exactly ``num_labels`` finite logits per row, and for the
  kdjax format also the same ids in the same order and the same gold labels (where both have
  one). ``format``: "auto" (default: from the first line), "kdjax" or "easynlp". Any
  mismatch raises ValueError naming the file and the 1-based line."""
  _check_format(format, allow_auto=True)
  lines = _read_lines(path)
  fmt = _detect(path, lines) if format == "auto" else format
  if fmt == "kdjax":
    if not lines or tuple(lines[0][1].split("\t")) != HEADER:
      got = lines[0][1] if lines else ""
      raise ValueError(f"{path}:1: expected the header 'id<TAB>label<TAB>logits', got {got!r}")
    rows = lines[1:]
  else:
    if lines and tuple(lines[0][1].split("\t")) == HEADER:
      raise ValueError(
        f"{path}:1: header 'id<TAB>label<TAB>logits': a kdjax logits file, not EasyNLP's "
        "(read it with format='kdjax' or 'auto')"
      )
    rows = lines
  if len(rows) != len(examples):
    raise ValueError(
      f"{path}: {len(rows)} rows of logits but {source} has {len(examples)} "
      "examples: the file does not line up with the training data"
    )
  out = np.empty((len(rows), num_labels), np.float32)
  for k, ((lineno, line), ex) in enumerate(zip(rows, examples)):
    where = f"{path}:{lineno}"
    if fmt == "kdjax":
      text = _check_kdjax_row(where, line, k, ex, label_string, source)
      parts, sep = text.split(), "space"
    else:
      if "\t" in line:
        raise ValueError(
          f"{where}: {line.count(chr(9)) + 1} tab-separated fields; an EasyNLP logits file "
          "has one (predict with --output_schema=logits and no --append_cols)"
        )
      text = line
      parts, sep = ([p.strip() for p in line.split(",")] if line.strip() else []), "comma"
    try:
      values = [float(v) for v in parts]
    except ValueError:
      raise ValueError(f"{where}: logits {text!r} are not {sep}-separated floats") from None
    if len(values) != num_labels:
      raise ValueError(f"{where}: {len(values)} logits but the task has {num_labels} labels")
    with np.errstate(over="ignore"):  # e.g. 1e39: finite as a Python float, inf in float32
      row = np.asarray(values, np.float64).astype(np.float32)
    if not np.isfinite(row).all():
      big = np.isfinite(values).all()
      why = " (beyond the float32 range, |x| > 3.4e38)" if big else ""
      raise ValueError(f"{where}: non-finite logits {text!r}{why}")
    out[k] = row
  return out


def _check_kdjax_row(where: str, line: str, k: int, ex, label_string, source: str) -> str:
  """The logits field of a kdjax row, after checking its id and label against ``ex``."""
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
  return fields[2]
