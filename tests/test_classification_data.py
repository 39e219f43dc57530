"""kdjax.data.classification: encoding, per-process epochs, exact resume, padded eval."""

import json

import numpy as np
import pytest

from kdjax.data.classification import ClassificationData, encode_examples, eval_batches
from kdjax.data.tasks import Example
from kdjax.data.tokenizer import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "good", "bad", "movie"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  return Tokenizer.from_dir(d)


def _features(n, width=3):
  return {
    "x": np.arange(n * width, dtype=np.int32).reshape(n, width),
    "example_index": np.arange(n, dtype=np.int32),
  }


def test_encode_examples_mixed_pairs_and_labels(tokenizer):
  exs = [
    Example(0, "good movie", None, 1),
    Example("x", "a b", "c", 0),
    Example(2, "bad", None, None),
  ]
  f = encode_examples(exs, tokenizer, 8)
  assert {k: v.dtype for k, v in f.items()} == {
    "input_ids": np.int32,
    "attention_mask": np.int32,
    "token_type_ids": np.int32,
    "labels": np.int32,
    "example_index": np.int32,
    "weights": np.float32,
    "domain_ids": np.int32,
  }
  np.testing.assert_array_equal(f["weights"], [1.0, 1.0, 1.0])  # Example defaults
  np.testing.assert_array_equal(f["domain_ids"], [0, 0, 0])
  assert f["input_ids"].shape == (3, 8)
  np.testing.assert_array_equal(f["input_ids"][0], [2, 8, 10, 3, 0, 0, 0, 0])
  np.testing.assert_array_equal(f["input_ids"][1], [2, 5, 6, 3, 7, 3, 0, 0])
  np.testing.assert_array_equal(f["token_type_ids"][1], [0, 0, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(f["attention_mask"][2], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(f["labels"], [1, 0, -1])
  np.testing.assert_array_equal(f["example_index"], [0, 1, 2])
  reg = encode_examples([Example(0, "a", "b", 2.5), Example(1, "a", "c", None)], tokenizer, 6)
  assert reg["labels"].dtype == np.float32
  assert reg["labels"][0] == 2.5 and np.isnan(reg["labels"][1])
  forced = encode_examples([Example(0, "a", "b", 3.0)], tokenizer, 6, regression=True)
  assert forced["labels"].dtype == np.float32


def test_epochs_cover_rows_and_drop_remainder():
  data = ClassificationData(_features(10), batch_size=3, seed=5)
  assert data.steps_per_epoch == 3
  for epoch in range(2):
    order = np.random.default_rng((5, epoch)).permutation(10)
    seen = [next(data)["example_index"] for _ in range(3)]
    np.testing.assert_array_equal(np.concatenate(seen), order[:9])
    assert len(set(np.concatenate(seen).tolist())) == 9
  unshuffled = ClassificationData(_features(10), batch_size=4, shuffle=False)
  np.testing.assert_array_equal(next(unshuffled)["example_index"], [0, 1, 2, 3])
  np.testing.assert_array_equal(next(unshuffled)["example_index"], [4, 5, 6, 7])
  np.testing.assert_array_equal(next(unshuffled)["example_index"], [0, 1, 2, 3])


def test_processes_split_the_same_global_batch():
  feats = _features(20)
  single = ClassificationData(feats, batch_size=4, seed=1)
  procs = [
    ClassificationData(feats, batch_size=2, seed=1, process_index=p, process_count=2)
    for p in range(2)
  ]
  assert single.steps_per_epoch == procs[0].steps_per_epoch == 5
  for _ in range(12):
    whole = next(single)
    parts = [next(p) for p in procs]
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))


def test_state_round_trips_through_json():
  feats = _features(13)
  a = ClassificationData(feats, batch_size=4, seed=3)
  for _ in range(5):
    next(a)
  state = json.loads(json.dumps(a.get_state()))
  b = ClassificationData(feats, batch_size=4, seed=3)
  b.set_state(state)
  for _ in range(7):
    np.testing.assert_array_equal(next(a)["x"], next(b)["x"])
  with pytest.raises(ValueError, match="batch size changed"):
    ClassificationData(feats, batch_size=2, seed=3).set_state(state)


def test_too_few_rows_is_a_clear_error():
  with pytest.raises(ValueError, match="cannot fill one global batch"):
    ClassificationData(_features(3), batch_size=2, process_count=2)


def test_eval_batches_pad_last_batch():
  feats = _features(7)
  feats["weights"] = np.full(7, 0.5, np.float32)
  feats["domain_ids"] = np.full(7, 2, np.int32)
  batches = list(eval_batches(feats, 3))
  np.testing.assert_array_equal(batches[-1]["weights"], [0.5, 0.0, 0.0])  # padding: weight 0
  np.testing.assert_array_equal(batches[-1]["domain_ids"], [2, 0, 0])
  assert len(batches) == 3
  assert all(b["x"].shape == (3, 3) for b in batches)
  np.testing.assert_array_equal(batches[-1]["valid"], [True, False, False])
  np.testing.assert_array_equal(batches[-1]["x"][1:], 0)
  rows = np.concatenate([b["example_index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(rows, np.arange(7))
