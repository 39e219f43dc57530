"""ONNX export (jax2onnx -> onnxruntime) and the TensorRT engine path on tiny random models."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("jax2onnx")

from helpers_classification import write_tiny_model

from kdjax.export import onnx as kx_onnx
from kdjax.export import tensorrt as kx_trt
from kdjax.export.source import load_source

SHAPES = ((1, 5), (7, 32))  # batch 1 and 7, length 5 and the tiny model's max


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("export_onnx")
  return {
    head: load_source(write_tiny_model(str(root / head), head=head))
    for head in ("classification", "none")
  }


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
  """{(head, precision): (out_dir, manifest extra)} for both heads at fp32 and fp16."""
  res = {}
  for head, src in sources.items():
    for precision in ("fp32", "fp16"):
      out = tmp_path_factory.mktemp(f"{head}_{precision}")
      res[head, precision] = (str(out), kx_onnx.export(src, str(out), precision))
  return res


BOUND = {"fp32": 1e-5, "fp16": 1e-2}  # fp16: weights and matmuls in half, vs the fp32 JAX model


@pytest.mark.parametrize("head", ["classification", "none"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_matches_jax(sources, exported, head, precision):
  import onnx

  src = sources[head]
  out, extra = exported[head, precision]
  assert extra["files"] == ["model.onnx"]
  assert sorted(os.listdir(out)) == ["model.onnx"]
  assert extra["opset"] == kx_onnx.OPSET >= 17
  assert extra["max_abs_diff"] <= BOUND[precision]
  assert set(extra["input_signature"]) == set(kx_onnx.INPUT_NAMES)
  assert extra["input_signature"]["input_ids"]["dtype"] == "int32"

  path = os.path.join(out, "model.onnx")
  model = onnx.load(path)
  assert kx_onnx.opset_of(model) == extra["opset"]
  assert [i.name for i in model.graph.input] == list(kx_onnx.INPUT_NAMES)
  assert [o.name for o in model.graph.output] == list(src.output_names)
  for i in model.graph.input:
    assert i.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "length"]
  assert kx_onnx.float64_tensors(model) == []
  assert kx_onnx.dead_inputs(model) == []
  ops = {n.op_type for n in model.graph.node}
  assert "LayerNormalization" in ops
  if precision == "fp16":
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)

  # two shapes (dynamic batch and length), independent of the export's own probe
  batches = kx_onnx.probe_inputs(src, SHAPES, seed=1)
  got = kx_onnx.ort_outputs(kx_onnx.session(path), batches, src.output_names)
  ref = kx_onnx.jax_outputs(src, batches, "fp32")
  for g, r, (b, n) in zip(got, ref, SHAPES, strict=True):
    for name in src.output_names:
      assert g[name].dtype == np.float32
      assert g[name].shape == r[name].shape
      assert g[name].shape[0] == b
      assert g[name].ndim == 2 or g[name].shape[1] == n
  assert kx_onnx.max_abs_diff(got, ref) <= BOUND[precision]
  if head == "classification":
    assert ref[1]["logits"].shape == (7, 2)
    labels = [np.argmax(x["logits"], -1) for x in got]
    assert all((a == np.argmax(x["logits"], -1)).all() for a, x in zip(labels, ref, strict=True))
  else:
    assert got[1]["last_hidden_state"].shape == (7, 32, 32)


def test_unsupported_precision_and_length(sources, tmp_path):
  src = sources["classification"]
  with pytest.raises(ValueError, match="bf16"):
    kx_onnx.export(src, str(tmp_path), "bf16")
  with pytest.raises(ValueError, match="precision"):
    kx_onnx.export(src, str(tmp_path), "int4")
  assert os.listdir(tmp_path) == []


def test_graph_checks_catch_float64_and_dead_inputs():
  import onnx
  from onnx import TensorProto, helper

  x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])
  unused = helper.make_tensor_value_info("unused", TensorProto.INT32, ["batch"])
  y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
  nodes = [
    helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
    helper.make_node("Cast", ["x64"], ["y"], to=TensorProto.FLOAT),
  ]
  graph = helper.make_graph(nodes, "g", [x, unused], [y])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  onnx.checker.check_model(model)
  assert kx_onnx.dead_inputs(model) == ["unused"]
  assert any("float64" in s for s in kx_onnx.float64_tensors(model))
  with pytest.raises(ValueError, match="unused inputs"):
    kx_onnx.check_graph(model, ("x", "unused"), ("y",))


def test_training_path_does_not_import_onnx():
  import subprocess

  code = (
    "import sys, kdjax.train, kdjax.export.onnx, kdjax.export.tensorrt;"
    "bad = [m for m in ('onnx', 'onnxruntime', 'jax2onnx', 'tensorrt') if m in sys.modules];"
    "print(bad); sys.exit(1 if bad else 0)"
  )
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------ TensorRT
def test_collect_shapes_over_texts(sources):
  src = sources["classification"]
  texts = ["the film", "a good movie and the man playing the flute", "no wit", "bad"] * 3 + ["a"]
  shapes = kx_trt.collect_shapes(src, texts=texts, batch_size=4)
  assert shapes["num_batches"] == 4
  assert shapes["batch"] == {"min": 1, "opt": 4, "max": 4}
  lengths = [
    src.tokenizer.encode(texts[i : i + 4], max_seq_length=src.max_length, padding="longest")[
      "input_ids"
    ].shape[1]
    for i in range(0, len(texts), 4)
  ]
  assert shapes["length"]["min"] == min(lengths) == 3  # [CLS] a [SEP]
  assert shapes["length"]["max"] == max(lengths)
  assert shapes["length"]["min"] <= shapes["length"]["opt"] <= shapes["length"]["max"]

  long = ["the " * 100]
  assert kx_trt.collect_shapes(src, texts=long, max_length=16)["length"]["max"] == 16
  pairs = kx_trt.collect_shapes(src, texts=[("the film", "good"), ("bad", "no wit")])
  assert pairs["batch"]["max"] == 2

  prof = kx_trt.profile_shapes(shapes, kx_onnx.INPUT_NAMES)
  assert prof["input_ids"]["max"] == [4, shapes["length"]["max"]]
  cmd = kx_trt.trtexec_command("model.onnx", "model.plan", shapes, "fp16")
  assert "--fp16" in cmd and "--maxShapes=input_ids:4x" in cmd


def test_collect_shapes_probe_and_errors(sources):
  src = sources["classification"]
  probe = kx_trt.collect_shapes(src)
  assert probe["source"] == "probe"
  assert probe["batch"]["min"] == 1 and probe["batch"]["max"] == 7
  assert probe["length"]["max"] == src.max_length
  assert kx_trt.shapes_from([(8, 20), (8, 30), (3, 9)])["length"]["opt"] == 24
  with pytest.raises(ValueError, match="empty"):
    kx_trt.collect_shapes(src, texts=[])
  with pytest.raises(ValueError, match="INT8"):
    kx_trt.check_supported(src, "int8")


@pytest.mark.skipif(
  importlib.util.find_spec("tensorrt") is not None, reason="tensorrt installed: see the build test"
)
def test_tensorrt_missing_is_a_clear_error(sources, tmp_path):
  with pytest.raises(kx_trt.TensorRTUnavailable, match="`tensorrt` Python package"):
    kx_trt.export(sources["classification"], str(tmp_path), "fp16")
  assert os.listdir(tmp_path) == []  # nothing written before the check


def test_tensorrt_engine_build(sources, tmp_path):
  pytest.importorskip(
    "tensorrt", reason="TensorRT is not installable on these machines (NVIDIA's wheel index)"
  )
  src = sources["classification"]
  extra = kx_trt.export(src, str(tmp_path), "fp16", texts=["the film", "a good movie"] * 5)
  assert extra["files"] == ["model.plan", "model.onnx", "shapes.json"]
  assert os.path.getsize(tmp_path / "model.plan") > 0
  with open(tmp_path / "shapes.json") as f:
    assert json.load(f)["batch"]["max"] == 10
