"""Trainer reliability (issue 12): NaN/Inf stops or skips, failed saves stop the run without
hanging, a corrupt checkpoint falls back to the previous one, metrics.jsonl has no duplicate
steps after a resume, logits beyond float32 are refused, evaluate refuses NaN params."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers_env import ROOT
from helpers_trainer import ToyData, ToyRecipe, load_params, read_metrics, toy_config

from kdjax.trainer import Checkpointer, Trainer
from kdjax.trainer.checkpoint import CheckpointMismatchError
from kdjax.trainer.metrics import truncate_metrics
from kdjax.trainer.step import NonFiniteError

TESTS = os.path.join(ROOT, "tests")


class _NanData(ToyData):
  """ToyData whose batches with an index in `nan_at` are all NaN (step = index + 1)."""

  def __init__(self, batch_size, nan_at, **kw):
    super().__init__(batch_size, **kw)
    self.nan_at = set(nan_at)

  def __next__(self):
    index = self.index
    batch = super().__next__()
    if index in self.nan_at:
      batch = {"x": np.full_like(batch["x"], np.nan)}
    return batch


class _NanRecipe(ToyRecipe):
  def __init__(self, nan_at=(), **kw):
    super().__init__(**kw)
    self.nan_at = nan_at

  def train_data(self, process_index, process_count):
    return _NanData(
      self.batch_size, self.nan_at, process_index=process_index, process_count=process_count
    )


def _train(workdir, recipe=None, **overrides):
  config = toy_config(**overrides)
  recipe = recipe or ToyRecipe(batch_size=config.batch_size)
  trainer = Trainer(config, recipe, workdir)
  return trainer, recipe, trainer.train()


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _restore(workdir, trainer, step):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    return jax.device_get(ckpt.restore(step, trainer.abstract_state)[0])
  finally:
    ckpt.close()


def _all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------ NaN / Inf
def test_huge_learning_rate_stops_naming_the_step(tmp_path):
  """lr=1e6 overflows the loss at step 5: the run stops there, nothing is written from the
  diverged params, the step-4 checkpoint stays the latest and there is no export."""
  with pytest.raises(NonFiniteError, match=r"non-finite loss=inf .* at step 5: stopped") as e:
    _train(tmp_path, max_steps=20, save_steps=2, learning_rate=1e6, warmup_steps=0)
  assert "the latest checkpoint is step 4" in str(e.value) and "\n" not in str(e.value)
  assert _steps(tmp_path) == [2, 4]
  assert not os.path.exists(tmp_path / "export")
  trainer = Trainer(toy_config(), ToyRecipe(batch_size=8), tmp_path)
  assert _all_finite(_restore(tmp_path, trainer, 4))
  assert max(r["step"] for r in read_metrics(tmp_path)) == 4  # the NaN window is not logged


def test_nonfinite_check_at_save_steps_even_without_logging(tmp_path):
  """logging_steps=0: the check still runs before every save (step 6), never after."""
  with pytest.raises(NonFiniteError, match=r"at step 5:"):
    _train(tmp_path, max_steps=20, save_steps=3, logging_steps=0, learning_rate=1e6, warmup_steps=0)
  assert _steps(tmp_path) == [3]


def test_skip_leaves_params_and_optimizer_state_unchanged():
  config = toy_config(nonfinite="skip", warmup_steps=0)
  trainer = Trainer(config, ToyRecipe(batch_size=8, dropout=0.0), "/nonexistent-unused")
  frozen = trainer.init_frozen()
  data = ToyData(8)
  state, _ = trainer.step_fn(trainer.init_state(), frozen, trainer.global_batch(next(data)))
  before = jax.device_get(state)
  nan_batch = {"x": np.full((8, 8), np.nan, np.float32)}
  state, metrics = trainer.step_fn(state, frozen, trainer.global_batch(nan_batch))
  after = jax.device_get(state)
  assert not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, after["params"], before["params"])
  jax.tree.map(np.testing.assert_array_equal, after["opt_state"], before["opt_state"])
  assert int(after["step"]) == int(before["step"]) + 1  # the batch is consumed
  state, _ = trainer.step_fn(state, frozen, trainer.global_batch(next(data)))  # a good one
  changed = jax.device_get(state["params"])
  assert not np.array_equal(changed["dense1"]["kernel"], after["params"]["dense1"]["kernel"])


def test_skip_counts_in_metrics_and_checkpoints(tmp_path):
  recipe = _NanRecipe(nan_at=(2, 4), batch_size=8, dropout=0.0)  # steps 3 and 5
  trainer, _, state = _train(
    tmp_path, recipe, max_steps=6, save_steps=1, keep_checkpoints=10, nonfinite="skip"
  )
  assert int(state["step"]) == 6
  rows = {r["step"]: r for r in read_metrics(tmp_path)}
  assert [rows[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
  # learning_rate is the rate the update used: the schedule at the updates applied so far
  # (skipped updates do not advance the optimizer's schedule).
  applied = [0, 1, 2, 2, 3, 3]  # before steps 1..6
  for s, n in zip(range(1, 7), applied, strict=True):
    np.testing.assert_allclose(rows[s]["learning_rate"], float(trainer.schedule(n)), rtol=1e-6)
  # The skipped update changed nothing: checkpoint 3 holds the params of checkpoint 2.
  s2, s3, s4 = (_restore(tmp_path, trainer, s) for s in (2, 3, 4))
  jax.tree.map(np.testing.assert_array_equal, s3["params"], s2["params"])
  jax.tree.map(np.testing.assert_array_equal, s3["opt_state"], s2["opt_state"])
  assert not np.array_equal(s4["params"]["dense1"]["kernel"], s3["params"]["dense1"]["kernel"])
  assert _all_finite(load_params(tmp_path))
  with open(tmp_path / "checkpoints" / "6" / "data" / "metadata") as f:
    assert json.load(f)["trainer"]["skipped_steps"] == 2


def test_skip_stops_after_max_skipped_steps(tmp_path):
  with pytest.raises(NonFiniteError, match=r"4 non-finite updates skipped.*max_skipped_steps=3"):
    _train(
      tmp_path,
      max_steps=30,
      save_steps=2,
      learning_rate=1e6,
      warmup_steps=0,
      nonfinite="skip",
      max_skipped_steps=3,
    )
  # lr=1e6 overflows from step 5 on: 5, 6, 7 skipped, the 4th (step 8) stops the run.
  rows = read_metrics(tmp_path)
  assert max(r["step"] for r in rows) == 7 and rows[-1]["skipped_steps"] == 3
  assert _steps(tmp_path) == [2, 4, 6]
  assert not os.path.exists(tmp_path / "export")


def test_nonfinite_config_is_checked():
  with pytest.raises(ValueError, match=r"'nonfinite'='sometimes'"):
    Trainer(toy_config(nonfinite="sometimes"), ToyRecipe(batch_size=8), "/nonexistent-unused")
  with pytest.raises(ValueError, match=r"'max_skipped_steps'=-1"):
    Trainer(toy_config(max_skipped_steps=-1), ToyRecipe(batch_size=8), "/nonexistent-unused")


def test_nan_checkpoint_is_not_exported(tmp_path):
  """A checkpoint with NaN params (written before these checks existed) is never exported."""
  _train(tmp_path, max_steps=2, save_steps=1)
  trainer = Trainer(toy_config(max_steps=2), ToyRecipe(batch_size=8), tmp_path)
  state = trainer.init_state()
  state["params"] = jax.tree.map(lambda x: x * np.nan, state["params"])
  shutil.rmtree(tmp_path / "export")
  shutil.rmtree(tmp_path / "checkpoints")
  ckpt = Checkpointer(os.path.join(tmp_path, "checkpoints"), async_save=False)
  state["step"] = jax.device_put(np.int32(2), state["step"].sharding)
  ckpt.save(2, state, {"index": 2})
  ckpt.close()
  with pytest.raises(NonFiniteError, match=r"non-finite parameters dense1/bias, .* at step 2"):
    trainer.train()
  assert not os.path.exists(tmp_path / "export")


# ------------------------------------------------------------------------- failed saves
_SAVE_FAILURE = r"""
import errno, json, os, sys
sys.path[:0] = [sys.argv[3], sys.argv[4]]
mode, workdir = sys.argv[1], sys.argv[2]
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
from orbax.checkpoint._src.path import async_path


