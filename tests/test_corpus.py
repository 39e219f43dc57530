"""kdjax.data.TextCorpus: determinism, resume, epochs, host split, errors."""

import json
from collections import Counter

import numpy as np
import pytest

from kdjax.data import TextCorpus, Tokenizer
from kdjax.data.corpus import CorpusMismatchError

WORDS = (
  ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(200)] + list("中文好")
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  p = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  p.write_text("".join(w + "\n" for w in WORDS), encoding="utf-8")
  return Tokenizer.from_vocab(p)


def line_ids(tok, line):
  return tuple(tok.convert_tokens_to_ids(line.split()))


def write_corpus(root, n_files=5, lines_per_file=(7, 3, 11, 1, 6)):
  """Files with unique lines ``w{file} w{j}`` plus empty lines, whitespace lines,
  an invalid UTF-8 line and a sub-directory; returns the set of valid lines."""
  root.mkdir(parents=True, exist_ok=True)
  expected = []
  for f in range(n_files):
    sub = root / ("sub" if f % 2 else "")
    sub.mkdir(exist_ok=True)
    parts = []
    for j in range(lines_per_file[f % len(lines_per_file)]):
      line = f"w{f} w{100 + j}"
      expected.append(line)
      parts.append(line.encode())
      if j % 3 == 0:
        parts.append(b"")
        parts.append(b"   \t ")
    if f == 0:
      parts.insert(1, b"w1 \xff\xfe broken")  # invalid UTF-8
    (sub / f"shard_{f:02d}.txt").write_bytes(b"\n".join(parts) + b"\n")
  (root / ".hidden").write_text("w199 w199\n")  # hidden files are ignored
  return expected


def decode_rows(batch):
  out = []
  for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
    out.append(tuple(ids[mask.astype(bool)][1:-1].tolist()))
  return out


