"""ONNX export (``jax2onnx``): FP32 and FP16 graphs of a source's forward, dynamic batch and length.

  src = load_source("runs/tnews")
  extra = export(src, "out/onnx", "fp32")   # writes out/onnx/model.onnx, returns manifest fields

The graph (opset :data:`OPSET`):

- inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: **int32** ``[batch, length]``
  (named dynamic dims; ``length`` <= the model's positions). int32 is what kdjax traces, what
  TensorRT binds natively (its ONNX parser narrows int64 to int32 with warnings) and what
  onnxruntime's Gather accepts; callers holding int64 ids (HF tokenizers' numpy output) cast with
  ``.astype(np.int32)``. All three inputs are used (the token-type embedding is looked up even for
  single-segment models), and :func:`check_graph` raises if any input is dead.
- outputs: ``source.output_names`` (``logits``, or ``last_hidden_state`` + ``pooled_output``),
  float32 for every precision.
- ``fp16``: float16 weights and float16 matmuls/activations, LayerNorm and softmax statistics in
  float32 (as kdjax computes them), float32 outputs. ``bf16`` is refused (onnxruntime has no bf16
  CPU kernels for most of these ops; use ``--format=jax`` or the SavedModel for bf16).
- no float64 anywhere (tensors, casts, constants): checked after conversion.
- ``int8``: only for a quantized model directory (``quantization.json``, written by
  ``python -m kdjax.compress.quantize``): the fp32 graph rewritten with explicit
  QuantizeLinear/DequantizeLinear around the encoder matmuls (:mod:`kdjax.export.onnx_qdq`).

Why not ``source.forward_fn`` as is: it lets the model build ``position_ids`` with
``jnp.arange(L)``, which jax2onnx 0.17.1 traces to a placeholder dim that then fails to broadcast
against ``[B, L]``; and the model's "L > max positions" check is an inconclusive comparison on a
free symbolic ``L``. So :func:`traced_forward` is the same computation as ``forward_fn`` (same
skeleton, params closed over as constants) with ``position_ids`` from ``lax.broadcasted_iota`` and
``L`` traced under the constraint ``L <= max positions``. kdjax's model code is unchanged.

onnx, onnxruntime and jax2onnx are imported inside the functions: the training path never loads
them (``pip install -r requirements-export.txt``, see its header for jax2onnx's ``--no-deps``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

OPSET = 17  # LayerNormalization exists from 17; TensorRT 8.6+ and onnxruntime 1.14+ take it
PRECISIONS = ("fp32", "fp16")
HEADS = ("classification", "mlm", "none")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
INPUT_DTYPE = "int32"
DIMS = ("batch", "length")
MODEL_FILE = "model.onnx"
NORMALIZATION = "prefer_native"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GiB limit: bigger graphs spill weights


def check_supported(source, precision: str) -> None:
  """ValueError for a precision or head this exporter does not write."""
  if precision not in PRECISIONS:
    raise ValueError(
      f"ONNX export supports precision {'|'.join(PRECISIONS)}, not {precision!r}"
      + (" (bf16: use --format=jax or savedmodel)" if precision == "bf16" else "")
    )
  if source.head not in HEADS:
    raise ValueError(f"ONNX export supports heads {'|'.join(HEADS)}, not {source.head!r}")


def length_limit(source) -> int:
  """The longest ``length`` the graph takes (the model's position table)."""
  return int(source.config.max_position_embeddings - source.config.position_offset)


def traced_forward(source, precision: str) -> Callable:
  """``(input_ids, attention_mask, token_type_ids) -> tuple of float32 outputs`` (order:
  ``source.output_names``), the params of ``precision`` closed over: what jax2onnx traces."""
  import jax.numpy as jnp
  from jax import lax

  from kdjax.export.source import PRECISIONS as DTYPES
  from kdjax.kernels import cpu_matmul
  from kdjax.models import params as P

  check_supported(source, precision)
  skeleton = _skeleton(source, DTYPES[precision])
  params = source.params_in(precision)
  head = source.head
  # roberta-style models derive positions from the padding (cumsum, traceable): let them
  explicit_positions = source.config.model_type != "roberta"

  def forward(input_ids, attention_mask, token_type_ids):
    pos = lax.broadcasted_iota(jnp.int32, input_ids.shape, 1) if explicit_positions else None
    with cpu_matmul.portable():  # an ONNX graph holds standard ops only
      out = P.bind(skeleton, params)(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        position_ids=pos,
      )
    if head in ("classification", "mlm"):
      return (out.logits.astype(jnp.float32),)
    hidden = out.last_hidden_state.astype(jnp.float32)
    pooled = out.pooler_output if out.pooler_output is not None else hidden[:, 0]
    return hidden, pooled.astype(jnp.float32)

  return forward


def _skeleton(source, dtype: str):
  """The model structure computing in ``dtype``. ``source.model(dtype=...)`` rebuilds through
  ``loading.with_config``, which always builds a pooler for ``head="none"`` and
  so refuses a pooler-less encoder at fp16; build the same structure directly then."""
  from kdjax.models import create_model
  from kdjax.models import params as P

  if dtype == source.config.dtype:
    return source.skeleton
  try:
    return P.split(source.model(dtype=dtype))[0]
  except ValueError:
    if source.head != "none":
      raise
  cfg = source.config.replace(dtype=dtype)
  return P.split(create_model(cfg, "none", add_pooling_layer="pooler" in source.params))[0]


def input_specs(source) -> list:
  """Three int32 ``[batch, length]`` specs with symbolic dims, ``length <= limit``."""
  import jax
  from jax import export as jax_export

  b, n = jax_export.symbolic_shape(
    ", ".join(DIMS), constraints=(f"{DIMS[1]} <= {length_limit(source)}",)
  )
  return [jax.ShapeDtypeStruct((b, n), np.dtype(INPUT_DTYPE)) for _ in INPUT_NAMES]


def convert(source, precision: str):
  """The ``onnx.ModelProto`` of the source's forward at ``precision`` (checked: no float64,
  no dead inputs, the declared inputs and outputs)."""
  import jax
  from jax2onnx import to_onnx

  if jax.config.jax_enable_x64:
    raise ValueError("ONNX export needs jax_enable_x64 off (it would trace float64 tensors)")
  with _quiet_jax2onnx():
    model = to_onnx(
      traced_forward(source, precision),
      input_specs(source),
      model_name=f"kdjax_{source.head}_{precision}",
      opset=OPSET,
      input_names=list(INPUT_NAMES),
      output_names=list(source.output_names),
      enable_double_precision=False,
      normalization_mode=NORMALIZATION,
    )
  check_graph(model, INPUT_NAMES, source.output_names)
  return model


@contextlib.contextmanager
def _quiet_jax2onnx():
  """jax2onnx logs a traceback per example plugin whose optional package (equinox, dm-pix) is
  absent, and onnx_ir a warning per untyped shape constant: harmless, hidden while converting."""
  loggers = [logging.getLogger(n) for n in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels, strict=True):
      lg.setLevel(level)


# --------------------------------------------------------------------------------- graph checks
def _subgraphs(node):
  import onnx

  for attr in node.attribute:
    if attr.type == onnx.AttributeProto.GRAPH:
      yield attr.g
    elif attr.type == onnx.AttributeProto.GRAPHS:
      yield from attr.graphs


def _float64_in_graph(graph, where: str) -> list[str]:
  import onnx

  f64 = onnx.TensorProto.DOUBLE
  found = []
  for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
    if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == f64:
      found.append(f"{where}: value {vi.name!r} is float64")
  for t in graph.initializer:
    if t.data_type == f64:
      found.append(f"{where}: initializer {t.name!r} is float64")
  for node in graph.node:
    for attr in node.attribute:
      if node.op_type == "Cast" and attr.name == "to" and attr.i == f64:
        found.append(f"{where}: node {node.name or node.op_type!r} casts to float64")
      if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f64:
        found.append(f"{where}: node {node.name or node.op_type!r} holds a float64 tensor")
    for g in _subgraphs(node):
      found += _float64_in_graph(g, f"{where}/{node.name or node.op_type}")
  return found


def _consumed(graph) -> set[str]:
  used = set()
  for node in graph.node:
    used.update(node.input)
    for g in _subgraphs(node):
      used |= _consumed(g)  # subgraphs may read outer-scope values
  return used


def dead_inputs(model) -> list[str]:
  """Graph inputs no node reads (and that are not passed straight to an output)."""
  g = model.graph
  inits = {t.name for t in g.initializer}
  used = _consumed(g) | {o.name for o in g.output}
  return [i.name for i in g.input if i.name not in inits and i.name not in used]


def float64_tensors(model) -> list[str]:
  """Every float64 value, initializer, constant or cast in the graph (shape inference run first
  so intermediate values are typed)."""
  import onnx

  try:
    inferred = onnx.shape_inference.infer_shapes(model)
  except Exception:  # inference is a best effort; the raw graph is still checked
    inferred = model
  return _float64_in_graph(inferred.graph, "graph")


def check_graph(model, input_names: Sequence[str], output_names: Sequence[str]) -> None:
  """Raise ValueError if the graph is malformed, has float64, dead inputs or other I/O."""
  import onnx

  onnx.checker.check_model(model)
  g = model.graph
  inits = {t.name for t in g.initializer}
  got_in = tuple(i.name for i in g.input if i.name not in inits)
  if got_in != tuple(input_names):
    raise ValueError(f"ONNX inputs {got_in} != expected {tuple(input_names)}")
  got_out = tuple(o.name for o in g.output)
  if got_out != tuple(output_names):
    raise ValueError(f"ONNX outputs {got_out} != expected {tuple(output_names)}")
  dead = dead_inputs(model)
  if dead:
    raise ValueError(f"ONNX graph has unused inputs {dead}")
  f64 = float64_tensors(model)
  if f64:
    raise ValueError("ONNX graph contains float64: " + "; ".join(f64[:10]))
  for i in g.input:
    if i.name in inits:
      continue
    elem = i.type.tensor_type.elem_type
    if elem != onnx.TensorProto.INT32:
      raise ValueError(f"ONNX input {i.name!r} has elem_type {elem}, expected int32")
    dims = [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
    if dims != list(DIMS):
      raise ValueError(f"ONNX input {i.name!r} has dims {dims}, expected {list(DIMS)}")


def opset_of(model) -> int:
  return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------------------ numeric check
def probe_shapes(source) -> tuple[tuple[int, int], ...]:
  """Two probe shapes: a single short row and a padded batch of 7 at the longest length."""
  n = min(source.max_length, length_limit(source))
  return ((1, min(5, n)), (7, n))


def probe_inputs(source, shapes=None, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Random int32 batches (``[CLS]`` first, ragged padding, a second segment where the model
  has token types) for each ``(batch, length)`` in ``shapes``."""
  rng = np.random.default_rng(seed)
  cfg = source.config
  out = []
  for b, n in shapes or probe_shapes(source):
    ids = rng.integers(0, cfg.vocab_size, (b, n)).astype(np.int32)
    ids[:, 0] = source.tokenizer.cls_id
    lengths = np.clip(rng.integers(1, n + 1, b), 1, n)
    lengths[0] = n  # one full row
    mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, source.tokenizer.pad_id).astype(np.int32)
    types = np.zeros((b, n), np.int32)
    if cfg.type_vocab_size >= 2:
      types = ((np.arange(n)[None, :] >= (lengths[:, None] // 2)) & (mask == 1)).astype(np.int32)
    out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
  return out


def jax_outputs(source, batches, precision: str = "fp32") -> list[dict[str, np.ndarray]]:
  """The kdjax forward (``source.forward_fn``) on each batch: the reference (run eagerly: a
  jit per probe shape costs more than it saves on a handful of batches)."""
  fn = source.forward_fn(precision)
  params = source.params_in(precision)
  res = []
  for x in batches:
    out = fn(params, x["input_ids"], x["attention_mask"], x["token_type_ids"])
    res.append({k: np.asarray(v) for k, v in out.items()})
  return res


def traced_outputs(source, batches, precision: str) -> list[dict[str, np.ndarray]]:
  """:func:`traced_forward` on each batch (the exact function converted), eagerly."""
  fn = traced_forward(source, precision)
  res = []
  for x in batches:
    out = fn(*(x[k] for k in INPUT_NAMES))
    res.append({k: np.asarray(v) for k, v in zip(source.output_names, out, strict=True)})
  return res


def session(model_or_path, threads: int | None = None):
  """A CPU onnxruntime InferenceSession for a ModelProto or a file."""
  import onnxruntime as ort

  opts = ort.SessionOptions()
  if threads:
    opts.intra_op_num_threads = threads
  blob = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
  return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def ort_outputs(sess, batches, output_names) -> list[dict[str, np.ndarray]]:
  res = []
  for x in batches:
    vals = sess.run(list(output_names), {k: x[k] for k in INPUT_NAMES})
    res.append(dict(zip(output_names, vals, strict=True)))
  return res


def max_abs_diff(a: list[dict], b: list[dict]) -> float:
  worst = 0.0
  for x, y in zip(a, b, strict=True):
    for k in x:
      if x[k].shape != y[k].shape:
        raise ValueError(f"output {k!r}: shape {x[k].shape} vs {y[k].shape}")
      d = np.abs(x[k].astype(np.float64) - y[k].astype(np.float64))
      if not np.all(np.isfinite(d)):
        raise ValueError(f"output {k!r}: non-finite values in the ONNX or JAX output")
      worst = max(worst, float(d.max(initial=0.0)))
  return worst


# ------------------------------------------------------------------------------------- export
def save(model, path: str) -> list[str]:
  """Write ``model`` to ``path`` (weights in ``<name>.data`` beside it past protobuf's 2 GiB);
  returns the file names written, relative to the directory."""
  import onnx

  name = os.path.basename(path)
  if model.ByteSize() > _EXTERNAL_DATA_BYTES:
    onnx.save_model(
      model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=name + ".data"
    )
    return [name, name + ".data"]
  onnx.save_model(model, path)
  return [name]


def signature(source) -> dict:
  """The input signature of the graph (what export.json records)."""
  return {
    name: {"dtype": INPUT_DTYPE, "shape": list(DIMS), "max_positions": length_limit(source)}
    for name in INPUT_NAMES
  }


def export(source, out_dir: str, precision: str) -> dict:
  """Write ``out_dir/model.onnx`` of ``source`` at ``precision`` (``fp32`` | ``fp16``), check it
  in onnxruntime against the JAX fp32 forward on :func:`probe_shapes`, and return the extra
  manifest fields."""
  import onnxruntime

  if precision == "int8":  # QDQ graph of a quantized model directory (kdjax.export.onnx_qdq)
    from kdjax.export import onnx_qdq

    return onnx_qdq.export(source, out_dir)
  check_supported(source, precision)
  t0 = time.perf_counter()
  model = convert(source, precision)
  seconds = time.perf_counter() - t0
  path = os.path.join(out_dir, MODEL_FILE)
  files = save(model, path)
  shapes = probe_shapes(source)
  batches = probe_inputs(source, shapes)
  got = ort_outputs(session(path), batches, source.output_names)
  ref = jax_outputs(source, batches, "fp32")
  extra = {
    "max_abs_diff": max_abs_diff(got, ref),
    "max_abs_diff_reference": "JAX fp32 forward",
    "files": files,
    "input_signature": signature(source),
    "output_signature": {
      name: {
        "dtype": "float32",
        "shape": ["batch", *(["length"] if v.ndim == 3 else []), v.shape[-1]],
      }
      for name, v in got[0].items()
    },
    "opset": opset_of(model),
    "probe_shapes": [list(s) for s in shapes],
    "onnxruntime": onnxruntime.__version__,
    "jax2onnx": _version("jax2onnx"),
    "convert_seconds": round(seconds, 2),
  }
  if precision != "fp32":
    # the conversion's own error, separate from fp16's rounding against fp32
    extra["max_abs_diff_same_precision"] = max_abs_diff(
      got, traced_outputs(source, batches, precision)
    )
  return extra


def _version(dist: str) -> str | None:
  from importlib import metadata

  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


__all__ = [
  "INPUT_DTYPE",
  "INPUT_NAMES",
  "OPSET",
  "PRECISIONS",
  "check_graph",
  "convert",
  "dead_inputs",
  "export",
  "float64_tensors",
  "probe_inputs",
  "probe_shapes",
  "session",
  "traced_forward",
]
