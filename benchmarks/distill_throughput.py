"""Throughput of one MiniLMv2 distillation step (the trainer's jitted step, AdamW included).

  python benchmarks/distill_throughput.py                    # tiny and base shapes
  python benchmarks/distill_throughput.py --shapes=base --steps=10 --teacher_dtype=bfloat16
  python benchmarks/distill_throughput.py --torch_baseline   # + the same step in PyTorch eager

Shapes (randomly initialised: speed does not depend on trained weights):
  tiny: teacher 4L/64H -> student 2L/32H, batch 8 x 32
  base: teacher BERT-base 12L/768H/12 heads (layer 11) -> student 6L/384H/12 heads (layer 5),
        48 relation heads, batch 32 x 128 (the issue's reference shape)

Prints examples/s, tokens/s, step time, peak memory (device memory stats where the backend
has them, else the process's peak RSS) and MFU where the device's peak FLOP/s is known. With
--torch_baseline it also times a PyTorch eager implementation of the same step (HF BertModel
teacher under no_grad, Q/K/V from forward hooks, relation KL, AdamW) in the same process and
prints the kdjax / torch throughput ratio.
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
  c.max_seq_length = shape["seq"]
  c.batch_size = shape["batch"]
  c.learning_rate, c.warmup_steps, c.max_steps = 1e-4, 10, 1000
  c.progress_bar = c.tensorboard = False
  return c


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


def bench_kdjax(name, shape, steps, teacher_dtype, tmp, student_dtype="float32"):
  vocab = os.path.join(tmp, "vocab.txt")
  with open(vocab, "w") as f:
    f.write(
      "\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + [f"w{i}" for i in range(shape["vocab"] - 5)]
      )
      + "\n"
    )
  teacher = ModelHandle(
    models.create_model(_cfg(shape["teacher"], shape["vocab"], teacher_dtype), "none", seed=0)
  )
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


def bench_torch(name, shape, steps):
  """The same step in PyTorch eager: HF BertModel teacher/student, relation KL, AdamW."""
  import torch
  import transformers

  def hf(dims):
    layers, hidden, heads, ffn = dims
    return transformers.BertModel(
      transformers.BertConfig(
        vocab_size=shape["vocab"],
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        attn_implementation="eager",
      ),
      add_pooling_layer=False,
    )

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if dev == "cuda":  # XLA uses TF32 for float32 matmuls on GPU by default; match it
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  teacher, student = hf(shape["teacher"]).eval().to(dev), hf(shape["student"]).train().to(dev)
  teacher.encoder.layer = teacher.encoder.layer[: shape["teacher"][0]]
  opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
  r = shape["relation_heads"]
  grabbed = {}

  def hooks(model, tag):
    att = model.encoder.layer[-1].attention.self
    for n in ("query", "key", "value"):
      getattr(att, n).register_forward_hook(
        lambda _m, _i, out, n=n: grabbed.__setitem__((tag, n), out)
      )

  hooks(teacher, "t")
  hooks(student, "s")
  b = {k: torch.tensor(v, dtype=torch.long, device=dev) for k, v in _batch(shape).items()}
  key_mask = (1.0 - b["attention_mask"][:, None, None, :].float()) * -1e30

  def relation(x):
    bsz, l, h = x.shape
    x = x.view(bsz, l, r, h // r).transpose(1, 2)
    return torch.log_softmax(x @ x.transpose(-1, -2) / (h // r) ** 0.5 + key_mask, -1)

  def step():
    with torch.no_grad():
      teacher(b["input_ids"], attention_mask=b["attention_mask"])
    student(b["input_ids"], attention_mask=b["attention_mask"])
    loss = 0.0
    rows = b["attention_mask"][:, None, :, None].float()
    for n in ("query", "key", "value"):
      lt, ls = relation(grabbed[("t", n)]), relation(grabbed[("s", n)])
      kl = (lt.exp() * (lt - ls)).sum(-1, keepdim=True)
      loss = loss + (kl * rows).sum() / (rows.sum() * r)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss

  float(step())
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  float(loss)  # waits for the device
  dt = (time.perf_counter() - t0) / steps
  return dict(
    impl="torch-eager",
    shape=name,
    step_s=dt,
    examples_per_s=shape["batch"] / dt,
    tokens_per_s=float(b["attention_mask"].sum()) / dt,
    threads=torch.get_num_threads(),
    device=dev,
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
  p.add_argument("--torch_baseline", action="store_true")
  p.add_argument("--json", default="", help="also write the results to this file")
  args = p.parse_args(argv)
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
      if args.torch_baseline:
        t = bench_torch(name, SHAPES[name], args.steps)
        t["kdjax_over_torch"] = r["examples_per_s"] / t["examples_per_s"]
        results.append(t)
        print(
          f"[torch] {name:5s} {t['examples_per_s']:9.1f} ex/s {t['tokens_per_s']:10.0f} tok/s "
          f"step {1000 * t['step_s']:8.1f} ms  -> kdjax/torch = {t['kdjax_over_torch']:.2f}x",
          flush=True,
        )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
