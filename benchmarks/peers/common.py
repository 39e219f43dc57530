"""What every process of the peer harness shares: the shapes, the synthetic batch, step timing,
peak RSS and the one JSON line a child prints.

Imported both by ``run.py`` (kdjax venv) and by the peer scripts (each in its own venv), so it
uses only the standard library plus numpy, which every env has.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

# dims = (layers, hidden, heads, intermediate). ``teacher_layer`` is 0-based: the teacher runs
# only up to it (the PP-MiniLM case stops a 24-layer teacher at its 20th layer, index 19).
# ``relation_heads`` as MiniLMv2 / PP-MiniLM: 48 for a base teacher, 64 for a large one (8 for the
# tiny one: PaddleNLP's calc_multi_relation_loss needs R != the attention head count).
BASE = (12, 768, 12, 3072)
LARGE = (24, 1024, 16, 4096)
MINILM_STUDENT = (6, 384, 12, 1536)
TINYBERT_STUDENT = (4, 312, 12, 1200)
VOCAB = 30522

SHAPES = {
  "minilm-tiny": dict(
    method="minilm",
    teacher=(4, 64, 4, 128),
    student=(2, 32, 4, 64),
    vocab=1000,
    batch=8,
    seq=32,
    relation_heads=8,
  ),
  "tinybert-tiny": dict(
    method="tinybert",
    teacher=(4, 64, 4, 128),
    student=(2, 32, 4, 64),
    vocab=1000,
    batch=8,
    seq=32,
    num_labels=2,
  ),
  "minilm-b8-l128": dict(
    method="minilm",
    teacher=BASE,
    student=MINILM_STUDENT,
    vocab=VOCAB,
    batch=8,
    seq=128,
    relation_heads=48,
  ),
  "minilm-b32-l128": dict(
    method="minilm",
    teacher=BASE,
    student=MINILM_STUDENT,
    vocab=VOCAB,
    batch=32,
    seq=128,
    relation_heads=48,
  ),
  "tinybert-b8-l128": dict(
    method="tinybert",
    teacher=BASE,
    student=TINYBERT_STUDENT,
    vocab=VOCAB,
    batch=8,
    seq=128,
    num_labels=2,
  ),
  "tinybert-b32-l128": dict(
    method="tinybert",
    teacher=BASE,
    student=TINYBERT_STUDENT,
    vocab=VOCAB,
    batch=32,
    seq=128,
    num_labels=2,
  ),
  "minilm-b8-l512": dict(
    method="minilm",
    teacher=BASE,
    student=MINILM_STUDENT,
    vocab=VOCAB,
    batch=8,
    seq=512,
    relation_heads=48,
  ),
  "large20-b32-l128": dict(
    method="minilm",
    teacher=LARGE,
    teacher_layer=19,
    student=MINILM_STUDENT,
    vocab=VOCAB,
    batch=32,
    seq=128,
    relation_heads=64,
  ),
}
TINY_SHAPES = ("minilm-tiny", "tinybert-tiny")
# Weight of PP-MiniLM's sample-sample relation in the "+sample" rows:
# loss = (1 - beta) * token + beta * sample, so both terms are computed.
SAMPLE_BETA = 0.5
LEARNING_RATE = 1e-4


def shape(name: str) -> dict:
  s = dict(SHAPES[name])
  s.setdefault("teacher_layer", s["teacher"][0] - 1)
  s["student_layer"] = s["student"][0] - 1
  s["name"] = name
  return s


def batch(s: dict, seed: int = 0) -> dict:
  """int32 numpy ids/mask/type ids; the same draw as benchmarks/distill_throughput.py's _batch
  (lengths uniform in [L/2, L], right padding), so every process sees the same real tokens."""
  import numpy as np

  rng = np.random.default_rng(seed)
  b, length = s["batch"], s["seq"]
  ids = rng.integers(5, s["vocab"], size=(b, length), dtype=np.int32)
  lengths = rng.integers(length // 2, length + 1, size=b)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": ids * mask,
    "attention_mask": mask,
    "token_type_ids": np.zeros((b, length), np.int32),
    "labels": rng.integers(0, s.get("num_labels", 2), size=b).astype(np.int32),
  }


def peak_rss_bytes() -> int | None:
  """This process's own peak RSS (VmHWM). Not ru_maxrss: on Linux a child inherits the parent's
  ru_maxrss across fork+exec, so a small child of a big parent would report the parent's peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def threads_from_env() -> int:
  return int(os.environ.get("PEERS_THREADS", "0")) or len(os.sched_getaffinity(0))


def time_steps(step, steps: int, warmup: int = 1):
  """Run ``step()`` (which must return only once its work is done) ``warmup`` + ``steps``
  times; returns (warm-up seconds, [seconds per timed step], last value)."""
  t0 = time.perf_counter()
  out = None
  for _ in range(warmup):
    out = step()
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    out = step()
    times.append(time.perf_counter() - t0)
  return warmup_s, times, out


def summarize(times):
  return dict(min=min(times), median=statistics.median(times), max=max(times))


def emit(record: dict) -> None:
  """The child's result: one line, prefixed so run.py can find it among other output."""
  record.setdefault("peak_rss_bytes", peak_rss_bytes())
  record.setdefault("pid", os.getpid())
  sys.stdout.write("PEER_RESULT " + json.dumps(record) + "\n")
  sys.stdout.flush()


def parse_result(stdout: str) -> dict | None:
  for line in reversed(stdout.splitlines()):
    if line.startswith("PEER_RESULT "):
      return json.loads(line[len("PEER_RESULT ") :])
  return None


def child_args(argv=None):
  """The flags every child takes (run.py passes the same ones to each)."""
  import argparse

  p = argparse.ArgumentParser()
  p.add_argument("--shape", required=True, choices=sorted(SHAPES))
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--sample_relation", action="store_true", help="+ PP-MiniLM sample relation")
  p.add_argument(
    "--teacher_only",
    action="store_true",
    help="TinyBERT shapes: time only the frozen teacher's forward (the features the loss reads)",
  )
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  return p.parse_args(argv)
