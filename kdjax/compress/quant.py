"""INT8 post-training static quantization: the scheme, fake quantization, the simulated-INT8
model and ``quantization.json``.

Scheme (PaddleSlim ``quant_post_static`` with ``weight_quantize_type='channel_wise_abs_max'``,
``onnx_format=True``, as PP-MiniLM quantizes its ``matmul`` / ``matmul_v2`` ops):

* Quantized: the six encoder matmuls of every layer (:data:`LINEARS`: ``query``, ``key``,
  ``value``, ``attention_output``, ``intermediate`` (FFN in), ``output`` (FFN out)). Embeddings,
  LayerNorm, softmax, the ``Q K^T`` / ``P V`` products, biases, the pooler and the classifier
  stay float32.
* Symmetric int8, zero point 0. A threshold ``T`` gives the scale ``s = T / 127`` (float32);
  ``q = clip(round_half_even(x / s), -128, 127)`` and the fake-quantized value is ``q * s``:
  exactly ONNX ``QuantizeLinear`` (int8, zero point 0) followed by ``DequantizeLinear``.
* Activations (the input of each quantized matmul): one per-tensor threshold from calibration
  (``kdjax.compress.calibrate``: ``abs_max`` / ``avg`` / ``mse`` / ``hist``).
* Weights: per output channel abs_max, ``s_j = max_i |W[i, j]| / 127`` (kernel ``[in, out]``,
  so ONNX ``axis=1``); ``|W| <= T`` so weights only take -127..127. A channel (or activation)
  whose threshold is 0 uses :data:`MIN_THRESHOLD` instead (its values are all 0 anyway).

The simulated-INT8 model (:func:`quantize_model`) is the kdjax model with those six
``nnx.Linear`` modules of each layer swapped for :class:`QuantLinear`, which holds the same
``kernel`` / ``bias`` params (the params dict keeps its structure and float values) and
fake-quantizes its input and its kernel. ``bert.py`` is untouched. (XLA's float32 division
on CPU may differ from IEEE division by an ulp, so the JAX side's scales / dequantized weights
can differ from the NumPy ones written to ``quantization.json`` and the ONNX initializers by an
ulp: about 1e-9 on the tiny models' logits.)

``quantization.json`` (:data:`FILE`, beside ``kdjax_model.json`` in a quantized model
directory; the directory is otherwise the float kdjax model)::

  {"format": "kdjax-quantization-1",
   "scheme": {...},                       # bits, symmetric, qmin/qmax, granularity
   "algorithm": "mse", "batch_nums": 4, "batch_size": 8, ...   # how it was calibrated
   "layers": {"0": {"query": {"activation_threshold": T, "activation_scale": T/127,
                              "weight_scale": [s_0, ..., s_out-1]}, ...}, ...}}

Scales are written as the decimal of their float32 value (read back exactly). ``weight_scale``
is what :func:`weight_scales` gives for the directory's kernels (checked on load).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FILE = "quantization.json"
FORMAT = "kdjax-quantization-1"
LINEARS = ("query", "key", "value", "attention_output", "intermediate", "output")
QMIN, QMAX = -128, 127
QRANGE = 127.0  # symmetric: the threshold maps to +-127
MIN_THRESHOLD = 1e-8  # an all-zero tensor / channel (PaddleSlim's mse uses 1e-8 too)
SCHEME = {
  "bits": 8,
  "symmetric": True,
  "zero_point": 0,
  "qmin": QMIN,
  "qmax": QMAX,
  "scale": "threshold / 127",
  "rounding": "half to even",
  "activation": "per-tensor, calibrated (input of each quantized matmul)",
  "weight": "per-output-channel abs_max (kernel [in, out], ONNX axis 1)",
  "quantized": list(LINEARS),
  "float": ["embeddings", "LayerNorm", "softmax", "QK^T", "PV", "biases", "pooler", "classifier"],
}

__all__ = [
  "FILE",
  "LINEARS",
  "QuantLinear",
  "QuantParams",
  "encoder_linears",
  "fake_quant",
  "fake_quant_weight",
  "has_quantization",
  "quantize_model",
  "read",
  "scale_of",
  "weight_scales",
  "write",
]


# ------------------------------------------------------------------------------ arithmetic
def scale_of(threshold) -> np.float32:
  """The float32 scale of a threshold: ``max(T, MIN_THRESHOLD) / 127``."""
  t = np.float32(max(float(threshold), MIN_THRESHOLD))
  return np.float32(t / np.float32(QRANGE))


def fake_quant(x, scale):
  """``clip(round(x / s), -128, 127) * s`` in float32 (QuantizeLinear + DequantizeLinear)."""
  x = jnp.asarray(x, jnp.float32)
  s = jnp.asarray(scale, jnp.float32)
  return jnp.clip(jnp.round(x / s), QMIN, QMAX) * s


def weight_scales(kernel) -> np.ndarray:
  """Per-output-channel scales of a kernel ``[in, out]``: ``max_i |W[i, j]| / 127`` (float32;
  an all-zero channel gets ``MIN_THRESHOLD / 127``)."""
  k = np.asarray(kernel, np.float32)
  t = np.maximum(np.max(np.abs(k), axis=0), np.float32(MIN_THRESHOLD))
  return (t / np.float32(QRANGE)).astype(np.float32)


def quantize_weight(kernel) -> tuple[np.ndarray, np.ndarray]:
  """(int8 ``[in, out]``, float32 scales ``[out]``) of a kernel."""
  k = np.asarray(kernel, np.float32)
  s = weight_scales(k)
  q = np.clip(np.round(k / s[None, :]), QMIN, QMAX).astype(np.int8)
  return q, s


def fake_quant_weight(kernel):
  """The kernel through its per-output-channel int8 grid (traceable)."""
  k = jnp.asarray(kernel, jnp.float32)
  t = jnp.maximum(jnp.max(jnp.abs(k), axis=0), jnp.float32(MIN_THRESHOLD))
  s = t / jnp.float32(QRANGE)
  return jnp.clip(jnp.round(k / s[None, :]), QMIN, QMAX) * s[None, :]


# ------------------------------------------------------------------------------ the model
def encoder_linears(model: nnx.Module) -> dict[tuple[int, str], nnx.Module]:
  """``{(layer, name): module}`` of the quantizable matmuls of a kdjax model (any head)."""
  from kdjax.models.bert import encoder_of

  enc = encoder_of(model)
  out = {}
  for i in range(len(enc.layer)):
    layer = enc.layer[i]
    for name in LINEARS:
      mod = getattr(layer, name, None)
      if mod is None or not hasattr(mod, "kernel"):
        raise ValueError(f"encoder layer {i} has no linear {name!r}: not a kdjax BERT layer")
      out[i, name] = mod
  return out


class QuantLinear(nnx.Module):
  """``y = fq(x; s_x) @ fq_w(W) + b``: an ``nnx.Linear``'s params (the same ``kernel`` /
  ``bias`` Param objects) with its input fake-quantized per tensor and its kernel per output
  channel; the product and the bias in the linear's compute dtype (float32 for kdjax models
  loaded for evaluation)."""

  def __init__(self, linear: nnx.Module, act_scale: float):
    self.kernel = linear.kernel
    self.bias = linear.bias
    self.dtype = linear.dtype
    self.precision = linear.precision
    self.act_scale = float(np.float32(act_scale))

  def __call__(self, x):
    dt = self.dtype or x.dtype
    xq = fake_quant(x, np.float32(self.act_scale)).astype(dt)
    w = fake_quant_weight(self.kernel[...]).astype(dt)
    y = jax.lax.dot_general(xq, w, (((xq.ndim - 1,), (0,)), ((), ())), precision=self.precision)
    if self.bias is not None:
      y = y + jnp.reshape(self.bias[...].astype(dt), (1,) * (y.ndim - 1) + (-1,))
    return y


class QuantParams:
  """Calibrated activation thresholds ``{(layer, name): T}`` plus how they were made."""

  def __init__(self, thresholds: Mapping[tuple[int, str], float], meta: Mapping | None = None):
    self.thresholds = {(int(i), str(n)): float(t) for (i, n), t in thresholds.items()}
    self.meta = dict(meta or {})

  def scale(self, layer: int, name: str) -> np.float32:
    return scale_of(self.thresholds[layer, name])

  def check_model(self, model: nnx.Module, where: str = "quantization") -> None:
    have = set(encoder_linears(model))
    if have != set(self.thresholds):
      missing = sorted(have - set(self.thresholds))[:4]
      extra = sorted(set(self.thresholds) - have)[:4]
      raise ValueError(
        f"{where}: the scales do not fit the model (missing {missing}, unexpected {extra}): "
        "calibrated for another architecture"
      )

  def to_json(self, model: nnx.Module) -> dict:
    layers: dict = {}
    for (i, name), mod in encoder_linears(model).items():
      t = self.thresholds[i, name]
      layers.setdefault(str(i), {})[name] = {
        "activation_threshold": float(np.float32(t)),
        "activation_scale": float(scale_of(t)),
        "weight_scale": [float(s) for s in weight_scales(mod.kernel[...])],
      }
    return {"format": FORMAT, "scheme": SCHEME, **self.meta, "layers": layers}


def quantize_model(model: nnx.Module, qp: QuantParams) -> nnx.Module:
  """The simulated-INT8 model: ``model`` (modified in place and returned) with every
  quantizable linear replaced by a :class:`QuantLinear` holding its params."""
  from kdjax.models.bert import encoder_of

  qp.check_model(model)
  enc = encoder_of(model)
  for (i, name), mod in encoder_linears(model).items():
    if isinstance(mod, QuantLinear):
      raise ValueError("the model is already quantized")
    setattr(enc.layer[i], name, QuantLinear(mod, qp.scale(i, name)))
  return model


# ---------------------------------------------------------------------------- the file
def write(directory: str, qp: QuantParams, model: nnx.Module) -> str:
  path = os.path.join(directory, FILE)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(qp.to_json(model), f, indent=1)
    f.write("\n")
  return path


def has_quantization(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, FILE))


def read(directory_or_file: str, model: nnx.Module | None = None) -> QuantParams:
  """The :class:`QuantParams` of a quantized model directory (or a ``quantization.json``).
  With ``model``: checks that the layers fit and that the recorded weight scales are those of
  the model's kernels (else the file belongs to other weights)."""
  path = directory_or_file
  if os.path.isdir(path):
    path = os.path.join(path, FILE)
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(d, dict) or d.get("format") != FORMAT:
    raise ValueError(f"{path}: not a kdjax quantization file (format {FORMAT!r})")
  thresholds = {}
  for i, layer in d["layers"].items():
    for name, entry in layer.items():
      thresholds[int(i), name] = float(entry["activation_threshold"])
  meta = {k: v for k, v in d.items() if k not in ("format", "scheme", "layers")}
  qp = QuantParams(thresholds, meta)
  if model is not None:
    qp.check_model(model, path)
    for (i, name), mod in encoder_linears(model).items():
      want = np.asarray(d["layers"][str(i)][name]["weight_scale"], np.float32)
      got = weight_scales(mod.kernel[...])
      if want.shape != got.shape or not np.array_equal(want, got):
        raise ValueError(
          f"{path}: the weight scales of layer {i} {name} are not those of the model's "
          "weights: the file was calibrated for another model"
        )
  return qp
