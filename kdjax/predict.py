"""python -m kdjax.predict ARTEFACT_OR_MODEL --text "..." | --input FILE | --task NAME [--output F]

Runs an export directory (``export.json``: ``jax`` through its StableHLO loader, which needs
only jax + numpy; ``onnx`` in onnxruntime; ``savedmodel`` in TensorFlow, which tokenizes the raw
strings in its graph; ``tensorrt`` with the TensorRT runtime; ``hf`` like any model directory)
or any kdjax / Hugging Face model directory or trainer workdir (through
:func:`kdjax.export.source.load_source`) on texts, batched, with a progress bar on a terminal
and the examples/s at the end. One record per input, in input order (JSON lines, or TSV with a
header row when ``--output`` ends in ``.tsv`` or ``--output_format=tsv``):

* classifier: ``label`` (the label name, or its index when the model has no names),
  ``label_id``, ``probabilities``, ``logits`` (and ``gold`` with ``--task``);
* encoder (head none): ``pooled_dim`` (the pooled vector's length) and ``pooled_norm``;
* MLM head: ``num_tokens`` and ``vocab_size`` (the logits' shape).

Inputs: ``--input`` ``.jsonl`` (objects with ``text`` or ``sentence``/``text_a``, and
optionally ``text_pair``/``text_b``), ``.tsv`` (``text[<TAB>text_pair]``; a first row holding
``text`` is a header naming the columns) or anything else as plain text, one text per line; or
``--task NAME [--data_dir D] [--split dev]``: the task's own files (``kdjax.data.tasks``), and
the task's metrics are printed. A bad line (not UTF-8, invalid JSON, missing or empty text) is
an error naming file and line; ``--skip_bad_lines`` leaves such lines out and reports how many.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

TEXT_KEYS = ("text", "sentence", "text_a", "sentence1")
PAIR_KEYS = ("text_pair", "text_b", "sentence2")


class Predictor:
  """``predict(texts, pairs=None) -> list[dict]`` for an export directory or a model.

  Export formats (``export.json``): ``jax`` (the StableHLO loader, jax + numpy only), ``onnx``
  (onnxruntime, CPU), ``savedmodel`` (TensorFlow; the texts go in as strings and are tokenized
  by the graph's own tensorflow-text tokenizer), ``hf`` (like any model directory) and
  ``tensorrt`` (the engine through the TensorRT runtime where ``tensorrt`` is installed).
  ``jax``, ``onnx`` and ``tensorrt`` exports tokenize with the tokenizer saved beside the
  artefact (``tokenizer/``; older exports: the manifest's source model)."""

  def __init__(self, path: str, step: int | None = None, max_length: int | None = None):
    from kdjax.export import manifest

    self.path = path
    self.tokenizer = None
    self.format = "model"
    if not manifest.is_export_dir(path):
      self._from_source(path, step, max_length)
      return
    m = manifest.read(path)
    fmt = self.format = m["format"]
    self.head = m["head"]
    self.labels = tuple(m["labels"]) if m.get("labels") else None
    self.max_length = int(m["max_length"])
    if max_length is not None and max_length > self.max_length:
      raise ValueError(f"--max_length {max_length} > the artefact's {self.max_length}")
    if fmt == "hf":
      self._from_source(path, None, max_length or self.max_length)
      return
    if fmt == "savedmodel":
      if max_length is not None and max_length != self.max_length:
        raise ValueError(
          f"{path}: a SavedModel tokenizes to its own max_length {self.max_length} in the "
          f"graph; --max_length {max_length} cannot change it (re-export with --max_length)"
        )
      self._texts = _savedmodel_runner(path, m)
      return
    runners = {"jax": _jax_runner, "onnx": _onnx_runner, "tensorrt": _tensorrt_runner}
    if fmt not in runners:
      raise ValueError(f"{path}: export format {fmt!r} is not one predict runs")
    self._run = runners[fmt](path, m)
    self.tokenizer = _export_tokenizer(path, m)
    if max_length is not None:
      self.max_length = max_length

  def _from_source(self, path, step, max_length):
    import jax

    from kdjax.export.source import load_source

    src = load_source(path, step=step, max_length=max_length)
    # runs in this process: the CPU matmul kernel where it applies
    fn = self.forward = jax.jit(src.forward_fn("fp32", portable=False))
    params = src.params
    self._run = lambda ids, mask, types: jax.tree.map(np.asarray, fn(params, ids, mask, types))
    self.tokenizer, self.head, self.labels = src.tokenizer, src.head, src.labels
    self.max_length = src.max_length

  def _texts(self, texts, pairs):
    """Tokenize with kdjax's tokenizer, run the token-id forward: (outputs, attention_mask).
    For the XLA runners (a model directory, the ``jax`` and ``hf`` formats) the batch is padded
    up to a length bucket (16, 32, 64, ... up to max_length): each new shape compiles anew,
    and padding does not change the outputs (masked keys get zero attention)."""
    enc = self.tokenizer.encode(texts, pairs, max_seq_length=self.max_length, padding="longest")
    if self.format in ("model", "jax", "hf"):
      enc = _pad_to(enc, _bucket(enc["input_ids"].shape[1], self.max_length), self.tokenizer)
    out = self._run(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return out, enc["attention_mask"]

  def predict(self, texts, pairs=None) -> list[dict]:
    out, mask = self._texts(list(texts), None if pairs is None else list(pairs))
    rows = []
    if self.head == "classification":
      logits = np.asarray(out["logits"], np.float64)
      z = np.exp(logits - logits.max(-1, keepdims=True))
      probs = z / z.sum(-1, keepdims=True)
      for lg, p in zip(logits, probs, strict=True):
        i = int(np.argmax(lg))
        label = self.labels[i] if self.labels and i < len(self.labels) else i
        rows.append(
          {
            "label": label,
            "label_id": i,
            "probabilities": [round(float(x), 6) for x in p],
            "logits": [round(float(x), 6) for x in lg],
          }
        )
    elif self.head == "mlm":
      for k, row in enumerate(np.asarray(out["logits"])):
        rows.append({"num_tokens": int(np.asarray(mask)[k].sum()), "vocab_size": row.shape[-1]})
    else:
      for v in np.asarray(out["pooled_output"]):
        rows.append({"pooled_dim": int(v.shape[-1]), "pooled_norm": float(np.linalg.norm(v))})
    return rows


def _bucket(length: int, max_length: int) -> int:
  b = 16
  while b < length:
    b *= 2
  return min(b, max_length)


def _pad_to(enc: dict, length: int, tokenizer) -> dict:
  pad = length - enc["input_ids"].shape[1]
  if pad <= 0:
    return enc
  fill = {"input_ids": tokenizer.pad_id, "attention_mask": 0, "token_type_ids": 0}
  return {k: np.pad(v, ((0, 0), (0, pad)), constant_values=fill.get(k, 0)) for k, v in enc.items()}


def _export_tokenizer(path: str, m: dict):
  from kdjax.data.tokenizer import Tokenizer

  tok_dir = os.path.join(path, m.get("tokenizer_dir") or "tokenizer")
  if os.path.isdir(tok_dir):
    return Tokenizer.from_dir(tok_dir)
  source = m.get("source")
  if source and os.path.isdir(source):
    from kdjax.models import loading

    d = loading.tokenizer_dir_of(source)
    if d:
      return Tokenizer.from_dir(d)
  raise FileNotFoundError(
    f"{path}: no tokenizer/ in the export and its source {source} has none (re-export it)"
  )


def _jax_runner(path: str, m: dict):
  from kdjax.export import jax_export

  run = jax_export.load(path)
  return lambda ids, mask, types: run(ids, mask, types)


def _onnx_runner(path: str, m: dict):
  from kdjax.export import onnx as onnx_export

  files = [f for f in m.get("files", []) if f.endswith(".onnx")]
  model = os.path.join(path, files[0] if files else onnx_export.MODEL_FILE)
  if not os.path.isfile(model):
    raise FileNotFoundError(f"{path}: no ONNX file ({model} is missing)")
  sess = onnx_export.session(model)
  names = [o.name for o in sess.get_outputs()]
  inputs = [i.name for i in sess.get_inputs()]

  def run(ids, mask, types):
    feed = dict(zip(onnx_export.INPUT_NAMES, (ids, mask, types), strict=True))
    vals = sess.run(names, {k: np.asarray(feed[k], np.int32) for k in inputs})
    return dict(zip(names, vals, strict=True))

  return run


def _tensorrt_runner(path: str, m: dict):
  """Runs ``model.plan`` with the TensorRT runtime (10.x API) and CUDA buffers from
  ``cuda-python``; both exist only on GPU machines with TensorRT installed."""
  from kdjax.export import tensorrt as trt_export

  trt_export.require_tensorrt()
  import tensorrt as trt
  from cuda.bindings import runtime as cudart

  plan = os.path.join(path, trt_export.PLAN_FILE)
  with open(plan, "rb") as f:
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(f.read())
  if engine is None:
    raise ValueError(f"{plan}: TensorRT could not deserialize the engine")
  context = engine.create_execution_context()
  names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
  outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

  def check(err, what):
    err = err[0] if isinstance(err, tuple) else err
    if int(err) != 0:
      raise RuntimeError(f"CUDA error {err} in {what}")

  def run(ids, mask, types):
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    buffers, results = [], {}
    try:
      for name, x in feed.items():
        x = np.ascontiguousarray(x, np.int32)
        context.set_input_shape(name, x.shape)
        err, ptr = cudart.cudaMalloc(x.nbytes)
        check(err, "cudaMalloc")
        buffers.append(ptr)
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart.cudaMemcpy(ptr, x.ctypes.data, x.nbytes, kind), "cudaMemcpy")
        context.set_tensor_address(name, ptr)
      host = {}
      for name in outputs:
        shape = tuple(context.get_tensor_shape(name))
        host[name] = np.empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
        err, ptr = cudart.cudaMalloc(max(host[name].nbytes, 1))
        check(err, "cudaMalloc")
        buffers.append(ptr)
        context.set_tensor_address(name, ptr)
      if not context.execute_async_v3(0):
        raise RuntimeError(f"{plan}: TensorRT execution failed")
      check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
      for name in outputs:
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ptr = context.get_tensor_address(name)
        nbytes = host[name].nbytes
        check(cudart.cudaMemcpy(host[name].ctypes.data, ptr, nbytes, kind), "cudaMemcpy")
        results[name] = host[name].astype(np.float32)
    finally:
      for ptr in buffers:
        cudart.cudaFree(ptr)
    return results

  return run


def _savedmodel_runner(path: str, m: dict):
  """The raw-string signatures: ``serving_default`` (singles) / ``serving_pair`` (pairs)."""
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

  loaded = tf.saved_model.load(os.path.join(path, m.get("saved_model_dir") or "1"))
  single, pair = loaded.signatures["serving_default"], loaded.signatures["serving_pair"]

  def run(texts, pairs):
    if pairs is None:
      out = single(text=tf.constant(texts, tf.string))
    else:
      out = pair(text=tf.constant(texts, tf.string), text_pair=tf.constant(pairs, tf.string))
    out = {k: v.numpy() for k, v in out.items()}
    return out, out.get("attention_mask")

  return run


class BadLine(ValueError):
  """One unreadable input line (``where`` = ``file:line``)."""


def _parse_line(raw: bytes, where: str, ext: str, header, first: bool):
  """``(text, pair)`` of one raw line, ``"header"`` for a TSV header, None for a blank JSON
  line; BadLine naming ``where`` for anything unreadable."""
  try:
    line = raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise BadLine(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
  if ext == ".jsonl":
    if not line.strip():
      return None
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise BadLine(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
      raise BadLine(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = next((obj[k] for k in TEXT_KEYS if k in obj), None)
    if text is None:
      raise BadLine(f"{where}: no text field (one of {', '.join(TEXT_KEYS)})")
    pair = next((obj[k] for k in PAIR_KEYS if k in obj), None)
  elif ext == ".tsv":
    cols = line.split("\t")
    if first and "text" in cols:
      return "header", cols
    if header is not None:
      if len(cols) != len(header):
        raise BadLine(f"{where}: {len(cols)} columns, the header has {len(header)}")
      rec = dict(zip(header, cols, strict=True))
      text = rec["text"]
      pair = next((rec[k] for k in PAIR_KEYS if k in rec), None)
    else:
      if len(cols) > 2:
        raise BadLine(f"{where}: {len(cols)} columns (expected text[<TAB>text_pair])")
      text, pair = cols[0], (cols[1] if len(cols) == 2 else None)
  else:
    text, pair = line, None
  if not isinstance(text, str) or not text.strip():
    raise BadLine(f"{where}: empty text")
  if pair is not None and (not isinstance(pair, str) or not pair.strip()):
    raise BadLine(f"{where}: empty text_pair")
  return text, pair


def read_inputs(path: str, skip_bad_lines: bool = False, skipped: list | None = None):
  """``[(text, text_pair or None)]`` from a .jsonl, .tsv or plain-text file (see module doc).
  A bad line raises ValueError naming ``file:line``; with ``skip_bad_lines`` it is left out
  and its message appended to ``skipped``."""
  ext = os.path.splitext(path)[1].lower()
  rows: list[tuple[str, str | None]] = []
  header = None
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        got = _parse_line(raw, f"{path}:{n}", ext, header, n == 1)
      except BadLine as e:
        if not skip_bad_lines:
          raise
        if skipped is not None:
          skipped.append(str(e))
        continue
      if got is None:
        continue
      if got[0] == "header":
        header = got[1]
        continue
      rows.append(got)
  if not rows:
    raise ValueError(f"{path}: no inputs" + (" (every line was bad)" if skip_bad_lines else ""))
  return rows


def read_task(name: str, data_dir: str | None, split: str):
  """``(rows, task, gold labels)`` of a task's split in its own layout (kdjax.data.tasks)."""
  from kdjax.data.task import get_classification_task

  task = get_classification_task(name)
  examples = task.load(data_dir, split)
  if not examples:
    raise ValueError(f"task {name} split {split!r}: no examples")
  rows = [(e.text_a, e.text_b) for e in examples]
  return rows, task, [e.label for e in examples]


def predict_all(predictor: Predictor, rows, batch_size: int = 32, progress: bool = False):
  out = []
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=len(rows), unit="ex", dynamic_ncols=True, file=sys.stderr)
  for i in range(0, len(rows), batch_size):
    chunk = rows[i : i + batch_size]
    # pairs and singles cannot share one encode call: split the chunk by kind, keep order
    results: dict[int, dict] = {}
    for has_pair in (False, True):
      idx = [j for j, (_, p) in enumerate(chunk) if (p is not None) == has_pair]
      if not idx:
        continue
      texts = [chunk[j][0] for j in idx]
      pairs = [chunk[j][1] for j in idx] if has_pair else None
      for j, r in zip(idx, predictor.predict(texts, pairs), strict=True):
        results[j] = r
    for j, (t, p) in enumerate(chunk):
      rec = {"text": t}
      if p is not None:
        rec["text_pair"] = p
      rec.update(results[j])
      out.append(rec)
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  return out


def _tsv_cell(x) -> str:
  if isinstance(x, list):
    return ",".join(str(v) for v in x)
  return " ".join(str(x).split("\t"))


def write_results(results: list[dict], path: str | None, fmt: str) -> None:
  """JSON lines (one object per input) or TSV (a header row, then one row per input; lists
  comma-joined) to ``path``, else stdout."""
  if fmt == "tsv":
    cols = list(dict.fromkeys(k for r in results for k in r))
    lines = ["\t".join(cols)] + ["\t".join(_tsv_cell(r.get(c, "")) for c in cols) for r in results]
  else:
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
  if path:
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  else:
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m kdjax.predict",
    description="Predict with an export directory (jax, onnx, savedmodel, tensorrt or hf "
    "format) or any kdjax / Hugging Face model directory or trainer workdir; one JSON line "
    "(or TSV row) per input, in input order.",
    epilog="examples:\n  python -m kdjax.predict exports/rt_onnx --input reviews.txt "
    "--output preds.jsonl\n  python -m kdjax.predict runs/sst2 --task SST-2 --data_dir "
    "glue/SST-2 --split dev --output dev.tsv",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("model", metavar="ARTEFACT_OR_MODEL", help="export dir or model dir/workdir")
  p.add_argument("--text", action="append", help="a text to classify (repeatable)")
  p.add_argument("--text_pair", action="append", help="its second sentence (one per --text)")
  p.add_argument(
    "--input", help="a .jsonl, .tsv (text[<TAB>text_pair], optional header) or text file"
  )
  p.add_argument(
    "--task",
    help="read --split of this task in its own layout (e.g. SST-2, TNEWS, rotten_tomatoes); "
    "the output then carries each example's gold label and stderr the task's metrics",
  )
  p.add_argument("--data_dir", help="with --task: the task's folder (or the GLUE/CLUE root)")
  p.add_argument("--split", default="dev", help="with --task: the split to read (default dev)")
  p.add_argument("--output", help="write the predictions here instead of stdout")
  p.add_argument(
    "--output_format",
    choices=("jsonl", "tsv"),
    default=None,
    help="jsonl or tsv (default: from --output's extension, else jsonl)",
  )
  p.add_argument(
    "--skip_bad_lines",
    action="store_true",
    help="leave out unreadable input lines (not UTF-8, bad JSON, empty text) and report how "
    "many, instead of stopping at the first",
  )
  p.add_argument("--batch_size", type=int, default=32, help="inputs per forward (default 32)")
  p.add_argument("--max_length", type=int, default=None, help="truncate inputs to N tokens")
  p.add_argument("--step", type=int, default=None, help="workdir checkpoint step")
  p.add_argument(
    "--no_progress", action="store_true", help="no progress bar (it shows only on a terminal)"
  )
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    sources = [bool(args.text), bool(args.input), bool(args.task)]
    if sum(sources) != 1:
      raise ValueError("give exactly one of --text (repeatable), --input FILE or --task NAME")
    if args.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    skipped: list[str] = []
    task = gold = None
    if args.text:
      pairs = args.text_pair or []
      if pairs and len(pairs) != len(args.text):
        raise ValueError(f"{len(args.text)} --text but {len(pairs)} --text_pair")
      rows = [(t, pairs[i] if pairs else None) for i, t in enumerate(args.text)]
    elif args.input:
      rows = read_inputs(args.input, args.skip_bad_lines, skipped)
    else:
      rows, task, gold = read_task(args.task, args.data_dir, args.split)
    predictor = Predictor(args.model, step=args.step, max_length=args.max_length)
    if task is not None and predictor.head == "classification" and predictor.labels:
      want = tuple(task.labels or ())
      if want and tuple(predictor.labels) != want:
        raise ValueError(
          f"{args.model}: labels {list(predictor.labels)} are not task {args.task}'s {list(want)}"
        )
    start = time.perf_counter()
    progress = not args.no_progress and sys.stderr.isatty()
    results = predict_all(predictor, rows, args.batch_size, progress=progress)
    secs = time.perf_counter() - start
    if gold is not None:
      for r, g in zip(results, gold, strict=True):
        r["gold"] = task.label_string(g)
    fmt = args.output_format or (
      "tsv" if args.output and args.output.lower().endswith(".tsv") else "jsonl"
    )
    write_results(results, args.output, fmt)
    print(
      f"predicted {len(results)} inputs in {secs:.2f}s ({len(results) / max(secs, 1e-9):.1f}/s)",
      file=sys.stderr,
    )
    if skipped:
      print(f"skipped {len(skipped)} bad line(s); first: {skipped[0]}", file=sys.stderr)
    if gold is not None and predictor.head == "classification":
      logits = np.asarray([r["logits"] for r in results], np.float32)
      metrics = task.metrics(logits, np.asarray(gold))
      shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "main")
      print(f"{args.task} {args.split}: {shown}", file=sys.stderr)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
