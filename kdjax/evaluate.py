"""Evaluate or run a fine-tuned classifier on a CLUE / GLUE task (or the Rotten Tomatoes demo).

  # dev metrics (printed as JSON and written to OUTPUT_DIR/<task>_<split>_metrics.json)
  python -m kdjax.evaluate --model=runs/tnews --task=tnews --data_dir=/data/clue
  # test predictions: CLUE <task>_predict.json (one {"id", "label"} per line) or GLUE <TASK>.tsv
  python -m kdjax.evaluate --model=runs/tnews --task=tnews --data_dir=/data/clue \\
      --split=test --output_dir=submission
  # teacher predict mode for vanilla KD: id / label / logits of every training example
  python -m kdjax.evaluate --model=runs/teacher --task=sst-2 --data_dir=/data/glue \\
      --split=train --logits_output=runs/teacher/train_logits.tsv
  # the same logits as EasyNLP's predictor writes them (--output_schema=logits)
  python -m kdjax.evaluate --model=runs/teacher --task=sst-2 --data_dir=/data/glue \\
      --split=train --logits_output=runs/teacher/pred.tsv --logits_format=easynlp

--model is a kdjax trainer workdir (the best dev checkpoint in workdir/best when there is one,
else the latest checkpoint; --checkpoint=latest / --step=N pick another), a kdjax model
directory or a Hugging Face directory; it must hold a classifier with the task's label count.
A quantized model directory (``python -m kdjax.compress.quantize``: the float model +
quantization.json) is scored as the simulated-INT8 model (fake quantization of the encoder
matmuls, kdjax.compress.quant); --quantization=off scores its float weights.
--split: "dev" = every dev split of the task (MNLI: dev_matched and dev_mismatched), "test" =
every split with a submission file (MNLI: test_matched -> MNLI-m.tsv, test_mismatched ->
MNLI-mm.tsv), or any split name of the task (train, dev_matched, ...).

The logits file (kdjax/data/logits_tsv.py) has one row per example in file order. With
--logits_format=kdjax (the default) it has a header line "id<TAB>label<TAB>logits", then per
example its id, its gold label as written in the data ('' when the split has none) and the
logits as space-separated floats (num_labels of them; 9 significant digits, which round-trips
float32 exactly). With --logits_format=easynlp it is the file EasyNLP's predictor writes with
--output_schema=logits: no header, one comma-joined logits field per line, aligned with the
examples by line number (EasyNLP's student reads it as logits_saved_path). configs/
vanilla_kd.py reads either as logits_saved_path (the format is detected from the first line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

LOGITS_FORMATS = ("kdjax", "easynlp")
QUANTIZATION_MODES = ("auto", "off")  # kdjax.data.logits_tsv.FORMATS (kept import-free here)


def resolve_splits(task, split: str) -> tuple[str, ...]:
  if split == "dev":
    return task.eval_splits
  if split == "test":
    if not task.test_splits:
      raise ValueError(f"{task.name} has no test split with a submission format")
    return task.test_splits
  return (split,)


def evaluate(
  model: str,
  task: str,
  data_dir: str | None = None,
  split: str = "dev",
  output_dir: str = "eval_results",
  batch_size: int = 64,
  max_seq_length: int | None = None,
  checkpoint: str = "best",
  step: int | None = None,
  logits_output: str | None = None,
  dtype: str | None = None,
  logits_format: str = "kdjax",
  quantization: str = "auto",
) -> dict:
  """Runs the model on the split(s); returns {split: metrics} (empty metrics where the split
  has no labels) and writes the files described in the module docstring."""
  from kdjax.data import Tokenizer
  from kdjax.data.classification import encode_examples
  from kdjax.data.hparams import default_hparams
  from kdjax.data.logits_tsv import write_logits_tsv
  from kdjax.data.task import get_classification_task
  from kdjax.data.tasks import write_clue_predictions, write_glue_predictions
  from kdjax.models import head_of, loading
  from kdjax.recipes.task_setup import Predictor

  t = get_classification_task(task)
  if quantization not in QUANTIZATION_MODES:
    raise ValueError(f"--quantization={quantization!r}: expected one of {QUANTIZATION_MODES}")
  net = loading.load_model(model, head="auto", dtype=dtype, checkpoint=checkpoint, step=step)
  _refuse_nonfinite(model, net)
  qinfo = _quantize(model, net) if quantization == "auto" else None
  if head_of(net) != "classification" or net.config.num_labels != t.num_labels:
    raise ValueError(
      f"{model}: not a classifier with {t.num_labels} labels for {t.name} "
      f"(head {head_of(net)!r}, num_labels {net.config.num_labels}); "
      "fine-tune it first (recipe finetune)"
    )
  if not t.is_regression:  # the label names the model recorded in training (id2label)
    loading.check_labels(net.config, t.labels, model)
  if not getattr(net, "tokenizer_dir", None):
    raise ValueError(f"{model}: no tokenizer (vocab.txt / tokenizer.json) next to the model")
  tokenizer = Tokenizer.from_dir(net.tokenizer_dir)
  if max_seq_length is None and qinfo is not None and qinfo.get("max_seq_length"):
    max_seq_length = int(qinfo["max_seq_length"])  # the length it was calibrated and scored at
  if max_seq_length is None:
    max_seq_length = loading.trained_max_seq_length(model) or min(
      default_hparams(t)["max_seq_length"],
      net.config.max_position_embeddings - net.config.position_offset,
    )
  handle = loading.ModelHandle(net)
  predictor = Predictor(handle, batch_size)
  splits = resolve_splits(t, split)
  if logits_output and len(splits) != 1:
    raise ValueError(f"--logits_output needs one split; {split!r} means {', '.join(splits)}")
  if logits_format not in LOGITS_FORMATS:
    raise ValueError(f"--logits_format={logits_format!r}: expected one of {LOGITS_FORMATS}")
  results = {}
  for s in splits:
    examples = t.load(data_dir, s)
    feats = encode_examples(examples, tokenizer, max_seq_length, regression=t.is_regression)
    logits = predictor.logits(handle.params, feats)
    labeled = all(ex.label is not None for ex in examples)
    metrics = t.metrics(logits, feats["labels"]) if labeled and examples else {}
    results[s] = {k: float(v) for k, v in metrics.items()}
    os.makedirs(output_dir, exist_ok=True)
    if metrics:
      with open(os.path.join(output_dir, f"{t.name}_{s}_metrics.json"), "w") as f:
        record = {"task": t.name, "split": s, "model": model, "metrics": results[s]}
        if qinfo is not None:
          record["simulated_int8"] = qinfo
        json.dump(record, f, indent=2)
    if logits_output:
      write_logits_tsv(logits_output, examples, logits, t.label_string, format=logits_format)
    elif t.spec is not None and s in t.spec.submission_files:
      ids, preds = [ex.id for ex in examples], t.predictions(logits)
      if t.spec.benchmark == "clue":
        write_clue_predictions(t.spec, ids, preds, output_dir)
      else:
        write_glue_predictions(t.spec, ids, preds, output_dir, split=s)
  return results


def _quantize(model: str, net) -> dict | None:
  """With a quantization.json beside the model: ``net`` becomes the simulated-INT8 model (in
  place); returns what was applied (None: a float model)."""
  if not os.path.isdir(model) or not os.path.isfile(os.path.join(model, "quantization.json")):
    return None
  from kdjax.compress import quant

  qp = quant.read(model, net)
  quant.quantize_model(net, qp)
  info = {k: qp.meta.get(k) for k in ("algorithm", "batch_nums", "batch_size", "max_seq_length")}
  logging.warning("%s: scoring the simulated-INT8 model (%s)", model, info)
  return info


def _refuse_nonfinite(model: str, net) -> None:
  """A model with NaN / Inf parameters (e.g. from a diverged run) scores as a constant
  classifier: an error naming the model and the first such parameters, never a score."""
  from kdjax.models.params import params_of
  from kdjax.trainer.state import nonfinite_paths

  bad = nonfinite_paths(params_of(net))
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise ValueError(
      f"{model}: non-finite (NaN/Inf) parameters {', '.join(bad[:3])}{more}; the run that "
      "wrote them diverged (retrain it, e.g. with a lower learning_rate)"
    )


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m kdjax.evaluate",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--model",
    required=True,
    help="trainer workdir, kdjax model directory or Hugging Face directory",
  )
  p.add_argument(
    "--task", required=True, help="task name (tnews, sst-2, mnli, ... or rotten_tomatoes)"
  )
  p.add_argument("--data_dir", default=None, help="task folder or CLUE / GLUE root")
  p.add_argument("--split", default="dev", help="dev (default), test, or a split name")
  p.add_argument(
    "--output_dir",
    default="eval_results",
    help="where metrics JSON and submission files go (default: ./eval_results)",
  )
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument(
    "--max_seq_length",
    type=int,
    default=None,
    help="default: the workdir's training config, else the task's default",
  )
  p.add_argument(
    "--checkpoint",
    choices=["best", "latest"],
    default="best",
    help="for a workdir: the best dev checkpoint (default) or the latest",
  )
  p.add_argument("--step", type=int, default=None, help="for a workdir: this checkpoint step")
  p.add_argument(
    "--logits_output",
    default=None,
    help="teacher predict mode: write the split's logits file here",
  )
  p.add_argument(
    "--logits_format",
    choices=LOGITS_FORMATS,
    default="kdjax",
    help="format of --logits_output: kdjax (id/label/logits TSV with a header, the default) "
    "or easynlp (one comma-joined logits field per line, as EasyNLP's predictor writes)",
  )
  p.add_argument("--dtype", default=None, help="compute dtype override (float32, bfloat16)")
  p.add_argument(
    "--quantization",
    choices=QUANTIZATION_MODES,
    default="auto",
    help="auto (default): a directory with quantization.json is scored as simulated INT8; "
    "off: its float weights",
  )
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    results = evaluate(
      args.model,
      args.task,
      args.data_dir,
      args.split,
      args.output_dir,
      args.batch_size,
      args.max_seq_length,
      args.checkpoint,
      args.step,
      args.logits_output,
      args.dtype,
      logits_format=args.logits_format,
      quantization=args.quantization,
    )
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"task": args.task, "model": args.model, "results": results}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
