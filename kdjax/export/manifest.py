"""``export.json``: what an export directory holds and how it was made.

Fields: ``kdjax_version``, ``source`` (absolute path), ``kind`` (hf | kdjax | workdir), ``step``,
``format``, ``precision``, ``head``, ``input_signature``, ``output_names``, ``labels``,
``max_length``, ``max_abs_diff`` (the exporter's measure against the JAX fp32 forward),
``files`` (relative to the export directory) and ``created`` (UTC, ISO 8601); plus any other
field the exporter returned.
"""

from __future__ import annotations

import datetime
import json
import os

import kdjax

MANIFEST = "export.json"
REQUIRED = (
  "kdjax_version",
  "source",
  "kind",
  "step",
  "format",
  "precision",
  "head",
  "input_signature",
  "output_names",
  "labels",
  "max_length",
  "max_abs_diff",
  "files",
  "created",
)


def build(source, fmt: str, precision: str, extra: dict) -> dict:
  """The manifest of ``source`` exported as ``fmt`` (``extra``: what the exporter returned)."""
  for key in ("max_abs_diff", "files", "input_signature"):
    if key not in extra:
      raise ValueError(f"the {fmt} exporter returned no {key!r} (the export interface needs it)")
  m = {
    "kdjax_version": kdjax.__version__,
    "source": source.path,
    "kind": source.kind,
    "step": source.step,
    "format": fmt,
    "precision": precision,
    "head": source.head,
    "input_signature": extra["input_signature"],
    "output_names": list(source.output_names),
    "labels": list(source.labels) if source.labels is not None else None,
    "max_length": source.max_length,
    "max_abs_diff": float(extra["max_abs_diff"]),
    "files": sorted(extra["files"]),
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  for k, v in extra.items():
    m.setdefault(k, v)
  return m


def write(out_dir: str, manifest: dict) -> str:
  path = os.path.join(out_dir, MANIFEST)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, ensure_ascii=False, default=_plain)
    f.write("\n")
  return path


def read(out_dir: str) -> dict:
  """The manifest of an export directory (FileNotFoundError / ValueError naming the file)."""
  path = os.path.join(out_dir, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      m = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(m, dict) or "format" not in m:
    raise ValueError(f"{path}: not a kdjax export manifest (no 'format')")
  return m


def is_export_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def _plain(x):
  import numpy as np

  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"{type(x).__name__} is not JSON serializable")


__all__ = ["MANIFEST", "REQUIRED", "build", "is_export_dir", "read", "write"]
