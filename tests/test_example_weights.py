"""Optional per-example ``weight`` / ``domain`` columns: readers, errors, encoded arrays."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

from kdjax.data.classification import ClassificationData, encode_examples, eval_batches
from kdjax.data.tasks import Example, load_split
from kdjax.data.tokenizer import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  return Tokenizer.from_dir(d)


def _jsonl(path: Path, rows) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
  return path


def _tsv(path: Path, header, rows) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = ["\t".join(header)] + ["\t".join(str(v) for v in r) for r in rows]
  path.write_text("\n".join(lines) + "\n", "utf-8")
  return path


def _afqmc(i, **extra):
  return {"id": i, "sentence1": "a", "sentence2": "b", "label": str(i % 2), **extra}


def test_example_defaults_and_positional_construction():
  ex = Example(3, "a", None, 1)
  assert (ex.weight, ex.domain) == (1.0, 0)
  assert Example(3, "a", None, 1, 0.5, 2) == Example(
    id=3, text_a="a", text_b=None, label=1, weight=0.5, domain=2
  )


def test_clue_json_with_and_without_columns(tmp_path, cache_dir):
  _jsonl(
    tmp_path / "with" / "train.json",
    [
      _afqmc(0, weight=0.5, domain=2),
      _afqmc(1, weight=2, domain=0),
      _afqmc(2),  # missing keys -> defaults
      _afqmc(3, weight=None, domain=None),  # null -> defaults
      _afqmc(4, weight="0.25", domain="7"),  # numeric strings
      _afqmc(5, weight=0, domain=1),  # weight 0 is allowed
    ],
  )
  exs = load_split("afqmc", tmp_path / "with", "train", cache_dir=cache_dir)
  assert [e.weight for e in exs] == [0.5, 2.0, 1.0, 1.0, 0.25, 0.0]
  assert [e.domain for e in exs] == [2, 0, 0, 0, 7, 1]
  assert all(isinstance(e.weight, float) and isinstance(e.domain, int) for e in exs)
  _jsonl(tmp_path / "without" / "train.json", [_afqmc(0), _afqmc(1)])
  plain = load_split("afqmc", tmp_path / "without", "train", cache_dir=cache_dir)
  assert [(e.weight, e.domain) for e in plain] == [(1.0, 0), (1.0, 0)]


def test_glue_tsv_header_columns(tmp_path, cache_dir):
  header = ["index", "sentence1", "sentence2", "label", "weight", "domain"]
  _tsv(
    tmp_path / "with" / "train.tsv",
    header,
    [
      [0, "a", "b", "entailment", "0.5", "1"],
      [1, "a", "c", "not_entailment", "3", "0"],
      [2, "b", "c", "entailment", "", ""],  # empty -> defaults
    ],
  )
  exs = load_split("rte", tmp_path / "with", "train", cache_dir=cache_dir)
  assert [(e.weight, e.domain) for e in exs] == [(0.5, 1), (3.0, 0), (1.0, 0)]
  assert [e.text_b for e in exs] == ["b", "c", "c"]  # other columns still by name
  # weight only, in the middle of the header
  _tsv(tmp_path / "w" / "train.tsv", ["sentence", "weight", "label"], [["a b", "0.1", "1"]])
  (ex,) = load_split("sst-2", tmp_path / "w", "train", cache_dir=cache_dir)
  assert (ex.text_a, ex.label, ex.weight, ex.domain) == ("a b", 1, pytest.approx(0.1), 0)
  _tsv(tmp_path / "without" / "train.tsv", header[:4], [[0, "a", "b", "entailment"]])
  (plain,) = load_split("rte", tmp_path / "without", "train", cache_dir=cache_dir)
  assert (plain.weight, plain.domain) == (1.0, 0)


def test_mixed_json_types_and_blank_lines(tmp_path, cache_dir):
  # numbers and numeric strings in one column plus a blank line: datasets' json builder
  # gives up on this, the reader falls back to plain json parsing
  path = _jsonl(tmp_path / "train.json", [_afqmc(0, weight=1.5), _afqmc(1, weight="0.5")])
  path.write_text(path.read_text("utf-8").replace("\n", "\n\n", 1), "utf-8")
  exs = load_split("afqmc", tmp_path, "train", cache_dir=cache_dir)
  assert [e.weight for e in exs] == [1.5, 0.5] and [e.id for e in exs] == [0, 1]
  path.write_text(path.read_text("utf-8") + '{"id": 2, "sentence1": \n', "utf-8")
  with pytest.raises(ValueError, match=r"train\.json, line 4: invalid JSON"):
    load_split("afqmc", tmp_path, "train", cache_dir=cache_dir)


@pytest.mark.parametrize(
  "extra,fragment",
  [
    ({"weight": "heavy"}, "bad weight 'heavy'"),
    ({"weight": -0.5}, "negative weight -0.5"),
    ({"weight": "nan"}, "bad weight 'nan'"),
    ({"weight": True}, "bad weight True"),
    ({"domain": 1.5}, "bad domain 1.5"),
    ({"domain": "news"}, "bad domain 'news'"),
    ({"domain": -1}, "negative domain -1"),
  ],
)
def test_json_errors_name_file_and_line(tmp_path, cache_dir, extra, fragment):
  path = tmp_path / "train.json"
  _jsonl(path, [_afqmc(0, weight=1.0, domain=0), _afqmc(1), _afqmc(2, **extra)])
  text = path.read_text("utf-8").splitlines()
  path.write_text("\n".join([text[0], "", text[1], text[2]]) + "\n", "utf-8")  # blank line 2
  with pytest.raises(ValueError) as ei:
    load_split("afqmc", tmp_path, "train", cache_dir=cache_dir)
  msg = str(ei.value)
  assert f"{path}, line 4" in msg and fragment in msg, msg


@pytest.mark.parametrize(
  "weight,domain,fragment",
  [("x1", "0", "bad weight 'x1'"), ("-2", "0", "negative weight '-2'"), ("1", "2.5", "bad domain")],
)
def test_tsv_errors_name_file_and_line(tmp_path, cache_dir, weight, domain, fragment):
  header = ["index", "sentence1", "sentence2", "label", "weight", "domain"]
  path = _tsv(
    tmp_path / "dev.tsv",
    header,
    [[0, "a", "b", "entailment", "1", "0"], [1, "a", "b", "entailment", weight, domain]],
  )
  with pytest.raises(ValueError) as ei:
    load_split("rte", tmp_path, "dev", cache_dir=cache_dir)
  msg = str(ei.value)
  assert f"{path}, line 3" in msg and fragment in msg, msg


def test_encode_examples_adds_weights_and_domain_ids(tokenizer):
  exs = [
    Example(0, "a", None, 1, weight=0.5, domain=3),
    Example(1, "a b", "c", 0),
    Example(2, "c", None, None, 2.0, 1),
  ]
  f = encode_examples(exs, tokenizer, 6)
  assert f["weights"].dtype == np.float32 and f["domain_ids"].dtype == np.int32
  np.testing.assert_array_equal(f["weights"], [0.5, 1.0, 2.0])
  np.testing.assert_array_equal(f["domain_ids"], [3, 0, 1])

  class Bare:  # duck-typed examples without the new attributes get the defaults
    def __init__(self, text):
      self.text_a, self.text_b, self.label = text, None, 0

  g = encode_examples([Bare("a"), Bare("b")], tokenizer, 6)
  np.testing.assert_array_equal(g["weights"], [1.0, 1.0])
  np.testing.assert_array_equal(g["domain_ids"], [0, 0])
  with pytest.raises(ValueError, match="weight"):
    encode_examples([Example(0, "a", None, 0, weight=-1.0)], tokenizer, 6)


def test_loaded_file_to_batches(tmp_path, cache_dir, tokenizer):
  rows = [_afqmc(i, weight=0.5 * i, domain=i % 3) for i in range(5)]
  _jsonl(tmp_path / "train.json", rows)
  feats = encode_examples(load_split("afqmc", tmp_path, "train", cache_dir=cache_dir), tokenizer, 8)
  np.testing.assert_array_equal(feats["weights"], [0.0, 0.5, 1.0, 1.5, 2.0])
  np.testing.assert_array_equal(feats["domain_ids"], [0, 1, 2, 0, 1])
  data = ClassificationData(feats, batch_size=2, seed=0)
  for _ in range(3):
    batch = next(data)
    rows_ = batch["example_index"]
    np.testing.assert_array_equal(batch["weights"], feats["weights"][rows_])
    np.testing.assert_array_equal(batch["domain_ids"], feats["domain_ids"][rows_])
    assert batch["weights"].dtype == np.float32 and batch["domain_ids"].dtype == np.int32
  batches = list(eval_batches(feats, 4))
  last = batches[-1]
  np.testing.assert_array_equal(last["valid"], [True, False, False, False])
  np.testing.assert_array_equal(last["weights"], [2.0, 0.0, 0.0, 0.0])  # padding: weight 0
  np.testing.assert_array_equal(last["domain_ids"], [1, 0, 0, 0])
  assert last["weights"].dtype == np.float32 and last["domain_ids"].dtype == np.int32
