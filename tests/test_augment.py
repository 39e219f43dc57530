"""TinyBERT data augmentation (python -m kdjax.augment) on tiny models and fixtures."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

from kdjax import augment, models
from kdjax.data import Tokenizer
from kdjax.data.tasks import load_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE = os.path.join(ROOT, "tests", "fixtures", "glue")
CLUE = os.path.join(ROOT, "tests", "fixtures", "clue")
# Multi-piece in the test vocabulary (so GloVe gives their candidates): word -> pieces.
SPLIT_WORDS = {
  "beautiful": ("beauti", "##ful"),
  "satisfied": ("satis", "##fied"),
  "utterly": ("utter", "##ly"),
}
# Tiny GloVe: 3 clusters (a word's neighbours are the rest of its cluster first).
CLUSTERS = [
  ["beautiful", "lovely", "gorgeous", "pretty"],
  ["satisfied", "content", "pleased", "happy"],
  ["film", "movie", "picture", "cinema"],
  ["utterly", "totally", "completely", "entirely"],
  ["control", "manage", "handle", "regulate"],
  ["emotions", "feelings", "moods", "passions"],
]


def _sst2_words():
  words = set()
  with open(os.path.join(GLUE, "SST-2", "train.tsv"), encoding="utf-8") as f:
    next(f)
    for line in f:
      words.update(re.findall(r"\w+|[^\w\s]", line.split("\t")[0].lower()))
  return words


def _save_mlm(path, vocab, seed=5):
  (path).mkdir()
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  tok = Tokenizer.from_vocab(str(path / "vocab.txt"))
  cfg = models.BertConfig(
    vocab_size=tok.vocab_size,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
  )
  models.save_pretrained(models.create_model(cfg, "mlm", seed=seed), str(path), tokenizer=tok)
  return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("augment")
  words = (_sst2_words() - set(SPLIT_WORDS)) | {"lovely", "movie"}
  pieces = {p for ps in SPLIT_WORDS.values() for p in ps}
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words | pieces)
  mlm = _save_mlm(root / "mlm", vocab)
  rng = np.random.default_rng(0)
  lines = []
  for c, cluster in enumerate(CLUSTERS):
    center = np.zeros(6)
    center[c] = 10.0
    for j, w in enumerate(cluster):
      v = center + rng.normal(size=6) * (0.5 + j)  # farther from the centre down the list
      lines.append(w + " " + " ".join(f"{x:.5f}" for x in v))
  glove = root / "glove.txt"
  glove.write_text("\n".join(lines) + "\n", encoding="utf-8")
  # Chinese: every CJK character is a word of one piece (MLM candidates).
  chars = set()
  with open(os.path.join(CLUE, "CSL", "train.json"), encoding="utf-8") as f:
    for line in f:
      chars.update(ch for ch in json.loads(line)["abst"] if "\u4e00" <= ch <= "\u9fff")
  zh = _save_mlm(
    root / "mlm_zh", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(chars) + ["，", "。"]
  )
  return {
    "mlm": mlm,
    "glove": str(glove),
    "mlm_zh": zh,
    "vocab": set(vocab),
    "glove_words": {w for c in CLUSTERS for w in c},
  }


def _run(capsys, *args):
  assert augment.main([*map(str, args), "--no_progress"]) == 0
  return capsys.readouterr().out


def _words(text):
  return re.findall(r"\w+|[^\w\s]", text)


def _groups(original, augmented, key):
  """Output rows grouped under the original row they were made from (originals come first,
  in input order)."""
  groups, i = [], 0
  for ex in augmented:
    if i < len(original) and key(ex) == key(original[i]):
      groups.append((original[i], []))
      i += 1
    else:
      groups[-1][1].append(ex)
  assert i == len(original)
  return groups


def test_sst2_mlm_and_glove(assets, tmp_path, capsys):
  out1, out2 = tmp_path / "a", tmp_path / "b"
  common = [
    "--task",
    "sst-2",
    "--data_dir",
    os.path.join(GLUE, "SST-2"),
    "--mlm_model",
    assets["mlm"],
    "--glove",
    assets["glove"],
    "--num_aug",
    8,
    "--k",
    3,
    "--seed",
    7,
  ]
  log = _run(capsys, *common, "--output_dir", out1)
  assert "5 input rows ->" in log and "mlm+glove" in log
  _run(capsys, *common, "--output_dir", out2)
  assert (out1 / "train.tsv").read_bytes() == (out2 / "train.tsv").read_bytes()
  _run(capsys, *common[:-1], 8, "--output_dir", tmp_path / "c")
  assert (out1 / "train.tsv").read_bytes() != (tmp_path / "c" / "train.tsv").read_bytes()

  original = load_split("sst-2", os.path.join(GLUE, "SST-2"), "train")
  augmented = load_split("sst-2", str(out1), "train")  # the registry reads it back
  assert len(augmented) > 2 * len(original)
  groups = _groups(original, augmented, key=lambda e: e.text_a)
  allowed = assets["vocab"] | assets["glove_words"]
  seen_glove = set()
  for orig, rows in groups:
    assert len(rows) <= 8
    assert len({r.text_a for r in rows}) == len(rows) and orig.text_a not in {
      r.text_a for r in rows
    }
    ow = _words(orig.text_a)
    for r in rows:
      assert r.label == orig.label and r.text_b is None
      nw = _words(r.text_a)
      assert len(nw) == len(ow)  # one word for one word, spacing kept
      for a, b in zip(ow, nw):
        if a != b:
          assert a not in augment.STOP_WORDS and b in allowed, (a, b)
          if a in SPLIT_WORDS:  # multi-piece -> GloVe neighbours only
            assert b in assets["glove_words"]
            seen_glove.add(a)
  assert seen_glove  # beautiful / satisfied / utterly were replaced at least once


def test_glove_only_pairs_and_ids(assets, tmp_path, capsys):
  log = _run(
    capsys,
    "--task",
    "QQP",
    "--data_dir",
    os.path.join(GLUE, "QQP"),
    "--glove_only",
    "--glove",
    assets["glove"],
    "--num_aug",
    4,
    "--k",
    3,
    "--output",
    tmp_path / "qqp.tsv",
  )
  assert "glove-only" in log
  header = (tmp_path / "qqp.tsv").read_text().splitlines()[0]
  assert header == "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
  os.rename(tmp_path / "qqp.tsv", tmp_path / "train.tsv")
  original = load_split("qqp", os.path.join(GLUE, "QQP"), "train")
  augmented = load_split("qqp", str(tmp_path), "train")
  ids = [e.id for e in augmented]
  assert len(set(ids)) == len(ids) and "402555-1" in ids  # "control", "emotions" replaced
  by_id = {e.id: e for e in original}
  for e in augmented:
    base = by_id[int(str(e.id).split("-")[0])]
    assert e.label == base.label
    assert e.text_a == base.text_a or e.text_b == base.text_b  # one field changed at a time
    for a, b in zip(_words(base.text_a + " " + base.text_b), _words(e.text_a + " " + e.text_b)):
      assert a == b or b.lower() in assets["glove_words"]


def test_glove_only_text_input(assets, tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text("A beautiful film .\nThe the the .\n")
  _run(
    capsys,
    "--input",
    src,
    "--glove_only",
    "--glove",
    assets["glove"],
    "--num_aug",
    20,
    "--p",
    1.0,
    "--k",
    3,
    "--output",
    tmp_path / "out.txt",
  )
  lines = (tmp_path / "out.txt").read_text().splitlines()
  assert lines[0] == "A beautiful film ." and "The the the ." in lines
  first = lines[: lines.index("The the the .")]
  # p = 1: both words replaced every time, case kept (no "A" candidates: a stop word).
  assert (
    all(re.fullmatch(r"A (lovely|gorgeous|pretty) (movie|picture|cinema) \.", l) for l in first[1:])
    and len(first) > 2
  )


def test_csl_json_chinese_mlm(assets, tmp_path, capsys):
  _run(
    capsys,
    "--task",
    "csl",
    "--data_dir",
    os.path.join(CLUE, "CSL"),
    "--mlm_model",
    assets["mlm_zh"],
    "--glove",
    assets["glove"],
    "--num_aug",
    3,
    "--output_dir",
    tmp_path,
  )
  original = load_split("csl", os.path.join(CLUE, "CSL"), "train")
  augmented = load_split("csl", str(tmp_path), "train")
  assert len(augmented) > len(original)
  ids = [e.id for e in augmented]
  assert len(set(ids)) == len(ids)
  by_id = {e.id: e for e in original}
  for e in augmented:
    base = by_id[int(str(e.id).split("-")[0])]
    assert e.label == base.label and e.text_a == base.text_a  # keywords kept
    assert len(e.text_b) == len(base.text_b)  # one character for one character
  rows = [json.loads(l) for l in (tmp_path / "train.json").read_text("utf-8").splitlines()]
  assert set(rows[0]) == {"id", "abst", "keyword", "label"}


def test_errors(assets, tmp_path):
  enc = tmp_path / "enc"
  enc.mkdir()
  tok = Tokenizer.from_dir(assets["mlm"])
  cfg = models.load_config(assets["mlm"])[0]
  models.save_pretrained(models.create_model(cfg, "none"), str(enc), tokenizer=tok)
  with pytest.raises(ValueError, match="no masked-LM head"):
    augment.MLMCandidates(str(enc), k=3)
  with pytest.raises(ValueError, match="not supported for CLUEWSC2020"):
    augment.read_task_train("cluewsc2020", os.path.join(CLUE, "CLUEWSC2020"))
  with pytest.raises(SystemExit):
    augment.main(["--task", "sst-2", "--data_dir", GLUE, "--output_dir", str(tmp_path)])


def test_real_glove_package(tmp_path, capsys):
  if importlib.util.find_spec(augment.GLOVE_PACKAGE) is None:
    pytest.skip(f"{augment.GLOVE_PACKAGE_PIP} not installed (requirements-assets.txt)")
  glove = augment.GloveIndex.load(None, vocab_size=50_000)
  assert glove.unit.shape == (50_000, 50)
  assert "movie" in glove.neighbours(["film"], 5)["film"]
  src = tmp_path / "two.txt"
  src.write_text("a charming and often affecting journey\nunflinchingly bleak and desperate\n")
  log = _run(
    capsys,
    "--input",
    src,
    "--glove_only",
    "--num_aug",
    5,
    "--glove_vocab",
    50_000,
    "--output",
    tmp_path / "out.txt",
  )
  assert "2 input rows ->" in log
  lines = (tmp_path / "out.txt").read_text().splitlines()
  assert lines[0] == "a charming and often affecting journey" and len(lines) > 4
