"""Meta-KD end to end on tiny models: prep (split_amazon -> extract_embeddings ->
compute_weights -> standardize) -> meta-teacher -> meta-student first -> second -> evaluate,
all through ``python -m kdjax.train``'s ``run`` and ``kdjax.metakd_prep``'s ``main``."""

from __future__ import annotations

import json
import os

import helpers_env
import jax
import numpy as np
import pytest
from helpers_classification import write_tiny_model

from kdjax import metakd_prep
from kdjax.data import metakd as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON = os.path.join(ROOT, "tests", "fixtures", "metakd_amazon", "sorted_data_acl")


def _config(name, arg):
  return helpers_env.config(name, arg)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def senti(tmp_path_factory):
  root = tmp_path_factory.mktemp("metakd")
  data = root / "SENTI"
  assert metakd_prep.main(["split_amazon", f"--input_dir={AMAZON}", f"--output_dir={data}"]) == 0
  enc = write_tiny_model(str(root / "encoder"), head="none", seed=1)
  args = ["extract_embeddings", f"--model={enc}", "--max_seq_length=16", "--batch_size=8"]
  assert (
    metakd_prep.main(args + [f"--input={data}/train.tsv", f"--output={data}/train.embeddings.tsv"])
    == 0
  )
  assert (
    metakd_prep.main(
      ["compute_weights", f"--input={data}/train.embeddings.tsv", f"--output={data}/{M.TRAIN_FILE}"]
    )
    == 0
  )
  # dev = the dev and test splits together (4 + 4 reviews; more domains to score)
  M.write_raw_senti(
    data / "dev_test.tsv", M.read_raw_senti(data / "dev.tsv") + M.read_raw_senti(data / "test.tsv")
  )
  assert (
    metakd_prep.main(
      ["standardize", f"--input={data}/dev_test.tsv", f"--output={data}/{M.DEV_FILE}"]
    )
    == 0
  )
  return {"root": root, "data": str(data), "encoder": enc}


def test_prep_outputs(senti):
  data = senti["data"]
  exs, _names, emb = M.read_senti(os.path.join(data, "train.embeddings.tsv"), embeddings=True)
  assert emb.shape == (len(exs), 32)
  train, _domains = M.read_senti(os.path.join(data, M.TRAIN_FILE), M.DEFAULT_DOMAINS)
  assert [e.id for e in train] == [e.id for e in exs]
  from kdjax.losses.metakd import prototype_scores

  ids = np.array([e.domain for e in exs])
  ref = np.asarray(prototype_scores(emb.astype(np.float32), ids, 4))
  np.testing.assert_allclose([e.weight for e in train], np.maximum(ref, 0), rtol=1e-5)
  dev, _ = M.read_senti(os.path.join(data, M.DEV_FILE), M.DEFAULT_DOMAINS)
  assert dev and {e.weight for e in dev} == {0.0}
  # EasyNLP's pooling (padding included) gives other vectors
  out = os.path.join(senti["root"], "easynlp.tsv")
  metakd_prep.extract_embeddings(
    senti["encoder"], os.path.join(data, "train.tsv"), out, max_seq_length=16, pool="easynlp"
  )
  assert not np.allclose(M.read_senti(out, embeddings=True)[2], emb)


def test_prep_errors(senti, tmp_path, capsys):
  data = senti["data"]
  rc = metakd_prep.main(
    [
      "compute_weights",
      f"--input={data}/train.embeddings.tsv",
      f"--output={tmp_path}/w.tsv",
      "--domains=books,dvd",
    ]
  )
  assert rc == 2
  assert "is not one of the --domains ['books', 'dvd']" in capsys.readouterr().err
  rc = metakd_prep.main(
    [
      "compute_weights",
      f"--input={data}/train.embeddings.tsv",
      f"--output={tmp_path}/w.tsv",
      "--domains=books,dvd,electronics,kitchen,toys",
    ]
  )
  assert rc == 2 and "no rows of the domain(s) ['toys']" in capsys.readouterr().err
  rc = metakd_prep.main(
    [
      "extract_embeddings",
      f"--model={tmp_path}/none",
      f"--input={data}/train.tsv",
      f"--output={tmp_path}/e.tsv",
    ]
  )
  assert rc == 2 and "--model" in capsys.readouterr().err


def _teacher_config(senti, **kw):
  c = _config("metakd_teacher", f"tiny,model={senti['encoder']},data_dir={senti['data']}")
  for k, v in kw.items():
    c[k] = v
  return c


