"""Where a kdjax distillation step spends its time, per XLA op (the profile behind issue #11).

  .venv/bin/python benchmarks/peers/profile_step.py --shape=tinybert-b32-l128 --dtype=bfloat16
  .venv/bin/python benchmarks/peers/profile_step.py --shape=minilm-b8-l128 --dtype=float32

Builds the harness's step for the shape: TinyBERT stage 1 (``kdjax_side.tinybert_step``: the
tinybert recipe run by the trainer) or MiniLMv2 (``kdjax_side.minilm_step``: the step of
``distill_throughput.py``, ``--sample_relation`` for beta = 1), runs ``--warmup`` steps, times ``--steps``, then traces one step with
``jax.profiler`` and reads the trace back with ``jax.profiler.ProfileData``: every XLA CPU thunk
(fusion, custom call, copy) with its wall time on the thread that ran it, summed per kind of op
(name without its ``.N`` suffix) and per (kind, output shape, custom-call target, source op).
XLA runs independent thunks concurrently on its thread pool, so the per-op times add up to more
than the step (the ratio is printed); a oneDNN custom call uses every core itself.

``--top`` rows are printed; ``--json`` writes the per-op table. The compiled HLO (``--hlo``)
names each fusion's contents.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402


def op_table(xplane_path: str) -> dict[str, float]:
  """``{thunk name: seconds}`` over the XLA CPU worker threads of one trace."""
  import jax

  data = jax.profiler.ProfileData.from_file(xplane_path)
  out = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue
      for ev in line.events:
        # thunks are named after their HLO instruction; skip the runtime's own events
        # ("ThunkExecutor::Execute", "ThreadpoolListener::...", "end: copy.12")
        if re.fullmatch(r"[A-Za-z_][\w\-]*(\.\d+)?", ev.name):
          out[ev.name] += ev.duration_ns / 1e9
  return dict(out)


def describe(ops: dict[str, float], hlo: str) -> list[tuple[tuple[str, str, str], float, int]]:
  """Group ops by (kind, output shape, target + source op) using the compiled HLO text."""
  lines = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (.*)", line)
    if m:
      lines[m.group(1)] = (m.group(2), m.group(3))
  total, count = collections.Counter(), collections.Counter()
  for name, secs in ops.items():
    shape, rest = lines.get(name, ("?", ""))
    op = re.search(r'op_name="([^"]*)"', rest)
    target = re.search(r'custom_call_target="(\w+)"', rest)
    what = (target.group(1) + " " if target else "") + (
      re.sub(r"^jit\(\w+\)/", "", op.group(1))[:60] if op else ""
    )
    key = (re.sub(r"\.\d+$", "", name), shape, what)
    total[key] += secs
    count[key] += 1
  return [(k, v, count[k]) for k, v in total.most_common()]


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--shape", default="tinybert-b32-l128", choices=sorted(common.SHAPES))
  p.add_argument("--sample_relation", action="store_true", help="MiniLMv2 shapes: beta = 1")
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=30)
  p.add_argument("--json", default="", help="write the per-op table here")
  p.add_argument("--hlo", default="", help="write the compiled step's HLO here")
  args = p.parse_args(argv)

  import jax
  import kdjax_side

  # One scratch directory for the saved teacher (a 420 MB BASE checkpoint) and the trace: both are
  # removed on exit, also when the profile raises.
  with tempfile.TemporaryDirectory(prefix="kdjax-profile-") as tmp:
    s = common.shape(args.shape)
    if s.get("method") == "tinybert":
      trainer, state, frozen, batch = kdjax_side.tinybert_step(s, args.dtype, tmp)
    else:
      trainer, state, frozen, batch = kdjax_side.minilm_step(
        s, args.dtype, tmp, args.sample_relation
      )
    step = trainer.step_fn
    for _ in range(args.warmup):
      state, _ = jax.block_until_ready(step(state, frozen, batch))
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, _ = jax.block_until_ready(step(state, frozen, batch))
      times.append(time.perf_counter() - t0)
    trace_dir = os.path.join(tmp, "trace")
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      state, _ = jax.block_until_ready(step(state, frozen, batch))
      traced = time.perf_counter() - t0
    (xplane,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    ops = op_table(xplane)
    hlo = step.lower(state, frozen, batch).compile().as_text()
    if args.hlo:
      with open(args.hlo, "w") as f:
        f.write(hlo)
    rows = describe(ops, hlo)
    busy = sum(ops.values())
    print(f"{args.shape} {args.dtype}: step {min(times):.3f} s (min of {len(times)}); traced step")
    print(f"{traced:.3f} s; op time {busy:.3f} s summed over XLA threads ({busy / traced:.2f}x)")
    kinds = collections.Counter()
    for (kind, _, _), secs, _ in rows:
      kinds[kind] += secs
    print("\nby kind of op:")
    for kind, secs in kinds.most_common(12):
      print(f"  {secs * 1e3:9.1f} ms  {100 * secs / busy:5.1f} %  {kind}")
    print(f"\ntop {args.top} (kind, output shape, custom call / source op):")
    for (kind, shape, what), secs, n in rows[: args.top]:
      print(f"  {secs * 1e3:9.1f} ms  x{n:<4d} {kind:26s} {shape:28s} {what}")
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"shape": args.shape, "dtype": args.dtype, "step_s": times, "ops_s": ops}, f)


if __name__ == "__main__":
  main()
