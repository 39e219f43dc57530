"""A pipeline killed for real (SIGKILL of its whole process group, mid-stage, as a preempted
job dies) resumes inside the stage it was in: the trainer restarts from the stage's last
checkpoint, the finished stages are skipped, and the run completes."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

from helpers_classification import GLUE, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoint_steps(workdir):
  names = [os.path.basename(p) for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))]
  return sorted(int(n) for n in names if n.isdigit())  # finalized (not *.orbax-checkpoint-tmp)


def test_sigkill_mid_stage_then_resume(tmp_path):
  teacher = write_tiny_model(
    str(tmp_path / "teacher"), head="classification", seed=1, num_attention_heads=4
  )
  W = str(tmp_path / "p")
  args = [
    sys.executable,
    "-m",
    "kdjax.pipeline",
    f"--config=configs/pipeline.py:tiny,task=sst-2,teacher={teacher},"
    f"data_dir={os.path.join(GLUE, 'SST-2')},order=teacher_finetune;vanilla_kd",
    # long enough to be killed between checkpoints (3 training rows: 1 step per epoch)
    "--config.stages.vanilla_kd.overrides=max_steps=120 eval_steps=120 save_steps=20 "
    "logging_steps=10",
    "--config.report.speed=False",
    f"--workdir={W}",
  ]
  env = dict(os.environ, PYTHONPATH=ROOT)
  kd = os.path.join(W, "06_vanilla_kd")
  log = open(tmp_path / "first.log", "w")
  p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
  deadline = time.time() + 600
  while time.time() < deadline and p.poll() is None and not _checkpoint_steps(kd):
    time.sleep(0.5)
  assert p.poll() is None, open(tmp_path / "first.log").read()[-3000:]
  assert _checkpoint_steps(kd), "no checkpoint within the deadline"
  os.killpg(p.pid, signal.SIGKILL)  # the pipeline and its trainer, no clean-up
  p.wait()
  log.close()
  assert os.path.isfile(os.path.join(W, "02_teacher_finetune", "stage.json"))
  assert not os.path.isfile(os.path.join(kd, "stage.json"))
  saved = _checkpoint_steps(kd)[-1]
  assert saved < 120

  r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert "02_teacher_finetune: finished, inputs unchanged: skipped" in r.stdout
  assert "06_vanilla_kd: resuming the unfinished run" in r.stdout
  kd_log = open(os.path.join(kd, "pipeline.log")).read()
  assert "resumed from" in kd_log and f"at step {saved}" in kd_log, kd_log[-3000:]
  # the trainer's own logging continued where the kill left it (no restart from step 1)
  with open(os.path.join(kd, "metrics.jsonl")) as f:
    steps = [json.loads(x)["step"] for x in f if x.strip()]
  after = steps[steps.index(max(s for s in steps if s <= saved)) + 1 :]
  assert after and min(after) > saved - 10 and max(steps) == 120
  assert os.path.isfile(os.path.join(kd, "stage.json"))
