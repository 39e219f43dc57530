"""kdjax's XLA flag defaults (``kdjax.XLA_DEFAULTS``): added on import unless the user names
them or opts out, and they reach XLA's compiler."""

import os
import subprocess
import sys

import kdjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def test_added_unless_named_or_opted_out():
  env = {}
  kdjax._add_xla_defaults(env)
  assert env["XLA_FLAGS"] == f"{FLAG}=false"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "}
  kdjax._add_xla_defaults(env)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}=false"
  env = {"XLA_FLAGS": f"{FLAG}=true"}  # the user's setting wins
  kdjax._add_xla_defaults(env)
  assert env["XLA_FLAGS"] == f"{FLAG}=true"
  env = {"KDJAX_XLA_DEFAULTS": "0", "XLA_FLAGS": "--a=1"}
  kdjax._add_xla_defaults(env)
  assert env["XLA_FLAGS"] == "--a=1"
  assert all(f.startswith("--xla_") and "=" in f for f in kdjax.XLA_DEFAULTS)


# independent branches: the two schedulers order them differently
PROGRAM = """
import kdjax, os, jax, jax.numpy as jnp
def f(x, ws):
  outs = [jnp.tanh(x @ w) @ w.T for w in ws]
  y = outs[0]
  for o in outs[1:]:
    y = y * o + 1.0
  return jnp.sum(y), [jnp.exp(o).sum(0) for o in outs]
x = jnp.ones((64, 64)); ws = [jnp.full((64, 64), 0.01 * i) for i in range(6)]
print(os.environ.get("XLA_FLAGS", ""))
print(jax.jit(f).lower(x, ws).compile().as_text())
"""


def _compiled(**env_extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("KDJAX_", "XLA_FLAGS"))}
  env.update(env_extra, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run(
    [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  flags, hlo = r.stdout.split("\n", 1)
  return flags, hlo


def test_the_defaults_reach_the_compiler():
  flags, with_defaults = _compiled()
  assert f"{FLAG}=false" in flags
  _, opted_out = _compiled(KDJAX_XLA_DEFAULTS="0")
  _, explicit = _compiled(KDJAX_XLA_DEFAULTS="0", XLA_FLAGS=f"{FLAG}=false")
  assert with_defaults == explicit
  assert with_defaults != opted_out
