"""The width-pruning recipe ("prune", configs/prune.py:tiny) on a tiny classifier and the
SST-2 fixture: loss terms, per-width dev scores, the extracted export that kdjax.evaluate and
stock transformers read, resume."""

from __future__ import annotations

import copy
import json
import os

import helpers_env
import jax
import numpy as np
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax.compress import prune
from kdjax.recipes import prune as prune_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(GLUE, "SST-2")


def _config(arg):
  return helpers_env.config("prune", arg)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("prune") / "teacher")
  return write_tiny_model(
    d, head="classification", seed=1, num_attention_heads=4, initializer_range=0.2
  )


def _tiny(teacher, **kw):
  c = _config("tiny,task=sst-2,widths=0.75;0.5")
  c.data_dir = SST2
  c.teacher.path = teacher
  for k, v in kw.items():
    c[k] = v
  return c


def test_config_variants_and_errors(teacher, tmp_path):
  c = _config("")
  assert tuple(c.prune.widths) == (0.75,) and c.prune.lambda_rep == 0.1
  assert c.prune.lambda_logit == 1.0 and c.recipe == "prune"
  assert _config("demo").task == "rotten_tomatoes"
  c = _tiny(teacher)
  assert tuple(c.prune.widths) == (0.75, 0.5)
  c.prune.widths = (0.1,)  # 4 heads: round(0.4) = 0
  with pytest.raises(ValueError, match=r"prune.widths.*width 0.1 keeps no attention head"):
    prune_recipe.build(c, None)
  c = _tiny(teacher)
  c.prune.export_width = 0.6
  with pytest.raises(ValueError, match="export_width"):
    prune_recipe.build(c, None)


def test_full_width_student_is_the_teacher_and_loss_terms(teacher):
  c = _tiny(teacher)
  c.prune.widths = (1.0, 0.5)
  recipe = prune_recipe.build(c, None)
  assert recipe.export_width == 0.5
  params, frozen = recipe.initial_params(), recipe.init_frozen()
  batch = next(recipe.train_data(0, 1))
  # Reordered by importance: the same function at full width.
  ids, mask, types = (batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
  z_s = recipe.student.bind(params)(ids, mask, types).logits
  z_t = recipe.teacher.bind(frozen)(ids, mask, types).logits
  np.testing.assert_allclose(np.asarray(z_s), np.asarray(z_t), atol=1e-5)
  loss, m = jax.jit(recipe.loss_fn)(params, frozen, batch, None)
  p = jax.nn.softmax(np.asarray(z_t, np.float64), -1)
  entropy = float(-(p * np.log(p)).sum(-1).mean())
  np.testing.assert_allclose(float(m["w1/logit_loss"]), entropy, rtol=1e-4)
  assert float(m["w1/rep_loss"]) < 1e-8
  assert float(m["w0.5/rep_loss"]) > 1e-6
  np.testing.assert_allclose(
    float(loss),
    sum(float(m[f"{w}/logit_loss"]) + 0.1 * float(m[f"{w}/rep_loss"]) for w in ("w1", "w0.5")),
    rtol=1e-5,
  )
  # The half-width loss is the one of the extracted model.
  small = prune.extract(recipe.student.model(params), 0.5)
  hm, fm = prune.width_masks(recipe.student.config, 0.5)
  got = recipe.student.bind(params)(ids, mask, types, head_mask=hm, ffn_mask=fm).logits
  np.testing.assert_allclose(np.asarray(small(ids, mask, types).logits), got, atol=1e-5)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_end_to_end_train_export_evaluate_resume(teacher, tmp_path):
  pytest.importorskip("transformers")
  import transformers

  from kdjax.evaluate import evaluate
  from kdjax.models import native
  from kdjax.train import run

  workdir = str(tmp_path / "run")
  c = _tiny(teacher)
  run(copy.deepcopy(c), workdir)  # 5 train examples, batch 2 -> 2 steps/epoch, 2 epochs
  rows = _rows(workdir)
  train = [r for r in rows if "loss" in r]
  assert {"w0.75/logit_loss", "w0.75/rep_loss", "w0.5/logit_loss"} <= set(train[0])
  evals = [r for r in rows if "eval/score" in r]
  assert [r["step"] for r in evals] == [2, 4]
  for r in evals:
    assert r["eval/score"] == r["eval/w0.5/score"]
    assert 0.0 <= r["eval/w0.75/score"] <= 1.0
  best_score = max(r["eval/score"] for r in evals)

  export = os.path.join(workdir, "export")
  with open(os.path.join(export, "prune.json")) as f:
    info = json.load(f)
  assert info["width"] == 0.5 and info["checkpoint"] == "best"
  assert (info["num_attention_heads"], info["attention_head_size"]) == (2, 8)
  assert info["intermediate_size"] == 32 and info["params"] < info["params_full_width"]
  small = native.load(export)
  assert small.config.attention_head_size == 8 and small.config.num_attention_heads == 2
  # kdjax.evaluate scores the extracted model: the best width-0.5 dev score.
  res = evaluate(export, "sst-2", SST2, output_dir=str(tmp_path / "eval"), max_seq_length=16)
  assert res["dev"]["accuracy"] == pytest.approx(best_score)
  # Stock transformers loads export/hf with the same logits.
  hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(
    os.path.join(export, "hf"), output_loading_info=True, attn_implementation="eager"
  )
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert hf.config.intermediate_size == 32 and hf.config.num_attention_heads == 4
  import torch

  ids = np.array([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 10, 3]], np.int32)
  mask = (ids != 0).astype(np.int32)
  types = np.array([[0] * 6, [0, 0, 0, 0, 1, 1]], np.int32)
  with torch.no_grad():
    ref = hf.eval()(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
    ).logits.numpy()
  np.testing.assert_allclose(np.asarray(small(ids, mask, types).logits), ref, atol=1e-5)

  # The CLI cuts another width out of the workdir's best checkpoint.
  out = str(tmp_path / "w075")
  assert prune.main(["--model", workdir, "--width", "0.75", "--output_dir", out]) == 0
  w075 = native.load(out)
  assert (w075.config.num_attention_heads, w075.config.intermediate_size) == (3, 48)
  from kdjax.models import loading

  full = loading.load_model(workdir)  # the reordered full-width student, best checkpoint
  hm, fm = prune.width_masks(full.config, 0.75)
  np.testing.assert_allclose(
    np.asarray(w075(ids, mask, types).logits),
    np.asarray(full(ids, mask, types, head_mask=hm, ffn_mask=fm).logits),
    atol=1e-5,
  )

  # Resume: more epochs in the same workdir continue from the last checkpoint.
  c2 = copy.deepcopy(c)
  c2.num_train_epochs = 3.0
  run(c2, workdir)
  steps = [r["step"] for r in _rows(workdir) if "loss" in r]
  assert steps[-1] == 6 and min(s for s in steps[len(train) :]) == 5
