"""Bad input to the training CLI: a non-zero exit and ONE line naming the culprit (config key,
file or value), no traceback, and nothing written to an existing workdir."""

import os
import subprocess
import sys

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
