"""INT8 QDQ ONNX (kdjax.export.onnx_qdq) and the quantize CLI end to end on a tiny classifier:
which nodes are quantized, onnxruntime against the simulated-INT8 JAX model, signature and
weight mismatches, the CLI's table / directories / errors and kdjax.evaluate on its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("jax2onnx")

from helpers_classification import GLUE, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import quantize as quantize_config

BOUND = 1e-4  # |onnxruntime - simulated INT8 JAX| on logits (float summation order only)


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
  """A quantized model directory (mse, 2 batches) of a random tiny classifier."""
  from kdjax.compress import calibrate as C
  from kdjax.compress import quant as Q
  from kdjax.models import loading, native

  root = tmp_path_factory.mktemp("qonnx")
  d = write_tiny_model(str(root / "float"), head="classification")
  model = loading.load_model(d, head="auto")
  rng = np.random.default_rng(0)
  feats = {
    "input_ids": rng.integers(5, 60, (8, 12)).astype(np.int32),
    "attention_mask": np.ones((8, 12), np.int32),
    "token_type_ids": np.zeros((8, 12), np.int32),
  }
  th = C.calibrate(model, C.calibration_batches(feats, 4, 2), ["mse"], [2])["mse", 2]
  out = str(root / "int8")
  native.save(model, out)
  Q.write(out, Q.QuantParams(th, {"algorithm": "mse", "batch_nums": 2, "batch_size": 4}), model)
  return out


@pytest.fixture(scope="module")
def exported(qdir, tmp_path_factory):
  """python -m kdjax.export QDIR OUT --format=onnx --precision=int8 (in process)."""
  from kdjax.export.__main__ import main

  out = str(tmp_path_factory.mktemp("qexp") / "onnx_int8")
  assert main([qdir, out, "--format=onnx", "--precision=int8"]) == 0
  with open(os.path.join(out, "export.json")) as f:
    return out, json.load(f)


def test_qdq_graph_structure(qdir, exported):
  import onnx
  from onnx import numpy_helper

  from kdjax.compress import quant as Q
  from kdjax.export.source import load_source

  out, manifest = exported
  assert manifest["precision"] == "int8" and manifest["quantization"]["quantized_nodes"] == 12
  model = onnx.load(os.path.join(out, "model.onnx"))
  g = model.graph
  inits = {t.name: t for t in g.initializer}
  producer = {o: n for n in g.node for o in n.output}
  ops = [n.op_type for n in g.node]
  # 6 x 2 layers: activation Q + DQ, weight DQ
  assert ops.count("QuantizeLinear") == 12 and ops.count("DequantizeLinear") == 24

  src = load_source(qdir)
  kernels = {k: np.asarray(m.kernel[...]) for k, m in Q.encoder_linears(src.model()).items()}
  qp = Q.read(qdir)
  quantized = []
  for n in g.node:
    if n.op_type not in ("Gemm", "MatMul"):
      continue
    p0, p1 = producer.get(n.input[0]), producer.get(n.input[1])
    if p1 is None or p1.op_type != "DequantizeLinear":  # float matmul: pooler, classifier
      assert n.input[1] in inits and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
      assert p0 is None or p0.op_type != "DequantizeLinear"
      continue
    # activation: Q -> DQ, per-tensor scale, int8 zero point 0
    assert p0.op_type == "DequantizeLinear"
    q = producer[p0.input[0]]
    assert q.op_type == "QuantizeLinear" and q.input[1] == p0.input[1]
    x_scale = numpy_helper.to_array(inits[q.input[1]])
    zp = numpy_helper.to_array(inits[q.input[2]])
    assert x_scale.shape == () and zp.dtype == np.int8 and zp == 0
    # weight: int8 initializer, per-channel scales on axis 1
    w = numpy_helper.to_array(inits[p1.input[0]])
    ws = numpy_helper.to_array(inits[p1.input[1]])
    assert w.dtype == np.int8 and ws.shape == (w.shape[1],)
    assert {a.name: a.i for a in p1.attribute}["axis"] == 1
    assert inits[n.input[2]].data_type == onnx.TensorProto.FLOAT  # float bias (default)
    # which kdjax layer: the dequantized weight is that kernel's int8 grid (XLA's float32
    # division may differ from IEEE's by an ulp, so the JAX side's scales may too)
    deq = w.astype(np.float32) * ws
    (key,) = [
      k
      for k, kern in kernels.items()
      if kern.shape == deq.shape and np.allclose(deq, Q.fake_quant_weight(kern), rtol=1e-6, atol=0)
    ]
    assert x_scale == qp.scale(*key)
    quantized.append(key)
  assert sorted(quantized) == sorted(kernels)  # exactly the 6 per layer, each once
  # embeddings, LayerNorm, softmax and the attention products read no dequantized tensor
  for n in g.node:
    if n.op_type in ("Gather", "LayerNormalization", "Softmax", "Einsum", "Add", "Erf"):
      assert all(
        producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input
      ), n.name
  # no float weight of a quantized matmul is left behind
  assert not any(
    np.array_equal(numpy_helper.to_array(t), kernels[0, "query"]) for t in inits.values()
  )


def test_onnxruntime_matches_simulated_int8(qdir, exported):
  from kdjax.export import onnx as kx
  from kdjax.export import onnx_qdq
  from kdjax.export.source import load_source

  out, manifest = exported
  assert manifest["max_abs_diff"] <= BOUND and manifest["labels_agree"] is True
  src = load_source(qdir)
  _, qmodel = onnx_qdq.quantized_source(src)
  shapes = ((2, 6), (5, 32))
  batches = kx.probe_inputs(src, shapes, seed=3)
  got = kx.ort_outputs(kx.session(os.path.join(out, "model.onnx")), batches, src.output_names)
  ref = onnx_qdq.simulated_outputs(qmodel, src, batches)
  assert kx.max_abs_diff(got, ref) <= BOUND
  # opt-in int32 biases: onnxruntime runs the 12 quantized matmuls as integer QGemm kernels
  import onnx

  from kdjax.export import onnx as kx_onnx

  assert "QGemm" not in onnx_qdq.optimized_op_types(os.path.join(out, "model.onnx"))
  float_model = kx_onnx.convert(src, "fp32")
  model, _ = onnx_qdq.qdq_model(float_model, src, quantize_bias=True)
  g = model.graph
  b_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.name.endswith("_b_dequantize")]
  assert len(b_dq) == 12
  path = os.path.join(str(out), "..", "int_bias.onnx")
  onnx.save(model, path)
  ran = onnx_qdq.optimized_op_types(path)
  assert ran.get("QGemm") == 12 and "DequantizeLinear" not in ran
  got = kx.ort_outputs(kx.session(path), batches, src.output_names)
  # bias rounding, and on AVX2-only CPUs (no VNNI) the int16 saturation of onnxruntime's u8s8
  # VPMADDUBSW kernel: measured 2.9e-5 here on an AVX2 AMD EPYC, as far from the simulated model
  # as from fp32 (on the AVX-512 VNNI machine of stop 17 it was >10x closer to the simulated model).
  # That it runs integer kernels is the QGemm count above.
  assert kx.max_abs_diff(got, ref) <= 1e-3
  for g, r in zip(got, ref, strict=True):
    assert (np.argmax(g["logits"], -1) == np.argmax(r["logits"], -1)).all()


def test_signature_and_weight_mismatch(qdir, exported, tmp_path):
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  from kdjax.export import onnx_qdq
  from kdjax.export.source import load_source

  src = load_source(qdir)
  ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])
  y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "length"])
  other = helper.make_model(
    helper.make_graph([helper.make_node("Identity", ["input_ids"], ["y"])], "g", [ids], [y]),
    opset_imports=[helper.make_opsetid("", 17)],
  )
  path = str(tmp_path / "other.onnx")
  onnx.save(other, path)
  with pytest.raises(ValueError, match="input signature .* differs from the model's"):
    onnx_qdq.qdq_model(path, src)

  # the float graph of the model, with one encoder weight changed: not this model's weights
  from kdjax.export import onnx as kx

  float_model = kx.convert(src, "fp32")
  onnx_qdq.qdq_model(float_model, src)  # the genuine one is fine
  kernel = np.asarray(src.model().bert.layer[1].output.kernel[...])
  for i, t in enumerate(float_model.graph.initializer):
    a = numpy_helper.to_array(t)
    if a.shape == kernel.shape and np.array_equal(a, kernel):
      float_model.graph.initializer[i].CopyFrom(numpy_helper.from_array(a * 2, t.name))
  with pytest.raises(ValueError, match="layer 1 output.*other weights"):
    onnx_qdq.qdq_model(float_model, src)
  # int8 of a float (not quantized) model directory: a clear error
  from kdjax.export.__main__ import export_model

  plain = write_tiny_model(str(tmp_path / "plain"), head="classification")
  with pytest.raises(ValueError, match="quantization.json"):
    export_model(plain, str(tmp_path / "o"), "onnx", "int8")
  from kdjax.export import tensorrt as kx_trt

  kx_trt.check_supported(src, "int8")  # a quantized directory is accepted for TensorRT INT8


# ------------------------------------------------------------------------------- the CLI
def _cli(args, workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  return subprocess.run(
    [sys.executable, "-m", "kdjax.compress.quantize", f"--workdir={workdir}", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=300,
  )


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
  return write_tiny_model(str(tmp_path_factory.mktemp("qclf")), head="classification")


def test_cli_end_to_end_and_evaluate(clf, tmp_path, capsys):
  from kdjax import evaluate as evaluate_cli
  from kdjax.compress.quantize import run

  wd = str(tmp_path / "q")
  # in process (the flag parsing runs in test_cli_bad_inputs' subprocess)
  c = quantize_config.get_config(
    f"tiny,task=sst-2,model={clf},data_dir={GLUE},algorithms=abs_max;mse,batch_nums=1;2"
  )
  run(c, wd)
  out = capsys.readouterr().out
  assert "| algorithm | 1 batch | 2 batches |" in out and "| mse |" in out
  with open(os.path.join(wd, "results.json")) as f:
    res = json.load(f)
  assert [(x["algorithm"], x["batch_nums"]) for x in res["rows"]] == [
    ("abs_max", 1),
    ("mse", 1),
    ("abs_max", 2),
    ("mse", 2),
  ]
  assert sorted(os.listdir(os.path.join(wd, "scales"))) == [
    "abs_max_b1.json",
    "abs_max_b2.json",
    "mse_b1.json",
    "mse_b2.json",
  ]
  assert res["onnx"]["max_abs_diff_vs_simulated_int8"] <= BOUND and res["onnx"]["labels_agree"]
  q = json.load(open(os.path.join(wd, "int8", "quantization.json")))
  assert (q["algorithm"], q["batch_nums"]) == (
    res["chosen"]["algorithm"],
    res["chosen"]["batch_nums"],
  )
  assert q["calibration_split"] == "train" and set(q["layers"]) == {"0", "1"}
  assert os.path.isfile(os.path.join(wd, "onnx_int8", "model.onnx"))

  # kdjax.evaluate scores the directory as simulated INT8 (the CLI's own dev number)
  rc = evaluate_cli.main(
    [
      "--model",
      os.path.join(wd, "int8"),
      "--task=sst-2",
      f"--data_dir={GLUE}",
      f"--output_dir={tmp_path / 'ev'}",
    ]
  )
  assert rc == 0
  printed = json.loads(capsys.readouterr().out)
  chosen = [
    x
    for x in res["rows"]
    if x["algorithm"] == q["algorithm"] and x["batch_nums"] == q["batch_nums"]
  ]
  assert printed["results"]["dev"]["accuracy"] == pytest.approx(chosen[0]["dev"]["dev/accuracy"])
  rec = json.load(open(tmp_path / "ev" / "SST-2_dev_metrics.json"))
  assert rec["simulated_int8"]["algorithm"] == q["algorithm"]
  # --quantization=off: the float weights, the CLI's float row
  args = ["--model", os.path.join(wd, "int8"), "--task=sst-2", f"--data_dir={GLUE}"]
  assert evaluate_cli.main([*args, f"--output_dir={tmp_path}/ev2", "--quantization=off"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["results"]["dev"]["accuracy"] == pytest.approx(res["float"]["dev/accuracy"])


def test_cli_bad_inputs(clf, tmp_path):
  from kdjax.compress.quantize import run

  r = _cli(
    [
      f"--config=configs/quantize.py:tiny,task=sst-2,data_dir={GLUE},model={clf}",
      "--config.algorithms=abs_max,kl",
    ],
    str(tmp_path / "bad"),
  )
  assert r.returncode == 2
  err = r.stderr.strip().splitlines()[-1]
  assert "config key 'algorithms'" in err and "'kl'" in err and "Traceback" not in r.stderr

  # no calibration data: an empty training split, and a split the task does not have
  data = tmp_path / "glue"
  shutil.copytree(os.path.join(GLUE, "SST-2"), data / "SST-2")
  with open(data / "SST-2" / "train.tsv") as f:
    header = f.readline()
  with open(data / "SST-2" / "train.tsv", "w") as f:
    f.write(header)
  c = quantize_config.get_config(f"tiny,task=sst-2,model={clf},data_dir={data}")
  with pytest.raises(ValueError, match="no calibration data.*'calibration_split'"):
    run(c, str(tmp_path / "w1"))
  c = quantize_config.get_config(
    f"tiny,task=sst-2,model={clf},data_dir={GLUE},calibration_split=nope"
  )
  with pytest.raises(
    ValueError, match="no calibration data: config key 'calibration_split'='nope'"
  ):
    run(c, str(tmp_path / "w2"))
  c = quantize_config.get_config(f"tiny,task=sst-2,model={clf},data_dir={GLUE},batch_size=1000")
  with pytest.raises(ValueError, match="'batch_size'=1000"):
    run(c, str(tmp_path / "w3"))
  c = quantize_config.get_config(f"tiny,task=sst-2,data_dir={GLUE}")
  with pytest.raises(ValueError, match="config key 'model'"):
    run(c, str(tmp_path / "w4"))


def test_export_check_bound_is_calibrated_on_flip_noise(qdir, exported, tmp_path, monkeypatch):
  """The export refuses a graph whose onnxruntime outputs stray from the simulated model by more
  than max(BOUND, NOISE_FACTOR x flip noise), naming both, and records what it measured."""
  from kdjax.export import onnx_qdq
  from kdjax.export.source import load_source

  _, manifest = exported
  noise = manifest["flip_noise"]
  assert 0.0 <= noise < 1e-4  # the tiny model: float rounding only
  assert manifest["max_abs_diff_bound"] == max(onnx_qdq.BOUND, onnx_qdq.NOISE_FACTOR * noise)
  assert manifest["max_abs_diff"] <= manifest["max_abs_diff_bound"]
  assert manifest["quantizers_checked"] == 12
  monkeypatch.setattr(onnx_qdq, "BOUND", -1.0)
  monkeypatch.setattr(onnx_qdq, "NOISE_FACTOR", 0.0)
  (tmp_path / "bad").mkdir()
  with pytest.raises(ValueError, match=r"INT8 ONNX check failed: .* max\(-1.0, 0.0 x flip noise"):
    onnx_qdq.export(load_source(qdir), str(tmp_path / "bad"))


def test_flip_noise_measures_scale_perturbations(qdir):
  """flip_noise is 0 for a 0-ulp change and grows with the perturbation: a 2**20-ulp (~12%)
  change of every scale moves the outputs by much more than a 1-ulp one."""
  from kdjax.export import onnx as kx
  from kdjax.export import onnx_qdq
  from kdjax.export.source import load_source

  src = load_source(qdir)
  qp, _ = onnx_qdq.quantized_source(src)
  batches = kx.probe_inputs(src, kx.probe_shapes(src))
  assert onnx_qdq.flip_noise(src, qp, batches, ulps=(0,)) == 0.0
  small = onnx_qdq.flip_noise(src, qp, batches, ulps=(1, -1))
  big = onnx_qdq.flip_noise(src, qp, batches, ulps=(2**20,))
  assert big > 100 * max(small, 1e-9)


def test_check_quantizers_catches_a_wrong_scale(qdir):
  """check_quantizers passes the exported graph and names the layer whose QuantizeLinear scale
  is not the calibrated one."""
  from onnx import numpy_helper

  from kdjax.export import onnx as kx
  from kdjax.export import onnx_qdq
  from kdjax.export.source import load_source

  src = load_source(qdir)
  qp, _ = onnx_qdq.quantized_source(src)
  model, _ = onnx_qdq.qdq_model(kx.convert(src, "fp32"), src, qp)
  scales = onnx_qdq.act_scales(qp)
  batches = kx.probe_inputs(src, kx.probe_shapes(src))
  assert onnx_qdq.check_quantizers(model, scales, batches) == 12
  for t in model.graph.initializer:
    if t.name == "q1_value_x_scale":
      t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.5), t.name))
  with pytest.raises(ValueError, match=r"QuantizeLinear of layer 1 value differs"):
    onnx_qdq.check_quantizers(model, scales, batches)
