"""python -m kdjax.predict on jax, onnx and SavedModel exports and on a model directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax import predict
from kdjax.export import __main__ as cli

LABELS = ("neg", "neu", "pos")
TEXTS = [("the film is good", None), ("a bad movie", "no wit"), ("人我在有", None)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("predict")
  cls = write_tiny_model(
    str(d / "cls"), head="classification", num_labels=3, id2label=tuple(enumerate(LABELS)), seed=3
  )
  enc = write_tiny_model(str(d / "enc"), head="none")
  jx = str(d / "cls_jax")
  assert cli.main([cls, jx, "--format=jax"]) == 0
  ej = str(d / "enc_jax")
  assert cli.main([enc, ej, "--format=jax"]) == 0
  ox = str(d / "cls_onnx")
  assert cli.main([cls, ox, "--format=onnx"]) == 0
  sm = str(d / "cls_savedmodel")
  assert cli.main([cls, sm, "--format=savedmodel"]) == 0
  return {"cls": cls, "enc": enc, "jax": jx, "enc_jax": ej, "onnx": ox, "savedmodel": sm}


def _reference(model_dir):
  from kdjax.export.source import load_source

  src = load_source(model_dir)
  fn = src.forward_fn()
  rows = []
  for t, p in TEXTS:
    e = src.tokenizer.encode(t, p, max_seq_length=src.max_length, padding="longest")
    rows.append(
      np.asarray(
        fn(src.params, e["input_ids"], e["attention_mask"], e["token_type_ids"])["logits"]
      )[0]
    )
  return rows


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("which", ["jax", "cls", "onnx", "savedmodel"])
def test_predict_text(setup, which, tmp_path, capsys):
  want = _reference(setup["cls"])
  argv = [setup[which], "--text", TEXTS[0][0], "--output", str(tmp_path / "o.jsonl")]
  assert predict.main(argv) == 0
  (row,) = _read(tmp_path / "o.jsonl")
  assert row["text"] == TEXTS[0][0]
  assert row["label"] == LABELS[int(np.argmax(want[0]))] and row["label_id"] == np.argmax(want[0])
  np.testing.assert_allclose(row["logits"], want[0], atol=1e-5)
  assert abs(sum(row["probabilities"]) - 1) < 1e-4 and len(row["probabilities"]) == 3
  # stdout when no --output
  assert predict.main([setup[which], "--text", "good", "--text", "bad"]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
  assert [r["text"] for r in lines] == ["good", "bad"]
  assert all(r["label"] in LABELS for r in lines)


@pytest.mark.parametrize("which", ["jax", "onnx", "savedmodel"])
def test_predict_tsv_batched(setup, which, tmp_path):
  want = _reference(setup["cls"])
  tsv = tmp_path / "in.tsv"
  tsv.write_text("".join(t + (f"\t{p}" if p else "") + "\n" for t, p in TEXTS), encoding="utf-8")
  out = tmp_path / "o.jsonl"
  assert (
    predict.main([setup[which], "--input", str(tsv), "--output", str(out), "--batch_size", "2"])
    == 0
  )
  rows = _read(out)
  assert [(r["text"], r.get("text_pair")) for r in rows] == TEXTS
  for r, w in zip(rows, want):
    assert r["label"] == LABELS[int(np.argmax(w))]
    np.testing.assert_allclose(r["logits"], w, atol=1e-5)
  # with a header row, and as JSON lines: the same predictions
  tsv.write_text("text\ttext_pair\nthe film is good\tgood\n", encoding="utf-8")
  assert predict.main([setup[which], "--input", str(tsv), "--output", str(out)]) == 0
  assert _read(out)[0]["text_pair"] == "good"
  js = tmp_path / "in.jsonl"
  js.write_text(json.dumps({"text": "a bad movie", "text_pair": "no wit"}) + "\n", encoding="utf-8")
  assert predict.main([setup[which], "--input", str(js), "--output", str(out)]) == 0
  np.testing.assert_allclose(_read(out)[0]["logits"], want[1], atol=1e-5)


def test_predict_encoder(setup, capsys):
  for which in ("enc_jax", "enc"):
    assert predict.main([setup[which], "--text", "the man"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert row["pooled_dim"] == 32 and row["pooled_norm"] > 0


@pytest.mark.parametrize(
  "name,content,message",
  [
    ("bad.txt", b"ok\n\xff\xfe\n", "bad.txt:2: not valid UTF-8"),
    ("bad.tsv", b"good\n\nfine\n", "bad.tsv:2: empty text"),
    ("bad.tsv", b"a\tb\tc\n", "bad.tsv:1: 3 columns"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', "bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", b'{"text": "ok"}\n{"label": 1}\n', "bad.jsonl:2: no text field"),
  ],
)
def test_bad_input_names_file_and_line(setup, tmp_path, capsys, name, content, message):
  f = tmp_path / name
  f.write_bytes(content)
  assert predict.main([setup["jax"], "--input", str(f)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err


def test_predict_usage_errors(setup, capsys):
  assert predict.main([setup["jax"]]) == 2
  assert "--text" in capsys.readouterr().err
  assert predict.main([setup["jax"], "--text", "a", "--max_length", "99"]) == 2
  assert "max_length" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    predict.main(["--help"])
  assert e.value.code == 0


def test_exports_carry_their_tokenizer(setup):
  import os

  from kdjax.export import manifest

  for which in ("jax", "onnx", "savedmodel"):
    m = manifest.read(setup[which])
    assert m["tokenizer_dir"] == "tokenizer"
    assert os.path.isfile(os.path.join(setup[which], "tokenizer", "vocab.txt"))
    assert "tokenizer/vocab.txt" in m["files"]
  # an ONNX export runs without its source model (tokenizer from the export itself)
  assert predict.Predictor(setup["onnx"]).tokenizer.get_vocab() == (
    predict.Predictor(setup["cls"]).tokenizer.get_vocab()
  )


def test_skip_bad_lines_counts_them(setup, tmp_path, capsys):
  f = tmp_path / "mixed.jsonl"
  f.write_bytes(b'{"text": "good"}\n{"text": \n{"label": 1}\n\xff\n{"text": "bad"}\n')
  out = tmp_path / "o.jsonl"
  argv = [setup["onnx"], "--input", str(f), "--output", str(out), "--skip_bad_lines"]
  assert predict.main(argv) == 0
  assert [r["text"] for r in _read(out)] == ["good", "bad"]
  err = capsys.readouterr().err
  assert "skipped 3 bad line(s); first: " in err and "mixed.jsonl:2: not valid JSON" in err
  f.write_bytes(b"\n\n")
  assert predict.main([setup["onnx"], "--input", str(f), "--skip_bad_lines"]) == 2


def test_task_input_tsv_output_and_metrics(setup, tmp_path, capsys):
  """--task reads the task's own layout (SST-2 dev) and reports its metrics; TSV output."""
  from kdjax.data.task import get_classification_task

  d = tmp_path / "m"
  model = write_tiny_model(str(d), head="classification", num_labels=2, seed=5)
  out = tmp_path / "dev.tsv"
  argv = [model, "--task", "SST-2", "--data_dir", f"{GLUE}/SST-2", "--output", str(out)]
  assert predict.main(argv) == 0
  lines = out.read_text(encoding="utf-8").splitlines()
  header = lines[0].split("\t")
  assert header[:1] == ["text"] and "gold" in header and "label" in header
  rows = [dict(zip(header, x.split("\t"), strict=True)) for x in lines[1:]]
  examples = get_classification_task("SST-2").load(f"{GLUE}/SST-2", "dev")
  assert len(rows) == len(examples)
  assert [r["gold"] for r in rows] == [str(e.label) for e in examples]
  acc = np.mean([r["label"] == r["gold"] for r in rows])
  err = capsys.readouterr().err
  assert f"accuracy={acc:.4f}" in err
  # a model whose label names are not the task's is refused
  argv = [setup["cls"], "--task", "SST-2", "--data_dir", f"{GLUE}/SST-2"]
  assert predict.main(argv) == 2
  assert "labels" in capsys.readouterr().err


def test_savedmodel_max_length_is_fixed(setup, capsys):
  assert predict.main([setup["savedmodel"], "--text", "a", "--max_length", "8"]) == 2
  assert "SavedModel tokenizes to its own max_length" in capsys.readouterr().err


def test_model_directories_run_on_the_cpu_kernel_exports_never(setup):
  """Predicting from a model directory runs in this process: the CPU matmul kernel where it
  applies (as training does); ``forward_fn``'s default (what every export traces) never names it."""
  import jax

  from kdjax.export.source import load_source
  from kdjax.kernels import cpu_matmul

  src = load_source(setup["cls"])
  ids = np.full((2, 8), 5, np.int32)
  args = (src.params, ids, np.ones_like(ids), np.zeros_like(ids))
  portable = jax.jit(src.forward_fn("fp32")).lower(*args).as_text()
  p = predict.Predictor(setup["cls"])
  local = p.forward.lower(*args).as_text()
  assert "kdjax_onednn" not in portable
  if cpu_matmul.dense_enabled(np.float32):
    assert "kdjax_onednn" in local
  got = p._run(*args[1:])["logits"]
  want = jax.jit(src.forward_fn("fp32"))(*args)["logits"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
