"""INT8 ONNX with explicit QuantizeLinear / DequantizeLinear (QDQ) from a quantized model.

  python -m kdjax.export runs/q/int8 exports/int8 --format=onnx --precision=int8

The source must be a quantized model directory (``kdjax.compress.quantize``: the float model +
``quantization.json``). The float graph comes from kdjax's ONNX exporter
(:func:`kdjax.export.onnx.convert`, opset 17), then :func:`rewrite` edits it with the onnx API.
For each of the ``6 x num_layers`` quantized matmuls (``quant.LINEARS``):

* the activation input goes through ``QuantizeLinear -> DequantizeLinear`` (per-tensor float32
  scale ``T / 127`` from calibration, int8 zero point 0);
* the float weight initializer is replaced by an int8 initializer (per-output-channel abs_max)
  and a ``DequantizeLinear`` with per-channel scales and int8 zero points 0 (``axis`` = the
  output-channel axis of the node's weight: 1 for ``MatMul`` / ``Gemm`` with ``transB=0``);
* (``quantize_bias=True``, opt-in) the Gemm's bias becomes int32 at scale
  ``s_x * s_w[j]`` + ``DequantizeLinear`` (``axis=0``), as onnxruntime's own quantizer writes it:
  this is what lets onnxruntime fuse the node into its integer ``QGemm`` kernel. It moves each
  output by at most ``s_x * s_w[j] / 2`` (~1e-6 here) from the simulated model, whose bias is
  float as in PaddleSlim. TensorRT takes no int32 Q/DQ, so its INT8 build keeps float biases.

Which ONNX ``MatMul`` / ``Gemm`` node is which kdjax layer is decided by the weight initializer's
values (shape and exact float32 bytes, transposed where ``transB=1``) against the kdjax kernels,
never by node order; should two kdjax kernels be bit-identical, the nodes holding that value are
given to those layers in graph order. Every kdjax matmul must be found exactly once, else an
error. Embeddings (Gather), LayerNorm, Softmax, the attention Einsums, biases, the pooler and
the classifier stay float32.

Runtimes: with float biases (the default) onnxruntime 1.31 (CPU EP) keeps ``DequantizeLinear`` +
float ``Gemm``: exactly the simulated-INT8 numbers, no speed-up. With ``quantize_bias=True`` it
runs every quantized matmul as its integer ``QGemm`` (com.microsoft; :func:`optimized_op_types`
lists what it runs); not the default because TensorRT takes no int32 Q/DQ and the int32 bias
departs from PaddleSlim's float bias (checked on the tiny test model only).
TensorRT builds the float-bias file in explicit-quantization mode (``--int8``, see
``kdjax/export/tensorrt.py``) and fuses each ``DQ -> Gemm`` into an INT8 GEMM. The export's numerics check compares onnxruntime with the
simulated-INT8 JAX model (``kdjax.compress.quant``) on the probe batches: ``max_abs_diff``
(outputs) must stay within ``max(BOUND, NOISE_FACTOR x flip_noise)``, where ``flip_noise`` is
how far the simulated model moves from itself under a 1-2 ulp change of its activation scales
(:func:`flip_noise`; why: :data:`BOUND`); every activation QuantizeLinear is checked exactly
against NumPy on onnxruntime's own inputs (:func:`check_quantizers`); whether the predicted
labels agree is recorded, and ``max_abs_diff_fp32`` records the distance to the float model.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from kdjax.compress.quant import LINEARS

_LINEAR_ORDER = {n: i for i, n in enumerate(LINEARS)}
MODEL_FILE = "model.onnx"
# The numerics check at export: |onnxruntime int8 - simulated INT8 JAX| on the probe outputs
# must stay within max(BOUND, NOISE_FACTOR x the flip noise), where the flip noise is how far the
# simulated model moves from itself when every activation scale moves by 1 or 2 float32 ulps
# (:func:`flip_noise`). Why not a fixed bound: two correct implementations differ in float32
# summation order (~1e-7 relative), which moves the rare activation that sits within that of a
# rounding boundary one int8 step; a step in an early layer changes later activations, and on the
# random length-512 probe ids a 6-layer model amplifies that until whole tokens differ (measured
# on the fine-tuned MiniLM-L6: 5 flipped activations of 1.4 M in layer 0, half of them in layer 4).
# The logits then differ by 0.02-0.06 for onnxruntime and by the same for a 1-ulp change of the
# scales inside JAX (0.032-0.038), so that amount is the model's own sensitivity, not an export
# fault. A wrong scale, zero point, axis or quantized tensor moves every activation of a layer and
# lands far above it; :func:`check_quantizers` also checks each QuantizeLinear exactly.
BOUND = 1e-4
NOISE_FACTOR = 3.0
NOISE_ULPS = (1, -1, 2, -2)
QUANTIZED_OPS = ("MatMul", "Gemm")


def _digest(a: np.ndarray) -> tuple:
  a = np.ascontiguousarray(a, np.float32)
  return (a.shape, hashlib.sha1(a.tobytes()).hexdigest())


def check_signature(model, source) -> None:
  """ValueError unless the graph's inputs are the model's (names, int32, [batch, length])."""
  import onnx

  from kdjax.export import onnx as kx

  g = model.graph
  inits = {t.name for t in g.initializer}
  got = []
  for i in g.input:
    if i.name in inits:
      continue
    tt = i.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
    got.append((i.name, onnx.TensorProto.DataType.Name(tt.elem_type).lower(), dims))
  want = [(n, kx.INPUT_DTYPE, list(kx.DIMS)) for n in kx.INPUT_NAMES]
  if got != want:
    raise ValueError(
      f"the ONNX graph's input signature {got} differs from the model's {want}: it was not "
      "exported from this model by kdjax (python -m kdjax.export MODEL OUT --format=onnx)"
    )


def match_nodes(model, kernels: dict) -> dict:
  """``{(layer, name): (node index, transB)}``: the MatMul / Gemm node whose weight
  initializer holds each kdjax kernel ``[in, out]`` (see the module docstring)."""
  from onnx import helper, numpy_helper

  g = model.graph
  inits = {t.name: t for t in g.initializer}
  by_value: dict = {}
  for key in sorted(kernels, key=lambda k: (k[0], _LINEAR_ORDER[k[1]])):
    by_value.setdefault(_digest(kernels[key]), []).append(key)
  found: dict = {}
  cache: dict = {}
  for idx, node in enumerate(g.node):
    if node.op_type not in QUANTIZED_OPS or len(node.input) < 2 or node.input[1] not in inits:
      continue
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
      continue
    trans_b = int(attrs.get("transB", 0))
    name = node.input[1]
    if name not in cache:
      cache[name] = numpy_helper.to_array(inits[name])
    w = cache[name]
    if w.ndim != 2 or w.dtype != np.float32:
      continue
    keys = by_value.get(_digest(w.T if trans_b else w))
    if not keys:
      continue
    free = [k for k in keys if k not in found]
    if not free:
      raise ValueError(
        f"ONNX node {node.name!r} holds the weights of {keys[0]}, already matched to another "
        "node: the graph has more quantizable matmuls than the model"
      )
    found[free[0]] = (idx, trans_b)
  missing = sorted(set(kernels) - set(found))
  if missing:
    raise ValueError(
      f"the ONNX graph has no MatMul/Gemm holding the weights of {len(missing)} kdjax "
      f"matmul(s) (first: layer {missing[0][0]} {missing[0][1]}): it was exported from "
      "other weights than the quantized model's"
    )
  return found


def rewrite(model, kernels: dict, act_scales: dict, quantize_bias: bool = False):
  """A copy of the float ``model`` with QDQ around the matched matmuls (module docstring).
  ``kernels``: ``{(layer, name): float32 [in, out]}``; ``act_scales``: ``{(layer, name):
  float32 scale}``. ``quantize_bias``: a Gemm's float bias becomes int32 at scale
  ``s_x * s_w[j]`` + DequantizeLinear (what onnxruntime needs to fuse the node into its integer
  ``QGemm``; kept float where it would overflow int32). Returns ``(ModelProto, {(layer, name):
  node name})``."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  from kdjax.compress import quant

  out = onnx.ModelProto()
  out.CopyFrom(model)
  g = out.graph
  inits = {t.name: t for t in g.initializer}
  matched = match_nodes(out, kernels)
  at = {idx: (key, tb) for key, (idx, tb) in matched.items()}
  new_nodes, new_inits, names = [], [], {}
  replaced_weights = set()
  for idx, node in enumerate(g.node):
    if idx in at:
      (layer, lname), trans_b = at[idx]
      p = _node_prefix(layer, lname)
      names[layer, lname] = node.name
      # activation: per-tensor QDQ
      s = np.asarray(act_scales[layer, lname], np.float32).reshape(())
      new_inits += [
        numpy_helper.from_array(s, f"{p}_x_scale"),
        numpy_helper.from_array(np.zeros((), np.int8), f"{p}_x_zero_point"),
      ]
      x = node.input[0]
      new_nodes += [
        helper.make_node(
          "QuantizeLinear",
          [x, f"{p}_x_scale", f"{p}_x_zero_point"],
          [f"{p}_x_q"],
          name=f"{p}_x_quantize",
        ),
        helper.make_node(
          "DequantizeLinear",
          [f"{p}_x_q", f"{p}_x_scale", f"{p}_x_zero_point"],
          [f"{p}_x_dq"],
          name=f"{p}_x_dequantize",
        ),
      ]
      # weight: int8 initializer + per-channel DequantizeLinear
      q, ws = quant.quantize_weight(kernels[layer, lname])
      if trans_b:
        q = np.ascontiguousarray(q.T)
      new_inits += [
        numpy_helper.from_array(q, f"{p}_w_int8"),
        numpy_helper.from_array(ws, f"{p}_w_scale"),
        numpy_helper.from_array(np.zeros(ws.shape, np.int8), f"{p}_w_zero_point"),
      ]
      new_nodes.append(
        helper.make_node(
          "DequantizeLinear",
          [f"{p}_w_int8", f"{p}_w_scale", f"{p}_w_zero_point"],
          [f"{p}_w_dq"],
          name=f"{p}_w_dequantize",
          axis=0 if trans_b else 1,
        )
      )
      replaced_weights.add(node.input[1])
      if (
        quantize_bias and node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in inits
      ):
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        sb = (s * ws).astype(np.float32)
        qb = np.round(b / sb)
        if b.shape == ws.shape and np.all(np.abs(qb) < 2**31 - 1):
          new_inits += [
            numpy_helper.from_array(qb.astype(np.int32), f"{p}_b_int32"),
            numpy_helper.from_array(sb, f"{p}_b_scale"),
            numpy_helper.from_array(np.zeros(sb.shape, np.int32), f"{p}_b_zero_point"),
          ]
          new_nodes.append(
            helper.make_node(
              "DequantizeLinear",
              [f"{p}_b_int32", f"{p}_b_scale", f"{p}_b_zero_point"],
              [f"{p}_b_dq"],
              name=f"{p}_b_dequantize",
              axis=0,
            )
          )
          replaced_weights.add(node.input[2])
          node.input[2] = f"{p}_b_dq"
      node.input[0] = f"{p}_x_dq"
      node.input[1] = f"{p}_w_dq"
    new_nodes.append(node)
  del g.node[:]
  g.node.extend(new_nodes)
  still_used = {i for n in g.node for i in n.input}
  keep = [t for t in g.initializer if t.name not in replaced_weights or t.name in still_used]
  del g.initializer[:]
  g.initializer.extend(keep + new_inits)
  assert all(t.data_type != TensorProto.DOUBLE for t in new_inits)
  onnx.checker.check_model(out)
  return out, names