def broken(path):  # every save after the first (step 2) fails
  name = os.path.basename(str(path)).split(".")[0]
  return name.isdigit() and int(name) > 2


if mode == "readonly":  # the checkpoints directory turned read-only: mkdir fails
  mkdir = async_path.mkdir

  async def failing_mkdir(path, *args, **kwargs):
    if broken(path):
      raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return await mkdir(path, *args, **kwargs)

  async_path.mkdir = failing_mkdir
else:  # the disk fills up while the background thread writes the files
  save_fn = jh.JsonCheckpointHandler._save_fn

  async def failing_save_fn(self, x, directory):
    if broken(directory.parent):
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await save_fn(self, x, directory)

  jh.JsonCheckpointHandler._save_fn = failing_save_fn
import logging

# orbax's background threads may still log (INFO) while the main thread prints the error; a log
# line written into the middle of the traceback's last line would make this check flaky
logging.getLogger("absl").addFilter(
  lambda r: r.levelno >= logging.WARNING or "orbax" not in r.pathname
)
from helpers_trainer import main

main(["helpers_trainer", workdir, json.dumps({"max_steps": 12, "save_steps": 2})])
"""


@pytest.mark.parametrize(
  "mode,oserror",
  [
    ("readonly", "PermissionError: [Errno 13] Permission denied"),
    ("disk_full", "OSError: [Errno 28] No space left on device"),
  ],
)
def test_failed_save_stops_the_run_and_does_not_hang(tmp_path, mode, oserror):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("KDJAX_", "XLA_FLAGS"))}
  env["JAX_PLATFORMS"] = "cpu"
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [sys.executable, "-c", _SAVE_FAILURE, mode, str(workdir), ROOT, TESTS],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,  # a hang (orbax threads waiting forever) fails here
  )
  assert proc.returncode != 0, proc.stderr[-3000:]
  ckpts = os.path.join(workdir, "checkpoints")
  line = [x for x in proc.stderr.splitlines() if x.startswith("kdjax.trainer.checkpoint.")]
  assert line, proc.stderr[-3000:]
  assert line[-1].startswith(
    f"kdjax.trainer.checkpoint.CheckpointSaveError: saving checkpoint step 4 in {ckpts} "
    f"failed: {oserror}"
  ), line[-1]
  assert "the newest complete checkpoint is step 2" in line[-1]
  assert _steps(workdir) == [2]
  assert max(r["step"] for r in read_metrics(workdir)) <= 6  # surfaced at once
  assert not os.path.exists(workdir / "export")


# --------------------------------------------------------------------- corrupt checkpoints
def _corrupt(step_dir, how):
  if how == "array_files":
    for f in glob.glob(os.path.join(step_dir, "state", "d", "*")):
      os.remove(f)
  elif how == "metadata":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  else:  # data position cut short
    with open(os.path.join(step_dir, "data", "metadata"), "r+b") as f:
      f.truncate(10)


@pytest.mark.parametrize("how", ["array_files", "metadata", "data"])
def test_corrupt_latest_checkpoint_falls_back(tmp_path, how, caplog):
  kw = dict(save_steps=2, keep_checkpoints=5)
  full = tmp_path / "full"
  _train(full, ToyRecipe(batch_size=8, dropout=0.2), max_steps=6, **kw)
  run = tmp_path / "run"
  _train(run, ToyRecipe(batch_size=8, dropout=0.2), max_steps=4, **kw)
  _corrupt(str(run / "checkpoints" / "4"), how)
  caplog.clear()
  with caplog.at_level("WARNING"):
    _, _, state = _train(run, ToyRecipe(batch_size=8, dropout=0.2), max_steps=6, **kw)
  assert int(state["step"]) == 6
  warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert f"checkpoint {run / 'checkpoints' / '4'} cannot be restored (" in warnings[0]
  assert "moved it to" in warnings[0] and warnings[0].endswith("trying step 2")
  assert os.path.isdir(run / "checkpoints" / "4.corrupt")
  assert _steps(run) == [2, 4, 6]
  # Resumed from step 2 exactly as an uninterrupted run, one metrics row per step.
  a, b = load_params(full), load_params(run)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  steps = [r["step"] for r in read_metrics(run)]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_all_checkpoints_corrupt_starts_afresh(tmp_path):
  _train(tmp_path, max_steps=2, save_steps=2)
  _corrupt(str(tmp_path / "checkpoints" / "2"), "array_files")
  _, _, state = _train(tmp_path, max_steps=3, save_steps=2)
  assert int(state["step"]) == 3
  assert os.path.isdir(tmp_path / "checkpoints" / "2.corrupt")
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_checkpoint_of_another_config_is_an_error_not_corruption(tmp_path):
  _train(tmp_path, max_steps=2, save_steps=2)
  with pytest.raises(CheckpointMismatchError, match=r"does not fit this run's train state"):
    _train(tmp_path, max_steps=4, max_grad_norm=0.0)  # no clipping: another optimizer tree
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


# ------------------------------------------------------------------------------ metrics.jsonl
def test_resume_from_an_earlier_checkpoint_drops_later_metrics(tmp_path):
  _train(tmp_path, max_steps=6, save_steps=3, keep_checkpoints=5)
  shutil.rmtree(tmp_path / "checkpoints" / "6")  # e.g. killed after logging step 6
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "loss"')  # and a line cut short by the kill
  _train(tmp_path, max_steps=6, save_steps=3, keep_checkpoints=5)
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_truncate_metrics(tmp_path):
  path = str(tmp_path / "m.jsonl")
  assert truncate_metrics(path, 3) == 0 and not os.path.exists(path)
  rows = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)] + [{"step": 2, "eval/score": 1}]
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + "garbage")
  assert truncate_metrics(path, 2) == 3
  assert [json.loads(x)["step"] for x in open(path)] == [1, 2, 2]


# ----------------------------------------------------------------------- logits and evaluate
def test_logit_beyond_float32_is_refused(tmp_path):
  from kdjax.data.logits_tsv import read_logits_tsv
  from kdjax.data.tasks import Example

  examples = [Example(i, f"text {i}", None, 0) for i in range(2)]
  path = tmp_path / "logits.tsv"
  path.write_text("id\tlabel\tlogits\n0\t0\t0.5 -0.5\n1\t0\t1e39 0.0\n")
  with pytest.raises(ValueError) as e:
    read_logits_tsv(str(path), examples, 2, lambda label: str(label))
  assert str(e.value).startswith(f"{path}:3: non-finite logits '1e39 0.0'")
  assert "float32" in str(e.value)
  easy = tmp_path / "easy.tsv"
  easy.write_text("0.5,-0.5\n-3.5e38,1\n")
  with pytest.raises(ValueError, match=rf"{easy}:2: non-finite logits"):
    read_logits_tsv(str(easy), examples, 2, lambda label: str(label))


def test_evaluate_refuses_nonfinite_params(tmp_path, capsys):
  from helpers_classification import write_tiny_model
  from safetensors.numpy import load_file, save_file

  from kdjax.evaluate import main

  model = write_tiny_model(str(tmp_path / "model"), head="classification", num_labels=2)
  weights = os.path.join(model, "model.safetensors")
  tensors = load_file(weights)
  name = sorted(k for k in tensors if "classifier" in k and "weight" in k)[0]
  tensors[name] = np.full_like(tensors[name], np.nan)
  save_file(tensors, weights)
  assert main(["--model", model, "--task", "rotten_tomatoes"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {model}: non-finite (NaN/Inf) parameters ") and "\n" not in err
