"""Meta-KD data preparation and per-domain evaluation (EasyNLP
``examples/knowledge_distillation/metakd``: generate_senti_data.py, extract_embeddings.py,
generate_meta_weights.py, generate_dev_file.py, main_evaluate.py), one CLI:

  # 0. (Amazon data) sorted_data_acl/ -> raw SENTI splits train/dev/test.tsv
  python -m kdjax.metakd_prep split_amazon --input_dir=data/sorted_data_acl --output_dir=data/SENTI
  # 1. embeddings of the training reviews with a given encoder
  python -m kdjax.metakd_prep extract_embeddings --model=/models/bert-base-uncased \\
      --input=data/SENTI/train.tsv --output=data/SENTI/train.embeddings.tsv
  # 2. prototype weights
  python -m kdjax.metakd_prep compute_weights --input=data/SENTI/train.embeddings.tsv \\
      --output=data/SENTI/train_with_weights.tsv --domains=books,dvd,electronics,kitchen
  # 3. dev / test files in the standard layout
  python -m kdjax.metakd_prep standardize --input=data/SENTI/dev.tsv --output=data/SENTI/dev_standard.tsv
  # after training: accuracy per domain of any classifier directory / workdir
  python -m kdjax.metakd_prep evaluate --model=runs/books/meta_student_finetune --data_dir=data/SENTI

Embeddings (step 1): the mean of the encoder's last hidden states over the tokens after
``[CLS]`` (``--pool=tokens``, default: the real tokens, final ``[SEP]`` included);
``--pool=easynlp`` reproduces EasyNLP exactly, the mean over EVERY position after ``[CLS]``
of inputs padded to ``--max_seq_length`` (padding included). Weights (step 2): for each
example ``(cos(x, c_own) + cos(x, mean of the other domains' centroids)) / 2``
(``kdjax.losses.metakd.prototype_scores``); a negative score (possible in principle, a
cosine) is written as 0 and counted, since kdjax's weight columns are >= 0.

File layouts: ``kdjax.data.metakd``. Every step prints its progress; bad input is a one-line
error naming the file and the line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from kdjax.data import metakd as M
from kdjax.data.tasks import Example


def _log(msg: str) -> None:
  print(f"[metakd_prep] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- split_amazon
def split_amazon(input_dir, output_dir, seed: int = 11111) -> dict[str, int]:
  """sorted_data_acl -> train / dev / test.tsv (10 % test, then 10 % of the rest dev,
  stratified by sentiment, as ``generate_senti_data.py``)."""
  reviews = M.read_amazon_reviews(input_dir)
  _log(f"read {len(reviews)} reviews from {input_dir}")
  rng = np.random.RandomState(seed)
  reviews = [reviews[i] for i in rng.permutation(len(reviews))]
  rest, test = M.split_stratified(reviews, [r.label for r in reviews], 0.1, seed)
  train, dev = M.split_stratified(rest, [r.label for r in rest], 0.1, seed)
  os.makedirs(output_dir, exist_ok=True)
  counts = {}
  for name, rows in (("train", train), ("dev", dev), ("test", test)):
    M.write_raw_senti(os.path.join(output_dir, f"{name}.tsv"), rows)
    counts[name] = len(rows)
    per = {}
    for r in rows:
      per[r.domain] = per.get(r.domain, 0) + 1
    _log(f"{name}.tsv: {len(rows)} reviews {per}")
  return counts


# ------------------------------------------------------------------------------ examples
def _read_any(path):
  """(examples with domain NAMES, domain list) of a raw SENTI split or a standard file."""
  with open(path, encoding="utf-8") as f:
    head = f.readline().rstrip("\r\n").split("\t")
  if head and head[0].strip() == "guid":
    exs, domains = (
      M.read_senti(path, None)
      if head[-1] != "embeddings"
      else M.read_senti(path, None, embeddings=True)[:2]
    )
    return exs, domains
  raw = M.read_raw_senti(path)
  domains = []
  for r in raw:
    if r.domain not in domains:
      domains.append(r.domain)
  exs = [
    Example(M.new_guid(), r.text, None, M.LABELS.index(r.label), 1.0, domains.index(r.domain))
    for r in raw
  ]
  return exs, tuple(domains)


# ------------------------------------------------------------------------ embeddings
def extract_embeddings(
  model: str,
  input_path: str,
  output_path: str,
  *,
  max_seq_length: int = 128,
  batch_size: int = 128,
  pool: str = "tokens",
) -> np.ndarray:
  """Writes ``guid, text_a, text_b, label, domain, embeddings``; returns the [N, H] array."""
  import jax

  from kdjax.data import Tokenizer
  from kdjax.data.classification import encode_examples, eval_batches
  from kdjax.losses.metakd import content_mean
  from kdjax.models import loading
  from kdjax.models.bert import encoder_of

  if pool not in ("tokens", "easynlp"):
    raise ValueError(f"--pool={pool!r} is not one of tokens, easynlp")
  exs, domains = _read_any(input_path)
  path = loading.require_dir(model, "--model", "an encoder: Hugging Face / kdjax model directory")
  tok_dir = loading.tokenizer_dir_of(path)
  if tok_dir is None:
    raise ValueError(f"--model={path} has no tokenizer (vocab.txt / tokenizer.json)")
  tok = Tokenizer.from_dir(tok_dir)
  handle = loading.ModelHandle(encoder_of(loading.load_model(path, head="auto")))
  feats = encode_examples(exs, tok, max_seq_length)
  keys = ("input_ids", "attention_mask", "token_type_ids")

  @jax.jit
  def embed(params, ids, mask, types):
    out = handle.bind(params)(ids, attention_mask=mask, token_type_ids=types)
    return content_mean(out.last_hidden_state, mask if pool == "tokens" else None)

  vecs, done, t0 = [], 0, time.time()
  total = len(exs)
  for b in eval_batches({k: feats[k] for k in keys}, batch_size):
    v = np.asarray(embed(handle.params, b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    vecs.append(v[b["valid"]])
    done += int(b["valid"].sum())
    _log(f"embeddings {done}/{total} ({time.time() - t0:.0f} s)")
  emb = np.concatenate(vecs).astype(np.float64)
  M.write_senti(
    output_path,
    exs,
    domains,
    [" ".join(repr(float(x)) for x in row) for row in emb],
    header=M.EMBEDDINGS_HEADER,
  )
  _log(f"wrote {output_path}: {total} rows, embedding size {emb.shape[1]}")
  return emb


# ---------------------------------------------------------------------------- weights
def compute_weights(input_path: str, output_path: str, domains) -> np.ndarray:
  """Writes ``train_with_weights.tsv`` from an embeddings file; returns the weights."""
  from kdjax.losses.metakd import prototype_scores

  domains = tuple(d.strip() for d in domains if d.strip())
  if len(domains) < 2:
    raise ValueError(f"--domains={','.join(domains)}: prototype weights need >= 2 domains")
  exs, _, emb = M.read_senti(input_path, domains, embeddings=True, what="--domains")
  ids = np.array([e.domain for e in exs])
  empty = [d for i, d in enumerate(domains) if not np.any(ids == i)]
  if empty:
    raise ValueError(f"{input_path}: no rows of the domain(s) {empty} named in --domains")
  _log(f"computing centroids of {len(domains)} domains over {len(exs)} embeddings")
  w = np.asarray(prototype_scores(emb.astype(np.float32), ids, len(domains)), np.float64)
  neg = int(np.sum(w < 0))
  if neg:
    _log(f"{neg} negative prototype scores written as 0")
  w = np.maximum(w, 0.0)
  M.write_senti(output_path, exs, domains, [repr(float(x)) for x in w])
  _log(f"wrote {output_path}: weights mean {w.mean():.4f}, min {w.min():.4f}, max {w.max():.4f}")
  return w


# --------------------------------------------------------------------------- standardize
def standardize(input_path: str, output_path: str) -> int:
  """A raw split (review, domain, sentiment) -> ``guid, text_a, text_b, label, domain,
  weight`` (weight 0, as ``generate_dev_file.py``)."""
  exs, domains = _read_any(input_path)
  M.write_senti(output_path, exs, domains, ["0"] * len(exs))
  _log(f"wrote {output_path}: {len(exs)} rows, domains {list(domains)}")
  return len(exs)


# ------------------------------------------------------------------------------ evaluate
def evaluate(
  model: str,
  data_dir: str,
  *,
  split: str = "dev",
  domains=None,
  max_seq_length: int = 128,
  batch_size: int = 64,
) -> dict[str, float]:
  """Accuracy overall and per domain (``<domain>/accuracy``) of a classifier directory or
  workdir (best dev checkpoint) on ``data_dir``'s dev (or test) file."""
  from kdjax.data import Tokenizer
  from kdjax.data.classification import encode_examples
  from kdjax.models import loading
  from kdjax.recipes import task_setup
  from kdjax.recipes.metakd_teacher import read_meta

  path = loading.require_dir(model, "--model", "a classifier: model directory or workdir")
  meta = read_meta(path)
  domains = tuple(domains or ()) or (tuple(meta["domains"]) if meta else ())
  task = M.MetaKDTask(data_dir, domains)
  tok_dir = loading.tokenizer_dir_of(path)
  if tok_dir is None:
    raise ValueError(f"--model={path} has no tokenizer (vocab.txt / tokenizer.json)")
  handle = loading.ModelHandle(loading.load_classifier(path, task.num_labels))
  feats = encode_examples(task.load(data_dir, split), Tokenizer.from_dir(tok_dir), max_seq_length)
  out = task_setup.evaluate_splits(
    task,
    task_setup.Predictor(handle, batch_size),
    handle.params,
    {split: feats},
    domains=task.domain_names,
  )
  return {k.split("/", 1)[1]: v for k, v in out.items() if "/" in k}


