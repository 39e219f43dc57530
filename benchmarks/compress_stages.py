"""The compression stage table (PP-MiniLM's): the real Rotten Tomatoes model through fine-tune ->
width pruning 0.75 -> INT8 -> ONNX, with each stage's dev accuracy, parameters, file size and
speed-up over BERT-base FP32 on XLA CPU and ONNX Runtime CPU.

  python benchmarks/compress_stages.py --workdir=runs/compress          # everything (~1 h, 2 cores)
  python benchmarks/compress_stages.py --workdir=runs/compress --skip_speed   # accuracy only
  python benchmarks/compress_stages.py --workdir=runs/compress --reps=3 --runtimes=onnx

Steps, each an ordinary kdjax command in a subprocess (an interrupted run restarts where it was):
  1. ``python -m kdjax.pipeline --config=configs/pipeline.py:compress`` into ``WORKDIR``:
     all-MiniLM-L6-v2 (6L/384H, the real weights) fine-tuned on Rotten Tomatoes
     (02_teacher_finetune), DynaBERT/OFA width-0.75 distillation and extraction (08_prune:
     9 of 12 heads and 1152 of 1536 FFN neurons per layer), INT8 calibration with every
     algorithm x 4 / 8 batches, the best on dev kept (09_quantize), its QDQ ONNX (10_export).
  2. ``benchmarks/inference.py --prepare_only``: random BERT-base (speed does not depend on
     trained weights) and FP32 ONNX / HF exports of the fine-tuned and pruned models.
  3. Dev accuracy of every ONNX artefact in onnxruntime (``python -m kdjax.predict --task
     rotten_tomatoes --split dev``): the accuracy users get from the deployed file, next to the
     JAX figure (the trainer's best dev checkpoint; simulated INT8 for the quantized model).
  4. ``benchmarks/inference.py`` timed (each row in its own process, batch 32 x 128, waits for
     an idle machine): speed-ups are ratios of median seconds per batch against BERT-base on
     the same runtime (and on PyTorch eager, the usual baseline).
Writes ``WORKDIR/stages.json`` and ``WORKDIR/stages.md`` and prints the table with the CPU model
and flags (figures from different machines are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import cpu_info, read_jsonl, sh, versions  # noqa: E402

STAGES = (  # (row name in inference.py, label, pipeline stage whose dev metric it carries)
  ("finetuned", "fine-tuned FP32", "teacher_finetune"),
  ("pruned", "pruned FP32", "prune"),
  ("pruned_int8", "pruned + INT8", "quantize"),
)


def onnx_file_bytes(export_dir: str) -> int:
  return sum(
    os.path.getsize(os.path.join(export_dir, f))
    for f in os.listdir(export_dir)
    if f.endswith(".onnx") or f.endswith(".onnx.data")
  )


def ort_accuracy(export_dir: str, log_dir: str, name: str, task: str, data_dir: str) -> float:
  out = os.path.join(log_dir, f"{name}_dev_predictions.jsonl")
  cmd = ["-m", "kdjax.predict", export_dir, f"--task={task}", "--split=dev", "--batch_size=64"]
  cmd += [f"--data_dir={data_dir}"] if data_dir else []
  sh([*cmd, "--no_progress", f"--output={out}"], os.path.join(log_dir, f"{name}_predict.log"))
  rows = read_jsonl(out)
  return 100.0 * sum(r["label"] == r["gold"] for r in rows) / len(rows)


def speedups(bench: dict) -> dict:
  """{(model, runtime): (ids x over base on that runtime, ids x over torch base)}."""
  med = {(r["model"], r["runtime"]): r["ids"]["median"] for r in bench["rows"] if "error" not in r}
  torch_base = med.get(("base", "torch"))
  out = {}
  for (m, rt), t in med.items():
    same = med.get(("base", rt))
    out[m, rt] = (same / t if same else None, torch_base / t if torch_base else None)
  return out


def num_params(model_dir: str) -> int:
  from kdjax.models import count_params, loading, params_of

  return count_params(params_of(loading.load_model(model_dir, head="auto")))


def pct(v):
  """The trainer logs accuracy as a fraction; the table shows percent."""
  return None if v is None else 100.0 * v if abs(v) <= 1.0 else v


def fmt(x, spec=".2f", suffix="") -> str:
  return "-" if x is None else f"{x:{spec}}{suffix}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  p.add_argument("--workdir", default="runs/compress")
  p.add_argument("--runtimes", default="torch,xla,onnx", help="inference.py runtimes")
  p.add_argument("--reps", type=int, default=5, help="timed batches per inference row")
  p.add_argument("--skip_speed", action="store_true", help="accuracy, parameters and sizes only")
  p.add_argument(
    "--config_arg", default="compress", help="configs/pipeline.py variant (and key=value pairs)"
  )
  p.add_argument("--length", type=int, default=128, help="inference sequence length")
  p.add_argument("--data_dir", default="", help="the task's data (when not bundled)")
  args = p.parse_args(argv)
  W = os.path.abspath(args.workdir)
  logs = os.path.join(W, "bench_logs")
  os.makedirs(logs, exist_ok=True)

  print("1. pipeline (fine-tune -> prune -> quantize -> export) ...", flush=True)
  sh(
    [
      "-m",
      "kdjax.pipeline",
      f"--config=configs/pipeline.py:{args.config_arg}",
      f"--workdir={W}",
    ],
    os.path.join(logs, "pipeline.log"),
  )
  with open(os.path.join(W, "report.json")) as f:
    full_report = json.load(f)
  report = {r["name"]: r for r in full_report["rows"]}
  task = full_report["task"]
  models = {
    "finetuned": report["teacher_finetune"]["model"],
    "pruned": report["prune"]["model"],
    "pruned_int8": report["export"]["model"],  # 10_export/onnx: the INT8 QDQ graph
  }
  bench_dir = os.path.join(W, "inference")
  model_args = [f"--model={k}={v}" for k, v in models.items()]
  inf = [
    "benchmarks/inference.py",
    "--models=" + ("" if args.skip_speed else "base"),  # base: only for the speed rows
    *model_args,
    "--runtimes=" + ("onnx" if args.skip_speed else args.runtimes),
    f"--workdir={bench_dir}",
    f"--length={args.length}",
  ]
  print("2. exports for the speed table ...", flush=True)
  sh([*inf, "--prepare_only"], os.path.join(logs, "inference_prepare.log"))

  print("3. dev accuracy of the ONNX artefacts in onnxruntime ...", flush=True)
  onnx_dirs = {
    "finetuned": os.path.join(bench_dir, "finetuned_onnx"),
    "pruned": os.path.join(bench_dir, "pruned_onnx"),
    "pruned_int8": models["pruned_int8"],
  }
  rows = []
  for name, label, stage in STAGES:
    r = report[stage]
    acc_ort = ort_accuracy(onnx_dirs[name], logs, name, task, args.data_dir)
    rows.append(
      {
        "name": name,
        "stage": label,
        "dev_jax": pct(r.get("value")),
        "dev_onnx": acc_ort,
        "params": r.get("params"),
        "onnx_bytes": onnx_file_bytes(onnx_dirs[name]),
        "model": models[name],
        "notes": r.get("notes", []),
      }
    )
    print(f"  {label}: dev {rows[-1]['dev_jax']} (JAX), {acc_ort:.2f} (onnxruntime)", flush=True)

  bench = None
  if not args.skip_speed:
    print("4. timed inference rows (idle machine) ...", flush=True)
    out = os.path.join(W, "inference.json")
    sh([*inf, f"--reps={args.reps}", f"--out={out}"], os.path.join(logs, "inference.log"))
    with open(out) as f:
      bench = json.load(f)
    sp = speedups(bench)
    for row in rows:
      for rt in ("xla", "onnx", "torch"):
        same, over_torch = sp.get((row["name"], rt), (None, None))
        row[f"x_{rt}"] = same
        row[f"x_{rt}_over_torch_base"] = over_torch

  cpu = cpu_info()
  head = (
    "| stage | dev acc JAX | dev acc ONNX Runtime | params | ONNX size | x XLA CPU | "
    "x ONNX Runtime CPU | x over torch BERT-base |"
  )
  lines = [head, "|" + " --- |" * 8]
  if bench:
    sp = speedups(bench)
    base_params = num_params(os.path.join(bench_dir, "base"))
    lines.append(
      f"| BERT-base 12L/768H FP32 (random weights) | - | - | {base_params / 1e6:.2f} M | "
      f"{onnx_file_bytes(os.path.join(bench_dir, 'base_onnx')) / 2**20:.1f} MiB | 1.00x | "
      f"1.00x | {fmt(sp.get(('base', 'onnx'), (None, None))[1], suffix='x')} (onnx) |"
    )
  for r in rows:
    lines.append(
      f"| {r['stage']} | {fmt(r['dev_jax'])} | {r['dev_onnx']:.2f} | "
      f"{fmt(r['params'] and r['params'] / 1e6, '.2f', ' M')} | "
      f"{r['onnx_bytes'] / 2**20:.1f} MiB | {fmt(r.get('x_xla'), suffix='x')} | "
      f"{fmt(r.get('x_onnx'), suffix='x')} | {fmt(r.get('x_onnx_over_torch_base'), suffix='x')} "
      "(onnx) |"
    )
  foot = (
    f"\nCPU: {cpu.get('model')} ({cpu.get('cpus')} cpus; {', '.join(cpu.get('flags', []))}). "
    "Speed: batch 32 x 128, median s/batch from token ids, each row in its own process; "
    "x = BERT-base's time / the row's on the same runtime. INT8: onnxruntime integer kernels "
    "of the QDQ graph (JAX column: simulated INT8); no XLA INT8 row (XLA runs fake quantization)."
  )
  text = "\n".join(lines) + "\n" + foot
  print(text)
  result = {"cpu": cpu, "versions": versions(), "rows": rows, "inference": bench, "table": text}
  with open(os.path.join(W, "stages.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(W, "stages.md"), "w") as f:
    f.write(text + "\n")
  print(f"wrote {W}/stages.json and stages.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
