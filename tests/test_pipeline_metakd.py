"""The pipeline's Meta-KD stage (07_metakd): its command lines (prep -> meta-teacher -> meta-
student first -> second), its one-line config errors, and a tiny run through the real CLIs
(raw SENTI data -> Meta-KD -> ONNX export) with the target domain's dev accuracy in the report."""

from __future__ import annotations

import json
import os

import pytest
from helpers_classification import write_tiny_model
from test_pipeline import _tiny

from kdjax import metakd_prep, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON = os.path.join(ROOT, "tests", "fixtures", "metakd_amazon", "sorted_data_acl")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  d = tmp_path_factory.mktemp("senti_raw")
  assert metakd_prep.main(["split_amazon", f"--input_dir={AMAZON}", f"--output_dir={d}"]) == 0
  return str(d)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("metakd_pipeline") / "teacher")
  return write_tiny_model(d, head="none", seed=1, num_attention_heads=4)


def _metakd(teacher, raw, **kw):
  kw = {
    "stages.order": "metakd,export",
    "stages.metakd.data_dir": raw,
    "stages.metakd.genre": "dvd",
    "student.num_hidden_layers": 1,
    **kw,
  }
  return _tiny(teacher, **kw)


def test_metakd_stage_commands(teacher, raw, tmp_path):
  W = str(tmp_path / "p")
  st = pipeline.resolve(_metakd(teacher, raw), W)
  assert [s.label for s in st] == ["00_student_init", "07_metakd", "10_export"]
  mk = st[1]
  d = f"{W}/07_metakd"
  sub = [c[1] + (f" {c[2]}" if c[1] == "kdjax.metakd_prep" else "") for c in mk.commands]
  assert sub == [
    "kdjax.metakd_prep extract_embeddings",
    "kdjax.metakd_prep compute_weights",
    "kdjax.metakd_prep standardize",
    "kdjax.train",
    "kdjax.train",
    "kdjax.train",
  ]
  emb, weights, std, t, first, second = mk.commands
  assert f"--model={teacher}" in emb and "--max_seq_length=16" in emb
  # no domains given: those of train.tsv, sorted (the trainers' default order)
  assert "--domains=books,dvd,electronics,kitchen" in weights
  assert std[-1] == f"--output={d}/data/dev_standard.tsv"
  assert t[2].endswith("configs/metakd_teacher.py:tiny") and f"--config.model.path={teacher}" in t
  assert f"--config.data_dir={d}/data" in t and "--config.max_steps=2" in t
  assert f"--config.student.path={W}/00_student_init" in first and "--config.stage=first" in first
  assert f"--config.teacher.path={d}/meta_teacher/export" in first
  assert "--config.genre=dvd" in first and "--config.eval_steps=2" not in first
  assert f"--config.student.path={d}/student_first/export" in second
  assert "--config.stage=second" in second and "--config.eval_steps=2" in second
  assert mk.output == f"{d}/student_second" and mk.deps == ["student_init"]
  assert st[2].commands[0][2] == f"{d}/student_second"  # the export's default source

  # the domains' order, when given, goes to every run
  c = _metakd(teacher, raw, **{"stages.metakd.domains": "kitchen,dvd,books,electronics"})
  mk = next(s for s in pipeline.resolve(c, W) if s.name == "metakd")
  assert "--domains=kitchen,dvd,books,electronics" in mk.commands[1]
  for cmd in mk.commands[3:]:
    assert cmd[2].endswith(":tiny,domains=kitchen;dvd;books;electronics"), cmd[2]


@pytest.mark.parametrize(
  "changes, match",
  [
    ({"stages.metakd.genre": ""}, r"'stages.metakd.genre' is not set"),
    ({"stages.metakd.genre": "toys"}, r"'stages.metakd.genre': 'toys' is not a domain of"),
    (
      {"stages.metakd.domains": "books,dvd", "stages.metakd.genre": "kitchen"},
      r"'stages.metakd.genre': 'kitchen' is not among stages.metakd.domains",
    ),
    ({"stages.metakd.data_dir": "/"}, r"'stages.metakd.data_dir': / has neither train.tsv"),
    ({"stages.metakd.first_overrides": "max_stepz=1"}, r"'max_stepz' is not a key"),
  ],
)
def test_metakd_bad_config(teacher, raw, tmp_path, changes, match):
  with pytest.raises(pipeline.PipelineError, match=match):
    pipeline.resolve(_metakd(teacher, raw, **changes), str(tmp_path / "p"))
  assert not os.path.exists(tmp_path / "p")


def test_metakd_through_the_pipeline(teacher, raw, tmp_path):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  W = str(tmp_path / "p")
  c = _metakd(teacher, raw)
  c.report.speed = False
  status = pipeline.run_pipeline(c, W)
  assert status == {"00_student_init": "ran", "07_metakd": "ran", "10_export": "ran"}
  d = os.path.join(W, "07_metakd")
  for f in ("train_with_weights.tsv", "dev_standard.tsv"):
    assert os.path.getsize(os.path.join(d, "data", f)) > 0
  with open(os.path.join(d, "meta_teacher", "export", "metakd.json")) as f:
    assert json.load(f)["domains"] == ["books", "dvd", "electronics", "kitchen"]
  assert os.path.isfile(os.path.join(d, "student_second", "export", "config.json"))
  with open(os.path.join(W, "10_export", "onnx", "export.json")) as f:
    assert json.load(f)["format"] == "onnx"
  rows = {r["name"]: r for r in json.load(open(os.path.join(W, "report.json")))["rows"]}
  assert rows["metakd"]["metric"] == "dvd/accuracy" and 0.0 <= rows["metakd"]["value"] <= 1.0
  assert rows["export"]["value"] == rows["metakd"]["value"]  # an artefact carries its source's
  # a second run skips every stage
  assert set(pipeline.run_pipeline(c, W).values()) == {"skipped"}
