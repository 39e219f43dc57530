"""The shared task setup: per-example weights and domain ids in batches, the evaluation
cadence, the one meaning of the model path keys, and TinyBERT's regression target."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax.recipes import finetune, task_setup, tinybert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg):
  spec = importlib.util.spec_from_file_location(
    f"{name}_cfg", os.path.join(ROOT, "configs", f"{name}.py")
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


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
