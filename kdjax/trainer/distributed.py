"""Joining a multi-process JAX job.

`maybe_initialize_distributed()` must run before anything touches a device. It reads:
  KDJAX_COORDINATOR ("host:port"), KDJAX_NUM_PROCESSES, KDJAX_PROCESS_ID  (set by launch/local.py)
  KDJAX_NUM_CPU_DEVICES  fake CPU devices per process (tests, local runs)
  KDJAX_DISTRIBUTED=auto plain `jax.distributed.initialize()` (cluster auto-detection)
Without KDJAX_* it auto-initializes when the environment is clearly a multi-host job:
SLURM with more than one task, or a TPU pod slice with more than one worker.
"""

from __future__ import annotations

import os

import jax
from absl import logging

_initialized = False


def _multi_host_env() -> bool:
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS", "")
  return len([h for h in hosts.split(",") if h]) > 1


def maybe_initialize_distributed() -> bool:
  """Initializes jax.distributed when the environment asks for it; idempotent.

  Returns True when this process is (now) part of a multi-process job.
  """
  global _initialized
  if _initialized or jax.distributed.is_initialized():
    _initialized = True
    return True
  env = os.environ
  if env.get("KDJAX_NUM_CPU_DEVICES"):
    jax.config.update("jax_num_cpu_devices", int(env["KDJAX_NUM_CPU_DEVICES"]))
  if env.get("KDJAX_COORDINATOR"):
    jax.distributed.initialize(
      coordinator_address=env["KDJAX_COORDINATOR"],
      num_processes=int(env["KDJAX_NUM_PROCESSES"]),
      process_id=int(env["KDJAX_PROCESS_ID"]),
    )
  elif env.get("KDJAX_DISTRIBUTED", "").lower() == "auto" or _multi_host_env():
    jax.distributed.initialize()
  else:
    return False
  _initialized = True
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
