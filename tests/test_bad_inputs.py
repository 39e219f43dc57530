"""Table-driven bad input to every CLI (train, evaluate, export, predict, convert).

Each case asserts: a non-zero exit, exactly ONE ``error:`` line holding the fragments that name
the culprit (config key, file and line, step, value), no traceback, and that nothing existing
changed: a trained workdir and an export beside it hash the same before and after every case
(fresh-workdir cases: nothing is written into the workdir either).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
from helpers_classification import CLUE, GLUE, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  return env


def _train(args, workdir):
  return subprocess.run(
    [sys.executable, "-m", "kdjax.train", f"--workdir={workdir}", *args],
    capture_output=True,
    text=True,
    env=_env(),
    cwd=ROOT,
    timeout=300,
  )


def _tree_hash(*dirs) -> dict[str, str]:
  out = {}
  for d in dirs:
    for base, _, files in os.walk(d):
      for f in files:
        p = os.path.join(base, f)
        with open(p, "rb") as fh:
          out[os.path.relpath(p, os.path.dirname(d))] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny fine-tuned workdir (checkpoints 2 and 4, a best dev checkpoint), its jax export,
  the classifier it started from, and broken copies of data and models."""
  root = tmp_path_factory.mktemp("bad_inputs")
  clf = write_tiny_model(str(root / "clf"), head="classification")
  wd = str(root / "run")
  args = [f"--config=configs/finetune.py:tiny,task=sst-2,data_dir={GLUE}/SST-2,model={clf}"]
  args += ["--config.max_steps=4", "--config.save_steps=2", "--config.eval_steps=2"]
  r = _train(args, wd)
  assert r.returncode == 0, r.stderr[-3000:]
  from kdjax.export import __main__ as export_cli

  exp = str(root / "run_jax")
  assert export_cli.main([wd, exp, "--format=jax"]) == 0
  # broken task files: a TSV row without its label, a JSON line cut short
  sst = root / "SST-2"
  sst.mkdir()
  (sst / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad\n", encoding="utf-8")
  shutil.copy(os.path.join(GLUE, "SST-2", "dev.tsv"), sst / "dev.tsv")
  tnews = root / "TNEWS"
  shutil.copytree(os.path.join(CLUE, "TNEWS"), tnews)
  lines = (tnews / "train.json").read_text(encoding="utf-8").splitlines()
  (tnews / "train.json").write_text("\n".join([*lines[:2], '{"label": "102", "sentence": ']) + "\n")
  # a model whose weights file is cut in half
  trunc = root / "truncated"
  shutil.copytree(clf, trunc)
  data = (trunc / "model.safetensors").read_bytes()
  (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
  # a student whose vocab.txt orders two tokens differently from the teacher's
  other = root / "other_vocab"
  shutil.copytree(clf, other)
  vocab = (other / "vocab.txt").read_text(encoding="utf-8").splitlines()
  i, j = vocab.index("good"), vocab.index("bad")
  vocab[i], vocab[j] = vocab[j], vocab[i]
  (other / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  return {
    "root": str(root),
    "CLF": clf,
    "RUN": wd,
    "EXPORT": exp,
    "SST": str(sst),
    "TNEWS": str(tnews),
    "TRUNC": str(trunc),
    "OTHER": str(other),
    "GLUE": GLUE,
  }


def _fill(items, world):
  names = {k: v for k, v in world.items() if k != "root"}
  return [a.format(ROOT=world["root"], **names) for a in items]


# (id, argv after `kdjax.train --workdir=W`, fragments of the one error line). W is the trained
# workdir when the id starts with "resume:", else a fresh directory holding only keep.txt.
TRAIN_CASES = [
  (
    "resume: changed batch size",
    [
      "--config=configs/finetune.py:tiny,task=sst-2,data_dir={GLUE}/SST-2,model={CLF}",
      "--config.max_steps=4",
      "--config.save_steps=2",
      "--config.eval_steps=2",
      "--config.batch_size=4",
    ],
    ["holds checkpoints of a run with another config", "batch_size: 2 -> 4", "--fresh"],
  ),
  (
    "tsv row without label",
    ["--config=configs/finetune.py:tiny,task=sst-2,data_dir={SST},model={CLF}"],
    ["SST-2/train.tsv, line 3", "bad label ''"],
  ),
  (
    "json line cut short",
    ["--config=configs/finetune.py:tiny,task=tnews,data_dir={TNEWS},model={CLF}"],
    ["TNEWS/train.json, line 3", "invalid JSON"],
  ),
  (
    "truncated safetensors",
    ["--config=configs/finetune.py:tiny,task=sst-2,data_dir={GLUE}/SST-2,model={TRUNC}"],
    ["truncated/model.safetensors"],
  ),
  (
    "teacher and student vocab differ",
    [
      "--config=configs/tinybert.py:tiny,task=sst-2,data_dir={GLUE}/SST-2,teacher={CLF}",
      "--config.student.path={OTHER}",
    ],
    ["vocab", "clf", "other_vocab"],
  ),
]


def _one_error_line(stderr: str) -> str:
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize("name,args,fragments", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input(world, tmp_path, name, args, fragments):
  before = _tree_hash(world["RUN"], world["EXPORT"])
  if name.startswith("resume:"):
    wd = world["RUN"]
  else:
    wd = str(tmp_path / "wd")
    os.makedirs(wd)
    with open(os.path.join(wd, "keep.txt"), "w") as f:
      f.write("x")
  r = _train(_fill(args, world), wd)
  assert r.returncode != 0, r.stderr[-3000:]
  line = _one_error_line(r.stderr)
  for frag in fragments:
    assert frag in line, line
  assert _tree_hash(world["RUN"], world["EXPORT"]) == before
  if not name.startswith("resume:"):
    assert os.listdir(wd) == ["keep.txt"]


def _evaluate(argv):
  from kdjax import evaluate

  return evaluate.main(argv)


def _export(argv):
  from kdjax.export import __main__ as export_cli

  return export_cli.main(argv)


def _predict(argv):
  from kdjax import predict

  return predict.main(argv)


def _convert(argv):
  from kdjax import convert

  return convert.main(argv)


# (id, CLI, argv, fragments of the one error line)
CLI_CASES = [
  (
    "evaluate: model of another task",
    _evaluate,
    ["--model", "{RUN}", "--task", "rte", "--data_dir", "{GLUE}/RTE", "--output_dir", "{ROOT}/ev"],
    ["trained for the labels ['0', '1']", "'entailment'"],
  ),
  (
    "evaluate: data dir without the split",
    _evaluate,
    [
      "--model",
      "{RUN}",
      "--task",
      "sst-2",
      "--data_dir",
      "{ROOT}/nowhere",
      "--output_dir",
      "{ROOT}/ev",
    ],
    ["file not found: dev.tsv", "nowhere"],
  ),
  (
    "evaluate: step that does not exist",
    _evaluate,
    ["--model", "{RUN}", "--task", "sst-2", "--data_dir", "{GLUE}/SST-2", "--step", "99"],
    ["no checkpoint step 99 (finished steps: 4)"],
  ),
  (
    "export: step that does not exist",
    _export,
    ["{RUN}", "{ROOT}/exp_a", "--format=jax", "--step=99"],
    ["no checkpoint step 99 (finished steps: 4)"],
  ),
  (
    "export: onnx in bf16",
    _export,
    ["{RUN}", "{ROOT}/exp_b", "--format=onnx", "--precision=bf16"],
    ["ONNX export supports precision fp32|fp16, not 'bf16'"],
  ),
  (
    "export: into the model",
    _export,
    ["{RUN}", "{RUN}/sub", "--format=jax"],
    ["must not be MODEL"],
  ),
  (
    "export: over an existing export",
    _export,
    ["{RUN}", "{EXPORT}", "--format=jax"],
    ["run_jax: exists and is not empty (use --force"],
  ),
  (
    "predict: over-long max_length",
    _predict,
    ["{RUN}", "--text", "good", "--max_length", "999"],
    ["max_length=999", "3..32"],
  ),
  (
    "predict: longer than the export",
    _predict,
    ["{EXPORT}", "--text", "good", "--max_length", "999"],
    ["--max_length 999 > the artefact's"],
  ),
  (
    "predict: model of another task",
    _predict,
    ["{RUN}", "--task", "rte", "--data_dir", "{GLUE}/RTE"],
    ["labels ['0', '1'] are not task rte's"],
  ),
  (
    "convert: layer out of range",
    _convert,
    ["{RUN}", "{ROOT}/cv", "--keep_layers", "0,7"],
    ["keep_layers [0, 7]", "0..1"],
  ),
  (
    "convert: truncated safetensors",
    _convert,
    ["{TRUNC}", "{ROOT}/cv2"],
    ["truncated/model.safetensors"],
  ),
]


@pytest.mark.parametrize("name,cli,args,fragments", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(world, capsys, name, cli, args, fragments):
  before = _tree_hash(world["RUN"], world["EXPORT"])
  try:
    rc = cli(_fill(args, world))
  except SystemExit as e:  # argparse usage errors
    rc = e.code
  assert rc not in (0, None)
  line = _one_error_line(capsys.readouterr().err)
  for frag in fragments:
    assert frag in line, line
  assert _tree_hash(world["RUN"], world["EXPORT"]) == before
  for leftover in ("exp_a", "exp_b", "cv", "cv2"):
    assert not os.path.exists(os.path.join(world["root"], leftover))