# ---------------------------------------------------------------------------------- CLI
def _parser():
  p = argparse.ArgumentParser(
    prog="python -m kdjax.metakd_prep",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("split_amazon", help="sorted_data_acl/ -> raw train/dev/test.tsv")
  s.add_argument("--input_dir", required=True)
  s.add_argument("--output_dir", required=True)
  s.add_argument("--seed", type=int, default=11111)
  s = sub.add_parser("extract_embeddings", help="embeddings file of a split")
  s.add_argument("--model", required=True)
  s.add_argument("--input", required=True)
  s.add_argument("--output", required=True)
  s.add_argument("--max_seq_length", type=int, default=128)
  s.add_argument("--batch_size", type=int, default=128)
  s.add_argument("--pool", default="tokens", choices=("tokens", "easynlp"))
  s = sub.add_parser("compute_weights", help="train_with_weights.tsv from embeddings")
  s.add_argument("--input", required=True)
  s.add_argument("--output", required=True)
  s.add_argument("--domains", default=",".join(M.DEFAULT_DOMAINS))
  s = sub.add_parser("standardize", help="dev/test split -> the standard layout")
  s.add_argument("--input", required=True)
  s.add_argument("--output", required=True)
  s = sub.add_parser("evaluate", help="accuracy per domain of a classifier")
  s.add_argument("--model", required=True)
  s.add_argument("--data_dir", required=True)
  s.add_argument("--split", default="dev", choices=("dev", "test"))
  s.add_argument("--domains", default="")
  s.add_argument("--max_seq_length", type=int, default=128)
  s.add_argument("--batch_size", type=int, default=64)
  s.add_argument("--output", default="", help="also write the metrics as JSON here")
  return p


def main(argv=None) -> int:
  a = _parser().parse_args(argv)
  try:
    if a.command == "split_amazon":
      split_amazon(a.input_dir, a.output_dir, a.seed)
    elif a.command == "extract_embeddings":
      extract_embeddings(
        a.model,
        a.input,
        a.output,
        max_seq_length=a.max_seq_length,
        batch_size=a.batch_size,
        pool=a.pool,
      )
    elif a.command == "compute_weights":
      compute_weights(a.input, a.output, a.domains.split(","))
    elif a.command == "standardize":
      standardize(a.input, a.output)
    else:
      doms = [d for d in a.domains.split(",") if d]
      res = evaluate(
        a.model,
        a.data_dir,
        split=a.split,
        domains=doms,
        max_seq_length=a.max_seq_length,
        batch_size=a.batch_size,
      )
      text = json.dumps(res, indent=2)
      print(text)
      if a.output:
        with open(a.output, "w") as f:
          f.write(text + "\n")
  except (ValueError, OSError, KeyError) as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
