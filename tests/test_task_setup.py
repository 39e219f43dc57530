"""The shared task setup: per-example weights and domain ids in batches, the evaluation
cadence, the one meaning of the model path keys, and TinyBERT's regression target."""

import json
import os

import helpers_env
import jax
import numpy as np
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax.recipes import finetune, task_setup, tinybert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg):
  return helpers_env.config(name, arg)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  return {
    "encoder": write_tiny_model(str(root / "encoder")),
    "sst2": write_tiny_model(str(root / "sst2"), head="classification", seed=4),
    "stsb": write_tiny_model(str(root / "stsb"), head="classification", num_labels=1, seed=5),
  }


def test_batches_carry_weights_and_domains_and_the_loss_uses_them(tmp_path, models_dir):
  c = _config("finetune", f"tiny,task=sst-2,model={models_dir['sst2']},data_dir={GLUE}")
  c.model.seed = 0
  recipe = finetune.build(c, str(tmp_path))
  batch = next(recipe.train_data(0, 1))
  assert batch["weights"].dtype == np.float32 and batch["domain_ids"].dtype == np.int32
  np.testing.assert_array_equal(batch["weights"], 1.0)
  np.testing.assert_array_equal(batch["domain_ids"], 0)
  params = recipe.init_params(jax.random.key(0))
  logits = np.asarray(task_setup.forward(recipe.student, params, batch).logits, np.float64)
  logp = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  per = -logp[np.arange(len(logits)), batch["labels"]]
  for w in ([1.0, 1.0], [0.25, 1.0], [1.0, 0.0]):
    b = dict(batch, weights=np.asarray(w, np.float32))
    # Dropout off (rng None) so that the forward is the same as above.
    loss, _ = recipe.loss_fn(params, None, b, None)
    np.testing.assert_allclose(float(loss), np.sum(np.asarray(w) * per) / np.sum(w), rtol=1e-5)


def test_dev_evaluation_every_eval_steps(tmp_path, models_dir):
  from kdjax.train import run

  c = _config(
    "finetune",
    f"tiny,task=sst-2,model={models_dir['sst2']},data_dir={GLUE},eval_steps=3,max_steps=7",
  )
  run(c, str(tmp_path))
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "eval/score" in r] == [3, 6, 7]
  resolved = json.loads((tmp_path / "config.json").read_text())
  assert (resolved["eval_steps"], resolved["save_steps"], resolved["max_steps"]) == (3, 3, 7)
  assert _config("finetune", "task=sst-2").eval_steps == 100  # the seed scripts' default


def test_student_path_keys_have_one_meaning(tmp_path, models_dir):
  from kdjax.models import loading

  c = _config("vanilla_kd", f"tiny,task=sst-2,data_dir={GLUE}")
  # path: the student starts from those weights (its architecture).
  c.student.path = models_dir["encoder"]
  handle, loaded = loading.build_student(c.student, head="classification", num_labels=2)
  assert loaded and handle.config.num_hidden_layers == 2
  from kdjax.models import params_of

  ref = params_of(loading.load_model(models_dir["encoder"]))
  np.testing.assert_array_equal(
    np.asarray(handle.params["bert"]["layer"]["0"]["query"]["kernel"]),
    np.asarray(ref["layer"]["0"]["query"]["kernel"]),
  )
  c.student.num_hidden_layers = 1
  with pytest.raises(ValueError, match="'student.path' fixes the architecture"):
    loading.build_student(c.student, head="classification", num_labels=2)
  # config_path: a random student of that architecture, with the shape overrides.
  c.student.path = ""
  c.student.config_path = models_dir["encoder"]
  handle, loaded = loading.build_student(c.student, head="classification", num_labels=2)
  assert not loaded and handle.config.num_hidden_layers == 1 and handle.tokenizer_dir
  with pytest.raises(ValueError, match="'student.path' \\(or 'student.config_path'\\) is not set"):
    c.student.config_path = ""
    loading.build_student(c.student, head="none")
  with pytest.raises(FileNotFoundError, match="config key 'student.config_path': /nope"):
    c.student.config_path = "/nope"
    loading.build_student(c.student, head="none")


@pytest.mark.parametrize("target", ["labels", "teacher"])
def test_tinybert_prediction_regression_target(tmp_path, models_dir, target):
  c = _config("tinybert", f"tiny,prediction,task=sts-b,data_dir={GLUE}")
  c.teacher.path = models_dir["stsb"]
  c.student.path = models_dir["encoder"]
  c.regression_target = target
  c.student.hidden_dropout_prob = 0.0
  c.student.attention_probs_dropout_prob = 0.0
  recipe = tinybert.build(c, str(tmp_path))
  params = recipe.init_params(jax.random.key(0))
  batch = next(recipe.train_data(0, 1))
  z_s = np.asarray(task_setup.forward(recipe.student, params, batch).logits, np.float64)[:, 0]
  z_t = np.asarray(
    task_setup.forward(recipe.teacher, recipe.init_frozen(), batch).logits, np.float64
  )[:, 0]
  goal = batch["labels"] if target == "labels" else z_t  # the original: MSE to the labels
  loss, metrics = recipe.loss_fn(params, recipe.init_frozen(), batch, jax.random.key(1))
  np.testing.assert_allclose(float(loss), np.mean((z_s - goal) ** 2), rtol=1e-5)
  assert set(metrics) == ({"label_mse"} if target == "labels" else {"logit_mse"})
  c.regression_target = "scores"
  with pytest.raises(ValueError, match="'regression_target'='scores'"):
    tinybert.build(c, str(tmp_path))