def take(corpus, n):
  return [next(corpus) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture
def corpus_dir(tmp_path):
  d = tmp_path / "corpus"
  expected = write_corpus(d)
  return d, expected


def test_batches_shape_dtype_and_one_epoch_coverage(tok, corpus_dir):
  d, expected = corpus_dir
  c = TextCorpus(d, tok, batch_size=4, max_seq_length=6, seed=3)
  assert c.num_files == 5
  n_lines = len(expected)  # 28
  batches = take(c, n_lines // 4)  # exactly one epoch
  for b in batches:
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    for v in b.values():
      assert v.dtype == np.int32 and v.shape == (4, 6)
    assert (b["input_ids"][:, 0] == tok.cls_id).all()
    assert (b["token_type_ids"] == 0).all()
  rows = [r for b in batches for r in decode_rows(b)]
  assert Counter(rows) == Counter(line_ids(tok, l) for l in expected)
  assert c.num_invalid_lines == 1
  assert c.epoch == 1 or c.get_state()["file_cursor"] == 5
  # shuffled: not the sorted-file order
  assert rows != [line_ids(tok, l) for l in expected]


def test_determinism_and_seed(tok, corpus_dir):
  d, _ = corpus_dir
  a = take(TextCorpus(d, tok, 3, 8, seed=7), 25)
  b = take(TextCorpus(d, tok, 3, 8, seed=7), 25)
  assert_batches_equal(a, b)
  c = take(TextCorpus(d, tok, 3, 8, seed=8), 25)
  assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_multi_epoch_rollover(tok, corpus_dir):
  d, expected = corpus_dir
  n = len(expected)  # 28
  c = TextCorpus(d, tok, batch_size=7, max_seq_length=6, seed=1)
  rows = [r for b in take(c, 3 * n // 7) for r in decode_rows(b)]  # exactly 3 epochs
  want = Counter(line_ids(tok, l) for l in expected)
  assert all(Counter(rows[i * n : (i + 1) * n]) == want for i in range(3))
  assert rows[:n] != rows[n : 2 * n]  # a new shuffle each epoch
  assert c.num_invalid_lines == 3  # counted on every read of the shard
  st = c.get_state()
  assert (st["epoch"], st["file_cursor"], st["line_cursor"]) == (2, 5, 0)
  nxt = decode_rows(next(c))
  assert c.epoch == 3 and set(nxt) <= set(want)
  # batches straddle file and epoch boundaries (28 lines per epoch, batch 5)
  c2 = TextCorpus(d, tok, batch_size=5, max_seq_length=6, seed=1)
  rows2 = [r for b in take(c2, 17) for r in decode_rows(b)]
  assert rows2[: 3 * n] == rows


@pytest.mark.parametrize("k", [0, 1, 4, 5, 6, 13])
def test_resume_yields_identical_batches(tok, corpus_dir, k):
  d, _ = corpus_dir
  orig = TextCorpus(d, tok, batch_size=4, max_seq_length=8, seed=5)
  take(orig, k)
  state = json.loads(json.dumps(orig.get_state()))  # must be JSON-serialisable
  resumed = TextCorpus(d, tok, batch_size=4, max_seq_length=8, seed=5)
  resumed.set_state(state)
  assert_batches_equal(take(orig, 12), take(resumed, 12))
  assert resumed.num_invalid_lines == orig.num_invalid_lines
  assert resumed.get_state() == orig.get_state()


def test_resume_multi_host(tok, corpus_dir):
  d, _ = corpus_dir
  for P in (2, 7):  # files >= hosts and files < hosts
    for p in range(P):
      orig = TextCorpus(d, tok, 3, 8, seed=2, process_index=p, process_count=P)
      take(orig, 4)
      state = orig.get_state()
      resumed = TextCorpus(d, tok, 3, 8, seed=2, process_index=p, process_count=P)
      resumed.set_state(state)
      assert_batches_equal(take(orig, 6), take(resumed, 6))


def test_reads_each_file_once_per_epoch(tok, corpus_dir, monkeypatch):
  from kdjax.data import corpus as corpus_mod

  d, expected = corpus_dir
  reads = Counter()
  orig_split = corpus_mod._split_lines

  def counting(data):
    reads[data[:8]] += 1
    return orig_split(data)

  monkeypatch.setattr(corpus_mod, "_split_lines", counting)
  c = TextCorpus(d, tok, batch_size=2, max_seq_length=6)
  take(c, len(expected) // 2)  # one epoch, batch size 2
  assert sum(reads.values()) == 5 and set(reads.values()) == {1}


def _host_rows(tok, d, p, P, n_lines, batch_size=1):
  c = TextCorpus(d, tok, batch_size, 6, seed=4, process_index=p, process_count=P)
  rows = []
  while len(rows) < n_lines:
    rows.extend(decode_rows(next(c)))
  return rows[:n_lines], c


def _host_epoch(c, epoch):
  """Exact line count of host c in ``epoch`` (peeks at its file assignment)."""
  from kdjax.data.corpus import _split_lines

  total = 0
  for i in c.host_files(epoch):
    n = len(_split_lines(c.files[i].read_bytes())[0])
    total += n if c.split_by_files else len(range(c.process_index, n, c.process_count))
  return total


def test_host_split_files_ge_hosts(tok, corpus_dir):
  d, expected = corpus_dir
  want = Counter(line_ids(tok, l) for l in expected)
  P = 2
  union = Counter()
  for p in range(P):
    probe = TextCorpus(d, tok, 1, 6, seed=4, process_index=p, process_count=P)
    assert probe.split_by_files
    n = _host_epoch(probe, 0)
    rows, _ = _host_rows(tok, d, p, P, n)
    sets = set(rows)
    assert len(sets) == len(rows)  # no repeats within the host's epoch
    for other in union:
      assert other not in sets  # disjoint between hosts
    union.update(rows)
  assert union == want
  # the file assignment is disjoint and complete in every epoch
  for epoch in range(4):
    a = TextCorpus(d, tok, 1, 6, seed=4, process_index=0, process_count=2).host_files(epoch)
    b = TextCorpus(d, tok, 1, 6, seed=4, process_index=1, process_count=2).host_files(epoch)
    assert not set(a) & set(b) and sorted(a + b) == list(range(5))


def test_host_split_files_lt_hosts(tok, tmp_path):
  d = tmp_path / "few"
  expected = write_corpus(d, n_files=2, lines_per_file=(9, 4))
  want = Counter(line_ids(tok, l) for l in expected)
  union = Counter()
  P = 3
  for p in range(P):
    probe = TextCorpus(d, tok, 1, 6, seed=4, process_index=p, process_count=P)
    assert not probe.split_by_files
    rows, _ = _host_rows(tok, d, p, P, _host_epoch(probe, 0))
    assert not set(rows) & set(union)
    union.update(rows)
  assert union == want
  # and with 2 processes over 1 file
  d1 = tmp_path / "one"
  expected1 = write_corpus(d1, n_files=1, lines_per_file=(10,))
  rows0, _ = _host_rows(tok, d1, 0, 2, 5)
  rows1, _ = _host_rows(tok, d1, 1, 2, 5)
  assert not set(rows0) & set(rows1)
  assert Counter(rows0 + rows1) == Counter(line_ids(tok, l) for l in expected1)


def test_host_with_no_lines_errors(tok, tmp_path):
  d = tmp_path / "tiny"
  d.mkdir()
  (d / "a.txt").write_text("w1 w2\n")
  c = TextCorpus(d, tok, 2, 6, process_index=1, process_count=2)
  with pytest.raises(ValueError, match="process 1 of 2 gets no lines"):
    next(c)


def test_errors_missing_and_empty(tok, tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    TextCorpus(tmp_path / "no_such_dir", tok, 2, 8)
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(ValueError, match="empty_dir.*no files"):
    TextCorpus(empty, tok, 2, 8)
  blank = tmp_path / "blank_dir"
  blank.mkdir()
  (blank / "a.txt").write_bytes(b"\n   \n\t\n")
  (blank / "b.txt").write_bytes(b"\xff\xfe\n\n")
  with pytest.raises(ValueError, match="blank_dir.*no non-empty"):
    TextCorpus(blank, tok, 2, 8)
  only_other = tmp_path / "pattern_dir"
  only_other.mkdir()
  (only_other / "a.json").write_text("w1\n")
  with pytest.raises(ValueError, match="pattern_dir"):
    TextCorpus(only_other, tok, 2, 8, pattern="*.txt")
  with pytest.raises(ValueError):
    TextCorpus(only_other, tok, 2, 8, process_index=2, process_count=2)


def test_fingerprint_mismatch(tok, corpus_dir):
  d, _ = corpus_dir
  c = TextCorpus(d, tok, 2, 8, seed=0)
  take(c, 3)
  state = c.get_state()
  with (d / "shard_00.txt").open("ab") as f:
    f.write(b"w5 w6\n")
  changed = TextCorpus(d, tok, 2, 8, seed=0)
  with pytest.raises(CorpusMismatchError, match="does not match the saved state"):
    changed.set_state(state)
  (d / "new_file.txt").write_text("w1\n")
  with pytest.raises(ValueError, match="fingerprint"):
    TextCorpus(d, tok, 2, 8, seed=0).set_state(state)
  # other configuration mismatches are rejected too
  same = TextCorpus(d, tok, 2, 8, seed=1)
  with pytest.raises(CorpusMismatchError, match="seed"):
    same.set_state(dict(same.get_state(), seed=0))


def test_long_lines_truncated(tok, tmp_path):
  d = tmp_path / "long"
  d.mkdir()
  (d / "a.txt").write_text(" ".join(f"w{i}" for i in range(50)) + "\n中文 好\n")
  c = TextCorpus(d, tok, 2, 5)
  b = next(c)
  rows = sorted(b["input_ids"].tolist())
  ids = tok.convert_tokens_to_ids(["w0", "w1", "w2", "中", "文", "好"])
  assert sorted([[tok.cls_id, *ids[:3], tok.sep_id], [tok.cls_id, *ids[3:], tok.sep_id]]) == rows
  assert b["attention_mask"].sum() == 10
