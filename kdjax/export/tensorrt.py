"""TensorRT engines built from the ONNX export with the TensorRT Python API.

  src = load_source("runs/tnews")
  shapes = collect_shapes(src, texts=dev_texts, batch_size=32)   # or probe shapes
  extra = export(src, "out/trt", "fp16", shapes=shapes)

writes into ``out_dir``:

- ``model.onnx``: the FP32 graph of :mod:`kdjax.export.onnx` (int32 ``input_ids``,
  ``attention_mask``, ``token_type_ids`` ``[batch, length]``, opset 17, LayerNorm as the native
  ``LayerNormalization`` op, which TensorRT keeps in float32 under the FP16 flag);
- ``shapes.json``: the min / opt / max ``batch`` and ``length`` of the optimisation profile and
  where they came from (the seed's ``--collect_shape``: a run over real inputs);
- ``model.plan``: the serialized engine (one optimisation profile covering ``shapes.json``).

Precisions: ``fp32`` (no flag) and ``fp16`` (the FP32 graph + ``BuilderFlag.FP16``: TensorRT picks
fp16 kernels per layer, which is more accurate than parsing the fp16 ONNX). ``int8`` takes a
quantized model directory (``quantization.json``, ``python -m kdjax.compress.quantize``): the
ONNX is then the QDQ graph (:mod:`kdjax.export.onnx_qdq`, checked in onnxruntime against the
simulated-INT8 JAX model) and the builder sets ``BuilderFlag.INT8`` + ``BuilderFlag.FP16``:
explicit quantization (the scales come from the Q/DQ nodes, no calibrator; the float parts may
run in fp16). Untested here (no TensorRT on CI); ``trtexec --int8 --fp16`` is the same build.

An engine is specific to the GPU model and TensorRT version that built it: build it on the
serving machine. TensorRT cannot be installed on kdjax's CI / dev machines (its wheels come from
NVIDIA's index): there :func:`export` raises :class:`TensorRTUnavailable` before doing any work,
and ``--format=onnx`` gives the same graph to build elsewhere with :func:`build_engine` or
``trtexec --onnx=model.onnx --minShapes=... --optShapes=... --maxShapes=...``
(:func:`trtexec_command` prints that line from ``shapes.json``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

PRECISIONS = ("fp32", "fp16")
PLAN_FILE = "model.plan"
SHAPES_FILE = "shapes.json"
DEFAULT_WORKSPACE_BYTES = 4 << 30


class TensorRTUnavailable(ImportError):
  """The ``tensorrt`` Python package is not installed."""


def require_tensorrt():
  """The ``tensorrt`` module, or :class:`TensorRTUnavailable` naming the missing package."""
  try:
    import tensorrt
  except ImportError as e:
    raise TensorRTUnavailable(
      "TensorRT export needs the `tensorrt` Python package (NVIDIA's wheels: "
      "`pip install tensorrt` with NVIDIA's index reachable, and a CUDA GPU), which is not "
      f"installed here ({e}). Export --format=onnx and build the engine where TensorRT exists "
      "(kdjax.export.tensorrt.build_engine or trtexec)."
    ) from e
  return tensorrt


def check_supported(source, precision: str) -> None:
  from kdjax.export import onnx as onnx_export

  if precision == "int8":
    from kdjax.compress import quant

    if not quant.has_quantization(source.path):
      raise ValueError(
        f"TensorRT INT8 builds the QDQ ONNX of a quantized model directory; {source.path} has "
        f"no {quant.FILE} (python -m kdjax.compress.quantize writes one), or use fp16"
      )
    onnx_export.check_supported(source, "fp32")
    return
  if precision not in PRECISIONS:
    raise ValueError(
      f"TensorRT export supports precision {'|'.join(PRECISIONS)}, not {precision!r}"
    )
  onnx_export.check_supported(source, "fp32")


# ---------------------------------------------------------------------------- shape collection
def _summary(values: Sequence[int], opt: int) -> dict[str, int]:
  lo, hi = int(min(values)), int(max(values))
  return {"min": lo, "opt": int(min(max(opt, lo), hi)), "max": hi}


def shapes_from(observed: Iterable[tuple[int, int]], source: str = "observed") -> dict:
  """min / opt / max of ``batch`` and ``length`` over ``observed`` ``(batch, length)`` shapes:
  opt is the most frequent batch (the serving batch size) and the median length (rounded up to a
  multiple of 8, clipped to the observed range), where TensorRT tunes its kernels."""
  observed = [(int(b), int(n)) for b, n in observed]
  if not observed:
    raise ValueError("no shapes to collect (empty input)")
  if any(b < 1 or n < 1 for b, n in observed):
    raise ValueError(f"shapes must be positive, got {observed}")
  batches = [b for b, _ in observed]
  lengths = [n for _, n in observed]
  opt_batch = Counter(batches).most_common(1)[0][0]
  median = int(np.ceil(np.median(lengths)))
  opt_length = -(-median // 8) * 8
  return {
    "batch": _summary(batches, opt_batch),
    "length": _summary(lengths, opt_length),
    "source": source,
    "num_batches": len(observed),
  }


def collect_shapes(
  source=None,
  texts: Sequence[str | tuple[str, str]] | None = None,
  batch_size: int = 32,
  max_length: int | None = None,
  tokenizer=None,
  probe_shapes: Sequence[tuple[int, int]] | None = None,
) -> dict:
  """The dynamic-shape profile of real inputs (the seed's ``--collect_shape``).

  With ``texts`` (strings, or ``(a, b)`` pairs): tokenize them in batches of ``batch_size`` with
  ``source.tokenizer`` (or ``tokenizer``), padded to each batch's longest row and truncated to
  ``max_length`` (default ``source.max_length``), as a serving loop would, and record every
  batch's shape. Without texts: ``probe_shapes`` (default: the ONNX export's probe shapes).
  Returns :func:`shapes_from`'s dict (``{"batch": {min, opt, max}, "length": {...}, ...}``)."""
  if texts is None:
    if probe_shapes is None:
      if source is None:
        raise ValueError("collect_shapes needs texts, probe_shapes or a source")
      from kdjax.export import onnx as onnx_export

      probe_shapes = onnx_export.probe_shapes(source)
    return shapes_from(probe_shapes, source="probe")
  tok = tokenizer if tokenizer is not None else getattr(source, "tokenizer", None)
  if tok is None:
    raise ValueError("collect_shapes over texts needs a tokenizer (or a source)")
  limit = max_length if max_length is not None else getattr(source, "max_length", None)
  if limit is None:
    raise ValueError("collect_shapes over texts needs max_length (or a source)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  texts = list(texts)
  observed = []
  for i in range(0, len(texts), batch_size):
    chunk = texts[i : i + batch_size]
    pairs = [t for t in chunk if isinstance(t, tuple | list)]
    if pairs and len(pairs) != len(chunk):
      raise ValueError("texts mix single sentences and pairs")
    if pairs:
      enc = tok.encode(
        [a for a, _ in pairs], [b for _, b in pairs], max_seq_length=limit, padding="longest"
      )
    else:
      enc = tok.encode(chunk, max_seq_length=limit, padding="longest")
    observed.append(enc["input_ids"].shape)
  return shapes_from(observed, source=f"{len(texts)} texts, batch_size {batch_size}")


def profile_shapes(shapes: dict, input_names: Sequence[str]) -> dict[str, dict[str, list[int]]]:
  """``{input: {"min": [b, l], "opt": [...], "max": [...]}}`` for an optimisation profile."""
  b, n = shapes["batch"], shapes["length"]
  return {name: {k: [b[k], n[k]] for k in ("min", "opt", "max")} for name in input_names}


def trtexec_command(onnx_path: str, plan_path: str, shapes: dict, precision: str) -> str:
  """The equivalent ``trtexec`` line (to build the engine on another machine)."""
  from kdjax.export.onnx import INPUT_NAMES

  prof = profile_shapes(shapes, INPUT_NAMES)

  def arg(k):
    return ",".join(f"{name}:{'x'.join(map(str, p[k]))}" for name, p in prof.items())

  flag = {"fp16": " --fp16", "int8": " --int8 --fp16"}.get(precision, "")
  return (
    f"trtexec --onnx={onnx_path} --saveEngine={plan_path}{flag} "
    f"--minShapes={arg('min')} --optShapes={arg('opt')} --maxShapes={arg('max')}"
  )


# ------------------------------------------------------------------------------- engine build
def build_engine(
  onnx_path: str,
  plan_path: str,
  shapes: dict,
  precision: str = "fp16",
  workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> dict:
  """Parse ``onnx_path`` into a TensorRT network, build one optimisation profile from ``shapes``
  and write the serialized engine to ``plan_path``. Returns build facts for the manifest."""
  trt = require_tensorrt()
  if precision not in (*PRECISIONS, "int8"):
    raise ValueError(f"TensorRT precision {precision!r}: choose {'|'.join(PRECISIONS)}")
  logger = trt.Logger(trt.Logger.WARNING)
  builder = trt.Builder(logger)
  flags = 0
  explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
  if explicit is not None:  # required by TensorRT 8, deprecated (the only mode) in 10
    flags |= 1 << int(explicit)
  network = builder.create_network(flags)
  parser = trt.OnnxParser(network, logger)
  if not parser.parse_from_file(os.path.abspath(onnx_path)):
    errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
    raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

  config = builder.create_builder_config()
  config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
  if precision == "fp16":
    if not builder.platform_has_fast_fp16:
      raise RuntimeError("this GPU has no fast fp16: build the fp32 engine instead")
    config.set_flag(trt.BuilderFlag.FP16)
  if precision == "int8":  # explicit quantization: the scales are the graph's Q/DQ nodes
    config.set_flag(trt.BuilderFlag.INT8)
    if builder.platform_has_fast_fp16:
      config.set_flag(trt.BuilderFlag.FP16)

  names = [network.get_input(i).name for i in range(network.num_inputs)]
  profile = builder.create_optimization_profile()
  for name, p in profile_shapes(shapes, names).items():
    profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
  config.add_optimization_profile(profile)

  serialized = builder.build_serialized_network(network, config)
  if serialized is None:
    raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
  with open(plan_path, "wb") as f:
    f.write(bytes(serialized))
  return {
    "tensorrt": trt.__version__,
    "engine_inputs": names,
    "engine_outputs": [network.get_output(i).name for i in range(network.num_outputs)],
    "workspace_bytes": int(workspace_bytes),
  }


def export(
  source,
  out_dir: str,
  precision: str,
  shapes: dict | None = None,
  texts: Sequence[str | tuple[str, str]] | None = None,
  batch_size: int = 32,
) -> dict:
  """``out_dir/model.onnx`` (FP32, checked in onnxruntime), ``shapes.json`` (``shapes``, else
  :func:`collect_shapes` over ``texts``, else the probe shapes) and ``model.plan`` (built at
  ``precision``). ``max_abs_diff`` is the ONNX graph's against the JAX fp32 forward (onnxruntime);
  the engine itself is not run here."""
  check_supported(source, precision)
  require_tensorrt()  # before any work: a clear error where TensorRT is absent
  from kdjax.export import onnx as onnx_export

  if precision == "int8":  # the QDQ graph with float biases (TensorRT takes no int32 Q/DQ)
    from kdjax.export import onnx_qdq

    extra = onnx_qdq.export(source, out_dir, quantize_bias=False)
  else:
    extra = onnx_export.export(source, out_dir, "fp32")
  if shapes is None:
    shapes = collect_shapes(source, texts=texts, batch_size=batch_size)
  limit = onnx_export.length_limit(source)
  if shapes["length"]["max"] > limit:
    raise ValueError(f"shape profile length max {shapes['length']['max']} > the model's {limit}")
  with open(os.path.join(out_dir, SHAPES_FILE), "w") as f:
    json.dump(shapes, f, indent=2)
  onnx_path = os.path.join(out_dir, onnx_export.MODEL_FILE)
  plan_path = os.path.join(out_dir, PLAN_FILE)
  built = build_engine(onnx_path, plan_path, shapes, precision)
  extra.update(built)
  extra["files"] = [PLAN_FILE, *extra["files"], SHAPES_FILE]
  extra["shapes"] = shapes
  extra["max_abs_diff_reference"] = (
    "JAX fp32 forward vs the FP32 ONNX in onnxruntime (not the engine)"
    if precision != "int8"
    else "simulated-INT8 JAX model vs the QDQ ONNX in onnxruntime (not the engine)"
  )
  extra["trtexec"] = trtexec_command(onnx_export.MODEL_FILE, PLAN_FILE, shapes, precision)
  return extra


__all__ = [
  "PRECISIONS",
  "TensorRTUnavailable",
  "build_engine",
  "collect_shapes",
  "export",
  "profile_shapes",
  "require_tensorrt",
  "shapes_from",
  "trtexec_command",
]
