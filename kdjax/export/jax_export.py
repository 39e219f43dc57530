"""The ``jax`` format: the forward as serialized StableHLO (``jax.export``) for cpu and cuda.

Artefact (in OUT)::

  model.jax_export   jax.export.Exported.serialize() of the jitted forward
  jax_export.json    input/output names, max_length, platforms, precision (read by load)
  tokenizer/         vocab.txt, tokenizer.json, ... (kdjax.data.Tokenizer.from_dir reads it)

Decisions:

* **Params are baked in as constants** of the StableHLO module (one self-contained file, no
  params argument to feed). The serialization is a flatbuffer, so the module must stay under
  2 GB (BERT-large in fp32 is ~1.3 GB: fine).
* **Symbolic shapes** ``(b, l)`` for all three int32 inputs, with the constraint
  ``l <= max_length`` (jax.export's shape constraints): a longer input is refused by the
  loader with a clear error (jax itself would fail at shape refinement).
* Precision is the compute dtype: ``fp32``, ``bf16`` (float32 params, bfloat16 matmuls, as
  kdjax computes) and ``fp16`` (float16 params and compute). Outputs are always float32.

:func:`load` needs only jax and numpy: it never imports kdjax's model code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from kdjax.export.source import ExportSource

MODEL_FILE = "model.jax_export"
META_FILE = "jax_export.json"
TOKENIZER_DIR = "tokenizer"
PLATFORMS = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def export(source: ExportSource, out_dir: str, precision: str) -> dict:
  import jax
  import jax.numpy as jnp
  from jax import export as jex

  from kdjax.export import probe_inputs

  if precision not in PRECISIONS:
    raise ValueError(f"jax format: precision {precision!r} not supported (one of {PRECISIONS})")
  forward = source.forward_fn(precision)
  params = source.params_in(precision)

  def serve(input_ids, attention_mask, token_type_ids):
    return forward(params, input_ids, attention_mask, token_type_ids)

  b, n = jex.symbolic_shape("b, l", constraints=(f"l <= {source.max_length}",))
  spec = jax.ShapeDtypeStruct((b, n), jnp.int32)
  exported = jex.export(jax.jit(serve), platforms=PLATFORMS)(spec, spec, spec)
  with open(os.path.join(out_dir, MODEL_FILE), "wb") as f:
    f.write(exported.serialize())
  meta = {
    "input_names": list(INPUT_NAMES),
    "output_names": list(source.output_names),
    "max_length": source.max_length,
    "platforms": list(PLATFORMS),
    "precision": precision,
    "params": "baked in as constants",
  }
  with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  tok_dir = source.tokenizer.save(os.path.join(out_dir, TOKENIZER_DIR))

  # numerics: the artefact as the loader runs it vs the fp32 JAX forward
  run = load(out_dir)
  ref = jax.jit(source.forward_fn("fp32"))
  diff = 0.0
  batch = probe_inputs(source)
  got = run(**batch)
  want = ref(source.params, *(batch[k] for k in INPUT_NAMES))
  for k in source.output_names:
    diff = max(diff, float(np.max(np.abs(got[k] - np.asarray(want[k])))))
  files = [MODEL_FILE, META_FILE] + sorted(
    os.path.join(TOKENIZER_DIR, f) for f in os.listdir(tok_dir)
  )
  return {
    "max_abs_diff": diff,
    "files": files,
    "input_signature": {
      k: {"dtype": "int32", "shape": ["b", "l"], "max_l": source.max_length} for k in INPUT_NAMES
    },
    "platforms": list(PLATFORMS),
    "params": "baked in as constants",
  }


def load(out_dir: str) -> Callable[..., dict]:
  """The exported forward: ``run(input_ids, attention_mask=None, token_type_ids=None)`` ->
  ``{output name: float32 numpy array}``; inputs ``[B, L]`` (or ``[L]``) integer arrays with
  ``L <= max_length`` (mask defaults to all ones, token types to zeros). Uses jax + numpy only.
  ``run.max_length``, ``run.output_names``, ``run.tokenizer_dir`` describe the artefact."""
  from jax import export as jex

  with open(os.path.join(out_dir, META_FILE), encoding="utf-8") as f:
    meta = json.load(f)
  with open(os.path.join(out_dir, MODEL_FILE), "rb") as f:
    exported = jex.deserialize(bytearray(f.read()))
  max_length = int(meta["max_length"])

  def run(input_ids, attention_mask=None, token_type_ids=None) -> dict:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    mask, types = (x[None] if x.ndim == 1 else x for x in (mask, types))
    if mask.shape != ids.shape or types.shape != ids.shape:
      raise ValueError(
        f"input shapes differ: input_ids {ids.shape}, attention_mask {mask.shape}, "
        f"token_type_ids {types.shape}"
      )
    if ids.shape[1] > max_length:
      raise ValueError(f"length {ids.shape[1]} > the artefact's max_length {max_length}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
      raise ValueError(f"empty input of shape {ids.shape}")
    out = exported.call(*(np.asarray(x, np.int32) for x in (ids, mask, types)))
    return {k: np.asarray(v) for k, v in out.items()}

  run.max_length = max_length
  run.output_names = tuple(meta["output_names"])
  run.precision = meta.get("precision")
  run.tokenizer_dir = os.path.join(out_dir, TOKENIZER_DIR)
  run.exported = exported
  return run


__all__ = ["MODEL_FILE", "PLATFORMS", "export", "load"]
