"""Helpers shared by the benchmark scripts: run a kdjax CLI in a subprocess with its log in a
file, train a model once (a finished workdir is reused), and the machine facts every figure is
recorded with (CPU model and flags, package versions)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(args: list[str], log: str) -> float:
  """``python ARGS`` from the checkout root, offline, stdout and stderr into ``log``; returns
  the wall seconds; a non-zero exit stops the benchmark naming the command and the log."""
  t0 = time.perf_counter()
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TF_CPP_MIN_LOG_LEVEL="3",
  )
  os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
  with open(log, "w") as f:
    r = subprocess.run(
      [sys.executable, *args], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
    )
  if r.returncode:
    raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}\n  see {log}")
  return time.perf_counter() - t0


def train(name: str, config: str, workdir: str, log_dir: str, *overrides: str) -> float | None:
  """``python -m kdjax.train`` unless ``workdir/export`` already holds the trained model
  (then None: an interrupted benchmark restarts where it was)."""
  if os.path.exists(os.path.join(workdir, "export", "config.json")):
    print(f"  {name}: already trained ({workdir})", flush=True)
    return None
  print(f"  {name}: training ...", flush=True)
  args = ["-m", "kdjax.train", f"--config={config}", f"--workdir={workdir}"]
  return sh(
    [*args, "--config.progress_bar=False", *overrides], os.path.join(log_dir, f"{name}.log")
  )


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(x) for x in f if x.strip()]


def cpu_info() -> dict:
  """CPU model, core count and the SIMD flags that decide CPU speed (AVX2-only AMD machines
  and AVX-512 / AMX Intel ones differ a lot: never compare figures across them)."""
  info = {"machine": platform.machine(), "cpus": os.cpu_count()}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      text = f.read()
    for line in text.splitlines():
      if line.startswith("model name") and "model" not in info:
        info["model"] = line.split(":", 1)[1].strip()
      if line.startswith("flags") and "flags" not in info:
        flags = set(line.split(":", 1)[1].split())
        wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "fma")
        info["flags"] = [f for f in wanted if f in flags]
  except OSError:
    pass
  return info


def versions(dists=("jax", "jaxlib", "flax", "torch", "transformers", "tensorflow", "onnxruntime")):
  from importlib import metadata

  out = {"python": platform.python_version()}
  for dist in dists:
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = None
  return out