def test_teacher_loss_matches_numpy(senti, tmp_path):
  from kdjax.recipes import metakd_teacher

  c = _teacher_config(senti)
  recipe = metakd_teacher.build(c, None)
  params = recipe.initial_params()
  assert set(params[metakd_teacher.BRANCH]) == {
    "domain_embedding",
    "corrupt_dense",
    "domain_classifier",
  }
  batch = next(recipe.train_data(0, 1))
  loss, m = jax.jit(recipe.loss_fn)(params, None, batch, None)
  out = recipe.student.bind(recipe.student_params(params))(
    batch["input_ids"],
    attention_mask=batch["attention_mask"],
    token_type_ids=batch["token_type_ids"],
  )
  z = np.asarray(out.logits, np.float64)
  hid, mask = np.asarray(out.last_hidden_state, np.float64), batch["attention_mask"]
  content = (hid[:, 1:] * mask[:, 1:, None]).sum(1) / mask[:, 1:].sum(1, keepdims=True)
  br = jax.tree.map(lambda x: np.asarray(x, np.float64), params[metakd_teacher.BRANCH])
  dom = batch["domain_ids"]
  h = np.tanh(
    (br["domain_embedding"][dom] + content) @ br["corrupt_dense"]["kernel"]
    + br["corrupt_dense"]["bias"]
  )
  dz = h @ br["domain_classifier"]["kernel"] + br["domain_classifier"]["bias"]
  from kdjax.losses.metakd import shuffle_domains

  k_shuffle, _ = jax.random.split(jax.random.key(0))
  targets = np.asarray(shuffle_domains(dom, k_shuffle))

  def ce(logits, y):
    zz = logits - logits.max(-1, keepdims=True)
    return -(zz - np.log(np.exp(zz).sum(-1, keepdims=True)))[np.arange(len(y)), y]

  w = batch["weights"]
  assert np.all(w > 0) and not np.allclose(w, 1)
  per = ce(z, batch["labels"]) + 0.5 * ce(dz, targets)
  np.testing.assert_allclose(float(loss), (w * per).sum() / w.sum(), rtol=1e-4)
  assert {"ce", "domain_ce", "accuracy"} <= set(m)


