"""python -m kdjax.predict ARTEFACT_OR_MODEL --text "..." | --input FILE [--output out.jsonl]

Runs an export directory (``export.json``: the ``jax`` format through its loader, which needs
only jax + numpy; an ``hf`` export like any model directory) or any kdjax / Hugging Face
model directory or trainer workdir (through :func:`kdjax.export.source.load_source`) on texts,
batched, tokenizing with kdjax's own tokenizer. One JSON object per input, in input order:

* classifier: ``label`` (the label name, or its index when the model has no names),
  ``label_id``, ``probabilities``, ``logits``;
* encoder (head none): ``pooled_dim`` (the pooled vector's length) and ``pooled_norm``;
* MLM head: ``num_tokens`` and ``vocab_size`` (the logits' shape).

Input files (``--input``): ``.jsonl`` (objects with ``text`` or ``sentence``/``text_a``, and
optionally ``text_pair``/``text_b``), ``.tsv`` (``text[<TAB>text_pair]``; a first row holding
``text`` is a header naming the columns) or anything else as plain text, one text per line.
A bad line (not UTF-8, invalid JSON, missing or empty text) is an error naming file and line.
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
  """``predict(texts, pairs=None) -> list[dict]`` for an export directory or a model."""

  def __init__(self, path: str, step: int | None = None, max_length: int | None = None):
    from kdjax.data.tokenizer import Tokenizer
    from kdjax.export import manifest

    self.path = path
    if manifest.is_export_dir(path):
      m = manifest.read(path)
      fmt = m["format"]
      self.head = m["head"]
      self.labels = tuple(m["labels"]) if m.get("labels") else None
      self.max_length = int(m["max_length"])
      if fmt == "jax":
        from kdjax.export import jax_export

        self._run = jax_export.load(path)
        self.tokenizer = Tokenizer.from_dir(self._run.tokenizer_dir)
      elif fmt == "hf":
        self._from_source(path, None, self.max_length)
      else:
        raise ValueError(
          f"{path}: predict runs 'jax' and 'hf' exports, not {fmt!r} (run it on the source "
          f"model {m.get('source')} instead)"
        )
      if max_length is not None:
        if max_length > self.max_length:
          raise ValueError(f"--max_length {max_length} > the artefact's {self.max_length}")
        self.max_length = max_length
    else:
      self._from_source(path, step, max_length)

  def _from_source(self, path, step, max_length):
    import jax

    from kdjax.export.source import load_source

    src = load_source(path, step=step, max_length=max_length)
    fn = jax.jit(src.forward_fn("fp32"))
    params = src.params
    self._run = lambda ids, mask, types: jax.tree.map(np.asarray, fn(params, ids, mask, types))
    self.tokenizer, self.head, self.labels = src.tokenizer, src.head, src.labels
    self.max_length = src.max_length

  def predict(self, texts, pairs=None) -> list[dict]:
    enc = self.tokenizer.encode(texts, pairs, max_seq_length=self.max_length, padding="longest")
    out = self._run(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    rows = []
    if self.head == "classification":
      logits = np.asarray(out["logits"], np.float64)
      z = np.exp(logits - logits.max(-1, keepdims=True))
      probs = z / z.sum(-1, keepdims=True)
      for lg, p in zip(logits, probs):
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
        rows.append(
          {"num_tokens": int(enc["attention_mask"][k].sum()), "vocab_size": int(row.shape[-1])}
        )
    else:
      for v in np.asarray(out["pooled_output"]):
        rows.append({"pooled_dim": int(v.shape[-1]), "pooled_norm": float(np.linalg.norm(v))})
    return rows


def read_inputs(path: str) -> list[tuple[str, str | None]]:
  """``[(text, text_pair or None)]`` from a .jsonl, .tsv or plain-text file (see module doc)."""
  ext = os.path.splitext(path)[1].lower()
  rows: list[tuple[str, str | None]] = []
  header = None
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      where = f"{path}:{n}"
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
      if ext == ".jsonl":
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
          raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        text = next((obj[k] for k in TEXT_KEYS if k in obj), None)
        if text is None:
          raise ValueError(f"{where}: no text field (one of {', '.join(TEXT_KEYS)})")
        pair = next((obj[k] for k in PAIR_KEYS if k in obj), None)
      elif ext == ".tsv":
        cols = line.split("\t")
        if n == 1 and "text" in cols:
          header = cols
          continue
        if header is not None:
          if len(cols) != len(header):
            raise ValueError(f"{where}: {len(cols)} columns, the header has {len(header)}")
          rec = dict(zip(header, cols))
          text = rec["text"]
          pair = next((rec[k] for k in PAIR_KEYS if k in rec), None)
        else:
          if len(cols) > 2:
            raise ValueError(f"{where}: {len(cols)} columns (expected text[<TAB>text_pair])")
          text, pair = cols[0], (cols[1] if len(cols) == 2 else None)
      else:
        text, pair = line, None
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: empty text")
      if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise ValueError(f"{where}: empty text_pair")
      rows.append((text, pair))
  if not rows:
    raise ValueError(f"{path}: no inputs")
  return rows


def predict_all(predictor: Predictor, rows, batch_size: int = 32) -> list[dict]:
  out = []
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
      for j, r in zip(idx, predictor.predict(texts, pairs)):
        results[j] = r
    for j, (t, p) in enumerate(chunk):
      rec = {"text": t}
      if p is not None:
        rec["text_pair"] = p
      rec.update(results[j])
      out.append(rec)
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m kdjax.predict",
    description="Predict with an export directory (jax / hf format) or any kdjax / Hugging "
    "Face model directory or trainer workdir; one JSON line per input.",
  )
  p.add_argument("model", metavar="ARTEFACT_OR_MODEL", help="export dir or model dir/workdir")
  p.add_argument("--text", action="append", help="a text to classify (repeatable)")
  p.add_argument("--text_pair", action="append", help="its second sentence (one per --text)")
  p.add_argument(
    "--input", help="a .jsonl, .tsv (text[<TAB>text_pair], optional header) or text file"
  )
  p.add_argument("--output", help="write JSON lines here instead of stdout")
  p.add_argument("--batch_size", type=int, default=32, help="inputs per forward (default 32)")
  p.add_argument("--max_length", type=int, default=None, help="truncate inputs to N tokens")
  p.add_argument("--step", type=int, default=None, help="workdir checkpoint step")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if bool(args.text) == bool(args.input):
      raise ValueError("give either --text (repeatable) or --input FILE")
    if args.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.text:
      pairs = args.text_pair or []
      if pairs and len(pairs) != len(args.text):
        raise ValueError(f"{len(args.text)} --text but {len(pairs)} --text_pair")
      rows = [(t, pairs[i] if pairs else None) for i, t in enumerate(args.text)]
    else:
      rows = read_inputs(args.input)
    predictor = Predictor(args.model, step=args.step, max_length=args.max_length)
    start = time.perf_counter()
    results = predict_all(predictor, rows, args.batch_size)
    secs = time.perf_counter() - start
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.output:
      with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    else:
      print("\n".join(lines))
    print(
      f"predicted {len(results)} inputs in {secs:.2f}s ({len(results) / max(secs, 1e-9):.1f}/s)",
      file=sys.stderr,
    )
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
