"""Throughput of one MiniLMv2 distillation step (the trainer's jitted step, AdamW included).

  python benchmarks/distill_throughput.py                    # tiny and base shapes
  python benchmarks/distill_throughput.py --shapes=base --steps=10 --teacher_dtype=bfloat16

Shapes (randomly initialised: speed does not depend on trained weights):
  tiny: teacher 4L/64H -> student 2L/32H, batch 8 x 32
  base: teacher BERT-base 12L/768H/12 heads (layer 11) -> student 6L/384H/12 heads (layer 5),
        48 relation heads, batch 32 x 128 (the issue's reference shape)

Prints examples/s, tokens/s, step time, peak memory (device memory stats where the backend
has them, else the process's peak RSS) and MFU where the device's peak FLOP/s is known.

Against PyTorch, TextBrewer and PaddleNLP: ``benchmarks/peers/run.py``, which runs this step and
each peer's in its own process, alternating. (The in-process PyTorch baseline this script once
had is gone: sharing the process with XLA's threads slowed PyTorch, so its ratio flattered kdjax.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from kdjax import models
from kdjax.data import Tokenizer
from kdjax.models.loading import ModelHandle
from kdjax.recipes.general_distill import GeneralDistill
from kdjax.trainer import Trainer
from kdjax.trainer.metrics import peak_flops_per_device

SHAPES = {
  "tiny": dict(
    teacher=(4, 64, 4, 128), student=(2, 32, 4, 64), vocab=1000, batch=8, seq=32, relation_heads=4
  ),
  "base": dict(
    teacher=(12, 768, 12, 3072),
    student=(6, 384, 12, 1536),
    vocab=30522,
    batch=32,
    seq=128,
    relation_heads=48,
  ),
  # Long sequences: the relation tensors dominate memory (see --relation_chunk_heads).
  "base512": dict(
    teacher=(12, 768, 12, 3072),
    student=(6, 384, 12, 1536),
    vocab=30522,
    batch=8,
    seq=512,
    relation_heads=48,
  ),
  # The seed's training batch (GPU/TPU sized).
  "base256": dict(
    teacher=(12, 768, 12, 3072),
    student=(6, 384, 12, 1536),
    vocab=30522,
    batch=256,
    seq=128,
    relation_heads=48,
  ),
}


def _cfg(dims, vocab, dtype):
  layers, hidden, heads, ffn = dims
  return models.BertConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=ffn,
    dtype=dtype,
  )


def _config(shape, teacher_dtype):
  import ml_collections

  from kdjax.trainer.config import default_trainer_config

  c = default_trainer_config()
  c.recipe = "general_distill"
  c.teacher = ml_collections.ConfigDict(dict(path="", dtype=teacher_dtype))
  c.student = ml_collections.ConfigDict(dict(path="", config_path=""))
  c.num_relation_heads = shape["relation_heads"]
  c.teacher_layer_index = shape["teacher"][0] - 1
  c.student_layer_index = shape["student"][0] - 1
  c.alpha = c.beta = 0.0
  c.relation_chunk_heads = RELATION_CHUNK_HEADS
  c.max_seq_length = shape["seq"]
  c.batch_size = shape["batch"]
  c.learning_rate, c.warmup_steps, c.max_steps = 1e-4, 10, 1000
  c.progress_bar = c.tensorboard = False
  return c


RELATION_CHUNK_HEADS = -1  # --relation_chunk_heads


def _batch(shape, seed=0):
  rng = np.random.default_rng(seed)
  b, l = shape["batch"], shape["seq"]
  ids = rng.integers(5, shape["vocab"], size=(b, l), dtype=np.int32)
  lengths = rng.integers(l // 2, l + 1, size=b)
  mask = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": ids * mask,
    "attention_mask": mask,
    "token_type_ids": np.zeros((b, l), np.int32),
  }


def _peak_memory_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def build_kdjax(name, shape, teacher_dtype, tmp, student_dtype="float32"):
  """(trainer, state, frozen, batch, recipe) of the MiniLMv2 step of ``SHAPES[name]``."""
  vocab = os.path.join(tmp, "vocab.txt")
  with open(vocab, "w") as f:
    f.write(
      "\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + [f"w{i}" for i in range(shape["vocab"] - 5)]
      )
      + "\n"
    )
  # frozen as loading.build_teacher freezes a loaded teacher (bf16 kernels when it computes in bf16)
  teacher = ModelHandle(
    models.create_model(_cfg(shape["teacher"], shape["vocab"], teacher_dtype), "none", seed=0)
  ).freeze()
  student = ModelHandle(
    models.create_model(
      _cfg(shape["student"], shape["vocab"], student_dtype), "none", seed=1, add_pooling_layer=False
    )
  )
  config = _config(shape, teacher_dtype)
  recipe = GeneralDistill(
    config, None, teacher=teacher, student=student, tokenizer=Tokenizer.from_vocab(vocab)
  )
  trainer = Trainer(config, recipe, os.path.join(tmp, name))
  state, frozen = trainer.init_state(), trainer.init_frozen()
  batch = trainer.global_batch(_batch(shape))
  return trainer, state, frozen, batch, recipe


def bench_kdjax(name, shape, steps, teacher_dtype, tmp, student_dtype="float32"):
  trainer, state, frozen, batch, recipe = build_kdjax(
    name, shape, teacher_dtype, tmp, student_dtype
  )
  t0 = time.perf_counter()
  state, metrics = trainer.step_fn(state, frozen, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.step_fn(state, frozen, batch)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / steps
  mem, mem_kind = _peak_memory_bytes()
  ex = shape["batch"] / dt
  tokens = float(_batch(shape)["attention_mask"].sum()) / dt
  peak = peak_flops_per_device(jax.devices()[0].device_kind)
  mfu = recipe.flops_per_example() * ex / (peak * jax.device_count()) if peak else None
  return dict(
    impl="kdjax",
    shape=name,
    teacher_dtype=teacher_dtype,
    student_dtype=student_dtype,
    relation_chunk_heads=RELATION_CHUNK_HEADS,
    step_s=dt,
    examples_per_s=ex,
    tokens_per_s=tokens,
    compile_s=compile_s,
    peak_memory_gb=mem / 2**30,
    memory_kind=mem_kind,
    mfu=mfu,
    loss=float(metrics["loss"]),
    device=jax.devices()[0].device_kind,
    num_devices=jax.device_count(),
  )


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--shapes", default="tiny,base")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--teacher_dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument(
    "--student_dtype",
    default="float32",
    choices=["float32", "bfloat16"],
    help="student compute dtype (params stay float32)",
  )
  p.add_argument(
    "--relation_chunk_heads",
    type=int,
    default=-1,
    help="relation heads per chunk of the relation loss (-1: by size, 0: never chunk)",
  )
  p.add_argument("--json", default="", help="also write the results to this file")
  args = p.parse_args(argv)
  global RELATION_CHUNK_HEADS
  RELATION_CHUNK_HEADS = args.relation_chunk_heads
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.shapes.split(","):
      r = bench_kdjax(name, SHAPES[name], args.steps, args.teacher_dtype, tmp, args.student_dtype)
      results.append(r)
      mfu = f"  MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
      print(
        f"[kdjax] {name:5s} {r['examples_per_s']:9.1f} ex/s {r['tokens_per_s']:10.0f} tok/s "
        f"step {1000 * r['step_s']:8.1f} ms  compile {r['compile_s']:.1f}s  "
        f"{r['memory_kind']} {r['peak_memory_gb']:.2f} GiB{mfu}  ({r['device']} x"
        f"{r['num_devices']}, teacher {r['teacher_dtype']}, student {r['student_dtype']})",
        flush=True,
      )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
