"""kdjax.data.Tokenizer vs. transformers' Python (slow) BERT tokenizer.

In transformers 5 the original Python WordPiece implementation is
``BertTokenizerLegacy`` (``BertTokenizer`` is now the ``tokenizers``-backed class and
ignores ``vocab_file=``), so the reference is ``BertTokenizerLegacy(vocab_file=...)``.
"""

import json
import os
import random

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from transformers import AutoTokenizer, BertTokenizer, BertTokenizerLegacy

from kdjax.data import Tokenizer

TEXTS = [
  "Hello, World! This is a simple English sentence.",
  "unaffable runnings don't stop-believing 3.14 $100 e-mail@example.com",
  "我爱北京天安门。今天天气很好！",
  "Mixed 中文 and English: 你好world, 世界hello!",
  "Accents: Café naïve résumé Ünïcödé ÀÉÎÕÜ ß ﬁ Ⅳ e\u0301",
  "control\x00chars\ttabs\nnewlines\r\u200b zero-width \ufffd",
  "special tokens inline: hello [MASK] world [SEP] x[CLS]y",
  "emoji 😀 🤖 and ümlauts",
  "a" * 150 + " superlongwordthatisnotinthevocab b",
  "",
  "   ",
  "東京 ＡＢＣ full-width ｱｲｳ",
]

PAIRS = [
  ("How old are you?", "I am 6 years old, 我六岁。"),
  ("a b c d e f g h i j k l m n o", "p q"),
  ("x y", "p q r s t u v w x y z a b c"),
  ("a b c d e", "f g h i j"),
  ("", "only the second segment here"),
]

# A small vocabulary: specials, CJK characters, English words and ## pieces,
# punctuation, cased and accented forms (so cased / no-strip modes are exercised).
TINY_VOCAB = (
  ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  + list("我爱北京天安门今气很好你世界中文。！，")
  + ["hello", "world", "hel", "##lo", "wor", "##ld", "the", "##s", "run", "##ning", "##ner"]
  + ["a", "b", "c", "##a", "##b", "##c", "x", "y", "z", ",", ".", "!", "?", "'", "-"]
  + ["Hello", "World", "café", "cafe", "caf", "##é", "##e", "naive", "naïve", "resume", "e"]
)


def ref_ids(ref, a, b=None, max_len=64):
  enc = ref(
    a,
    b,
    truncation="longest_first" if b is not None else True,
    max_length=max_len,
    return_token_type_ids=True,
  )
  return enc["input_ids"], enc["token_type_ids"]


def our_ids(tok, a, b=None, max_len=64):
  enc = tok.encode([a], None if b is None else [b], max_seq_length=max_len, padding="longest")
  m = enc["attention_mask"][0].astype(bool)
  return enc["input_ids"][0][m].tolist(), enc["token_type_ids"][0][m].tolist()


def assert_matches_reference(tok, ref, texts=TEXTS, pairs=PAIRS):
  for t in texts:
    assert tok.tokenize(t) == ref.tokenize(t), t
    assert our_ids(tok, t) == ref_ids(ref, t), t
    for L in (2, 3, 5, 8):
      assert our_ids(tok, t, max_len=L) == ref_ids(ref, t, max_len=L), (t, L)
  for a, b in pairs:
    for L in (3, 4, 5, 6, 7, 8, 9, 10, 13, 64):
      assert our_ids(tok, a, b, L) == ref_ids(ref, a, b, L), (a, b, L)


@pytest.fixture(scope="module")
def tiny_vocab_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny") / "vocab.txt"
  path.write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return Tokenizer.from_dir(minilm_dir), BertTokenizerLegacy(
    vocab_file=os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True
  )


# ------------------------------------------------------------------ real vocab
def test_minilm_properties(minilm):
  tok, ref = minilm
  assert tok.vocab_size == 30522 == ref.vocab_size
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert tok.lowercase is True
  assert tok.model_max_length == 512


def test_minilm_matches_slow_tokenizer(minilm):
  tok, ref = minilm
  assert_matches_reference(tok, ref)


def test_minilm_random_pair_truncation(minilm):
  """Pair truncation follows BERT's rule (the extra token of an odd cut from segment B)."""
  tok, ref = minilm
  rng = random.Random(0)
  words = "the cat sat on a mat with 中 国 and dogs running quickly".split()
  for _ in range(150):
    a = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
    b = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
    L = rng.randint(3, 24)
    assert our_ids(tok, a, b, L) == ref_ids(ref, a, b, L), (a, b, L)


