"""What every exporter starts from: a model directory resolved into the kdjax model, its
params (host arrays), tokenizer, label names and maximum length, and the pure forward
function the exporters trace.

  src = load_source("runs/tnews")                 # HF dir, kdjax model dir or trainer workdir
  fn = src.forward_fn("fp32")                     # (params, ids, mask, types) -> dict
  outs = fn(src.params, ids, mask, types)         # {"logits": [B, C]} for a classifier

Outputs by head: ``classification`` -> ``{"logits"}`` (``[B, num_labels]``); ``mlm`` ->
``{"logits"}`` (``[B, L, vocab]``); ``none`` -> ``{"last_hidden_state" [B, L, H],
"pooled_output" [B, H]}`` (the pooler's output when the model has one, else the [CLS] vector).
Every output is float32 whatever the compute precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.data.tokenizer import Tokenizer
from kdjax.kernels import cpu_matmul
from kdjax.models import loading, native
from kdjax.models import params as P
from kdjax.models.bert import encoder_of, head_of
from kdjax.models.config import BertConfig

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class ExportSource:
  path: str  # the directory that was exported (absolute)
  kind: str  # "hf" | "kdjax" | "workdir"
  step: int | None  # the workdir checkpoint step (None: not a workdir / unknown)
  head: str  # "classification" | "mlm" | "none"
  config: BertConfig
  skeleton: object  # nnx graph structure (bind params to it)
  params: dict  # host numpy arrays, float32
  tokenizer: Tokenizer
  tokenizer_dir: str  # holds vocab.txt (tensorflow-text needs it) or tokenizer.json
  labels: tuple[str, ...] | None  # classifier label names (None: unnamed / not a classifier)
  max_length: int  # longest input the model takes (positions), or the trained length

  @property
  def output_names(self) -> tuple[str, ...]:
    return (
      ("logits",)
      if self.head in ("classification", "mlm")
      else (
        "last_hidden_state",
        "pooled_output",
      )
    )

  def model(self, params=None, dtype: str = "float32") -> nnx.Module:
    """The kdjax model under ``params`` (default: the source's), computing in ``dtype``."""
    m = P.bind(self.skeleton, self.params if params is None else params)
    if dtype != self.config.dtype:
      m = loading.with_config(m, self.config.replace(dtype=dtype))
    return m

  def forward_fn(self, precision: str = "fp32", portable: bool = True) -> Callable:
    """``(params, input_ids, attention_mask, token_type_ids) -> {name: float32 array}``: pure,
    jittable and traceable by jax.export / jax2tf / jax2onnx (inputs int32 ``[B, L]``), with
    XLA's own dots only (``kdjax.kernels.cpu_matmul.portable``). ``portable=False`` is for
    running in this process (``kdjax.predict``): the CPU matmul kernel where it applies, as
    training and evaluation run (a 3L/384H classifier at 32 x 128 on a 2-core AMX Xeon: 0.39 ->
    0.22 s per batch, PyTorch eager 0.21; benchmarks/inference.py, xla row)."""
    dtype = PRECISIONS[precision]
    skeleton = P.split(self.model(dtype=dtype))[0]
    head = self.head

    def forward(params, input_ids, attention_mask, token_type_ids):
      # XLA's own dots: an artefact must not name kdjax's oneDNN custom call (kdjax.kernels)
      with cpu_matmul.portable() if portable else contextlib.nullcontext():
        out = P.bind(skeleton, params)(
          input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
      if head in ("classification", "mlm"):
        return {"logits": out.logits.astype(jnp.float32)}
      hidden = out.last_hidden_state.astype(jnp.float32)
      pooled = out.pooler_output if out.pooler_output is not None else hidden[:, 0]
      return {"last_hidden_state": hidden, "pooled_output": pooled.astype(jnp.float32)}

    return forward

  def params_in(self, precision: str = "fp32") -> dict:
    """The params cast for ``precision`` (fp16 weights for an fp16 artefact; float32 else:
    kdjax keeps float32 params and casts in the matmuls)."""
    if precision == "fp16":
      return jax.tree.map(lambda x: np.asarray(x, np.float16), self.params)
    return self.params


def load_source(path: str, step: int | None = None, max_length: int | None = None) -> ExportSource:
  """Resolves ``path`` (a Hugging Face directory, a kdjax model directory or a trainer workdir:
  ``step``, else its best dev checkpoint, else the latest) into an :class:`ExportSource`."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: not a directory (a model directory or trainer workdir)")
  kind = native.kind(path)
  model = loading.load_model(path, head="auto", step=step, checkpoint="best")
  head = head_of(model)
  if kind == "workdir" and step is None:
    step = native.best_step(path)
    if step is None:
      step = native.latest_step(os.path.join(path, "checkpoints"))
  tok_dir = getattr(model, "tokenizer_dir", None) or loading.tokenizer_dir_of(path)
  if not tok_dir:
    raise FileNotFoundError(f"{path}: no tokenizer (vocab.txt / tokenizer.json) beside the model")
  cfg = model.config.replace(dtype="float32")
  model = loading.with_config(model, cfg)
  skeleton, params = P.split(model)
  limit = cfg.max_position_embeddings - cfg.position_offset
  if max_length is None:
    max_length = loading.trained_max_seq_length(path) or limit
  if not 2 < max_length <= limit:
    raise ValueError(f"max_length={max_length}: the model takes 3..{limit} tokens")
  labels = loading.trained_labels(cfg) if head == "classification" else None
  return ExportSource(
    path=os.path.abspath(path),
    kind=kind,
    step=step,
    head=head,
    config=cfg,
    skeleton=skeleton,
    params=jax.tree.map(np.asarray, params),
    tokenizer=Tokenizer.from_dir(tok_dir),
    tokenizer_dir=tok_dir,
    labels=labels,
    max_length=int(max_length),
  )


__all__ = ["INPUT_NAMES", "PRECISIONS", "ExportSource", "encoder_of", "load_source"]
