"""Bad input to the training CLI: a non-zero exit and ONE line naming the culprit (config key,
file or value), no traceback, and nothing written to an existing workdir."""

import os
import subprocess
import sys

import helpers_env
import pytest
from helpers_classification import GLUE, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
  return write_tiny_model(str(tmp_path_factory.mktemp("clf")), head="classification")


def _train(args, workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  return subprocess.run(
    [sys.executable, "-m", "kdjax.train", f"--workdir={workdir}", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=300,
  )


CASES = [
  # (id, config arg + flags, fragments the one error line must contain)
  (
    "missing model dir",
    ["--config=configs/finetune.py:tiny,task=sst-2,data_dir=GLUE,model=/nope"],
    ["config key 'model.path'", "/nope is not a directory"],
  ),
  (
    "unknown key",
    ["--config=configs/finetune.py:tiny", "--config.no_such_key=1"],
    ["unknown config key 'no_such_key'"],
  ),
  ("task unset", ["--config=configs/finetune.py:tiny,model=CLF"], ["config key 'task' is not set"]),
  ("unknown task", ["--config=configs/finetune.py:tiny,task=squad,model=CLF"], ["squad"]),
  (
    "bad projection",
    [
      "--config=configs/tinybert.py:tiny,task=sst-2,data_dir=GLUE,teacher=CLF",
      "--config.projection=diagonal",
    ],
    ["'projection'='diagonal'"],
  ),
  (
    "length too small",
    [
      "--config=configs/finetune.py:tiny,task=sst-2,data_dir=GLUE,model=CLF",
      "--config.max_seq_length=2",
    ],
    ["'max_seq_length'=2", "at least 3"],
  ),
  (
    "student shape with path",
    [
      "--config=configs/vanilla_kd.py:tiny,task=sst-2,data_dir=GLUE,student=CLF,logits=/x.tsv",
      "--config.student.hidden_size=8",
    ],
    ["'student.path' fixes the architecture", "student.hidden_size"],
  ),
]


@pytest.mark.parametrize("name,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(tmp_path, clf, name, args, fragments):
  args = [a.replace("GLUE", os.path.join(GLUE, "SST-2")).replace("CLF", clf) for a in args]
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "keep.txt").write_text("x")
  r = _train(args, str(wd))
  assert r.returncode != 0, r.stdout + r.stderr
  assert "Traceback" not in r.stderr, r.stderr
  lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, r.stderr
  for frag in fragments:
    assert frag in lines[0], lines[0]
  assert sorted(os.listdir(wd)) == ["keep.txt"]  # nothing written on bad input


def test_truncated_safetensors_names_the_file(tmp_path, clf):
  import shutil

  from kdjax import models

  bad = tmp_path / "bad"
  shutil.copytree(clf, bad)
  data = (bad / "model.safetensors").read_bytes()
  (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"bad/model.safetensors: not a readable safetensors"):
    models.from_pretrained(str(bad))


def test_exported_weights_are_world_readable_like_other_files(tmp_path, clf):
  from kdjax import models

  models.save_pretrained(models.from_pretrained(clf), str(tmp_path / "out"))
  mode = os.stat(tmp_path / "out" / "model.safetensors").st_mode & 0o777
  assert mode == os.stat(tmp_path / "out" / "config.json").st_mode & 0o777


def test_zero_relation_heads_is_a_config_error(tmp_path, clf):

  from kdjax.recipes.general_distill import GeneralDistill

  c = helpers_env.config("minilmv2", "tiny")
  c.teacher.path = clf
  c.num_relation_heads = 0
  c.teacher_layer_index, c.student_layer_index = 1, 0
  c.student.num_hidden_layers = 1
  with pytest.raises(ValueError, match="'num_relation_heads'=0 must be a positive integer"):
    GeneralDistill(c, None)


@pytest.mark.parametrize("chunk", [3, -2])
def test_bad_relation_chunk_heads_is_a_config_error(clf, chunk):
  from kdjax.recipes.general_distill import GeneralDistill

  c = helpers_env.config("minilmv2", "tiny")
  c.teacher.path = clf
  c.teacher_layer_index, c.student_layer_index = 1, 0
  c.student.num_hidden_layers = 1
  c.relation_chunk_heads = chunk
  with pytest.raises(ValueError, match=f"'relation_chunk_heads'={chunk} must be -1"):
    GeneralDistill(c, None)
  c.relation_chunk_heads = 2  # divides num_relation_heads=4 (the :tiny config)
  assert GeneralDistill(c, None).chunk_heads == 2
