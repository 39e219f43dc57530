"""Task registry for CLUE / GLUE fine-tuning and evaluation jobs.

Pure data code: no jax imports.  Official files are read through the
``datasets`` library (``json`` builder for CLUE's JSON-lines files, ``csv``
builder with ``delimiter="\\t"`` and ``quoting=csv.QUOTE_NONE`` for GLUE's
TSVs; a JSON file the builder rejects, e.g. a column mixing numbers and text
next to a blank line, is parsed line by line instead) and turned into plain
:class:`Example` records::

    from kdjax.data.tasks import get_task, load_split
    spec = get_task("afqmc")
    train = load_split(spec, "/data/clue/AFQMC", "train")
    train[0].text_a, train[0].text_b, train[0].label   # label: int index into spec.labels

Conventions (shared by every task)
----------------------------------
* ``Example.id`` is the official id when the file carries one (CLUE ``id`` /
  ``idx``, GLUE ``index`` / ``id``), otherwise the 0-based row index of the
  record in the file (counted *before* any rows are dropped, so ids are
  stable).  Ids read from TSV text that are pure digits become ``int``.
* ``Example.label`` is an ``int`` index into ``TaskSpec.labels`` for
  classification, a ``float`` for STS-B, and ``None`` when the file has no
  label field (test splits).
* Rows whose label is in ``TaskSpec.drop_labels`` (CMNLI/OCNLI ``"-"``: no
  annotator majority) are dropped; any other label outside ``labels`` raises
  ``ValueError`` naming the file, the 1-based line number and the bad value.
* Text is passed through unchanged (GLUE SST-2 sentences keep their trailing
  space, quotes are literal characters).

Optional per-example columns: ``weight`` and ``domain``
-------------------------------------------------------
Any file may carry them (CLUE JSON rows: keys ``"weight"`` / ``"domain"``; GLUE
TSVs with a header line: columns named ``weight`` / ``domain``; headerless
files such as CoLA train/dev cannot).  ``Example.weight`` is a finite float
>= 0 (default 1.0; it scales the example's share of the training loss) and
``Example.domain`` an integer >= 0 (default 0; a domain id, e.g. for
meta-distillation).  A null / missing / empty value means the default; a
non-numeric, non-finite or negative weight, or a domain that is not a
non-negative integer, raises ``ValueError`` naming the file and line.

Files and folders
-----------------
``data_dir`` may be either the task's own folder (``.../glue/SST-2``,
``.../clue/ocnli_public``) or the benchmark root (``.../glue``, ``.../clue``);
in the latter case the task folder is looked up under its official names
(``TaskSpec.dir_names``: the bare task name, e.g. ``OCNLI`` / ``ocnli``, and
the CLUE zip's folder ``ocnli_public``), also one level down
(``clue/ocnli/ocnli_public``: a zip unpacked into a folder of its own).  CLUE
file names are those of the official ``<task>_public.zip`` archives (as listed
by PaddleNLP's ``paddlenlp/datasets/clue.py``): ``train.json`` / ``dev.json`` /
``test.json`` (+ ``labels.json`` for TNEWS / IFLYTEK, + ``test1.0.json``, the
CLUE 1.0 test set, for TNEWS), except OCNLI, whose training set is
``train.50k.json`` (split ``train``; a plain ``train.json``, the OCNLI GitHub
repository's name, is read when that is what the folder holds) with the 3k
subset ``train.3k.json`` as split ``train_3k``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only local files are ever read; never let `datasets` try the Hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

log = logging.getLogger(__name__)

__all__ = [
  "TASKS",
  "Example",
  "TaskSpec",
  "as_columns",
  "get_task",
  "load_split",
  "mark_wsc_spans",
  "resolve_path",
  "write_clue_predictions",
  "write_glue_predictions",
]


# --------------------------------------------------------------------------
# Core records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
  """One fine-tuning / evaluation record.

  ``weight`` (>= 0) and ``domain`` (>= 0) come from the optional ``weight`` /
  ``domain`` columns (see the module docstring); ``Example(id, text_a, text_b,
  label)`` keeps the defaults."""

  id: int | str
  text_a: str
  text_b: str | None
  label: int | float | None
  weight: float = 1.0
  domain: int = 0


# reader(spec, path, split, cache_dir) -> list[Example]
Reader = Callable[["TaskSpec", Path, str, "str | None"], "list[Example]"]


@dataclass(frozen=True)
class TaskSpec:
  """Static description of one task.

  ``labels`` is a tuple (immutable, fixed order; index = class id) or
  ``None`` for regression.  ``files`` maps split name -> file name inside the
  task folder (the official name); ``alt_files`` maps a split to other names
  accepted when that one is absent (OCNLI train: ``train.json``).  ``metrics`` lists the metric names reported by
  :func:`kdjax.data.task_metrics.compute_metrics`; ``main_metric`` is the one
  used for model selection (also reported under the key ``"main"``).
  """

  name: str
  benchmark: str  # "clue" | "glue"
  labels: tuple[str, ...] | None
  is_regression: bool
  metrics: tuple[str, ...]
  main_metric: str
  files: Mapping[str, str] = field(hash=False)
  reader: Reader = field(repr=False)
  dir_names: tuple[str, ...] = ()
  alt_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
  drop_labels: frozenset[str] = frozenset()
  eval_splits: tuple[str, ...] = ("dev",)
  # split -> submission file name (CLUE: <task>_predict.json, GLUE: <TASK>.tsv)
  submission_files: Mapping[str, str] = field(default_factory=dict, hash=False)
  notes: str = field(default="", repr=False, compare=False)

  def __post_init__(self) -> None:
    if self.is_regression != (self.labels is None):
      raise ValueError(f"{self.name}: is_regression must be True iff labels is None")
    if self.main_metric not in self.metrics:
      raise ValueError(f"{self.name}: main_metric {self.main_metric!r} not in {self.metrics}")

  @property
  def num_labels(self) -> int:
    """Output width of the classification head (1 for regression)."""
    return 1 if self.labels is None else len(self.labels)

  @property
  def splits(self) -> tuple[str, ...]:
    """Data splits (``files`` minus the TNEWS/IFLYTEK ``labels`` list file)."""
    return tuple(s for s in self.files if s != "labels")

  def label_to_id(self, label: str) -> int:
    if self.labels is None:
      raise ValueError(f"{self.name} is a regression task; it has no label ids")
    return self.labels.index(label)

  def id_to_label(self, index: int) -> str:
    if self.labels is None:
      raise ValueError(f"{self.name} is a regression task; it has no label strings")
    return self.labels[int(index)]


# --------------------------------------------------------------------------
# Low-level file readers (return columns: dict[name, list])
# --------------------------------------------------------------------------


def _datasets():
  # Imported lazily so that `get_task` / metrics users do not pay for it.
  import datasets

  return datasets


def _first_lines(path: Path, n: int, encoding: str = "utf-8-sig") -> list[str]:
  """First ``n`` non-blank lines of a text file (without line endings)."""
  out: list[str] = []
  with open(path, encoding=encoding, newline="") as fh:
    for line in fh:
      line = line.rstrip("\r\n")
      if line.strip():
        out.append(line)
        if len(out) >= n:
          break
  return out


def _physical_line(path: Path, record_index: int, skip_records: int = 0) -> int:
  """1-based line number of the ``record_index``-th data record.

  Blank lines are skipped by both the JSON and the CSV builders, so the
  record count is over non-blank lines; ``skip_records`` = 1 for a header.
  Only called on the error path.
  """
  target = record_index + skip_records
  seen = -1
  with open(path, encoding="utf-8-sig", newline="") as fh:
    for lineno, line in enumerate(fh, start=1):
      if line.strip():
        seen += 1
        if seen == target:
          return lineno
  return record_index + skip_records + 1  # best effort


def _read_jsonl(path: Path, cache_dir: str | None = None) -> tuple[dict[str, list], int]:
  if not _first_lines(path, 1):
    return {}, 0
  try:
    ds = _datasets().load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
  except Exception as exc:  # e.g. a column mixing numbers and text, plus a blank line
    log.info("%s: datasets' json builder failed (%r); reading it line by line", path, exc)
    return _read_jsonl_plain(path)
  return ds.to_dict(), ds.num_rows


def _read_jsonl_plain(path: Path) -> tuple[dict[str, list], int]:
  """JSON lines -> columns without ``datasets`` (keys missing from a row -> None); blank
  lines are skipped, as the json builder does.  Invalid JSON names the file and line."""
  rows: list[dict] = []
  with open(path, encoding="utf-8-sig", newline="") as fh:
    for lineno, line in enumerate(fh, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {lineno}: invalid JSON ({exc.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {row!r}")
      rows.append(row)
  keys = list(dict.fromkeys(k for row in rows for k in row))
  return {k: [row.get(k) for row in rows] for k in keys}, len(rows)


def _read_tsv(
  path: Path, column_names: Sequence[str] | None = None, cache_dir: str | None = None
) -> tuple[dict[str, list], int]:
  """Read a GLUE TSV with every column as a string.

  ``column_names=None``: the first line is the header.  Otherwise the file
  has no header and ``column_names`` are used.  ``quoting=QUOTE_NONE``
  because GLUE text contains unbalanced ``"``; ``na_filter=False`` keeps
  empty fields / "NA" / "null" as strings; ``utf-8-sig`` drops the BOM that
  the GLUE MRPC train/dev header carries (copied from msr_paraphrase_*.txt).
  """
  lines = _first_lines(path, 2)
  if column_names is None:
    if not lines:
      return {}, 0
    names = lines[0].split("\t")
    header: int | None = 0
    has_rows = len(lines) > 1
  else:
    names = list(column_names)
    header = None
    has_rows = bool(lines)
  if not has_rows:
    return {n: [] for n in names}, 0
  datasets = _datasets()
  features = datasets.Features({n: datasets.Value("string") for n in names})
  ds = datasets.load_dataset(
    "csv",
    data_files=str(path),
    split="train",
    delimiter="\t",
    quoting=csv.QUOTE_NONE,
    header=header,
    column_names=names,
    features=features,
    keep_default_na=False,
    na_filter=False,
    encoding="utf-8-sig",
    cache_dir=cache_dir,
  )
  return ds.to_dict(), ds.num_rows


# --------------------------------------------------------------------------
# Generic record builder
# --------------------------------------------------------------------------


class _Ctx:
  """Per-file context for error messages."""

  def __init__(self, spec: TaskSpec, path: Path, header_records: int) -> None:
    self.spec = spec
    self.path = path
    self.header_records = header_records

  def where(self, i: int) -> str:
    return f"{self.path}, line {_physical_line(self.path, i, self.header_records)}"

  def error(self, i: int, msg: str) -> ValueError:
    return ValueError(f"{self.spec.name}: {self.where(i)}: {msg}")


def _as_id(value: Any) -> int | str:
  if isinstance(value, str):
    s = value.strip()
    return int(s) if s.isdigit() else s
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value


def _label_str(value: Any) -> str:
  if isinstance(value, bool):  # JSON true/false -> CLUEWSC's "true"/"false"
    return "true" if value else "false"
  return str(value).strip()


WEIGHT_COLUMN = "weight"
DOMAIN_COLUMN = "domain"


def _is_blank(value: Any) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def _parse_weight(value: Any, ctx: _Ctx, i: int) -> float:
  """A ``weight`` field: a finite number >= 0 (JSON number or numeric text)."""
  if _is_blank(value):
    return 1.0
  w: float | None = None
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    w = float(value)
  elif isinstance(value, str):
    try:
      w = float(value.strip())
    except ValueError:
      w = None
  if w is None or not math.isfinite(w):
    raise ctx.error(i, f"bad weight {value!r} (expected a finite number >= 0)")
  if w < 0:
    raise ctx.error(i, f"negative weight {value!r} (expected a finite number >= 0)")
  return w


def _parse_domain(value: Any, ctx: _Ctx, i: int) -> int:
  """A ``domain`` field: an integer >= 0 (JSON integer, integral float or digits)."""
  if _is_blank(value):
    return 0
  d: int | None = None
  if isinstance(value, int) and not isinstance(value, bool):
    d = value
  elif isinstance(value, float) and value.is_integer():
    d = int(value)  # a JSON column mixing ints and floats is read as float64
  elif isinstance(value, str):
    t = value.strip()
    if t.lstrip("+-").isdigit():
      d = int(t)
  if d is None:
    raise ctx.error(i, f"bad domain {value!r} (expected an integer >= 0)")
  if d < 0:
    raise ctx.error(i, f"negative domain {value!r} (expected an integer >= 0)")
  return d


def _build_examples(
  spec: TaskSpec,
  path: Path,
  cols: Mapping[str, list],
  n: int,
  *,
  text_a: Any,
  text_b: Any = None,
  label_col: str | None,
  id_cols: Sequence[str] = (),
  header_records: int = 0,
  require_label: bool = False,
) -> list[Example]:
  """Turn columns into Examples.  Text getters are a column name or
  ``fn(cols, i, ctx) -> str``.  ``require_label``: the label column must
  exist (train/dev); on test splits a missing label column means label=None."""
  ctx = _Ctx(spec, path, header_records)

  needed = [g for g in (text_a, text_b) if isinstance(g, str)]
  if require_label and label_col is not None:
    needed.append(label_col)
  missing = [c for c in needed if c not in cols]
  if missing and n:
    raise ValueError(f"{spec.name}: {path}: missing column(s) {missing}; found {sorted(cols)}")

  def getter(g: Any) -> Callable[[int], str | None]:
    if g is None:
      return lambda i: None
    if isinstance(g, str):
      column = cols[g] if n else []

      def get(i: int) -> str:
        v = column[i]
        if v is None:
          raise ctx.error(i, f"field {g!r} is null")
        return str(v)

      return get
    return lambda i: g(cols, i, ctx)

  get_a, get_b = getter(text_a), getter(text_b)
  id_col = next((c for c in id_cols if c in cols), None)
  ids = cols[id_col] if id_col is not None else None
  weights = cols.get(WEIGHT_COLUMN)
  domains = cols.get(DOMAIN_COLUMN)
  labels = cols.get(label_col) if label_col is not None else None
  label_index = {l: k for k, l in enumerate(spec.labels)} if spec.labels is not None else None

  out: list[Example] = []
  for i in range(n):
    label: int | float | None = None
    if labels is not None:
      raw = labels[i]
      if raw is None:
        raise ctx.error(i, f"label is null (field {label_col!r})")
      s = _label_str(raw)
      if s in spec.drop_labels:
        continue
      if label_index is None:
        try:
          label = float(s)
        except ValueError:
          raise ctx.error(i, f"bad regression label {raw!r}") from None
        if not (math.isfinite(label) and 0.0 <= label <= 5.0):
          raise ctx.error(i, f"bad regression label {raw!r} (expected 0..5)")
      else:
        if s not in label_index:
          raise ctx.error(i, f"bad label {raw!r}; expected one of {list(spec.labels)}")
        label = label_index[s]
    ex_id = _as_id(ids[i]) if ids is not None and ids[i] is not None else i
    weight = _parse_weight(weights[i], ctx, i) if weights is not None else 1.0
    domain = _parse_domain(domains[i], ctx, i) if domains is not None else 0
    out.append(
      Example(id=ex_id, text_a=get_a(i), text_b=get_b(i), label=label, weight=weight, domain=domain)
    )
  return out


def _json_reader(
  *, text_a: Any, text_b: Any = None, label_col: str | None = "label", id_cols=("id",)
) -> Reader:
  def read(spec: TaskSpec, path: Path, split: str, cache_dir: str | None = None) -> list[Example]:
    cols, n = _read_jsonl(path, cache_dir)
    return _build_examples(
      spec,
      path,
      cols,
      n,
      text_a=text_a,
      text_b=text_b,
      label_col=label_col,
      id_cols=id_cols,
      require_label=not split.startswith("test"),
    )

  return read


def _tsv_reader(
  *,
  text_a: Any,
  text_b: Any = None,
  label_col: str | None = "label",
  id_cols=("index",),
  headerless_names: Sequence[str] | None = None,
) -> Reader:
  """GLUE TSV reader.

  ``headerless_names``: the file has no header unless its first field is
  ``index`` (CoLA: train/dev are headerless, test has ``index\\tsentence``).
  """

  def read(spec: TaskSpec, path: Path, split: str, cache_dir: str | None = None) -> list[Example]:
    names = None
    if headerless_names is not None:
      first = _first_lines(path, 1)
      if not (first and first[0].split("\t", 1)[0] == "index"):
        names = headerless_names
    cols, n = _read_tsv(path, names, cache_dir)
    return _build_examples(
      spec,
      path,
      cols,
      n,
      text_a=text_a,
      text_b=text_b,
      label_col=label_col,
      id_cols=id_cols,
      header_records=0 if names is not None else 1,
      require_label=not split.startswith("test"),
    )

  return read


# --------------------------------------------------------------------------
# Task-specific text builders
# --------------------------------------------------------------------------


def _locate_span(text: str, span: str, index: int) -> int | None:
  """Index of ``span`` in ``text``: ``index`` if it matches, else the nearest occurrence."""
  if text[index : index + len(span)] == span:
    return index
  hits = []
  start = text.find(span)
  while start != -1:
    hits.append(start)
    start = text.find(span, start + 1)
  if not hits:
    return None
  return min(hits, key=lambda h: (abs(h - index), h))


def mark_wsc_spans(text: str, span1: str, index1: int, span2: str, index2: int) -> str:
  """CLUEWSC2020 marking, identical to the CLUE baselines' ``WSCProcessor``.

  span1 (the candidate noun phrase, ``query``) is wrapped in ``_`` ... ``_``
  and span2 (the pronoun) in ``[`` ... ``]``, e.g.
  ``这时候放在_床_上枕头旁边的手机响了，……现在[它]突然响了。``
  The insertion order reproduces the baseline exactly, including when the
  pronoun precedes the candidate.
  """
  chars = list(text)
  if index2 > index1:
    chars.insert(index1, "_")
    chars.insert(index1 + len(span1) + 1, "_")
    chars.insert(index2 + 2, "[")
    chars.insert(index2 + len(span2) + 2 + 1, "]")
  else:
    chars.insert(index2, "[")
    chars.insert(index2 + len(span2) + 1, "]")
    chars.insert(index1 + 2, "_")
    chars.insert(index1 + len(span1) + 2 + 1, "_")
  return "".join(chars)


def _wsc_text(cols: Mapping[str, list], i: int, ctx: _Ctx) -> str:
  # CLUE v1 cluewsc2020_public: {"target": {"span2_index", "span1_index",
  # "span1_text", "span2_text"}, "idx", "label", "text"}; test has "id".
  # The baseline asserts that text[span_index:...] == span_text; we are a bit
  # more lenient and fall back to the nearest occurrence of the span text
  # (raising only if the span text does not occur at all).
  try:
    text = cols["text"][i]
    target = cols["target"][i]
    s1, i1 = target["span1_text"], int(target["span1_index"])
    s2, i2 = target["span2_text"], int(target["span2_index"])
  except (KeyError, TypeError) as exc:
    raise ctx.error(i, f"malformed CLUEWSC2020 record ({exc!r})") from None
  j1, j2 = _locate_span(text, s1, i1), _locate_span(text, s2, i2)
  if j1 is None or j2 is None:
    bad = (s1, i1) if j1 is None else (s2, i2)
    raise ctx.error(i, f"span {bad[0]!r} (index {bad[1]}) not found in text {text!r}")
  return mark_wsc_spans(text, s1, j1, s2, j2)


def _csl_keywords(cols: Mapping[str, list], i: int, ctx: _Ctx) -> str:
  # CLUE baseline CslProcessor: text_a = " ".join(keyword), text_b = abst.
  kw = cols["keyword"][i] if "keyword" in cols else None
  if kw is None:
    raise ctx.error(i, "missing 'keyword' list")
  if isinstance(kw, str):
    return kw
  return " ".join(str(k) for k in kw)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

# CLUE file and label facts, checked against PaddleNLP's CLUE loader
# (paddlenlp/datasets/clue.py, Clue.BUILDER_CONFIGS: each task's
# <task>_public.zip URL, the files inside it and the label list), so that
# classifier heads converted from Paddle line up class by class:
#   AFQMC, CSL   ["0", "1"]                         afqmc_public/, csl_public/ {train,dev,test}.json
#   TNEWS        "100".."116" without 105 and 111   tnews_public/ {train,dev,test,test1.0,labels}.json
#   IFLYTEK      "0".."118"                         iflytek_public/ {train,dev,test,labels}.json
#   CMNLI        contradiction, entailment, neutral cmnli_public/ {train,dev,test}.json
#   OCNLI        entailment, contradiction, neutral ocnli_public/ train.50k.json, dev.json, test.json
#   CLUEWSC2020  ["true", "false"]                  cluewsc2020_public/ {train,dev,test}.json
# (PaddleNLP commit 24b1553; older versions listed 16 TNEWS labels, 100..110 + 112..116,
# i.e. with a never-used "105": such heads have one extra output and do not line up.)
# The CLUE baselines (CLUEbenchmark/CLUE, baselines/models_pytorch/classifier_pytorch/
# processors/clue.py) agree except for OCNLI, which they read as train.json with the CMNLI
# label order; OCNLI's own repository (CLUEbenchmark/OCNLI: README trains on
# ocnli/train.json; data/ocnli/ also has train.3k.json, train.10k.json) explains the
# train.json fallback.
_CLUE_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}
_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_NLI3 = ("contradiction", "entailment", "neutral")  # CMNLI (PaddleNLP, CLUE) & transformers' MNLI
_OCNLI_LABELS = ("entailment", "contradiction", "neutral")  # PaddleNLP's OCNLI order
_BIN = ("0", "1")

# TNEWS: 15 classes "100".."116" without 105 and 111 (labels.json order).
_TNEWS_LABELS = tuple(str(k) for k in range(100, 117) if k not in (105, 111))
_IFLYTEK_LABELS = tuple(str(k) for k in range(119))


def _clue_sub(name: str) -> dict[str, str]:
  return {"test": f"{name.lower()}_predict.json"}


def _make_tasks() -> dict[str, TaskSpec]:
  specs = [
    # ---------------- CLUE v1 (JSON lines) ----------------
    TaskSpec(
      name="AFQMC",
      benchmark="clue",
      labels=_BIN,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_CLUE_FILES),
      reader=_json_reader(text_a="sentence1", text_b="sentence2"),
      dir_names=("AFQMC", "afqmc_public", "afqmc"),
      submission_files=_clue_sub("AFQMC"),
      notes='train/dev: {"sentence1","sentence2","label":"0"|"1"}; test: {"id","sentence1","sentence2"}',
    ),
    TaskSpec(
      name="TNEWS",
      benchmark="clue",
      labels=_TNEWS_LABELS,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      # test.json is the CLUE 1.1 test set, test1.0.json the CLUE 1.0 one (same format)
      files={**_CLUE_FILES, "test1.0": "test1.0.json", "labels": "labels.json"},
      reader=_json_reader(text_a="sentence"),
      dir_names=("TNEWS", "tnews_public", "tnews"),
      submission_files=_clue_sub("TNEWS"),
      notes='train/dev: {"label":"102","label_desc","sentence","keywords"}; test: {"id","sentence","keywords"}; '
      "text_a = sentence only (as the CLUE baseline; keywords unused)",
    ),
    TaskSpec(
      name="IFLYTEK",
      benchmark="clue",
      labels=_IFLYTEK_LABELS,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files={**_CLUE_FILES, "labels": "labels.json"},
      reader=_json_reader(text_a="sentence"),
      dir_names=("IFLYTEK", "iflytek_public", "iflytek"),
      submission_files=_clue_sub("IFLYTEK"),
      notes='train/dev: {"label":"0".."118","label_des","sentence"}; test: {"id","sentence"}',
    ),
    TaskSpec(
      name="CMNLI",
      benchmark="clue",
      labels=_NLI3,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_CLUE_FILES),
      reader=_json_reader(text_a="sentence1", text_b="sentence2"),
      dir_names=("CMNLI", "cmnli_public", "cmnli"),
      drop_labels=frozenset({"-"}),
      submission_files=_clue_sub("CMNLI"),
      notes='train/dev: {"sentence1","sentence2","label"} (no id -> row index; "-" rows dropped); '
      'test: {"id","sentence1","sentence2"}',
    ),
    TaskSpec(
      name="OCNLI",
      benchmark="clue",
      labels=_OCNLI_LABELS,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files={**_CLUE_FILES, "train": "train.50k.json", "train_3k": "train.3k.json"},
      alt_files={"train": ("train.json",)},
      reader=_json_reader(text_a="sentence1", text_b="sentence2"),
      dir_names=("OCNLI", "ocnli_public", "ocnli"),
      drop_labels=frozenset({"-"}),
      submission_files=_clue_sub("OCNLI"),
      notes='train/dev: {"level","sentence1","sentence2","label","label0".."label4","genre","prem_id","id"}; '
      '"label" is the majority label ("-" when none -> dropped); test: {"id","sentence1","sentence2"}',
    ),
    TaskSpec(
      name="CLUEWSC2020",
      benchmark="clue",
      labels=("true", "false"),  # CLUE baseline WSCProcessor order
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_CLUE_FILES),
      reader=_json_reader(text_a=_wsc_text, id_cols=("id", "idx")),
      dir_names=("CLUEWSC2020", "cluewsc2020_public", "cluewsc2020", "WSC", "wsc"),
      submission_files=_clue_sub("CLUEWSC2020"),
      notes="text_a = text with _span1_ and [span2] marked (see mark_wsc_spans); text_b = None; "
      'train/dev id = "idx", test id = "id"',
    ),
    TaskSpec(
      name="CSL",
      benchmark="clue",
      labels=_BIN,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_CLUE_FILES),
      reader=_json_reader(text_a=_csl_keywords, text_b="abst"),
      dir_names=("CSL", "csl_public", "csl"),
      submission_files=_clue_sub("CSL"),
      notes='{"id","abst","keyword":[...],"label":"0"|"1"}; text_a = " ".join(keyword) (CLUE baseline), '
      "text_b = abst",
    ),
    # ---------------- GLUE (TSV) ----------------
    TaskSpec(
      name="SST-2",
      benchmark="glue",
      labels=_BIN,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(text_a="sentence"),
      dir_names=("SST-2", "SST2", "sst2"),
      submission_files={"test": "SST-2.tsv"},
      notes="train/dev: sentence\\tlabel (no id -> row index); test: index\\tsentence",
    ),
    TaskSpec(
      name="MRPC",
      benchmark="glue",
      labels=_BIN,
      is_regression=False,
      metrics=("f1", "accuracy"),
      main_metric="f1",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(text_a="#1 String", text_b="#2 String", label_col="Quality"),
      dir_names=("MRPC", "mrpc"),
      submission_files={"test": "MRPC.tsv"},
      notes="train/dev: Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String (BOM tolerated; id = row index); "
      "test: index\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String",
    ),
    TaskSpec(
      name="QQP",
      benchmark="glue",
      labels=_BIN,
      is_regression=False,
      metrics=("f1", "accuracy"),
      main_metric="f1",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(
        text_a="question1", text_b="question2", label_col="is_duplicate", id_cols=("id",)
      ),
      dir_names=("QQP", "qqp"),
      submission_files={"test": "QQP.tsv"},
      notes="train/dev: id qid1 qid2 question1 question2 is_duplicate; test: id question1 question2",
    ),
    TaskSpec(
      name="STS-B",
      benchmark="glue",
      labels=None,
      is_regression=True,
      # combined = (pearson + spearman) / 2, as the GLUE leaderboard averages them
      metrics=("pearson", "spearman", "combined"),
      main_metric="combined",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(text_a="sentence1", text_b="sentence2", label_col="score"),
      dir_names=("STS-B", "STSB", "stsb"),
      submission_files={"test": "STS-B.tsv"},
      notes="index genre filename year old_index source1 source2 sentence1 sentence2 score (0..5); "
      "test lacks score",
    ),
    TaskSpec(
      name="CoLA",
      benchmark="glue",
      labels=_BIN,
      is_regression=False,
      metrics=("mcc",),
      main_metric="mcc",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(
        text_a="sentence",
        headerless_names=("source", "label", "original_label", "sentence"),
      ),
      dir_names=("CoLA", "cola"),
      submission_files={"test": "CoLA.tsv"},
      notes="train/dev: NO header, source\\tlabel\\toriginal_label\\tsentence (id = row index); "
      "test: header index\\tsentence",
    ),
    TaskSpec(
      name="RTE",
      benchmark="glue",
      labels=("entailment", "not_entailment"),
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(text_a="sentence1", text_b="sentence2"),
      dir_names=("RTE", "rte"),
      submission_files={"test": "RTE.tsv"},
      notes="index sentence1 sentence2 label; test lacks label",
    ),
    TaskSpec(
      name="MNLI",
      benchmark="glue",
      labels=_NLI3,
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files={
        "train": "train.tsv",
        "dev_matched": "dev_matched.tsv",
        "dev_mismatched": "dev_mismatched.tsv",
        "test_matched": "test_matched.tsv",
        "test_mismatched": "test_mismatched.tsv",
      },
      reader=_tsv_reader(text_a="sentence1", text_b="sentence2", label_col="gold_label"),
      dir_names=("MNLI", "mnli"),
      eval_splits=("dev_matched", "dev_mismatched"),
      submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
      notes="index promptID pairID genre sentence{1,2}_binary_parse sentence{1,2}_parse sentence1 sentence2 "
      "label1 [label2..label5] gold_label; columns addressed by name; test lacks labels",
    ),
    TaskSpec(
      name="QNLI",
      benchmark="glue",
      labels=("entailment", "not_entailment"),
      is_regression=False,
      metrics=("accuracy",),
      main_metric="accuracy",
      files=dict(_GLUE_FILES),
      reader=_tsv_reader(text_a="question", text_b="sentence"),
      dir_names=("QNLI", "qnli"),
      submission_files={"test": "QNLI.tsv"},
      notes="index question sentence label; test lacks label",
    ),
  ]
  return {s.name: s for s in specs}


TASKS: dict[str, TaskSpec] = _make_tasks()


def _norm(name: str) -> str:
  return name.lower().replace("-", "").replace("_", "").replace(" ", "")


_ALIASES: dict[str, str] = {_norm(k): k for k in TASKS}
_ALIASES.update({"cluewsc": "CLUEWSC2020", "wsc": "CLUEWSC2020"})


def get_task(name: str | TaskSpec) -> TaskSpec:
  """Look a task up case-insensitively ("sst-2", "SST2", "sts_b", "cola" ...)."""
  if isinstance(name, TaskSpec):
    return name
  key = _ALIASES.get(_norm(str(name)))
  if key is None:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
  return TASKS[key]


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _task_folders(spec: TaskSpec, root: Path) -> list[Path]:
  """Folders that may hold ``spec``'s files, in lookup order: ``root`` itself, then
  ``root/<dir_name>``, then ``root/<dir_name>/<zip folder>`` (e.g. ``clue/ocnli/ocnli_public``:
  a ``<task>_public.zip`` unpacked into a folder of its own)."""
  folders = [root] + [root / d for d in spec.dir_names]
  zip_dirs = [d for d in spec.dir_names if d.endswith("_public")]
  folders += [root / d / z for d in spec.dir_names if d not in zip_dirs for z in zip_dirs]
  return folders


def resolve_path(task: str | TaskSpec, data_dir: str | os.PathLike, split: str) -> Path:
  """Path of ``split``'s file; ``data_dir`` is the task folder or the benchmark root.

  In each candidate folder (see the module docstring) the official file name is tried
  first, then the split's ``alt_files`` (OCNLI train: ``train.50k.json``, then
  ``train.json``).  The error for a missing file lists every path tried."""
  spec = get_task(task)
  if split not in spec.files:
    raise ValueError(f"{spec.name} has no split {split!r}; known splits: {', '.join(spec.files)}")
  names = (spec.files[split], *spec.alt_files.get(split, ()))
  root = Path(data_dir)
  candidates = [folder / name for folder in _task_folders(spec, root) for name in names]
  for c in candidates:
    if c.is_file():
      if c.name != names[0]:
        log.info("%s (%s): %s is absent; reading %s", spec.name, split, names[0], c)
      return c
  wanted = " or ".join(names)
  raise FileNotFoundError(
    f"{spec.name} ({split}): file not found: {wanted} in {root}"
    f" (tried {', '.join(str(c) for c in candidates)})"
  )


def load_split(
  task: str | TaskSpec,
  data_dir: str | os.PathLike,
  split: str,
  *,
  cache_dir: str | os.PathLike | None = None,
) -> list[Example]:
  """Read one split of ``task`` from the official files under ``data_dir``.

  ``cache_dir`` is passed to ``datasets.load_dataset`` (default: the HF cache).
  Raises FileNotFoundError (missing file), ValueError (unknown split, bad
  label, missing column)."""
  spec = get_task(task)
  if split == "labels":
    raise ValueError(f"{spec.name}: 'labels' is a label-list file, not a data split")
  path = resolve_path(spec, data_dir, split)
  return spec.reader(spec, path, split, None if cache_dir is None else str(cache_dir))


def as_columns(examples: Iterable[Example]) -> dict[str, list]:
  """Columnar view: ``{"id": [...], "text_a": [...], "text_b": [...], "label": [...],
  "weight": [...], "domain": [...]}``."""
  keys = ("id", "text_a", "text_b", "label", "weight", "domain")
  cols: dict[str, list] = {k: [] for k in keys}
  for ex in examples:
    for k in keys:
      cols[k].append(getattr(ex, k))
  return cols


# --------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------


def _pick_submission(spec: TaskSpec, split: str | None) -> str:
  if split is None:
    if len(spec.submission_files) != 1:
      raise ValueError(f"{spec.name}: pass split= one of {', '.join(spec.submission_files)}")
    split = next(iter(spec.submission_files))
  if split not in spec.submission_files:
    raise ValueError(
      f"{spec.name}: no submission file for split {split!r}; "
      f"known: {', '.join(spec.submission_files)}"
    )
  return spec.submission_files[split]


def _check_lengths(spec: TaskSpec, ids: Sequence, preds: Sequence) -> None:
  if len(ids) != len(preds):
    raise ValueError(f"{spec.name}: {len(ids)} ids but {len(preds)} predictions")


def _label_string(spec: TaskSpec, index: Any) -> str:
  assert spec.labels is not None
  try:
    k = int(index)
  except (TypeError, ValueError):
    raise ValueError(f"{spec.name}: prediction {index!r} is not a label index") from None
  if k != index or not 0 <= k < len(spec.labels):
    raise ValueError(
      f"{spec.name}: prediction {index!r} is not a label index in [0, {len(spec.labels)})"
    )
  return spec.labels[k]


def _plain_id(i: Any) -> Any:
  # numpy scalars -> Python (json cannot serialise np.int64).
  return i.item() if hasattr(i, "item") else i


def write_clue_predictions(
  task: str | TaskSpec,
  ids: Sequence[int | str],
  predicted_label_indices: Sequence[int],
  output_dir: str | os.PathLike,
  filename: str | None = None,
) -> Path:
  """Write a CLUE submission file: one ``{"id": ..., "label": "<label>"}`` per line.

  The file is ``<task_lower>_predict.json`` (``afqmc_predict.json``,
  ``tnews_predict.json``, ``cluewsc2020_predict.json`` ...).  The CLUE 1.1
  leaderboard zip uses a few renamed files (``tnews11_predict.json``,
  ``cluewsc11_predict.json``, ``ocnli_50k_predict.json``); pass ``filename``
  to override.  Returns the written path.
  """
  spec = get_task(task)
  if spec.benchmark != "clue":
    raise ValueError(f"{spec.name} is not a CLUE task; use write_glue_predictions")
  _check_lengths(spec, ids, predicted_label_indices)
  out_dir = Path(output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / (filename or _pick_submission(spec, "test"))
  lines = [
    json.dumps({"id": _plain_id(i), "label": _label_string(spec, p)}, ensure_ascii=False)
    for i, p in zip(ids, predicted_label_indices)
  ]
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def write_glue_predictions(
  task: str | TaskSpec,
  ids: Sequence[int | str],
  predictions: Sequence[int] | Sequence[float],
  output_dir: str | os.PathLike,
  split: str | None = None,
  filename: str | None = None,
) -> Path:
  """Write a GLUE submission TSV: header ``index\\tprediction`` then one row per id.

  Classification: ``predictions`` are label indices, written as the label
  strings (``entailment``, ``0``/``1`` ...).  STS-B: floats, written with 3
  decimals (not clipped).  File names follow the GLUE server
  (``SST-2.tsv``, ``CoLA.tsv``, ``STS-B.tsv``, ``MNLI-m.tsv`` /
  ``MNLI-mm.tsv``); MNLI needs ``split="test_matched"|"test_mismatched"``.
  """
  spec = get_task(task)
  if spec.benchmark != "glue":
    raise ValueError(f"{spec.name} is not a GLUE task; use write_clue_predictions")
  _check_lengths(spec, ids, predictions)
  name = filename or _pick_submission(spec, split)
  out_dir = Path(output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / name
  rows = ["index\tprediction"]
  for i, p in zip(ids, predictions):
    if spec.is_regression:
      value = f"{float(p):.3f}"
    else:
      value = _label_string(spec, p)
    rows.append(f"{_plain_id(i)}\t{value}")
  path.write_text("\n".join(rows) + "\n", encoding="utf-8")
  return path