def quantized_source(source):
  """(QuantParams, the simulated-INT8 kdjax model) of a quantized source directory."""
  from kdjax.compress import quant

  if not quant.has_quantization(source.path):
    raise ValueError(
      f"{source.path}: no {quant.FILE}: --precision=int8 needs a quantized model directory "
      "(python -m kdjax.compress.quantize ... --workdir=OUT writes OUT/int8)"
    )
  qp = quant.read(source.path, source.model())
  return qp, quant.quantize_model(source.model(), qp)


def qdq_model(float_onnx, source, qp=None, quantize_bias: bool = False):
  """The QDQ ModelProto of a float kdjax ONNX graph (a ModelProto or a path) for the quantized
  ``source``; the graph's input signature must be the model's."""
  import onnx

  from kdjax.compress import quant

  if isinstance(float_onnx, str | os.PathLike):
    float_onnx = onnx.load(os.fspath(float_onnx))
  check_signature(float_onnx, source)
  if qp is None:
    qp = quantized_source(source)[0]
  model = source.model()
  lin = quant.encoder_linears(model)
  kernels = {k: np.asarray(m.kernel[...], np.float32) for k, m in lin.items()}
  return rewrite(float_onnx, kernels, act_scales(qp), quantize_bias)


def simulated_outputs(qmodel, source, batches) -> list[dict[str, np.ndarray]]:
  """The simulated-INT8 JAX model's outputs (``source.output_names``) on each batch."""
  import jax
  from flax import nnx

  graphdef, state = nnx.split(qmodel)

  @jax.jit
  def run(ids, mask, types):
    return nnx.merge(graphdef, state)(ids, attention_mask=mask, token_type_ids=types)

  res = []
  for x in batches:
    out = run(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    if source.head in ("classification", "mlm"):
      res.append({"logits": np.asarray(out.logits, np.float32)})
    else:
      hidden = np.asarray(out.last_hidden_state, np.float32)
      pooled = out.pooler_output if out.pooler_output is not None else hidden[:, 0]
      res.append({"last_hidden_state": hidden, "pooled_output": np.asarray(pooled, np.float32)})
  return res


def _fp32_outputs(source, batches) -> list[dict[str, np.ndarray]]:
  """``source.forward_fn("fp32")`` on each batch, jitted (eager costs a compile per op)."""
  import jax

  fn = jax.jit(source.forward_fn("fp32"))
  out = []
  for x in batches:
    y = fn(source.params, x["input_ids"], x["attention_mask"], x["token_type_ids"])
    out.append({k: np.asarray(v) for k, v in y.items()})
  return out


def optimized_op_types(path: str) -> dict[str, int]:
  """The op types onnxruntime (CPU EP, default optimizations) runs for the file."""
  import collections
  import tempfile

  import onnx
  import onnxruntime as ort

  with tempfile.TemporaryDirectory() as d:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = os.path.join(d, "opt.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    m = onnx.load(opts.optimized_model_filepath)
  return dict(collections.Counter(n.op_type for n in m.graph.node))


def act_scales(qp) -> dict:
  """``{(layer, name): float32 activation scale}`` of every calibrated matmul (``qp`` is checked
  against the model when read: :func:`quantized_source`)."""
  return {k: qp.scale(*k) for k in qp.thresholds}


def _node_prefix(layer: int, name: str) -> str:
  """The name prefix of the QDQ nodes and initializers :func:`rewrite` adds for one matmul."""
  return f"q{layer}_{name}"


def flip_noise(source, qp, batches, ref=None, ulps=NOISE_ULPS) -> float:
  """How far the simulated-INT8 model's outputs move when every activation threshold is
  multiplied by ``1 + k * 2**-23`` (``k`` in ``ulps``): the max over ``k`` of the max abs
  difference from ``ref`` (the unperturbed outputs). This is the size of the differences that
  rounding-boundary flips alone cause (see :data:`BOUND`)."""
  from kdjax.compress import quant
  from kdjax.export import onnx as kx

  if ref is None:
    ref = simulated_outputs(quant.quantize_model(source.model(), qp), source, batches)
  worst = 0.0
  for k in ulps:
    f = 1.0 + k * 2.0**-23
    th = {key: float(np.float32(t) * np.float32(f)) for key, t in qp.thresholds.items()}
    m = quant.quantize_model(source.model(), quant.QuantParams(th, qp.meta))
    worst = max(worst, kx.max_abs_diff(simulated_outputs(m, source, batches), ref))
  return worst


def check_quantizers(model, scales: dict, batches) -> int:
  """Exact check of every activation QuantizeLinear of a QDQ graph in onnxruntime: with the
  float input ``x`` and int8 output ``q`` of each exposed as graph outputs, ``q`` must equal
  ``clip(round_half_even(x / s), -128, 127)`` computed in NumPy float32 with the scale of
  ``scales`` (a wrong scale, zero point or rounding mode fails here, whatever the model's
  sensitivity). Returns the number of QuantizeLinear nodes checked."""
  import onnx
  import onnxruntime as ort
  from onnx import helper

  from kdjax.compress import quant

  m = onnx.ModelProto()
  m.CopyFrom(model)
  g = m.graph
  have = {o.name for o in g.output}
  pairs = []
  for (layer, name), s in scales.items():
    q = f"{_node_prefix(layer, name)}_x_q"
    node = next((n for n in g.node if n.op_type == "QuantizeLinear" and n.output[0] == q), None)
    if node is None:
      raise ValueError(f"the QDQ graph has no activation QuantizeLinear for layer {layer} {name}")
    pairs.append((node.input[0], q, np.float32(s), (layer, name)))
    for t, ty in ((node.input[0], onnx.TensorProto.FLOAT), (q, onnx.TensorProto.INT8)):
      if t not in have:
        g.output.append(helper.make_tensor_value_info(t, ty, None))
        have.add(t)
  sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
  names = [o.name for o in sess.get_outputs()]
  for x in batches:
    res = dict(zip(names, sess.run(None, x), strict=True))
    for xin, q, s, key in pairs:
      want = np.clip(np.round(res[xin].astype(np.float32) / s), quant.QMIN, quant.QMAX)
      bad = int(np.sum(want != res[q].astype(np.float32)))
      if bad:
        raise ValueError(
          f"INT8 ONNX check failed: onnxruntime's QuantizeLinear of layer {key[0]} {key[1]} "
          f"differs from round(x / {float(s):.6g}) in {bad} of {want.size} values"
        )
  return len(pairs)


def export(source, out_dir: str, quantize_bias: bool = False) -> dict:
  """``out_dir/model.onnx`` (QDQ) of a quantized source; checked in onnxruntime against the
  simulated-INT8 JAX model. Returns the manifest fields."""
  import onnxruntime

  from kdjax.export import onnx as kx

  if source.head not in kx.HEADS:
    raise ValueError(f"ONNX export supports heads {'|'.join(kx.HEADS)}, not {source.head!r}")
  qp, qmodel = quantized_source(source)
  t0 = time.perf_counter()
  float_model = kx.convert(source, "fp32")
  model, names = qdq_model(float_model, source, qp, quantize_bias)
  seconds = time.perf_counter() - t0
  path = os.path.join(out_dir, MODEL_FILE)
  files = kx.save(model, path)
  shapes = kx.probe_shapes(source)
  batches = kx.probe_inputs(source, shapes)
  got = kx.ort_outputs(kx.session(path), batches, source.output_names)
  ref = simulated_outputs(qmodel, source, batches)
  diff = kx.max_abs_diff(got, ref)
  noise = flip_noise(source, qp, batches, ref)
  bound = max(BOUND, NOISE_FACTOR * noise)
  if diff > bound:
    raise ValueError(
      f"INT8 ONNX check failed: onnxruntime differs from the simulated-INT8 JAX model by {diff:.3g}"
      f" (bound {bound:.3g} = max({BOUND}, {NOISE_FACTOR} x flip noise {noise:.3g}))"
    )
  quantizers = check_quantizers(model, act_scales(qp), batches[:1])
  agree = None
  if source.head == "classification":  # recorded (probe ids are random: near-ties possible)
    agree = all(
      (np.argmax(a["logits"], -1) == np.argmax(b["logits"], -1)).all()
      for a, b in zip(got, ref, strict=True)
    )
  return {
    "max_abs_diff": diff,
    "max_abs_diff_bound": bound,
    "flip_noise": noise,
    "quantizers_checked": quantizers,
    "max_abs_diff_reference": "simulated-INT8 JAX model (kdjax.compress.quant)",
    "max_abs_diff_fp32": kx.max_abs_diff(got, _fp32_outputs(source, batches)),
    "labels_agree": agree,
    "files": files,
    "input_signature": kx.signature(source),
    "opset": kx.opset_of(model),
    "probe_shapes": [list(s) for s in shapes],
    "quantization": {
      **{k: v for k, v in qp.meta.items() if k in ("algorithm", "batch_nums", "batch_size")},
      "quantized_nodes": len(names),
      "format": "QDQ (QuantizeLinear/DequantizeLinear), int8, symmetric, per-channel weights",
    },
    "onnxruntime": onnxruntime.__version__,
    "convert_seconds": round(seconds, 2),
  }


__all__ = [
  "BOUND",
  "NOISE_FACTOR",
  "act_scales",
  "check_quantizers",
  "check_signature",
  "export",
  "flip_noise",
  "match_nodes",
  "optimized_op_types",
  "qdq_model",
  "quantized_source",
  "rewrite",
  "simulated_outputs",
]
