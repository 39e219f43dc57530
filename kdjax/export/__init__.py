"""Exporters: a trained kdjax / Hugging Face model as a deployable artefact.

``python -m kdjax.export MODEL OUT --format=FMT [--precision=fp32|fp16|bf16]`` (see
``kdjax/export/__main__.py``) resolves MODEL with :func:`kdjax.export.source.load_source`, runs
the format's exporter into a fresh temporary directory beside OUT, writes ``export.json``
(:mod:`kdjax.export.manifest`) and renames the directory to OUT.

The interface every format implements: a module ``kdjax.export.<name>`` with

  def export(source: ExportSource, out_dir: str, precision: str) -> dict

that writes its artefact into ``out_dir`` (already created, empty) and returns the extra
manifest fields, at least::

  {"max_abs_diff": float,      # vs the JAX fp32 forward on a probe batch, measured by the exporter
   "files": [relative paths],  # what it wrote under out_dir
   "input_signature": {...}}   # name -> {"dtype", "shape"} of the artefact's inputs

and raises ``ValueError`` with a clear message for an unsupported precision or head.
Exporters import their heavy packages (TensorFlow, torch, onnx, ...) lazily inside ``export``:
importing ``kdjax.export`` or ``kdjax.train`` imports none of them.

Formats (:data:`FORMATS`):

* ``hf``: the model as a Hugging Face directory (``kdjax.models.save_pretrained``); fp32 only.
* ``jax``: ``jax.export`` StableHLO of the forward for cpu and cuda, symbolic batch and length,
  params baked in; :func:`kdjax.export.jax_export.load` runs it with jax + numpy only.
* ``onnx``: ``jax2onnx`` graph, dynamic batch and length, checked in onnxruntime;
  ``--precision=int8`` of a quantized model directory (``quantization.json``) writes the QDQ
  graph (:mod:`kdjax.export.onnx_qdq`).
* ``tensorrt``: ONNX plus a TensorRT engine-build step (where ``tensorrt`` exists).
* ``savedmodel``: ``jax2tf`` SavedModel with in-graph ``tensorflow_text`` tokenization.
"""

from __future__ import annotations

import importlib
import importlib.util

# name -> (module, packages it needs (import names), one-line description)
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
  "savedmodel": (
    "kdjax.export.savedmodel",
    ("tensorflow", "tensorflow_text"),
    "TensorFlow SavedModel via jax2tf, raw-string serving signature (tensorflow_text)",
  ),
  "jax": (
    "kdjax.export.jax_export",
    (),
    "jax.export StableHLO (cpu + cuda), symbolic batch/length, params baked in",
  ),
  "onnx": (
    "kdjax.export.onnx",
    ("onnx", "jax2onnx", "onnxruntime"),
    "ONNX via jax2onnx, dynamic batch/length",
  ),
  "tensorrt": (
    "kdjax.export.tensorrt",
    ("onnx", "jax2onnx"),
    "ONNX + TensorRT engine build (the engine step needs tensorrt)",
  ),
  "hf": ("kdjax.export.hf", (), "Hugging Face directory (config.json + model.safetensors)"),
}


class FormatUnavailable(RuntimeError):
  """A format whose module is not there or whose packages are missing (one-line message)."""


def missing_packages(fmt: str) -> list[str]:
  """The packages ``fmt`` needs that are not importable here."""
  return [p for p in FORMATS[fmt][1] if importlib.util.find_spec(p) is None]


def get_exporter(fmt: str):
  """The module implementing ``fmt``; :class:`FormatUnavailable` names what is missing."""
  if fmt not in FORMATS:
    raise FormatUnavailable(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
  module = FORMATS[fmt][0]
  missing = missing_packages(fmt)
  if missing:
    raise FormatUnavailable(
      f"format {fmt!r} needs the missing package(s) {', '.join(missing)} "
      "(pip install -r requirements-export.txt)"
    )
  if importlib.util.find_spec(module) is None:
    raise FormatUnavailable(f"format {fmt!r} is not available: {module} is not written yet")
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise FormatUnavailable(f"format {fmt!r} needs the missing package {e.name!r}") from e


def probe_inputs(source, length: int | None = None) -> dict:
  """A small batch of real tokenized texts (single and pair, different lengths, padded) for
  the exporters' numerics check: int32 ``input_ids``, ``attention_mask``, ``token_type_ids``."""
  length = min(source.max_length, 24) if length is None else length
  texts = ["the film is good", "a bad movie, no wit and no gags!", "人我在有", "the man"]
  pairs = ["a", "a woman playing the flute", "good", "the plane is bad bad bad bad bad bad"]
  tok = source.tokenizer
  a = tok.encode(texts[:2], max_seq_length=length, padding="max_length")
  b = tok.encode(texts[2:], pairs[2:], max_seq_length=length, padding="max_length")
  return {k: __import__("numpy").concatenate([a[k], b[k]]) for k in a}


__all__ = ["FORMATS", "FormatUnavailable", "get_exporter", "missing_packages", "probe_inputs"]
