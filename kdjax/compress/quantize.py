"""python -m kdjax.compress.quantize --config=configs/quantize.py ... --workdir=OUT

INT8 post-training static quantization of a fine-tuned classifier: calibration
(:mod:`kdjax.compress.calibrate`), the simulated-INT8 model's dev score per algorithm and number
of calibration batches (the seed's table), the chosen quantized model directory and its QDQ ONNX.
See ``configs/quantize.py`` for the keys and what is written.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import app, flags, logging

# --config (configs/quantize.py[:arg]) and --workdir (the output directory) are kdjax.train's
# flags (absl flags are process-global), with its one-line errors and --help.
from kdjax import train as train_lib

INT8_DIR = "int8"
ONNX_DIR = "onnx_int8"
SCALES_DIR = "scales"


def _split_list(value, key: str, kind=str) -> list:
  if isinstance(value, int | float):
    items = [str(value)]
  else:
    items = [t.strip() for t in str(value).replace(";", ",").split(",") if t.strip()]
  if not items:
    raise ValueError(f"config key {key!r} is empty")
  try:
    return [kind(t) for t in items]
  except ValueError:
    raise ValueError(
      f"config key {key!r}={value!r}: expected a comma list of {kind.__name__}"
    ) from None


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def table_markdown(rows: list[dict], float_score: float, metric: str) -> str:
  """The seed's table: one row per algorithm, one column per number of batches."""
  nums = sorted({r["batch_nums"] for r in rows})
  algos = list(dict.fromkeys(r["algorithm"] for r in rows))
  score = {(r["algorithm"], r["batch_nums"]): r["score"] for r in rows}
  head = "| algorithm | " + " | ".join(f"{n} batch{'es' if n != 1 else ''}" for n in nums) + " |"
  lines = [f"dev {metric} (%), simulated INT8; float32 model: {_pct(float_score)}", "", head]
  lines.append("|" + "---|" * (len(nums) + 1))
  for a in algos:
    lines.append(f"| {a} | " + " | ".join(_pct(score.get((a, n))) for n in nums) + " |")
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Calibrates, scores and writes (module docstring); returns the results dict."""
  import jax
  import numpy as np

  from kdjax.compress import calibrate as C
  from kdjax.compress import quant as Q
  from kdjax.data import Tokenizer
  from kdjax.data.classification import encode_examples
  from kdjax.data.hparams import default_hparams
  from kdjax.data.task import get_classification_task
  from kdjax.models import head_of, loading, native
  from kdjax.recipes.task_setup import Predictor, evaluate_splits

  c = config
  algorithms = C.check_algorithms(_split_list(c.algorithms, "algorithms"))
  nums = sorted(set(_split_list(c.batch_nums, "batch_nums", int)))
  if nums[0] <= 0:
    raise ValueError(f"config key 'batch_nums'={c.batch_nums!r}: every value must be positive")
  if not 0.0 < c.hist_percent <= 1.0:
    raise ValueError(f"config key 'hist_percent'={c.hist_percent} must be in (0, 1]")
  if not c.task:
    raise ValueError("config key 'task' is not set (tnews, sst-2, rotten_tomatoes, ...)")
  task = get_classification_task(c.task)
  if task.is_regression:
    raise ValueError(f"{task.name} is a regression task: quantization scores classifiers")
  path = loading.require_dir(c.model, "model", "a fine-tuned classifier (workdir / model dir)")
  net = loading.load_model(path, head="auto", dtype="float32")
  if head_of(net) != "classification" or net.config.num_labels != task.num_labels:
    raise ValueError(
      f"config key 'model': {path} is not a classifier with {task.num_labels} labels for "
      f"{task.name} (head {head_of(net)!r}); fine-tune it first (recipe finetune)"
    )
  loading.check_labels(net.config, task.labels, path)
  tok_dir = c.tokenizer_path or getattr(net, "tokenizer_dir", None)
  if not tok_dir:
    raise ValueError(f"{path}: no tokenizer next to the model: set config key 'tokenizer_path'")
  tokenizer = Tokenizer.from_dir(tok_dir)
  limit = net.config.max_position_embeddings - net.config.position_offset
  length = c.max_seq_length
  if length <= 0:
    length = loading.trained_max_seq_length(path) or min(
      default_hparams(task)["max_seq_length"], limit
    )
  if length > limit:
    raise ValueError(f"config key 'max_seq_length'={length} exceeds the model's {limit}")

  # calibration data
  split = c.calibration_split
  if not split:
    raise ValueError("no calibration data: config key 'calibration_split' is empty")
  try:
    examples = task.load(c.data_dir or None, split)
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"no calibration data: config key 'calibration_split'={split!r}: {e}") from e
  need = max(int(c.batch_size), 1) * nums[-1]  # only what calibration reads is tokenized
  feats = encode_examples(examples[:need], tokenizer, length) if examples else {}
  batches = C.calibration_batches(
    feats,
    c.batch_size,
    nums[-1],
    what=f"{task.name} split {split!r} (config key 'calibration_split')",
  )
  eval_sets = {
    s: encode_examples(task.load(c.data_dir or None, s), tokenizer, length)
    for s in task.eval_splits
  }

  logging.info("calibrating %s: %s x batch_nums %s", path, ",".join(algorithms), nums)
  thresholds = C.calibrate(
    net,
    batches,
    algorithms,
    nums,
    hist_percent=c.hist_percent,
    histogram_bins=c.histogram_bins,
  )
  handle = loading.ModelHandle(net)
  float_metrics = evaluate_splits(
    task, Predictor(handle, c.eval_batch_size), handle.params, eval_sets
  )
  meta_base = {
    "batch_size": int(c.batch_size),
    "calibration_split": split,
    "task": task.name,
    "max_seq_length": int(length),
    "hist_percent": float(c.hist_percent),
    "histogram_bins": int(c.histogram_bins),
    "source": os.path.abspath(path),
  }
  os.makedirs(os.path.join(workdir, SCALES_DIR), exist_ok=True)
  rows, params = [], {}
  for (algo, n), th in thresholds.items():
    qp = Q.QuantParams(th, {"algorithm": algo, "batch_nums": n, **meta_base})
    qmodel = Q.quantize_model(handle.model(), qp)
    qh = loading.ModelHandle(qmodel)
    metrics = evaluate_splits(task, Predictor(qh, c.eval_batch_size), qh.params, eval_sets)
    qp.meta["dev"] = metrics
    params[algo, n] = qp
    name = f"{algo}_b{n}.json"
    with open(os.path.join(workdir, SCALES_DIR, name), "w") as f:
      json.dump(qp.to_json(net), f, indent=1)
    rows.append({"algorithm": algo, "batch_nums": n, "score": metrics["score"], "dev": metrics})
    logging.info("%s x %d batches: dev %s", algo, n, metrics)
  best = max(rows, key=lambda r: r["score"])  # first of equals: the order of the table
  chosen = params[best["algorithm"], best["batch_nums"]]

  out = os.path.join(workdir, INT8_DIR)
  if os.path.isdir(out):
    shutil.rmtree(out)
  native.save(handle.model(), out, tokenizer=tokenizer)
  Q.write(out, chosen, net)
  metric = task.main_metric
  results = {
    "model": os.path.abspath(path),
    "task": task.name,
    "metric": str(metric),
    "float": float_metrics,
    "rows": rows,
    "chosen": {"algorithm": best["algorithm"], "batch_nums": best["batch_nums"], "dir": out},
    "config": c.to_dict(),
    "jax": jax.__version__,
    "numpy": np.__version__,
  }
  if c.export_onnx:
    from kdjax.export.__main__ import export_model

    m = export_model(out, os.path.join(workdir, ONNX_DIR), "onnx", "int8", force=True)
    results["onnx"] = {
      "dir": os.path.join(workdir, ONNX_DIR),
      "max_abs_diff_vs_simulated_int8": m["max_abs_diff"],
      "max_abs_diff_fp32": m.get("max_abs_diff_fp32"),
      "labels_agree": m.get("labels_agree"),
    }
  table = table_markdown(rows, float_metrics["score"], results["metric"])
  with open(os.path.join(workdir, "calibration_table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  print(table)
  print(f"chosen: {best['algorithm']} x {best['batch_nums']} batches -> {out}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(train_lib._QuietLibraries())
  os.makedirs(flags.FLAGS.workdir, exist_ok=True)
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  train_lib.cli(main, __doc__)