def test_minilm_matches_shipped_tokenizer_json(minilm, minilm_dir):
  from tokenizers import Tokenizer as HFTokenizer

  tok, _ = minilm
  shipped = HFTokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
  shipped.no_truncation()
  shipped.no_padding()
  for t in TEXTS:
    assert our_ids(tok, t, max_len=512)[0] == shipped.encode(t).ids, t


def test_encode_batch_shapes_and_padding(minilm):
  tok, ref = minilm
  texts = ["short", "a somewhat longer sentence with several words", "中文"]
  enc = tok.encode(texts, max_seq_length=16)
  assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
  for v in enc.values():
    assert v.dtype == np.int32 and v.shape == (3, 16)
  for i, t in enumerate(texts):
    want = ref(t, truncation=True, max_length=16, padding="max_length", return_token_type_ids=True)
    assert enc["input_ids"][i].tolist() == want["input_ids"]
    assert enc["attention_mask"][i].tolist() == want["attention_mask"]
    assert enc["token_type_ids"][i].tolist() == want["token_type_ids"]
  assert (enc["input_ids"][enc["attention_mask"] == 0] == tok.pad_id).all()

  longest = tok.encode(texts, max_seq_length=16, padding="longest")
  n = int(enc["attention_mask"].sum(1).max())
  assert longest["input_ids"].shape == (3, n) and n < 16
  np.testing.assert_array_equal(longest["input_ids"], enc["input_ids"][:, :n])
  capped = tok.encode(["word " * 40], max_seq_length=8, padding="longest")
  assert capped["input_ids"].shape == (1, 8)

  pair = tok.encode(["first one"], ["second"], max_seq_length=10)
  assert pair["input_ids"][0].tolist()[:6] == [tok.cls_id] + tok.convert_tokens_to_ids(
    ["first", "one"]
  ) + [tok.sep_id] + tok.convert_tokens_to_ids(["second"]) + [tok.sep_id]
  assert pair["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
  # single str accepted; too-short max length rejected
  assert tok.encode("hi", max_seq_length=4)["input_ids"].shape == (1, 4)
  with pytest.raises(ValueError):
    tok.encode(["a"], ["b"], max_seq_length=2)
  with pytest.raises(ValueError):
    tok.encode(["a", "b"], ["c"])
  with pytest.raises(ValueError):
    tok.encode(["a"], padding="do_not_pad")


def test_convert_and_decode(minilm):
  tok, ref = minilm
  toks = tok.tokenize("Unaffable runnings!")
  ids = tok.convert_tokens_to_ids(toks)
  assert ids == ref.convert_tokens_to_ids(toks)
  assert tok.convert_ids_to_tokens(ids) == toks
  assert tok.convert_tokens_to_ids("definitely-not-a-token") == tok.unk_id
  assert tok.convert_ids_to_tokens(tok.mask_id) == "[MASK]"
  enc = tok.encode(["Hello, unaffable world!"], max_seq_length=16)
  assert tok.decode(enc["input_ids"][0]) == "hello, unaffable world!"
  assert tok.decode(enc["input_ids"][0], skip_special_tokens=False).startswith("[CLS] hello")


def test_minilm_save_roundtrip(minilm, tmp_path):
  tok, _ref = minilm
  out = tok.save(tmp_path / "tok")
  files = set(os.listdir(out))
  assert {
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
  } <= files
  cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
  assert cfg["do_lower_case"] is True and cfg["tokenizer_class"] == "BertTokenizer"
  assert cfg["model_max_length"] == 512
  auto = AutoTokenizer.from_pretrained(out)
  bert = BertTokenizer.from_pretrained(out)
  legacy = BertTokenizerLegacy.from_pretrained(out)
  assert auto.vocab_size == bert.vocab_size == legacy.vocab_size == tok.vocab_size
  for t in TEXTS:
    want = our_ids(tok, t)[0]
    assert auto(t, truncation=True, max_length=64)["input_ids"] == want, t
    assert bert(t, truncation=True, max_length=64)["input_ids"] == want, t
    assert legacy(t, truncation=True, max_length=64)["input_ids"] == want, t
  # Non-truncated pairs agree too (truncated pairs: see test_minilm_random_pair_truncation).
  for a, b in PAIRS:
    assert auto(a, b, return_token_type_ids=True)["token_type_ids"] == our_ids(tok, a, b, 512)[1]
    assert auto(a, b)["input_ids"] == our_ids(tok, a, b, 512)[0]
  again = Tokenizer.from_dir(out)
  assert again.vocab_size == tok.vocab_size and again.lowercase
  for t in TEXTS:
    assert our_ids(again, t) == our_ids(tok, t)


# ------------------------------------------------------------------ tiny vocab
@pytest.mark.parametrize(
  "lowercase,strip_accents",
  [(True, None), (False, None), (False, True), (True, False)],
)
def test_tiny_vocab_matches_slow_tokenizer(tiny_vocab_file, lowercase, strip_accents):
  tok = Tokenizer.from_vocab(tiny_vocab_file, lowercase=lowercase, strip_accents=strip_accents)
  ref = BertTokenizerLegacy(
    vocab_file=tiny_vocab_file, do_lower_case=lowercase, strip_accents=strip_accents
  )
  assert tok.vocab_size == len(TINY_VOCAB) == ref.vocab_size
  assert tok.lowercase is lowercase
  extra = [
    "我爱北京天安门。今天天气很好！",
    "hello world, 你好世界!",
    "Hello World runs running runner",
    "café naïve Café CAFÉ resume",
    "helloworld worlds thes abc xyzzy",
  ]
  assert_matches_reference(tok, ref, texts=TEXTS + extra)


def test_tiny_vocab_specific_tokens(tiny_vocab_file):
  tok = Tokenizer.from_vocab(tiny_vocab_file)
  assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]
  assert tok.tokenize("Hello worlds") == ["hello", "world", "##s"]
  assert tok.tokenize("running") == ["run", "##ning"]
  assert tok.tokenize("猫") == ["[UNK]"]
  cased = Tokenizer.from_vocab(tiny_vocab_file, lowercase=False)
  assert cased.tokenize("Hello café") == ["Hello", "café"]
  no_cjk = Tokenizer.from_vocab(tiny_vocab_file, tokenize_chinese_chars=False)
  ref = BertTokenizerLegacy(vocab_file=tiny_vocab_file, tokenize_chinese_chars=False)
  assert no_cjk.tokenize("我爱 北京") == ref.tokenize("我爱 北京") == ["[UNK]", "[UNK]"]


