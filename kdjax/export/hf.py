"""The ``hf`` format: the model as a Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) that ``transformers.AutoModel*`` and kdjax load.

fp32 only: kdjax keeps float32 weights (reduced precision is a compute dtype, set at load
time), so an fp16/bf16 HF export is refused rather than silently casting the safetensors.
The numerics check reloads the written directory with kdjax and compares its forward with
the source's on a probe batch (a round trip: 0.0 expected).

A head-pruned model (``attention_head_size`` set, e.g. ``kdjax.compress.prune.extract``) is
written in the padded form stock transformers loads (``kdjax.models.hf.hf_compatible``: pruned
heads as zero weights, the FFN as narrow as it is); the reload is then the padded model and the
check compares it with the narrow source (float rounding only). ``padded_heads`` in the
result (only then) says how many zero heads each layer got.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from kdjax.export.source import ExportSource


def export(source: ExportSource, out_dir: str, precision: str) -> dict:
  import jax
  import numpy as np

  from kdjax import models
  from kdjax.export import probe_inputs
  from kdjax.export.source import INPUT_NAMES, load_source

  if precision != "fp32":
    raise ValueError(
      f"hf format: precision {precision!r} not supported (fp32 only: kdjax HF directories "
      "hold float32 weights; choose the compute dtype when loading)"
    )
  models.save_pretrained(source.model(), out_dir, tokenizer=source.tokenizer)
  back = load_source(out_dir, max_length=source.max_length)
  batch = probe_inputs(source)
  args = [batch[k] for k in INPUT_NAMES]
  want = jax.jit(source.forward_fn("fp32"))(source.params, *args)
  got = jax.jit(back.forward_fn("fp32"))(back.params, *args)
  diff = max(float(np.max(np.abs(np.asarray(got[k]) - np.asarray(want[k])))) for k in want)
  files = sorted(
    os.path.relpath(os.path.join(d, f), out_dir) for d, _, fs in os.walk(out_dir) for f in fs
  )
  out = {
    "max_abs_diff": diff,
    "files": files,
    "input_signature": {k: {"dtype": "int32", "shape": ["b", "l"]} for k in INPUT_NAMES},
  }
  padded = back.config.num_attention_heads - source.config.num_attention_heads
  if padded:
    out["padded_heads"] = padded
  return out


__all__ = ["export"]
