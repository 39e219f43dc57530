"""Exported artefacts predict what the checkpoint predicts, on a whole real dev set.

  python benchmarks/export_parity.py --workdir=runs/parity                 # fine-tunes first
  python benchmarks/export_parity.py --workdir=runs/parity --model=runs/rt  # an existing run

1. Unless ``--model`` is given: fine-tune the real all-MiniLM-L6-v2 on Rotten Tomatoes
   (``configs/finetune.py:demo``, ``--steps`` steps) into ``WORKDIR/finetune``.
2. Export it with ``python -m kdjax.export`` as jax (fp32, bf16), onnx (fp32, fp16) and
   savedmodel (fp32).
3. Run ``python -m kdjax.predict ... --task=rotten_tomatoes --split=dev`` on the checkpoint and
   on every export (the SavedModel tokenizes the raw strings in its graph), each in its own
   process, and compare: labels that agree with the checkpoint's, the max |logit difference|,
   dev accuracy and examples/s.

Writes ``WORKDIR/parity.json`` and ``WORKDIR/parity.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import read_jsonl, sh  # noqa: E402

EXPORTS = (
  ("jax", "fp32"),
  ("jax", "bf16"),
  ("onnx", "fp32"),
  ("onnx", "fp16"),
  ("savedmodel", "fp32"),
)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--model", default=None, help="an existing fine-tuned Rotten Tomatoes run/model")
  p.add_argument("--steps", type=int, default=150, help="fine-tuning steps when --model is absent")
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  logs = os.path.join(args.workdir, "logs")
  os.makedirs(logs, exist_ok=True)
  model = args.model
  if model is None:
    model = os.path.join(args.workdir, "finetune")
    if not os.path.isdir(os.path.join(model, "checkpoints")):
      print(
        f"fine-tuning all-MiniLM-L6-v2 on Rotten Tomatoes for {args.steps} steps ...", flush=True
      )
      secs = sh(
        [
          "-m",
          "kdjax.train",
          "--config=configs/finetune.py:demo",
          f"--workdir={model}",
          f"--config.max_steps={args.steps}",
          f"--config.eval_steps={args.steps}",
          f"--config.save_steps={args.steps}",
        ],
        os.path.join(logs, "finetune.log"),
      )
      print(f"  done in {secs:.0f}s", flush=True)
  rows = []
  targets = [("checkpoint", "-", model)]
  for fmt, prec in EXPORTS:
    out = os.path.join(args.workdir, f"export_{fmt}_{prec}")
    if not os.path.isfile(os.path.join(out, "export.json")):
      secs = sh(
        ["-m", "kdjax.export", model, out, f"--format={fmt}", f"--precision={prec}", "--force"],
        os.path.join(logs, f"export_{fmt}_{prec}.log"),
      )
      print(f"exported {fmt} {prec} in {secs:.0f}s", flush=True)
    targets.append((fmt, prec, out))
  ref = None
  for fmt, prec, path in targets:
    pred = os.path.join(args.workdir, f"pred_{fmt}_{prec}.jsonl")
    log = os.path.join(logs, f"predict_{fmt}_{prec}.log")
    argv_ = ["-m", "kdjax.predict", path, "--task=rotten_tomatoes", "--split=dev"]
    sh([*argv_, f"--output={pred}", "--batch_size=64", "--no_progress"], log)
    with open(log, encoding="utf-8") as f:
      text = f.read()
    speed = re.search(r"\(([\d.]+)/s\)", text)
    acc = re.search(r"accuracy=([\d.]+)", text)
    res = read_jsonl(pred)
    if ref is None:
      ref = res
    agree = sum(a["label_id"] == b["label_id"] for a, b in zip(res, ref, strict=True))
    diff = max(
      max(abs(x - y) for x, y in zip(a["logits"], b["logits"], strict=True))
      for a, b in zip(res, ref, strict=True)
    )
    rows.append(
      {
        "format": fmt,
        "precision": prec,
        "examples": len(res),
        "labels_agree": agree,
        "max_abs_logit_diff": diff,
        "dev_accuracy": float(acc.group(1)) if acc else None,
        "examples_per_s": float(speed.group(1)) if speed else None,
      }
    )
    print(rows[-1], flush=True)
  lines = [
    "| artefact | precision | dev examples | labels = checkpoint | max abs logit diff | dev acc | ex/s |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['format']} | {r['precision']} | {r['examples']} | {r['labels_agree']} "
      f"| {r['max_abs_logit_diff']:.2e} | {r['dev_accuracy']} | {r['examples_per_s']} |"
    )
  md = "\n".join(lines)
  print(md)
  with open(os.path.join(args.workdir, "parity.md"), "w", encoding="utf-8") as f:
    f.write(md + "\n")
  with open(os.path.join(args.workdir, "parity.json"), "w", encoding="utf-8") as f:
    json.dump({"model": model, "rows": rows}, f, indent=2)
  bad = [r for r in rows if r["precision"] == "fp32" and r["labels_agree"] != r["examples"]]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