def _with_vocab(src, dst, edit):
  import shutil

  shutil.copytree(src, dst)
  path = os.path.join(dst, "vocab.txt")
  with open(path, encoding="utf-8") as f:
    tokens = f.read().split("\n")[:-1]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(edit(tokens)) + "\n")
  for extra in ("tokenizer.json",):  # vocab.txt is the one read; keep them consistent
    if os.path.exists(os.path.join(dst, extra)):
      os.remove(os.path.join(dst, extra))
  return str(dst)


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda t: t[:5] + [t[6], t[5]] + t[7:], "token id 5 is"),
    (lambda t: t + ["extra"], "vocabulary size differs"),
  ],
)
def test_teacher_and_student_tokenizers_must_agree(tmp_path, models_dir, edit, message):
  student = _with_vocab(models_dir["encoder"], tmp_path / "student", edit)
  c = _config("tinybert", f"tiny,prediction,task=sst-2,data_dir={GLUE}")
  c.teacher.path = models_dir["sst2"]
  c.student.path = student
  with pytest.raises(ValueError) as e:
    tinybert.build(c, str(tmp_path / "wd"))
  msg = str(e.value)
  assert message in msg and "the student and teacher tokenizers differ" in msg
  assert os.path.join(student, "vocab.txt") in msg
  assert os.path.join(models_dir["sst2"], "vocab.txt") in msg


def test_tokenizer_larger_than_the_model_vocab_is_an_error(tmp_path, models_dir):
  big = _with_vocab(models_dir["sst2"], tmp_path / "big", lambda t: t + ["x1", "x2"])
  c = _config("finetune", f"tiny,task=sst-2,model={big},data_dir={GLUE}")
  with pytest.raises(ValueError, match="token ids would fall outside its embeddings"):
    finetune.build(c, str(tmp_path / "wd"))


def test_models_record_their_task_labels_and_evaluate_checks_them(tmp_path, models_dir, capsys):
  from kdjax import evaluate as evaluate_cli
  from kdjax import models
  from kdjax.models import loading

  c = _config("finetune", f"tiny,task=rte,model={models_dir['sst2']},data_dir={GLUE}")
  recipe = finetune.build(c, str(tmp_path / "wd"))
  assert loading.trained_labels(recipe.student.config) == ("entailment", "not_entailment")
  recipe.export(recipe.student.params, str(tmp_path / "rte"))
  cfg = json.loads((tmp_path / "rte" / "config.json").read_text())
  assert cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
  # An RTE model scored on SST-2 is refused (both have 2 labels: the names tell them apart).
  rc = evaluate_cli.main(
    [
      "--model",
      str(tmp_path / "rte"),
      "--task",
      "sst-2",
      "--data_dir",
      GLUE,
      "--output_dir",
      str(tmp_path / "out"),
      "--max_seq_length",
      "16",
    ]
  )
  err = capsys.readouterr().err
  assert rc == 2 and "trained for the labels ['entailment', 'not_entailment']" in err, err
  # Models that record no names (LABEL_0, ...) are not refused.
  plain = models.from_pretrained(models_dir["sst2"])
  assert loading.trained_labels(plain.config) is None


def test_resume_with_another_config_is_refused_before_anything_is_written(tmp_path, models_dir):
  from kdjax.train import check_resume_config, run

  arg = f"tiny,task=sst-2,model={models_dir['sst2']},data_dir={GLUE},max_steps=2"
  wd = tmp_path / "wd"
  run(_config("finetune", arg), str(wd))
  before = {p: (wd / p).read_bytes() for p in ("config.json", "student/kdjax_model.json")}
  with pytest.raises(ValueError, match=r"another config \(learning_rate: 0.001 -> 0.5.*--fresh"):
    run(_config("finetune", arg + ",learning_rate=0.5"), str(wd))
  assert {p: (wd / p).read_bytes() for p in before} == before  # the workdir is intact
  # A harmless change (more steps) resumes and is recorded.
  run(_config("finetune", arg.replace("max_steps=2", "max_steps=3")), str(wd))
  changes = [json.loads(x) for x in (wd / "config_changes.jsonl").read_text().splitlines()]
  assert changes == [{"max_steps": [2, 3]}]
  # --fresh moves the old run aside.
  stored = json.loads((wd / "config.json").read_text())
  check_resume_config(str(wd), dict(stored, seed=7), fresh=True)
  aside = [p for p in os.listdir(wd) if p.startswith("replaced-")]
  assert len(aside) == 1 and os.path.isdir(wd / aside[0] / "checkpoints")
  assert not (wd / "checkpoints").exists()
