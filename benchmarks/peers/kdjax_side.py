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
parameters and AdamW stay float32), kdjax's counterpart of PyTorch's bf16 autocast. The bf16
dense matmuls run in kdjax's oneDNN kernel where it is built and the CPU has AVX512-BF16 / AMX
(``kdjax.kernels.cpu_matmul``; ``KDJAX_CPU_MATMUL=xla`` in the environment times XLA's own).

TinyBERT shapes time the ``tinybert`` recipe's stage-1 step (``configs/tinybert.py:intermediate``,
built by ``kdjax.recipes.tinybert.build`` and run by the trainer, AdamW and clipping included):
embedding, hidden-state and attention MSE under the uniform layer map with ``projection=
"per_layer"`` (one projection each, as the TextBrewer peer's ``proj`` entries). The teacher is a
random ``BASE`` classifier saved to a temporary HF directory, the task a synthetic SST-2 folder of
one batch of rows (it only fixes the batch layout: each step is fed ``common.batch``). The TextBrewer peer also adds
the logits soft cross-entropy to the same step; the two classifier heads that costs are <0.1 % of
the step's FLOPs (768 x 2 and 312 x 2 matmuls).
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


ROOT = os.path.dirname(os.path.dirname(HERE))


def minilm_step(s: dict, dtype: str, tmp: str, sample_relation: bool = False):
  """(trainer, state, frozen, batch) for the MiniLMv2 step of shape ``s``: what
  ``distill_throughput`` times for it (``_register``'d, ``beta`` 1 with ``sample_relation``)."""
  import distill_throughput as dt

  _register(dt, s, 1.0 if sample_relation else 0.0)
  trainer, state, frozen, batch, _ = dt.build_kdjax(
    s["name"], dt.SHAPES[s["name"]], dtype, tmp, student_dtype=dtype
  )
  return trainer, state, frozen, batch


def tinybert_step(s: dict, dtype: str, tmp: str):
  """(trainer, state, frozen, batch) for the TinyBERT stage-1 step of shape ``s``."""
  import importlib.util

  import numpy as np

  from kdjax import models
  from kdjax.data.tokenizer import Tokenizer
  from kdjax.recipes import tinybert
  from kdjax.trainer import Trainer

  vocab = os.path.join(tmp, "vocab.txt")
  with open(vocab, "w") as f:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    f.write("\n".join(words + [f"w{i}" for i in range(s["vocab"] - len(words))]) + "\n")
  layers, hidden, heads, ffn = s["teacher"]
  cfg = models.BertConfig(
    vocab_size=s["vocab"],
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=ffn,
    num_labels=s["num_labels"],
  )
  teacher_dir = os.path.join(tmp, "teacher")
  teacher = models.create_model(cfg, "classification", seed=0)
  models.save_pretrained(teacher, teacher_dir, tokenizer=Tokenizer.from_vocab(vocab))
  del teacher
  data = os.path.join(tmp, "SST-2")
  os.makedirs(data)
  for split in ("train", "dev"):
    with open(os.path.join(data, f"{split}.tsv"), "w") as f:
      f.write("sentence\tlabel\n")
      f.writelines(f"w{i} w{i + 1} w{i + 2}\t{i % 2}\n" for i in range(s["batch"]))
  spec = importlib.util.spec_from_file_location("tinybert_cfg", f"{ROOT}/configs/tinybert.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("intermediate,task=sst-2")
  c.data_dir = data
  c.teacher.path, c.teacher.dtype = teacher_dir, dtype
  (
    c.student.num_hidden_layers,
    c.student.hidden_size,
    c.student.num_attention_heads,
    c.student.intermediate_size,
  ) = s["student"]
  c.student.dtype = dtype
  c.projection = "per_layer"
  c.batch_size, c.max_seq_length = s["batch"], s["seq"]
  c.learning_rate, c.warmup_steps, c.max_steps = common.LEARNING_RATE, 10, 1000
  c.progress_bar = c.tensorboard = False
  recipe = tinybert.build(c, os.path.join(tmp, "run"))
  trainer = Trainer(c, recipe, os.path.join(tmp, "run"))
  template = next(recipe.train_data(0, 1))
  fed = common.batch(s)
  batch = {
    k: (fed[k] if k in fed else np.ones_like(np.asarray(v))).astype(np.asarray(v).dtype)
    for k, v in template.items()
  }
  return trainer, trainer.init_state(), trainer.init_frozen(), trainer.global_batch(batch)


def teacher_forward(trainer):
  """The jitted forward of the step's frozen teacher alone, exactly as the stage-1 loss calls it
  (the mapped layers captured, stopping at the deepest), returning only what
  ``tinybert.intermediate_terms`` reads: ``fn(frozen, batch) -> (embeddings, [(hidden, scores)
  per mapped layer])``; other captured internals are left for XLA to drop, as in the step."""
  import jax

  from kdjax.recipes.common import forward

  recipe = trainer.recipe
  layers = tuple(recipe.teacher_layers)

  def fn(frozen, batch):
    t = forward(recipe.teacher, frozen, batch, capture_layers=layers, stop_at_layer=layers[-1])
    return t.embedding_output, [(t.layers[j].hidden, t.layers[j].scores) for j in layers]

  return jax.jit(fn)


def run_tinybert(s: dict, args) -> None:
  import jax

  with tempfile.TemporaryDirectory() as tmp:
    trainer, state, frozen, batch = tinybert_step(s, args.dtype, tmp)
    if args.teacher_only:
      fwd = teacher_forward(trainer)

      def step():
        return jax.block_until_ready(fwd(frozen, batch))

    else:

      def step():
        nonlocal state
        state, metrics = trainer.step_fn(state, frozen, batch)
        return jax.block_until_ready(metrics)

    warmup_s, times, out = common.time_steps(step, args.steps, args.warmup)
    # teacher_only: the mean |x| of the deepest captured hidden state (a checksum, not a loss),
    # computed after the timing as the TextBrewer peer does
    loss = abs(out[1][-1][0].astype("float32")).mean() if args.teacher_only else out["loss"]
  common.emit(
    dict(
      impl="kdjax",
      threads=common.threads_from_env(),
      step_times_s=times,
      warmup_s=warmup_s,
      loss=float(loss),
      jax_backend=jax.default_backend(),
      device=jax.devices()[0].device_kind,
    )
  )


def main(argv=None):
  args = common.child_args(argv)
  s = common.shape(args.shape)
  if s["method"] == "tinybert":
    run_tinybert(s, args)
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
