"""Dense matmul roofline of this machine: jnp.dot (XLA CPU, per XLA_FLAGS setting) and torch.mm.

  .venv/bin/python benchmarks/roofline.py                      # XLA settings + torch, 2 threads
  .venv/bin/python benchmarks/roofline.py --torch_python=benchmarks/peers/.venvs/torch/bin/python

Every measurement runs in its own process (no framework shares a thread pool with another),
alternating over ``--reps`` rounds, each process pinned to ``--threads`` CPUs. Shapes: a large
square (``--n``, the roofline) and the BERT-base FFN matmul ``[B*L, 768] x [768, 3072]`` at
32 x 128 tokens (what a distillation step is made of). Prints GFLOP/s, best of the rounds'
medians, float32 and bfloat16 (bfloat16 inputs, the framework's own accumulation), the CPU
model and SIMD flags, and writes JSON with ``--json``.

XLA settings compared (``XLA_FLAGS``): the default; ``--xla_cpu_use_onednn=true`` (oneDNN
matmuls); ``--xla_cpu_experimental_{onednn,xnn,ynn}_fusion_type=dot`` (dots as oneDNN, XNNPACK or
YNNPACK fusions); and ``kdjax-onednn``, kdjax's own oneDNN custom call
(``kdjax.kernels.cpu_matmul.matmul``, what the models' bf16 dense layers use on CPU); each is a flag of the
installed jaxlib (``strings libjax_common.so | grep xla_cpu_``). A setting the installed jaxlib
rejects is reported as unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import cpu_info  # noqa: E402

XLA_SETTINGS = {
  "xla-default": "",
  "xla-onednn": "--xla_cpu_use_onednn=true",
  "xla-onednn-dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
  "xla-onednn-cc": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
  "xla-xnn-dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
  "xla-ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
}

CHILD = r"""
import json, os, sys, time
import numpy as np
impl, n, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, set(range(threads)))
shapes = {"square": (n, n, n), "bert_ffn": (32 * 128, 768, 3072)}
out = {}
if impl == "torch":
  import torch
  torch.set_num_threads(threads)
  for name, (m, k, nn) in shapes.items():
    for dt in ("float32", "bfloat16"):
      a = torch.randn(m, k).to(getattr(torch, dt)); b = torch.randn(k, nn).to(getattr(torch, dt))
      torch.mm(a, b)
      ts = []
      for _ in range(iters):
        t0 = time.perf_counter(); torch.mm(a, b); ts.append(time.perf_counter() - t0)
      out[f"{name}/{dt}"] = 2 * m * k * nn / float(np.median(ts)) / 1e9
  out["version"] = torch.__version__
else:
  import jax, jax.numpy as jnp
  if impl == "kdjax-onednn":
    from kdjax.kernels import cpu_matmul
    f = jax.jit(cpu_matmul.matmul)
  else:
    f = jax.jit(jnp.dot)
  for name, (m, k, nn) in shapes.items():
    for dt in ("float32", "bfloat16"):
      a = jnp.ones((m, k), dt); b = jnp.ones((k, nn), dt)
      f(a, b).block_until_ready()
      ts = []
      for _ in range(iters):
        t0 = time.perf_counter(); f(a, b).block_until_ready(); ts.append(time.perf_counter() - t0)
      out[f"{name}/{dt}"] = 2 * m * k * nn / float(np.median(ts)) / 1e9
  out["version"] = jax.__version__
print("RESULT " + json.dumps(out))
"""


def run_child(python: str, impl: str, args, xla_flags: str = "") -> dict | None:
  env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
  env["XLA_FLAGS"] = xla_flags
  cmd = [python, "-c", CHILD, impl, str(args.n), str(args.threads), str(args.iters)]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
  for line in r.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  print(f"  {impl} {xla_flags!r}: unavailable ({(r.stderr or r.stdout).strip()[-300:]})")
  return None


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--n", type=int, default=2048, help="square matmul size")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--reps", type=int, default=2, help="alternating rounds")
  p.add_argument("--settings", default=",".join(XLA_SETTINGS), help="XLA settings to compare")
  p.add_argument(
    "--torch_python",
    default=os.path.join(ROOT, "benchmarks", "peers", ".venvs", "torch", "bin", "python"),
    help="a python with torch (benchmarks/peers/setup.sh); skipped if missing",
  )
  p.add_argument(
    "--kernel",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time kdjax's oneDNN matmul custom call (kdjax/kernels/cpu_matmul.py)",
  )
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  impls = [(s, sys.executable, "jax", XLA_SETTINGS[s]) for s in args.settings.split(",") if s]
  if args.kernel:
    impls.append(("kdjax-onednn", sys.executable, "kdjax-onednn", ""))
  if os.path.exists(args.torch_python):
    impls.append(("torch", args.torch_python, "torch", ""))
  best: dict[str, dict] = {}
  for _ in range(args.reps):
    for name, python, impl, flags in impls:
      r = run_child(python, impl, args, flags)
      if r is None:
        continue
      cur = best.setdefault(name, dict(r))
      for k, v in r.items():
        if k != "version":
          cur[k] = max(cur[k], v)
  info = cpu_info()
  print(f"CPU: {info.get('model')} flags {info.get('flags')}, {args.threads} threads")
  keys = ["square/float32", "square/bfloat16", "bert_ffn/float32", "bert_ffn/bfloat16"]
  print("| impl | " + " | ".join(f"{k} GFLOP/s" for k in keys) + " |")
  print("|---|" + "---|" * len(keys))
  for name, r in best.items():
    print(f"| {name} ({r['version']}) | " + " | ".join(f"{r[k]:.0f}" for k in keys) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(cpu=info, threads=args.threads, n=args.n, results=best), f, indent=2)


if __name__ == "__main__":
  main()
