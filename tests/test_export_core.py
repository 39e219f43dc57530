"""kdjax.export core: the CLI, export.json, the jax (jax.export) and hf formats."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers_classification import write_tiny_model

from kdjax.export import __main__ as cli
from kdjax.export import jax_export, manifest

LABELS = ("neg", "neu", "pos")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("models")
  cls = write_tiny_model(
    str(d / "cls"), head="classification", num_labels=3, id2label=tuple(enumerate(LABELS))
  )
  enc = write_tiny_model(str(d / "enc"), head="none", seed=1)
  return {"classification": cls, "none": enc, "root": d}


@pytest.fixture(scope="module")
def exports(models):
  out = {}
  for head in ("classification", "none"):
    for fmt, prec in (("jax", "fp32"), ("hf", "fp32")):
      path = str(models["root"] / f"{head}_{fmt}_{prec}")
      assert cli.main([models[head], path, f"--format={fmt}", f"--precision={prec}"]) == 0
      out[head, fmt, prec] = path
  path = str(models["root"] / "classification_jax_bf16")
  assert cli.main([models["classification"], path, "--format=jax", "--precision=bf16"]) == 0
  out["classification", "jax", "bf16"] = path
  return out


def _batch(rng, b, n, vocab):
  ids = rng.integers(5, vocab, size=(b, n)).astype(np.int32)
  mask = np.ones((b, n), np.int32)
  mask[0, n // 2 :] = 0  # one padded row
  types = np.zeros((b, n), np.int32)
  types[:, n // 2 :] = 1
  return ids, mask, types


@pytest.mark.parametrize("head", ["classification", "none"])
def test_manifest_fields(models, exports, head):
  for fmt in ("jax", "hf"):
    m = manifest.read(exports[head, fmt, "fp32"])
    for key in manifest.REQUIRED:
      assert key in m, key
    assert m["format"] == fmt and m["precision"] == "fp32" and m["head"] == head
    assert m["source"] == os.path.abspath(models[head]) and m["kind"] == "hf"
    assert m["max_length"] == 32
    assert m["labels"] == (list(LABELS) if head == "classification" else None)
    assert m["output_names"] == (
      ["logits"] if head == "classification" else ["last_hidden_state", "pooled_output"]
    )
    assert set(m["input_signature"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert m["max_abs_diff"] <= 1e-5
    for f in m["files"]:
      assert os.path.isfile(os.path.join(exports[head, fmt, "fp32"], f)), f
  m = manifest.read(exports[head, "jax", "fp32"])
  assert "model.jax_export" in m["files"] and "tokenizer/vocab.txt" in m["files"]
  assert "model.safetensors" in manifest.read(exports[head, "hf", "fp32"])["files"]


@pytest.mark.parametrize(
  "head,precision,tol",
  [("classification", "fp32", 1e-5), ("none", "fp32", 1e-5), ("classification", "bf16", 2e-2)],
)
def test_jax_artefact_matches_forward(models, exports, head, precision, tol):
  """Symbolic batch and length: two batch sizes and two lengths through one artefact."""
  import jax

  from kdjax.export.source import load_source

  src = load_source(models[head])
  ref = jax.jit(src.forward_fn("fp32"))
  run = jax_export.load(exports[head, "jax", precision])
  assert run.max_length == 32
  rng = np.random.default_rng(0)
  for b, n in ((1, 5), (7, 32)):
    args = _batch(rng, b, n, src.config.vocab_size)
    got, want = run(*args), ref(src.params, *args)
    assert set(got) == set(src.output_names)
    for k in src.output_names:
      assert got[k].shape == want[k].shape and got[k].dtype == np.float32
      np.testing.assert_allclose(got[k], np.asarray(want[k]), atol=tol, rtol=0)
  if precision == "bf16":
    assert 0 < manifest.read(exports[head, "jax", precision])["max_abs_diff"] <= tol
  with pytest.raises(ValueError, match="max_length 32"):
    run(np.ones((1, 33), np.int32))


def test_jax_loader_runs_without_model_code(exports):
  out = exports["classification", "jax", "fp32"]
  code = (
    "import sys, numpy as np\n"
    "from kdjax.export.jax_export import load\n"
    f"run = load({out!r})\n"
    "r = run(np.array([[2, 10, 11, 3], [2, 12, 3, 0]], np.int32),"
    " np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32))\n"
    "assert r['logits'].shape == (2, 3), r['logits'].shape\n"
    "bad = [m for m in sys.modules if m.startswith(('kdjax.models', 'flax', 'kdjax.export.source'))]\n"
    "assert not bad, bad\n"
    "print('OK')\n"
  )
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "OK" in p.stdout


def test_hf_export_round_trips(models, exports):
  import jax

  from kdjax.export.source import load_source

  for head in ("classification", "none"):
    a, b = load_source(models[head]), load_source(exports[head, "hf", "fp32"])
    assert b.head == head and b.labels == a.labels
    args = _batch(np.random.default_rng(1), 2, 9, a.config.vocab_size)
    want, got = a.forward_fn()(a.params, *args), b.forward_fn()(b.params, *args)
    for k in want:
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=1e-6)
  del jax


def test_out_exists_and_errors(models, exports, tmp_path, capsys):
  out = exports["classification", "jax", "fp32"]
  before = sorted(os.listdir(out))
  assert cli.main([models["classification"], out, "--format=jax"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "not empty" in err and "--force" in err
  assert len(err.splitlines()) == 1
  assert sorted(os.listdir(out)) == before
  # unsupported precision for hf: one-line error, nothing left behind
  bad = tmp_path / "hf16"
  assert cli.main([models["classification"], str(bad), "--format=hf", "--precision=fp16"]) == 2
  assert "fp32 only" in capsys.readouterr().err
  assert not bad.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".hf16")]
  # a missing model directory
  assert cli.main([str(tmp_path / "nope"), str(tmp_path / "o"), "--format=jax"]) == 2
  assert "not a directory" in capsys.readouterr().err
  # an empty OUT is fine; --force replaces a non-empty one
  empty = tmp_path / "empty"
  empty.mkdir()
  assert cli.main([models["none"], str(empty), "--format=hf"]) == 0
  assert cli.main([models["none"], str(empty), "--format=hf", "--force"]) == 0
  assert manifest.read(str(empty))["head"] == "none"


def test_unavailable_format_is_one_line(monkeypatch, models, tmp_path, capsys):
  import kdjax.export as ex

  monkeypatch.setitem(ex.FORMATS, "jax", ("kdjax.export.jax_export", ("no_such_pkg_kdjax",), ""))
  assert cli.main([models["none"], str(tmp_path / "o"), "--format=jax"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "no_such_pkg_kdjax" in err and len(err.splitlines()) == 1


def test_help_lists_formats():
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run(
    [sys.executable, "-m", "kdjax.export", "--help"], capture_output=True, text=True, env=env
  )
  assert p.returncode == 0
  for word in ("savedmodel", "jax", "onnx", "tensorrt", "hf", "--precision", "--step", "--force"):
    assert word in p.stdout, word


def test_export_does_not_import_heavy_packages():
  code = (
    "import sys, kdjax.export, kdjax.export.__main__, kdjax.export.jax_export, "
    "kdjax.export.hf, kdjax.export.manifest\n"
    "bad = [m for m in ('tensorflow', 'torch', 'onnx', 'jax2onnx') if m in sys.modules]\n"
    "assert not bad, bad\n"
  )
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert p.returncode == 0, p.stderr[-2000:]
