"""Vanilla KD: teacher predict mode TSV, alignment checks, and the loss against numpy."""

import json
import os
import sys

import numpy as np
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax import evaluate as evaluate_cli
from kdjax.data.logits_tsv import read_logits_tsv
from kdjax.data.task import get_classification_task
from kdjax.data.tasks import load_split
from kdjax.models import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import vanilla_kd as kd_config

TASK = get_classification_task("sst-2")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A tiny HF classifier (random, no training needed to produce logits)."""
  return write_tiny_model(
    str(tmp_path_factory.mktemp("teacher")), head="classification", seed=7, num_hidden_layers=2
  )


@pytest.fixture(scope="module")
def logits_tsv(tmp_path_factory, teacher_dir):
  path = str(tmp_path_factory.mktemp("logits") / "train_logits.tsv")
  rc = evaluate_cli.main(
    [
      "--model",
      teacher_dir,
      "--task",
      "sst-2",
      "--data_dir",
      GLUE,
      "--split",
      "train",
      "--logits_output",
      path,
      "--max_seq_length",
      "16",
      "--output_dir",
      os.path.dirname(path),
    ]
  )
  assert rc == 0
  return path


def _kd_config(tsv, student, extra=""):
  arg = f"tiny,task=sst-2,data_dir={GLUE},logits={tsv},student={student}"
  return kd_config.get_config(arg + (f",{extra}" if extra else ""))


def _np_kd_loss(s, t, labels, T, alpha):
  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  lp_t, lp_s = log_softmax(t / T), log_softmax(s / T)
  kd = T * T * np.mean(np.sum(np.exp(lp_t) * (lp_t - lp_s), -1))
  ce = -np.mean(log_softmax(s)[np.arange(len(labels)), labels])
  return alpha * kd + (1 - alpha) * ce


def test_predict_tsv_round_trips(logits_tsv, teacher_dir):
  from kdjax import models
  from kdjax.data import Tokenizer
  from kdjax.data.classification import encode_examples

  examples = load_split("sst-2", GLUE, "train")
  lines = open(logits_tsv, encoding="utf-8").read().splitlines()
  assert lines[0] == "id\tlabel\tlogits" and len(lines) == 1 + len(examples)
  assert [line.split("\t")[:2] for line in lines[1:]] == [
    [str(ex.id), TASK.labels[ex.label]] for ex in examples
  ]
  logits = read_logits_tsv(logits_tsv, examples, 2, TASK.label_string)
  teacher = models.from_pretrained(teacher_dir)
  feats = encode_examples(examples, Tokenizer.from_dir(teacher_dir), 16)
  direct = np.asarray(
    teacher(
      feats["input_ids"],
      attention_mask=feats["attention_mask"],
      token_type_ids=feats["token_type_ids"],
    ).logits
  )
  np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-6)
  rows = [line.split("\t")[2].split() for line in lines[1:]]
  np.testing.assert_array_equal(np.array(rows, np.float32), logits)  # %.9g is exact


def _rewrite(src, dst, edit):
  lines = open(src, encoding="utf-8").read().splitlines()
  with open(dst, "w", encoding="utf-8") as f:
    f.write("\n".join(edit(lines)) + "\n")
  return str(dst)


def test_misaligned_tsv_errors(tmp_path, logits_tsv, teacher_dir):
  examples = load_split("sst-2", GLUE, "train")

  def check(edit, *fragments):
    bad = _rewrite(logits_tsv, tmp_path / "bad.tsv", edit)
    with pytest.raises(ValueError) as e:
      read_logits_tsv(bad, examples, 2, TASK.label_string)
    for frag in fragments:
      assert frag.replace("PATH", bad) in str(e.value), str(e.value)

  check(lambda ls: ls[:-1], "PATH: 4 rows of logits", "has 5 examples")
  check(lambda ls: [ls[0], ls[2], ls[1]] + ls[3:], "PATH:2: id '1'", "has id '0'")
  check(lambda ls: ls[:3] + [ls[3].rsplit(" ", 1)[0]] + ls[4:], "PATH:4: 1 logits", "2 labels")
  check(lambda ls: ["id\tlogits"] + ls[1:], "PATH:1: expected the header")
  flip = {"0": "1", "1": "0"}
  check(
    lambda ls: (
      ls[:1]
      + ["\t".join([ls[1].split("\t")[0], flip[ls[1].split("\t")[1]], ls[1].split("\t")[2]])]
      + ls[2:]
    ),
    "PATH:2: label",
  )
  # The recipe reports it too, naming the file, before any training.
  bad = _rewrite(logits_tsv, tmp_path / "short.tsv", lambda ls: ls[:-2])
  from kdjax.recipes import vanilla_kd

  with pytest.raises(ValueError, match="short.tsv: 3 rows of logits"):
    vanilla_kd.build(_kd_config(bad, teacher_dir), str(tmp_path / "wd"))


def test_loss_equals_numpy_from_tsv(tmp_path, logits_tsv, teacher_dir):
  import jax

  from kdjax.recipes import vanilla_kd
  from kdjax.train import run

  # Random 1-layer student with the teacher's architecture, no dropout (deterministic loss).
  extra = (
    f"student.path=,student.config_path={teacher_dir},student.num_hidden_layers=1,student.seed=3,"
    "student.hidden_dropout_prob=0.0,student.attention_probs_dropout_prob=0.0,"
    "temperature=2.5,alpha=0.3"
  )
  config = _kd_config(logits_tsv, teacher_dir, extra)
  assert (config.temperature, config.alpha) == (2.5, 0.3)
  assert (kd_config.get_config().temperature, kd_config.get_config().alpha) == (5.0, 0.2)
  recipe = vanilla_kd.build(config, str(tmp_path / "probe"))
  assert recipe.student.config.num_hidden_layers == 1
  params = recipe.init_params(jax.random.key(0))
  batch = next(recipe.train_data(0, 1))

  examples = load_split("sst-2", GLUE, "train")
  order = np.random.default_rng((config.seed, 0)).permutation(len(examples))[: config.batch_size]
  lines = open(logits_tsv, encoding="utf-8").read().splitlines()[1:]
  t = np.array([[float(x) for x in lines[i].split("\t")[2].split()] for i in order])
  labels = np.array([examples[i].label for i in order])
  np.testing.assert_array_equal(batch["labels"], labels)
  model = recipe.student.bind(params)
  s = np.asarray(
    model(
      batch["input_ids"],
      attention_mask=batch["attention_mask"],
      token_type_ids=batch["token_type_ids"],
    ).logits,
    np.float64,
  )
  expected = _np_kd_loss(s, t, labels, 2.5, 0.3)

  loss, terms = jax.jit(recipe.loss_fn)(params, None, batch, jax.random.key(1))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert set(terms) == {"kd", "ce"}

  # Through the trainer: the first step's logged loss is the same number.
  wd = tmp_path / "run"
  run(_kd_config(logits_tsv, teacher_dir, extra), str(wd))
  records = [json.loads(x) for x in open(wd / "metrics.jsonl")]
  assert records[0]["step"] == 1 and records[0]["loss"] == pytest.approx(expected, rel=1e-5)
  assert native.best_step(str(wd)) is not None
  assert (wd / "export" / "config.json").exists()


def test_student_from_checkpoint(tmp_path, logits_tsv, teacher_dir):
  from kdjax.models import params as P
  from kdjax.recipes import vanilla_kd

  config = _kd_config(logits_tsv, teacher_dir, "student.hidden_dropout_prob=0.0")
  recipe = vanilla_kd.build(config, str(tmp_path))
  assert recipe.student.config.hidden_dropout_prob == 0.0
  from kdjax import models

  ref = P.flatten(P.params_of(models.from_pretrained(teacher_dir)))
  got = P.flatten(recipe.student.params)
  for k, v in ref.items():
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v))
  with pytest.raises(ValueError, match="fixes the architecture"):
    vanilla_kd.build(
      _kd_config(logits_tsv, teacher_dir, "student.hidden_size=16,student.num_attention_heads=2"),
      str(tmp_path / "x"),
    )
