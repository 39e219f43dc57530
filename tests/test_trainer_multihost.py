"""Trainer tests in subprocesses: fake CPU devices, 2 local processes, SIGKILL + exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers_trainer import load_params, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
HELPER = os.path.join(TESTS, "helpers_trainer.py")
# Same global batches everywhere: batch 16 in 2 micro-batches of 8 over up to 8 devices.
RUN = {"batch_size": 16, "grad_accum_steps": 2, "max_steps": 5, "recipe": {"dropout": 0.1}}


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("KDJAX_", "XLA_FLAGS"))}
  path = [ROOT, TESTS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  env.update(PYTHONPATH=os.pathsep.join(path), JAX_PLATFORMS="cpu", **extra)
  return env


def _run_helper(workdir, overrides, env=None, timeout=120):
  proc = subprocess.run(
    [sys.executable, HELPER, str(workdir), json.dumps(overrides)],
    env=env or _env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(workdir):
  by_step = {r["step"]: r for r in read_metrics(workdir) if "loss" in r}
  return np.array([[by_step[s]["loss"], by_step[s]["grad_norm"]] for s in sorted(by_step)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("mesh")
  out = {name: base / name for name in ("one", "eight", "two_hosts")}
  _run_helper(out["one"], dict(RUN, mesh={"data": 1, "fsdp": 1}))
  _run_helper(
    out["eight"], dict(RUN, mesh={"data": 2, "fsdp": 4}), env=_env(KDJAX_NUM_CPU_DEVICES="8")
  )
  proc = _launch_two(out["two_hosts"], dict(RUN, mesh={"data": 2, "fsdp": 4}))
  assert "[1] " in proc.stdout  # rank-prefixed output of the second process
  return out


def _launch_two(workdir, overrides):
  cmd = [
    sys.executable,
    os.path.join(ROOT, "launch", "local.py"),
    "--num_processes",
    "2",
    "--num_cpu_devices",
    "4",
    "--timeout",
    "150",
    "-m",
    "helpers_trainer",
    "--",
    str(workdir),
    json.dumps(overrides),
  ]
  proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _info(workdir):
  with open(os.path.join(workdir, "run_info.json")) as f:
    return json.load(f)


def _assert_params_close(a, b, tol):
  a, b = load_params(a), load_params(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol)


def test_fsdp_mesh_shards_params_and_matches_one_device(runs):
  info = _info(runs["eight"])
  assert info["devices"] == 8 and info["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  spec = info["params_spec"]
  assert "fsdp" in spec["['dense1']['kernel']"] and "fsdp" in spec["['dense2']['kernel']"]
  opt = info["opt_spec"]  # Adam moments follow their parameters; counters replicated
  for moment in ("mu", "nu"):
    assert opt[f"[1][0].{moment}['dense1']['kernel']"] == spec["['dense1']['kernel']"]
  assert opt["[1][0].count"] == "P()"
  assert _info(runs["one"])["devices"] == 1
  one, eight = _losses(runs["one"]), _losses(runs["eight"])
  assert one.shape == (5, 2)
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
  _assert_params_close(runs["eight"], runs["one"], 1e-5)


def test_two_processes_match_one_process(runs):
  info = _info(runs["two_hosts"])
  assert info["processes"] == 2 and info["devices"] == 8
  two = _losses(runs["two_hosts"])
  np.testing.assert_allclose(two, _losses(runs["eight"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(two, _losses(runs["one"]), rtol=1e-5, atol=1e-5)
  _assert_params_close(runs["two_hosts"], runs["one"], 1e-5)
  ckpt = os.path.join(runs["two_hosts"], "checkpoints", "5", "data", "metadata")
  with open(ckpt) as f:
    payload = json.load(f)
  assert payload["process_count"] == 2 and payload["data"] == [{"index": 5}, {"index": 5}]
  # Relaunch: both processes restore step 5 into the fsdp shardings; nothing left to train.
  before = load_params(runs["two_hosts"])
  proc = _launch_two(runs["two_hosts"], dict(RUN, mesh={"data": 2, "fsdp": 4}))
  for rank in (0, 1):
    assert any(
      line.startswith(f"[{rank}] ") and "resumed from" in line and "step 5" in line
      for line in proc.stdout.splitlines()
    )
  after = load_params(runs["two_hosts"])
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])


def _run_until_blocked(workdir, overrides, block_at, wait_for_step=None, timeout=90):
  """Runs the helper until its data iterator blocks at batch `block_at`, then SIGKILLs it
  (after checkpoint `wait_for_step` is committed, if given)."""
  marker = os.path.join(workdir, f"blocked_{block_at}")
  overrides = dict(overrides, recipe=dict(overrides["recipe"], block_at=block_at, marker=marker))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"log_{block_at}.txt"), "w") as log:
    proc = subprocess.Popen(
      [sys.executable, HELPER, str(workdir), json.dumps(overrides)],
      env=_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    final = (
      None if wait_for_step is None else os.path.join(workdir, "checkpoints", str(wait_for_step))
    )
    deadline = time.monotonic() + timeout
    try:
      while not (os.path.exists(marker) and (final is None or os.path.isdir(final))):
        assert proc.poll() is None, f"helper exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "helper did not reach the block point"
        time.sleep(0.02)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()


def test_sigkill_then_resume_is_exact(tmp_path):
  run = {"batch_size": 8, "max_steps": 8, "save_steps": 3, "recipe": {"dropout": 0.3}}
  full, killed = tmp_path / "full", tmp_path / "killed"
  _run_helper(full, run)
  # Killed mid-way between checkpoints, once step 3 is committed (hangs fetching step 5).
  _run_until_blocked(killed, run, block_at=4, wait_for_step=3)
  # Resumed from 3, killed right after the async save of step 6 started (likely mid-save).
  _run_until_blocked(killed, run, block_at=6)
  ckpts = os.listdir(killed / "checkpoints")
  assert "3" in ckpts
  _run_helper(killed, run)  # resumes from 3 or 6, whichever was committed, to the end
  a, b = load_params(full), load_params(killed)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  last = {r["step"]: r["loss"] for r in read_metrics(killed) if "loss" in r}
  np.testing.assert_array_equal([last[s] for s in sorted(last)], _losses(full)[:, 0])


def test_launcher_stops_everyone_when_one_rank_fails(tmp_path):
  code = (
    "import os, sys, time\nif os.environ['KDJAX_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)\n"
  )
  (tmp_path / "fail_one_rank.py").write_text(code)
  env = _env()
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
  t0 = time.monotonic()
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "launch", "local.py"),
      "--num_processes",
      "2",
      "-m",
      "fail_one_rank",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 3, proc.stderr
  assert time.monotonic() - t0 < 30
  assert "process 1 exited with 3" in proc.stderr
