"""BERT WordPiece tokenizer built directly on the HF ``tokenizers`` library.

Why not ``transformers.BertTokenizerFast(vocab_file=...)``?  In transformers 5
``BertTokenizer``/``BertTokenizerFast`` take a ``vocab`` argument and silently
ignore ``vocab_file=``, producing a 5-token vocabulary.  Building the pipeline
ourselves from ``vocab.txt`` avoids that trap and keeps the data pipeline free of
the heavy ``transformers`` import.

The pipeline reproduces the original BERT tokenizer (``BasicTokenizer`` +
``WordpieceTokenizer``; in transformers 5 available as ``BertTokenizerLegacy``):

* normalizer: ``BertNormalizer`` (clean text, pad CJK characters with spaces,
  optional lower-casing and accent stripping; ``strip_accents=None`` follows
  ``lowercase`` exactly as in BERT),
* pre-tokenizer: ``BertPreTokenizer`` (whitespace + punctuation split),
* model: ``WordPiece`` with ``##`` continuation prefix and
  ``max_input_chars_per_word=100``,
* post-processor: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token type
  ids 0 / 1.

Special tokens present in the vocabulary are registered as special (never split,
matched before normalization), as in the reference tokenizer.

Note: the backend ``tokenizers.Tokenizer`` is reconfigured (truncation length)
inside :meth:`Tokenizer.encode`; do not share one :class:`Tokenizer` between
threads that encode concurrently with different ``max_seq_length`` values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.models import WordPiece

__all__ = ["Tokenizer", "load_vocab"]

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
_REQUIRED_SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN)

VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
DEFAULT_MODEL_MAX_LENGTH = 512


def load_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
  """Read a BERT ``vocab.txt`` (one token per line, line number = id).

  Mirrors ``transformers``' ``load_vocab`` exactly (only the trailing ``\\n`` is
  removed; a duplicated token keeps its last id).
  """
  vocab: dict[str, int] = {}
  with open(vocab_file, encoding="utf-8") as f:
    for index, token in enumerate(f.readlines()):
      vocab[token.rstrip("\n")] = index
  if not vocab:
    raise ValueError(f"vocabulary file {os.fspath(vocab_file)!r} is empty")
  return vocab


def _build_backend(
  vocab: dict[str, int],
  lowercase: bool,
  strip_accents: bool | None,
  tokenize_chinese_chars: bool,
) -> _HFTokenizer:
  missing = [t for t in _REQUIRED_SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f"vocabulary lacks required special token(s) {missing}")
  tk = _HFTokenizer(WordPiece(vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=100))
  tk.normalizer = normalizers.BertNormalizer(
    clean_text=True,
    handle_chinese_chars=tokenize_chinese_chars,
    strip_accents=strip_accents,
    lowercase=lowercase,
  )
  tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tk.decoder = decoders.WordPiece(prefix="##")
  tk.add_special_tokens(
    [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t in vocab]
  )
  tk.post_processor = processors.TemplateProcessing(
    single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
    pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
    special_tokens=[(CLS_TOKEN, vocab[CLS_TOKEN]), (SEP_TOKEN, vocab[SEP_TOKEN])],
  )
  return tk


class Tokenizer:
  """BERT WordPiece tokenizer producing numpy batches for kdjax models.

  Construct with :meth:`from_vocab` (a ``vocab.txt``) or :meth:`from_dir`
  (a HF model / tokenizer directory).  :meth:`encode` returns int32
  ``input_ids`` / ``attention_mask`` / ``token_type_ids`` arrays of shape
  ``[N, L]``.  :meth:`save` writes a directory loadable by
  ``transformers.AutoTokenizer.from_pretrained``.
  """

  def __init__(
    self,
    backend: _HFTokenizer,
    *,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
  ):
    self._tk = backend
    self._tk.no_padding()
    self._tk.no_truncation()
    self._truncation_len: int | None = None
    self._lowercase = bool(lowercase)
    self._strip_accents = strip_accents
    self._tokenize_chinese_chars = bool(tokenize_chinese_chars)
    self.model_max_length = int(model_max_length)
    ids = {t: self._tk.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t in _REQUIRED_SPECIAL_TOKENS if ids[t] is None]
    if missing:
      raise ValueError(f"tokenizer vocabulary lacks required special token(s) {missing}")
    self._special_ids = ids

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_vocab(
    cls,
    vocab_file: str | os.PathLike,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
  ) -> Tokenizer:
    """Build from a BERT ``vocab.txt``.

    ``strip_accents=None`` means "strip iff lowercase" (original BERT rule).
    """
    vocab = load_vocab(vocab_file)
    backend = _build_backend(vocab, lowercase, strip_accents, tokenize_chinese_chars)
    return cls(
      backend,
      lowercase=lowercase,
      strip_accents=strip_accents,
      tokenize_chinese_chars=tokenize_chinese_chars,
      model_max_length=model_max_length,
    )

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
    """Load from a model/tokenizer directory.

    Prefers ``vocab.txt`` (options ``do_lower_case`` [default True],
    ``strip_accents``, ``tokenize_chinese_chars``, ``model_max_length`` from
    ``tokenizer_config.json`` if present); otherwise loads ``tokenizer.json``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    config: dict = {}
    config_path = os.path.join(path, TOKENIZER_CONFIG_FILE)
    if os.path.isfile(config_path):
      with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    max_len = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
    if not isinstance(max_len, int) or max_len <= 0 or max_len > 10**9:
      max_len = DEFAULT_MODEL_MAX_LENGTH  # HF uses a huge sentinel for "unset"
    vocab_path = os.path.join(path, VOCAB_FILE)
    if os.path.isfile(vocab_path):
      return cls.from_vocab(
        vocab_path,
        lowercase=bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents", None),
        tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        model_max_length=max_len,
      )
    json_path = os.path.join(path, TOKENIZER_FILE)
    if os.path.isfile(json_path):
      backend = _HFTokenizer.from_file(json_path)
      norm = backend.normalizer
      lowercase = getattr(norm, "lowercase", config.get("do_lower_case", True))
      strip = getattr(norm, "strip_accents", config.get("strip_accents", None))
      chinese = getattr(norm, "handle_chinese_chars", config.get("tokenize_chinese_chars", True))
      return cls(
        backend,
        lowercase=lowercase,
        strip_accents=strip,
        tokenize_chinese_chars=chinese,
        model_max_length=max_len,
      )
    raise FileNotFoundError(
      f"no tokenizer found in directory {path!r}: looked for {VOCAB_FILE!r} "
      f"(with optional {TOKENIZER_CONFIG_FILE!r}) and {TOKENIZER_FILE!r}"
    )

  # --------------------------------------------------------------- properties
  @property
  def backend(self) -> _HFTokenizer:
    """The underlying ``tokenizers.Tokenizer`` (do not change its truncation/padding)."""
    return self._tk

  @property
  def vocab_size(self) -> int:
    return self._tk.get_vocab_size(with_added_tokens=True)

  @property
  def lowercase(self) -> bool:
    return self._lowercase

  @property
  def strip_accents(self) -> bool | None:
    return self._strip_accents

  @property
  def tokenize_chinese_chars(self) -> bool:
    return self._tokenize_chinese_chars

  @property
  def pad_id(self) -> int:
    return self._special_ids[PAD_TOKEN]

  @property
  def unk_id(self) -> int:
    return self._special_ids[UNK_TOKEN]

  @property
  def cls_id(self) -> int:
    return self._special_ids[CLS_TOKEN]

  @property
  def sep_id(self) -> int:
    return self._special_ids[SEP_TOKEN]

  @property
  def mask_id(self) -> int | None:
    """Id of ``[MASK]``, or ``None`` if the vocabulary has no such token."""
    return self._special_ids[MASK_TOKEN]

  def get_vocab(self) -> dict[str, int]:
    return self._tk.get_vocab(with_added_tokens=True)

  def __len__(self) -> int:
    return self.vocab_size

  def __repr__(self) -> str:
    return (
      f"Tokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
      f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars})"
    )

  # ------------------------------------------------------------- tokenization
  def tokenize(self, text: str) -> list[str]:
    """WordPiece tokens of ``text`` without special tokens."""
    return self._encode_raw([text], None, add_special_tokens=False)[0].tokens

  def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
    if isinstance(tokens, str):
      i = self._tk.token_to_id(tokens)
      return self.unk_id if i is None else i
    return [self.convert_tokens_to_ids(t) for t in tokens]

  def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
    if isinstance(ids, (int, np.integer)):
      tok = self._tk.id_to_token(int(ids))
      if tok is None:
        raise IndexError(f"token id {int(ids)} out of range [0, {self.vocab_size})")
      return tok
    return [self.convert_ids_to_tokens(i) for i in np.asarray(ids).reshape(-1).tolist()]

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
    """Ids back to text (WordPiece ``##`` pieces merged); ``[PAD]`` etc. dropped by default."""
    ids = np.asarray(ids).reshape(-1).tolist()
    return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

  def _encode_raw(self, texts, max_len, add_special_tokens=True):
    if max_len != self._truncation_len:
      if max_len is None:
        self._tk.no_truncation()
      else:
        self._tk.enable_truncation(max_len, strategy="longest_first")
      self._truncation_len = max_len
    return self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)

  def _encode_pairs(self, texts, text_pairs, max_seq_length):
    """Pairs with the original BERT / slow-tokenizer longest-first rule.

    The Rust ``longest_first`` strategy of ``tokenizers`` splits an odd
    remainder the other way round from BERT's ``_truncate_seq_pair`` (and
    transformers' Python tokenizers), so the pair truncation is done here:
    first shorten the longer sequence down to the length of the shorter,
    then remove the rest alternately, the second sequence losing the extra
    token when the count is odd.
    """
    enc_a = self._encode_raw(texts, None, add_special_tokens=False)
    enc_b = self._encode_raw(text_pairs, None, add_special_tokens=False)
    budget = max_seq_length - 3
    cls, sep = [self.cls_id], [self.sep_id]
    rows = []
    for ea, eb in zip(enc_a, enc_b):
      a, b = ea.ids, eb.ids
      n1, n2 = len(a), len(b)
      remove = n1 + n2 - budget
      if remove > 0:
        first = min(abs(n1 - n2), remove)
        second = remove - first
        if n1 > n2:
          cut_a, cut_b = first + second // 2, second - second // 2
        else:
          cut_a, cut_b = second // 2, first + second - second // 2
        a, b = a[: n1 - cut_a], b[: n2 - cut_b]
      ids = cls + a + sep + b + sep
      types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
      rows.append((ids, types))
    return rows

  def encode(
    self,
    texts: str | Sequence[str],
    text_pairs: str | Sequence[str] | None = None,
    max_seq_length: int = 128,
    padding: str = "max_length",
  ) -> dict[str, np.ndarray]:
    """Tokenize a batch into ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``.

    Sequences longer than ``max_seq_length`` (special tokens included) are
    truncated, pairs longest-first with the original BERT tie rule (see
    :meth:`_encode_pairs`).  ``padding="max_length"`` pads to
    ``max_seq_length``; ``padding="longest"`` to the longest sequence in the
    batch.  Returns int32 arrays ``input_ids``, ``attention_mask`` (1 = real
    token) and ``token_type_ids`` (0 = first segment, 1 = second), each
    ``[N, L]``.
    """
    if isinstance(texts, str):
      texts = [texts]
    if isinstance(text_pairs, str):
      text_pairs = [text_pairs]
    texts = list(texts)
    if text_pairs is not None:
      text_pairs = list(text_pairs)
      if len(text_pairs) != len(texts):
        raise ValueError(
          f"texts and text_pairs differ in length: {len(texts)} vs {len(text_pairs)}"
        )
    for t in texts + (text_pairs or []):
      if not isinstance(t, str):
        raise TypeError(f"expected str inputs, got {type(t).__name__}")
    n_special = 2 if text_pairs is None else 3
    if int(max_seq_length) < n_special:
      raise ValueError(
        f"max_seq_length={max_seq_length} leaves no room for the {n_special} special tokens"
      )
    max_seq_length = int(max_seq_length)
    if padding not in ("max_length", "longest"):
      raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")

    if text_pairs is None:
      encs = self._encode_raw(texts, max_seq_length)
      rows = [(e.ids, e.type_ids) for e in encs]
    else:
      rows = self._encode_pairs(texts, text_pairs, max_seq_length)
    n = len(rows)
    if padding == "max_length":
      length = max_seq_length
    else:
      length = max((len(ids) for ids, _ in rows), default=0)
    input_ids = np.full((n, length), self.pad_id, dtype=np.int32)
    attention_mask = np.zeros((n, length), dtype=np.int32)
    token_type_ids = np.zeros((n, length), dtype=np.int32)
    for i, (ids, types) in enumerate(rows):
      k = len(ids)
      input_ids[i, :k] = ids
      attention_mask[i, :k] = 1
      token_type_ids[i, :k] = types
    return {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "token_type_ids": token_type_ids,
    }

  __call__ = encode

  # ------------------------------------------------------------------- saving
  def _clean_backend(self) -> _HFTokenizer:
    tk = _HFTokenizer.from_str(self._tk.to_str())
    tk.no_truncation()
    tk.no_padding()
    return tk

  def save(self, directory: str | os.PathLike) -> str:
    """Write ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` so that ``transformers.AutoTokenizer`` /
    ``BertTokenizer.from_pretrained(directory)`` and :meth:`from_dir` load it."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocab = self.get_vocab()
    by_id: list[str | None] = [None] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
      by_id[i] = tok
    # A gap can only arise from duplicate lines in the source vocab.txt;
    # fill it with unused placeholders so that line number == id still holds.
    lines = [t if t is not None else f"[unused_kdjax_{i}]" for i, t in enumerate(by_id)]
    with open(os.path.join(directory, VOCAB_FILE), "w", encoding="utf-8") as f:
      for tok in lines:
        f.write(tok + "\n")
    self._clean_backend().save(os.path.join(directory, TOKENIZER_FILE))
    special_map = {
      "unk_token": UNK_TOKEN,
      "sep_token": SEP_TOKEN,
      "pad_token": PAD_TOKEN,
      "cls_token": CLS_TOKEN,
    }
    if self.mask_id is not None:
      special_map["mask_token"] = MASK_TOKEN
    config = {
      "tokenizer_class": "BertTokenizer",
      "do_lower_case": self.lowercase,
      "strip_accents": self.strip_accents,
      "tokenize_chinese_chars": self.tokenize_chinese_chars,
      "do_basic_tokenize": True,
      "never_split": None,
      "model_max_length": self.model_max_length,
      "clean_up_tokenization_spaces": True,
      **special_map,
    }
    with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
      f.write("\n")
    with open(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE), "w", encoding="utf-8") as f:
      json.dump(special_map, f, indent=2, ensure_ascii=False)
      f.write("\n")
    return directory


def tokenizer_difference(a: Tokenizer, b: Tokenizer) -> str | None:
  """The first difference between two tokenizers that would make the same text give other
  ids (vocabulary size or contents, lower-casing, accent stripping, Chinese-character
  splitting, special tokens), as a short phrase; None when they tokenize alike."""
  for what, x, y in (
    ("lower-casing", a.lowercase, b.lowercase),
    ("accent stripping", a.strip_accents, b.strip_accents),
    ("Chinese-character splitting", a.tokenize_chinese_chars, b.tokenize_chinese_chars),
  ):
    if x != y:
      return f"{what} differs ({x} vs {y})"
  for token in SPECIAL_TOKENS:
    ia, ib = a.get_vocab().get(token), b.get_vocab().get(token)
    if ia != ib:
      return f"special token {token} has id {ia} vs {ib}"
  va, vb = a.get_vocab(), b.get_vocab()
  if len(va) != len(vb):
    return f"vocabulary size differs ({len(va)} vs {len(vb)} tokens)"
  ta = sorted(va, key=va.get)
  tb = sorted(vb, key=vb.get)
  for i, (x, y) in enumerate(zip(ta, tb)):
    if x != y:
      return f"token id {i} is {x!r} vs {y!r}"
  return None


def check_same_tokenizer(named: dict[str, str | None]) -> None:
  """Raises ValueError when the tokenizer directories in ``named`` (label -> directory; None
  entries are skipped) would tokenize differently, naming both and the first difference."""
  items = [(k, v) for k, v in named.items() if v]
  if len(items) < 2:
    return
  (ref_name, ref_dir), ref = items[0], Tokenizer.from_dir(items[0][1])
  for name, d in items[1:]:
    if os.path.abspath(d) == os.path.abspath(ref_dir):
      continue
    diff = tokenizer_difference(ref, Tokenizer.from_dir(d))
    if diff:
      raise ValueError(
        f"the {ref_name} and {name} tokenizers differ: {diff} ({_vocab_file(ref_dir)} vs "
        f"{_vocab_file(d)}); teacher and student must read the same token ids"
      )


def _vocab_file(d: str) -> str:
  for f in (VOCAB_FILE, TOKENIZER_FILE):
    if os.path.isfile(os.path.join(d, f)):
      return os.path.join(d, f)
  return d