def test_pipeline_end_to_end(senti, tmp_path):
  from kdjax.train import run

  data = senti["data"]
  # meta-teacher: 32 train rows / batch 4 = 8 steps per epoch, 2 epochs
  wt = str(tmp_path / "meta_teacher")
  state = run(_teacher_config(senti, num_train_epochs=2.0), wt)
  assert "domain_branch" in state["params"]
  rows = _metrics(wt)
  evals = [r for r in rows if "eval/dev/accuracy" in r]
  assert evals and {"eval/dev/dvd/accuracy", "eval/dev/kitchen/accuracy"} <= set(evals[-1])
  assert evals[-1]["eval/score"] == evals[-1]["eval/dev/accuracy"]
  train_rows = [r for r in rows if "loss" in r]
  assert train_rows[-1]["step"] == 16 and "domain_ce" in train_rows[-1]
  export = os.path.join(wt, "export")
  for f in ("config.json", "model.safetensors", "metakd_domain_branch.npz", "metakd.json"):
    assert os.path.exists(os.path.join(export, f)), f
  with open(os.path.join(export, "metakd.json")) as f:
    assert json.load(f)["domains"] == list(M.DEFAULT_DOMAINS)
  with np.load(os.path.join(export, "metakd_domain_branch.npz")) as z:
    np.testing.assert_allclose(
      z["corrupt_dense/kernel"],
      np.asarray(state["params"]["domain_branch"]["corrupt_dense"]["kernel"]),
    )

  # meta-student stage first from the export; a random 1-layer student (2 heads, width 16)
  def student(stage, **kw):
    c = _config("metakd_student", f"tiny,{stage},genre=dvd,data_dir={data}")
    c.teacher.path = export
    for k, v in kw.items():
      c[k] = v
    return c

  c1 = student("first", num_train_epochs=4.0)
  c1.student.num_hidden_layers, c1.student.hidden_size = 1, 16
  c1.student.intermediate_size = 32
  w1 = str(tmp_path / "first")
  s1 = run(c1, w1)
  assert {"proj", "domain_branch"} <= set(s1["params"])
  rows1 = [r for r in _metrics(w1) if "loss" in r]
  assert {"attention_mse", "hidden_mse", "embedding_mse", "domain_mse"} <= set(rows1[0])
  assert 0.5 / (1 + 0) >= rows1[0]["domain_expertise"] > 1 / (1 + np.e)
  assert rows1[-1]["loss"] < rows1[0]["loss"]
  assert not any("eval/dev/accuracy" in r for r in _metrics(w1))  # no evaluation in stage first
  # trained on the genre's rows only: 4 epochs of n_dvd // 4 steps
  n_dvd = sum(e.domain == 1 for e in M.read_senti(os.path.join(data, M.TRAIN_FILE))[0])
  assert rows1[-1]["step"] == 4 * (n_dvd // 4)

  # stage second from stage first's export; per-domain dev, score = the genre's accuracy
  c2 = student("second", num_train_epochs=2.0)
  c2.student.path = os.path.join(w1, "export")
  w2 = str(tmp_path / "second")
  run(c2, w2)
  evals2 = [r for r in _metrics(w2) if "eval/dev/accuracy" in r]
  assert evals2 and "soft_ce" in next(r for r in _metrics(w2) if "loss" in r)
  last = evals2[-1]
  assert last["eval/score"] == last["eval/dev/dvd/accuracy"]

  # evaluate: accuracy per domain of the final student
  out = tmp_path / "eval.json"
  rc = metakd_prep.main(
    [
      "evaluate",
      f"--model={w2}/export",
      f"--data_dir={data}",
      "--max_seq_length=16",
      f"--output={out}",
    ]
  )
  assert rc == 0
  res = json.loads(out.read_text())
  assert "accuracy" in res and any(k.endswith("/accuracy") for k in res)

  # the teacher workdir works as teacher.path too (best checkpoint's domain branch)
  from kdjax.recipes import metakd_student

  c3 = student("first")
  c3.teacher.path = wt
  c3.student.num_hidden_layers, c3.student.hidden_size = 1, 16
  c3.student.intermediate_size = 32
  r3 = metakd_student.build(c3, None)
  assert r3.init_frozen()["domain_branch"]["domain_embedding"].shape == (4, 32)


def test_student_errors(senti, tmp_path):
  from kdjax.recipes import metakd_student

  enc = senti["encoder"]
  c = _config("metakd_student", f"tiny,genre=toys,data_dir={senti['data']}")
  c.teacher.path = enc
  with pytest.raises(ValueError, match="'genre'='toys' is not a domain"):
    metakd_student.build(c, None)
  c = _config("metakd_student", f"tiny,data_dir={senti['data']}")
  with pytest.raises(ValueError, match="'genre' is not set"):
    metakd_student.build(c, None)
  cls = write_tiny_model(str(tmp_path / "cls"), head="classification")
  c = _config("metakd_student", f"tiny,genre=books,data_dir={senti['data']}")
  c.teacher.path = cls
  with pytest.raises(ValueError, match="no Meta-KD domain branch"):
    metakd_student.build(c, None)
  c.stage = "third"
  with pytest.raises(ValueError, match="'stage'='third'"):
    metakd_student.build(c, None)


def test_teacher_exact_resume(senti, tmp_path):
  """8 steps straight == the same run resumed from its step-4 checkpoint (the domain branch,
  the data position and the per-step domain shuffles included)."""
  import shutil

  from kdjax.train import run

  c = _teacher_config(senti, max_steps=8, save_steps=4, eval_steps=0, keep_checkpoints=3)
  w = str(tmp_path / "run")
  straight = jax.tree.map(np.asarray, run(c, w)["params"])
  shutil.rmtree(os.path.join(w, "checkpoints", "8"))
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["4"]
  resumed = run(
    _teacher_config(senti, max_steps=8, save_steps=4, eval_steps=0, keep_checkpoints=3), w
  )["params"]
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(x, np.asarray(y))


def test_train_cli_one_line_error(senti, tmp_path):
  """The documented command line: a genre not in the data is a one-line error, exit 2."""
  import subprocess
  import sys

  cmd = [
    sys.executable,
    "-m",
    "kdjax.train",
    f"--config=configs/metakd_student.py:tiny,first,genre=toys,data_dir={senti['data']}",
    f"--config.teacher.path={senti['encoder']}",
    f"--workdir={tmp_path / 'w'}",
  ]
  p = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT)
  )
  assert p.returncode == 2, p.stderr[-2000:]
  assert "'genre'='toys' is not a domain of" in p.stderr
  assert "Traceback" not in p.stderr
