"""Meta-KD data: EasyNLP's SENTI files and the Amazon four-domain sentiment layout.

Layouts (as EasyNLP's ``examples/knowledge_distillation/metakd`` writes and reads them):

  * Amazon multi-domain sentiment (Blitzer et al.; ``domain_sentiment_data.tar.gz``):
    ``sorted_data_acl/<domain>/{positive,negative}.review``, each review's text between a
    ``<review_text>`` and a ``</review_text>`` line. Folders ``books``, ``dvd``,
    ``electronics``, ``kitchen_&_housewares`` (domain name: the part before the first ``_``,
    i.e. ``kitchen``). :func:`read_amazon_reviews`.
  * raw SENTI split (``generate_senti_data.py``: ``train.tsv`` / ``dev.tsv`` / ``test.tsv``):
    a header line then ``review<TAB>domain<TAB>sentiment``. :func:`read_raw_senti`.
  * standard SENTI (``train.embeddings.tsv``, ``train_with_weights.tsv``, ``dev_standard.tsv``):
    a header line then ``guid, text_a, text_b, label, domain, weight`` (the embeddings file:
    ``embeddings`` = space-separated floats in place of ``weight``). :func:`read_senti`.
    EasyNLP writes ``text_b`` as ``None`` (single sentences) in train files and as an empty
    field in dev files: both mean "no second sequence" here (EasyNLP would tokenize the word
    "None" as a second segment when ``second_sequence=text_b`` is set).

Labels are ``positive`` (id 0) and ``negative`` (id 1), EasyNLP's
``label_enumerate_values=positive,negative``. Domain names map to ids by their position in
the domain list: given, or the training file's domain names sorted (for the Amazon data
``books, dvd, electronics, kitchen``, EasyNLP's ``domain_list``); :class:`MetaKDTask` records
it as ``domain_names`` and the meta-teacher writes it to ``metakd.json``.

Every error names the file and the line (1-based, physical line of the file).
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdjax.data import task_metrics
from kdjax.data.tasks import Example

__all__ = [
  "AMAZON_DOMAINS",
  "DEFAULT_DOMAINS",
  "LABELS",
  "SENTI_HEADER",
  "MetaKDTask",
  "RawReview",
  "read_amazon_reviews",
  "read_embeddings_file",
  "read_raw_senti",
  "read_senti",
  "split_stratified",
  "write_raw_senti",
  "write_senti",
]

LABELS = ("positive", "negative")
DEFAULT_DOMAINS = ("books", "dvd", "electronics", "kitchen")
AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen_&_housewares")
SENTI_HEADER = ("guid", "text_a", "text_b", "label", "domain", "weight")
EMBEDDINGS_HEADER = ("guid", "text_a", "text_b", "label", "domain", "embeddings")
RAW_HEADER = ("review", "domain", "sentiment")
TRAIN_FILE = "train_with_weights.tsv"
DEV_FILE = "dev_standard.tsv"
TEST_FILE = "test_standard.tsv"

csv.field_size_limit(1 << 30)


@dataclass(frozen=True)
class RawReview:
  """One review of the raw layouts: text, domain name, sentiment label string."""

  text: str
  domain: str
  label: str


def _err(path, line: int, msg: str) -> ValueError:
  return ValueError(f"{path}, line {line}: {msg}")


def _rows(path: Path):
  """(physical line number, fields) of a tab-separated file, header skipped."""
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, encoding="utf-8", newline="") as f:
    header = f.readline()
    if not header:
      raise ValueError(f"{path}: empty file (expected a header line)")
    for n, line in enumerate(f, start=2):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      yield n, line.split("\t")


def _label_id(value: str, path, n: int, labels: Sequence[str]) -> int:
  v = value.strip()
  if v not in labels:
    raise _err(path, n, f"label {value!r} is not one of {list(labels)}")
  return labels.index(v)


def _domain_id(value: str, path, n: int, domains: Sequence[str], what: str) -> int:
  v = value.strip()
  if v not in domains:
    raise _err(path, n, f"domain {value!r} is not one of the {what} {list(domains)}")
  return domains.index(v)


def _weight(value: str, path, n: int) -> float:
  try:
    w = float(value)
  except ValueError:
    raise _err(path, n, f"weight {value!r} is not a number") from None
  if not math.isfinite(w) or w < 0:
    raise _err(path, n, f"weight {value!r} is not a finite number >= 0")
  return w


def read_senti(
  path: str | os.PathLike,
  domains: Sequence[str] | None = None,
  *,
  labels: Sequence[str] = LABELS,
  genre: str | None = None,
  what: str = "domains",
  embeddings: bool = False,
):
  """Examples of a standard SENTI file (``guid, text_a, text_b, label, domain, weight``).

  ``domains``: the domain list (a domain outside it is an error naming the file, the line
  and ``what``, e.g. "domains of the training file"); None = the file's domains sorted by
  name (EasyNLP's fixed list books, dvd, electronics, kitchen is in that order too). ``genre``: keep that domain's rows only (EasyNLP's ``genre``).
  Returns ``(examples, domains)``: ``Example.domain`` is the domain's index, ``weight`` the
  weight column (a finite number >= 0). With ``embeddings=True`` the sixth column is the
  space-separated embedding instead and the result is ``(examples, domains, [N, H] array)``.
  """
  path = Path(path)
  out, vecs = [], []
  rows = list(_rows(path))
  for n, f in rows:
    if len(f) != 6:
      raise _err(path, n, f"{len(f)} tab-separated fields, expected 6 ({', '.join(SENTI_HEADER)})")
  if domains is None:
    names = sorted({f[4].strip() for _, f in rows if f[4].strip()})
  else:
    names = list(domains)
  for n, f in rows:
    guid, text_a, text_b, label, dom, last = f
    dom = dom.strip()
    d = _domain_id(dom, path, n, names, what)
    if genre is not None and dom != genre:
      continue
    y = _label_id(label, path, n, labels)
    if embeddings:
      try:
        vecs.append(np.array([float(t) for t in last.split()], np.float64))
      except ValueError:
        raise _err(path, n, "embeddings column is not space-separated numbers") from None
      if vecs and len(vecs[-1]) != len(vecs[0]):
        raise _err(path, n, f"embedding of size {len(vecs[-1])}, earlier rows {len(vecs[0])}")
      w = 1.0
    else:
      w = _weight(last, path, n)
    b = None if text_b.strip() in ("", "None") else text_b
    out.append(Example(id=guid, text_a=text_a, text_b=b, label=y, weight=w, domain=d))
  if embeddings:
    if not vecs:
      raise ValueError(f"{path}: no examples")
    return out, tuple(names), np.stack(vecs)
  return out, tuple(names)


def read_embeddings_file(path, domains=None):
  """``(examples, domains, embeddings [N, H])`` of an embeddings file (``read_senti``)."""
  return read_senti(path, domains, embeddings=True)


def write_senti(path, examples, domains, last_column, *, labels=LABELS, header=SENTI_HEADER):
  """A standard SENTI file; ``last_column[i]`` is the weight (or embedding string) of row i.
  Its folder is created."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for ex, last in zip(examples, last_column):
      b = "" if ex.text_b is None else ex.text_b
      row = [str(ex.id), _clean(ex.text_a), _clean(b), labels[ex.label], domains[ex.domain], last]
      f.write("\t".join(str(v) for v in row) + "\n")


def _clean(text: str) -> str:
  return " ".join(str(text).replace("\t", " ").split())


def read_raw_senti(path: str | os.PathLike) -> list[RawReview]:
  """Reviews of a raw SENTI split (header, then ``review<TAB>domain<TAB>sentiment``; fields
  may be quoted as pandas' ``to_csv`` writes them)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  out = []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if header is None:
      raise ValueError(f"{path}: empty file (expected the header review, domain, sentiment)")
    for row in reader:
      n = reader.line_num
      if not row or not "".join(row).strip():
        continue
      if len(row) != 3:
        raise _err(path, n, f"{len(row)} fields, expected 3 (review, domain, sentiment)")
      review, dom, label = row
      if label.strip() not in LABELS:
        raise _err(path, n, f"sentiment {label!r} is not one of {list(LABELS)}")
      out.append(RawReview(review, dom.strip(), label.strip()))
  if not out:
    raise ValueError(f"{path}: no reviews")
  return out


def write_raw_senti(path, reviews: Sequence[RawReview]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(RAW_HEADER)
    for r in reviews:
      w.writerow([_clean(r.text), r.domain, r.label])


def _review_texts(path: Path) -> list[str]:
  """Texts between ``<review_text>`` / ``</review_text>`` lines (EasyNLP joins the lines)."""
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  texts, cur, start = [], None, 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, start=1):
      tag = line.strip()
      if tag == "<review_text>":
        if cur is not None:
          raise _err(path, n, f"<review_text> inside the review opened on line {start}")
        cur, start = [], n
      elif tag == "</review_text>":
        if cur is None:
          raise _err(path, n, "</review_text> without <review_text>")
        texts.append(" ".join(t.strip() for t in cur if t.strip()))
        cur = None
      elif cur is not None:
        cur.append(line)
  if cur is not None:
    raise _err(path, start, "<review_text> is never closed")
  return texts


def read_amazon_reviews(root, folders: Sequence[str] = AMAZON_DOMAINS) -> list[RawReview]:
  """Reviews of ``root/<folder>/{positive,negative}.review`` for each folder; the domain name
  is the folder name up to its first ``_`` (``kitchen_&_housewares`` -> ``kitchen``)."""
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: not a directory (expected sorted_data_acl/)")
  out = []
  for folder in folders:
    d = root / folder
    if not d.is_dir():
      have = sorted(p.name for p in root.iterdir() if p.is_dir())
      raise FileNotFoundError(f"{d}: no such domain folder (found: {have})")
    name = folder.split("_")[0]
    for label, fname in (("positive", "positive.review"), ("negative", "negative.review")):
      out += [RawReview(t, name, label) for t in _review_texts(d / fname)]
  return out


def split_stratified(items: Sequence, labels: Sequence, fraction: float, seed: int):
  """(rest, held_out): ``fraction`` of each label's items held out, after a seeded shuffle
  (EasyNLP's first fold of a shuffled 10-fold ``StratifiedKFold``, up to the exact rows)."""
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(items))
  labels = np.asarray(labels)
  held = set()
  for y in np.unique(labels):
    idx = [i for i in order if labels[i] == y]
    held.update(idx[: round(fraction * len(idx))])
  rest = [items[i] for i in order if i not in held]
  out = [items[i] for i in order if i in held]
  return rest, out


# ------------------------------------------------------------------------------- the task
@dataclass
class MetaKDTask:
  """The Meta-KD sentiment task over a SENTI folder, behind the interface of
  ``kdjax.data.task.Task`` (what ``kdjax.recipes.task_setup.TaskSetup`` uses).

  ``data_dir`` holds ``train_with_weights.tsv`` and ``dev_standard.tsv`` (the outputs of
  ``python -m kdjax.metakd_prep``). ``domains`` = the domain list (empty: the training
  file's domains sorted by name); every dev domain must be one of them. ``genre``:
  train on that domain only (the meta-student; EasyNLP's ``genre``) while the dev split keeps
  every domain, scored per domain, and ``score_domain`` = the genre selects checkpoints.
  """

  data_dir: str
  domains: tuple = ()
  genre: str = ""
  use_weights: bool = True
  name: str = "metakd_senti"
  spec: None = None
  domain_names: tuple = field(init=False)

  def __post_init__(self):
    if not self.data_dir:
      raise ValueError("config key 'data_dir' is not set: it must name the SENTI folder")
    train = Path(self.data_dir) / TRAIN_FILE
    _, names = read_senti(train, tuple(self.domains) or None)
    self.domain_names = tuple(names)
    if len(self.domain_names) < 1:
      raise ValueError(f"{train}: no domains")
    if self.genre and self.genre not in self.domain_names:
      raise ValueError(
        f"config key 'genre'={self.genre!r} is not a domain of {train}: {list(self.domain_names)}"
      )

  is_regression = False
  labels = LABELS
  num_labels = 2
  main_metric = "accuracy"
  eval_splits = ("dev",)
  test_splits = ()

  @property
  def score_domain(self) -> str | None:
    return self.genre or None

  @property
  def num_domains(self) -> int:
    return len(self.domain_names)

  def label_string(self, label) -> str:
    return "" if label is None else self.labels[int(label)]

  def _read(self, path, split):
    genre = (self.genre or None) if split == "train" else None
    what = "domains of the training file" if split != "train" else "domains"
    exs, _ = read_senti(path, self.domain_names, genre=genre, what=what)
    if not exs:
      raise ValueError(f"{path}: no examples" + (f" of genre {genre!r}" if genre else ""))
    if split == "train" and not self.use_weights:
      exs = [Example(e.id, e.text_a, e.text_b, e.label, 1.0, e.domain) for e in exs]
    return exs

  def load(self, data_dir, split: str) -> list[Example]:
    files = {"train": TRAIN_FILE, "dev": DEV_FILE, "test": TEST_FILE}
    if split not in files:
      raise ValueError(f"{self.name} has splits train, dev, test, not {split!r}")
    return self._read(Path(data_dir or self.data_dir) / files[split], split)

  def load_file(self, path: str, key: str = "train_file") -> list[Example]:
    if not Path(path).is_file():
      raise FileNotFoundError(f"config key {key!r}: {path} is not a file")
    return self._read(path, "train")

  def metrics(self, predictions, labels) -> dict[str, float]:
    acc = task_metrics.accuracy(np.argmax(predictions, -1), labels)
    return {"accuracy": acc, "main": acc}

  def predictions(self, logits):
    return np.argmax(logits, -1)


def new_guid() -> str:
  return str(uuid.uuid4())