def test_tiny_vocab_save_roundtrip(tiny_vocab_file, tmp_path):
  tok = Tokenizer.from_vocab(tiny_vocab_file, lowercase=False)
  out = tok.save(tmp_path / "tiny")
  assert (tmp_path / "tiny" / "vocab.txt").read_text(encoding="utf-8").split("\n")[
    :-1
  ] == TINY_VOCAB
  cfg = json.loads((tmp_path / "tiny" / "tokenizer_config.json").read_text())
  assert cfg["do_lower_case"] is False
  auto = AutoTokenizer.from_pretrained(out)
  bert = BertTokenizer.from_pretrained(out)
  texts = TEXTS + ["Hello World 你好世界", "café Café"]
  for t in texts:
    want = our_ids(tok, t)[0]
    assert auto(t, truncation=True, max_length=64)["input_ids"] == want, t
    assert bert(t, truncation=True, max_length=64)["input_ids"] == want, t
  again = Tokenizer.from_dir(out)
  assert again.lowercase is False
  assert our_ids(again, "Hello World") == our_ids(tok, "Hello World")


# ----------------------------------------------------------------- from_dir
def test_from_dir_reads_lowercase_flag(tiny_vocab_file, tmp_path):
  d = tmp_path / "cased"
  d.mkdir()
  (d / "vocab.txt").write_text(open(tiny_vocab_file, encoding="utf-8").read(), encoding="utf-8")
  assert Tokenizer.from_dir(d).lowercase is True  # no config -> default
  (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  tok = Tokenizer.from_dir(d)
  assert tok.lowercase is False
  assert tok.tokenize("Hello") == ["Hello"]


def test_from_dir_tokenizer_json_only(tiny_vocab_file, tmp_path):
  tok = Tokenizer.from_vocab(tiny_vocab_file, lowercase=False)
  tok.save(tmp_path / "full")
  d = tmp_path / "json_only"
  d.mkdir()
  (d / "tokenizer.json").write_text(
    (tmp_path / "full" / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8"
  )
  loaded = Tokenizer.from_dir(d)
  assert loaded.lowercase is False
  assert loaded.vocab_size == tok.vocab_size
  for t in TEXTS:
    assert our_ids(loaded, t) == our_ids(tok, t)


def test_from_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    Tokenizer.from_dir(tmp_path / "nope")
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty_dir.*vocab\.txt.*tokenizer\.json"):
    Tokenizer.from_dir(empty)


def test_vocab_without_specials_rejected(tmp_path):
  p = tmp_path / "vocab.txt"
  p.write_text("a\nb\nc\n", encoding="utf-8")
  with pytest.raises(ValueError, match="special token"):
    Tokenizer.from_vocab(p)
