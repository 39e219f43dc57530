"""The kdjax side of the peer harness: benchmarks/distill_throughput.py's step, per shape.

  .venv/bin/python benchmarks/peers/kdjax_side.py --shape=minilm-tiny [--dtype=bfloat16] [--sample_relation]

Runs ``distill_throughput.main`` with its own flags (``--shapes --steps --teacher_dtype
--student_dtype``) in this process, so the step timed is exactly that script's (the trainer's
jitted step, AdamW included) and no code is copied. Three things the harness needs that its
flags do not carry are added from outside, without editing it:

* the harness's shapes are registered in its ``SHAPES`` table (same dims, batch and synthetic
  ids: ``common.batch`` draws what its ``_batch`` draws);
* its ``_config`` is wrapped to set ``teacher_layer_index`` (the 24-layer teacher stops at
  index 19) and ``beta`` (the ``--sample_relation`` rows);
* ``Trainer`` is subclassed so each call of ``step_fn`` is timed to completion
  (``block_until_ready``): the harness reports min/median/max per step, the script only a mean.

``--dtype=bfloat16`` is ``--teacher_dtype=bfloat16 --student_dtype=bfloat16`` (compute dtype;
parameters and AdamW stay float32), kdjax's counterpart of PyTorch's bf16 autocast. TinyBERT
shapes are not covered: distill_throughput.py times only the MiniLMv2 step (the result says so).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/, for distill_throughput

import common  # noqa: E402


def _register(dt, s, beta):
  dt.SHAPES[s["name"]] = dict(
    teacher=tuple(s["teacher"]),
    student=tuple(s["student"]),
    vocab=s["vocab"],
    batch=s["batch"],
    seq=s["seq"],
    relation_heads=s["relation_heads"],
  )
  base_config = dt._config

  def _config(shape, teacher_dtype):
    c = base_config(shape, teacher_dtype)
    c.teacher_layer_index = s["teacher_layer"]
    c.student_layer_index = s["student_layer"]
    c.beta = beta
    return c

  dt._config = _config


def _timed_trainer(dt, times):
  import jax

  class TimedTrainer(dt.Trainer):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      jitted = self.step_fn

      def step_fn(*args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
        return out

      self.step_fn = step_fn

  dt.Trainer = TimedTrainer


def main(argv=None):
  args = common.child_args(argv)
  s = common.shape(args.shape)
  if s["method"] != "minilm":
    common.emit(
      dict(
        impl="kdjax",
        unavailable="benchmarks/distill_throughput.py times only the MiniLMv2 step; "
        "no TinyBERT step to run",
      )
    )
    return
  import distill_throughput as dt
  import jax

  times: list[float] = []
  _register(dt, s, common.SAMPLE_BETA if args.sample_relation else 0.0)
  _timed_trainer(dt, times)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    dt.main(
      [
        f"--shapes={s['name']}",
        f"--steps={args.steps}",
        f"--teacher_dtype={args.dtype}",
        f"--student_dtype={args.dtype}",
        f"--json={out}",
      ]
    )
    with open(out) as f:
      (result,) = json.load(f)
  # times[0] is the compiling call; distill_throughput's own timed loop follows it.
  common.emit(
    dict(
      impl="kdjax",
      threads=common.threads_from_env(),
      step_times_s=times[1:],
      warmup_s=times[0],
      loss=result["loss"],
      mean_step_s=result["step_s"],
      jax_backend=jax.default_backend(),
      device=result["device"],
    )
  )


if __name__ == "__main__":
  main()
