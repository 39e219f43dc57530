"""TensorFlow SavedModel export: the JAX forward converted with ``jax2tf`` (native serialization,
polymorphic batch and length) behind signatures that take raw strings and tokenize IN THE GRAPH
with ``tensorflow_text``, so a TF Serving / ``tf.saved_model.load`` user needs neither kdjax, JAX
nor a Python tokenizer.

Layout (TF Serving's model base path is ``OUT``; version ``1``)::

  OUT/1/saved_model.pb, OUT/1/variables/...   # load with tf.saved_model.load("OUT/1")
  OUT/vocab.txt                               # the vocabulary the graph embeds (reference copy)

Loading needs ``import tensorflow_text`` first (it registers the tokenizer ops).

Signatures (all outputs float32 unless stated; ``B`` and ``L`` are dynamic):

- ``serving_default(text: string[B])`` and ``serving_pair(text: string[B], text_pair:
  string[B])``: tokenize (``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]``, token types 0/1,
  truncated to ``max_length``, pairs longest-first with BERT's tie rule, padded to the batch's
  longest row) then run the model.  Classifier: ``logits [B, C]``, ``probabilities [B, C]``
  (softmax) and ``label`` (string ``[B]``: the label names, else the index as a string); a
  single-output (regression) head returns ``logits`` only.  Encoder (no head):
  ``last_hidden_state [B, L, H]``, ``pooled_output [B, H]`` and ``attention_mask`` (int32
  ``[B, L]``).  MLM head: ``logits [B, L, V]`` plus ``input_ids`` and ``attention_mask``.
- ``token_ids(input_ids, attention_mask, token_type_ids: int32[B, L])``: the same outputs from
  token ids (``L`` up to the model's position limit).
- ``tokenize(text)`` / ``tokenize_pair(text, text_pair)``: the in-graph tokenization alone
  (int32 ``input_ids``, ``attention_mask``, ``token_type_ids``), equal to kdjax's
  ``Tokenizer.encode(..., padding="longest")``.

The in-graph tokenizer reproduces kdjax's (HF ``BertNormalizer`` + ``BertPreTokenizer`` +
``WordPiece``): control characters dropped and whitespace mapped to spaces, accents stripped
(NFD, remove Mn) and lower-casing as the tokenizer config says, splits on whitespace,
punctuation and CJK characters, special tokens (``[CLS]`` ... written in the text) kept whole,
words over 100 characters -> ``[UNK]``.  Known differences: ICU lower-casing applies the Greek
final-sigma rule (``Σ`` at a word end -> ``ς``; Rust gives ``σ``); unassigned code points (Cn)
are kept where HF drops them.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from kdjax.export.source import INPUT_NAMES, PRECISIONS, ExportSource

VERSION_DIR = "1"
SIGNATURES = ("serving_default", "serving_pair", "token_ids", "tokenize", "tokenize_pair")
HEADS = ("classification", "mlm", "none")

# HF clean_text: drop NUL, U+FFFD and "control" characters (Cc except \t \n \r, Cf, Co) ...
_CONTROL = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Cf}\p{Co}\x{FFFD}]"
# ... and map whitespace (Rust char::is_whitespace, after the drop) to a space.
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
_PUNCT = r"[!-/]|[:-@]|[\[-`]|[{-~]|\p{P}"
_CJK = (
  r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]|"
  r"[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)


def _re_escape(s: str) -> str:
  return "".join("\\" + c if not c.isalnum() else c for c in s)


def tokenizer_spec(tok, where: str = "the tokenizer") -> dict:
  """What the in-graph tokenizer needs from kdjax's ``Tokenizer`` (ValueError if it is not a
  BERT WordPiece tokenizer tensorflow_text can reproduce)."""
  model = tok.backend.model
  if type(model).__name__ != "WordPiece":
    raise ValueError(
      f"{where}: the tokenizer model is {type(model).__name__}, not WordPiece; "
      "the SavedModel's in-graph tokenizer (tensorflow_text) supports BERT WordPiece only"
    )
  vocab = tok.get_vocab()
  specials = sorted(
    {t.content for t in tok.backend.get_added_tokens_decoder().values() if t.special},
    key=len,
    reverse=True,
  )
  strip = tok.strip_accents
  return {
    "vocab": vocab,
    "lowercase": bool(tok.lowercase),
    "strip_accents": bool(tok.lowercase) if strip is None else bool(strip),
    "specials": [s for s in specials if s in vocab],
    "suffix": model.continuing_subword_prefix,
    "max_chars_per_word": int(model.max_input_chars_per_word),
    "unk": model.unk_token,
    "cls_id": tok.cls_id,
    "sep_id": tok.sep_id,
    "pad_id": tok.pad_id,
  }


def write_vocab(vocab: dict[str, int], path: str) -> None:
  """vocab.txt (line number = id; gaps filled with placeholders)."""
  by_id = [None] * (max(vocab.values()) + 1)
  for t, i in vocab.items():
    by_id[i] = t
  with open(path, "w", encoding="utf-8") as f:
    for i, t in enumerate(by_id):
      f.write((t if t is not None else f"[unused_kdjax_{i}]") + "\n")


def build_tokenizer(tok, max_length: int, where: str = "the tokenizer"):
  """A ``tf.Module`` whose ``tokenize(text)`` / ``tokenize_pair(text, text_pair)`` tf.functions
  reproduce ``tok.encode(..., max_seq_length=max_length, padding="longest")`` in the graph."""
  import tensorflow as tf
  import tensorflow_text as tft

  spec = tokenizer_spec(tok, where)
  text_spec = tf.TensorSpec([None], tf.string, name="text")
  pair_spec = tf.TensorSpec([None], tf.string, name="text_pair")
  max_len = int(max_length)
  tokens = sorted(spec["vocab"], key=spec["vocab"].get)
  ids = [spec["vocab"][t] for t in tokens]
  special_re = "|".join(_re_escape(s) for s in spec["specials"])
  split_re = "|".join(p for p in (special_re, r"\s+", _PUNCT, _CJK) if p)
  keep_re = "|".join(p for p in (special_re, _PUNCT, _CJK) if p)

  class InGraphTokenizer(tf.Module):
    def __init__(self):
      super().__init__(name="kdjax_tokenizer")
      self.spec = {k: v for k, v in spec.items() if k != "vocab"}
      self.vocab_table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
          tf.constant(tokens, tf.string), tf.constant(ids, tf.int64)
        ),
        num_oov_buckets=1,
      )
      self.wordpiece = tft.WordpieceTokenizer(
        self.vocab_table,
        suffix_indicator=spec["suffix"],
        max_bytes_per_word=1 << 20,  # the 100-character rule is applied before
        token_out_type=tf.int64,
        unknown_token=spec["unk"],
        split_unknown_characters=False,
      )

    def _normalize(self, t):
      t = tf.strings.regex_replace(t, _CONTROL, "")
      t = tf.strings.regex_replace(t, _WHITESPACE, " ")
      if spec["strip_accents"]:
        t = tft.normalize_utf8(t, "NFD")
        t = tf.strings.regex_replace(t, r"\p{Mn}", "")
      if spec["lowercase"]:
        t = tf.strings.lower(t, encoding="utf-8")
      return t

    def _wordpieces(self, text):
      """[B] strings -> ragged int64 [B, T] wordpiece ids (no special tokens)."""
      text = tf.reshape(text, [-1])
      if special_re:
        pieces = tft.regex_split(text, special_re, special_re)  # [B, P]
        flat = pieces.flat_values
        is_special = tf.strings.regex_full_match(flat, special_re)
        flat = tf.where(is_special, flat, self._normalize(flat))
        pieces = pieces.with_flat_values(flat)
        words = tft.regex_split(pieces, split_re, keep_re).merge_dims(1, 2)  # [B, W]
      else:
        words = tft.regex_split(self._normalize(text), split_re, keep_re)
      flat = words.flat_values
      too_long = tf.strings.length(flat, unit="UTF8_CHAR") > spec["max_chars_per_word"]
      words = words.with_flat_values(tf.where(too_long, spec["unk"], flat))
      return self.wordpiece.tokenize(words).merge_dims(1, 2)

    @staticmethod
    def _keep_first(rt, n):
      pos = tf.ragged.range(rt.row_lengths())
      return tf.ragged.boolean_mask(rt, pos < tf.expand_dims(n, 1))

    def _pack(self, segments):
      ids, types = tft.combine_segments(
        segments, start_of_sequence_id=spec["cls_id"], end_of_segment_id=spec["sep_id"]
      )
      input_ids = tf.cast(ids.to_tensor(default_value=spec["pad_id"]), tf.int32)
      mask = tf.ones_like(ids, tf.int32).to_tensor(default_value=0)
      token_types = tf.cast(types.to_tensor(default_value=0), tf.int32)
      return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}

    def encode(self, text):
      a = self._wordpieces(text)
      a = self._keep_first(a, tf.fill([a.nrows()], tf.cast(max_len - 2, tf.int64)))
      return self._pack([a])

    def encode_pair(self, text, text_pair):
      a, b = self._wordpieces(text), self._wordpieces(text_pair)
      n1, n2 = a.row_lengths(), b.row_lengths()
      # BERT's longest-first rule (kdjax Tokenizer._encode_pairs): shorten the longer segment
      # to the shorter's length, then alternately, the second segment losing the odd token.
      remove = tf.maximum(n1 + n2 - (max_len - 3), 0)
      first = tf.minimum(tf.abs(n1 - n2), remove)
      second = remove - first
      half = second // 2
      cut_a = tf.where(n1 > n2, first + half, half)
      cut_b = tf.where(n1 > n2, second - half, first + second - half)
      return self._pack([self._keep_first(a, n1 - cut_a), self._keep_first(b, n2 - cut_b)])

    @tf.function(autograph=False, input_signature=[text_spec])
    def tokenize(self, text):
      return self.encode(text)

    @tf.function(autograph=False, input_signature=[text_spec, pair_spec])
    def tokenize_pair(self, text, text_pair):
      return self.encode_pair(text, text_pair)

  return InGraphTokenizer(), spec


def _build_module(source: ExportSource, precision: str, platforms):
  import tensorflow as tf
  from jax.experimental import jax2tf

  tokenizer, spec = build_tokenizer(source.tokenizer, source.max_length, source.tokenizer_dir)
  head = source.head
  forward = source.forward_fn(precision)
  leaves, treedef = jax.tree_util.tree_flatten(source.params_in(precision))
  polymorphic = [None] + ["(b, l)"] * len(INPUT_NAMES)
  limit = source.config.max_position_embeddings - source.config.position_offset

  def fwd(leaf_list, input_ids, attention_mask, token_type_ids):
    params = jax.tree_util.tree_unflatten(treedef, leaf_list)
    return forward(params, input_ids, attention_mask, token_type_ids)

  tf_forward = jax2tf.convert(
    fwd,
    polymorphic_shapes=polymorphic,
    polymorphic_constraints=(f"l <= {limit}",),
    native_serialization_platforms=tuple(platforms),
    with_gradient=False,
  )
  labels = source.labels
  num_labels = int(source.config.num_labels)
  if head == "classification" and labels is None:
    labels = tuple(str(i) for i in range(num_labels))
  text_spec = tf.TensorSpec([None], tf.string, name="text")
  pair_spec = tf.TensorSpec([None], tf.string, name="text_pair")
  ids_spec = [tf.TensorSpec([None, None], tf.int32, name=n) for n in INPUT_NAMES]

  class Exported(tf.Module):
    def __init__(self):
      super().__init__(name="kdjax_export")
      self.weights = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]
      self.tokenizer = tokenizer
      self.label_names = tf.constant(list(labels or ["-"]), tf.string)

    @tf.function(autograph=False, input_signature=ids_spec)
    def _model(self, input_ids, attention_mask, token_type_ids):
      # Traced (and converted by jax2tf) once; every signature calls this function.
      return tf_forward(list(self.weights), input_ids, attention_mask, token_type_ids)

    def _run(self, enc, with_inputs=False):
      outs = self._model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
      outs = {k: tf.identity(v, name=k) for k, v in outs.items()}
      if head == "classification" and num_labels > 1:
        outs["probabilities"] = tf.nn.softmax(outs["logits"], axis=-1)
        outs["label"] = tf.gather(self.label_names, tf.argmax(outs["logits"], axis=-1))
      elif head == "mlm" and with_inputs:
        outs["input_ids"] = enc["input_ids"]
      if head != "classification" and with_inputs:
        outs["attention_mask"] = enc["attention_mask"]
      return outs

    @tf.function(autograph=False, input_signature=[text_spec])
    def serving_default(self, text):
      return self._run(self.tokenizer.encode(text), with_inputs=True)

    @tf.function(autograph=False, input_signature=[text_spec, pair_spec])
    def serving_pair(self, text, text_pair):
      return self._run(self.tokenizer.encode_pair(text, text_pair), with_inputs=True)

    @tf.function(autograph=False, input_signature=ids_spec)
    def token_ids(self, input_ids, attention_mask, token_type_ids):
      return self._run(dict(zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids))))

    @tf.function(autograph=False, input_signature=[text_spec])
    def tokenize(self, text):
      return self.tokenizer.encode(text)

    @tf.function(autograph=False, input_signature=[text_spec, pair_spec])
    def tokenize_pair(self, text, text_pair):
      return self.tokenizer.encode_pair(text, text_pair)

  return Exported(), spec


def _check_texts() -> list[str]:
  return [
    "a good film",
    "这部电影很好看",
    "Mixed 中文 and English, with punctuation!",
    "Café déjà vu",
    "",
    "word " * 300,
  ]


def export(
  source: ExportSource,
  out_dir: str,
  precision: str = "fp32",
  platforms=("cpu", "cuda"),
) -> dict:
  """Writes the SavedModel into ``out_dir`` (``out_dir/1``) and returns the manifest fields."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r}: the SavedModel export takes {sorted(PRECISIONS)}")
  if source.head not in HEADS:
    raise ValueError(f"head={source.head!r}: the SavedModel export takes {HEADS}")
  import tensorflow as tf

  module, spec = _build_module(source, precision, platforms)
  version_dir = os.path.join(out_dir, VERSION_DIR)
  signatures = {name: getattr(module, name) for name in SIGNATURES}
  tf.saved_model.save(module, version_dir, signatures=signatures)
  write_vocab(spec["vocab"], os.path.join(out_dir, "vocab.txt"))

  # Measure the reloaded token_ids signature against the JAX fp32 forward.
  loaded = tf.saved_model.load(version_dir)
  enc = source.tokenizer.encode(_check_texts(), max_seq_length=source.max_length, padding="longest")
  got = loaded.signatures["token_ids"](**{k: tf.constant(v) for k, v in enc.items()})
  want = jax.jit(source.forward_fn("fp32"))(source.params, *(enc[k] for k in INPUT_NAMES))
  diff = max(float(np.max(np.abs(np.asarray(got[k]) - np.asarray(want[k])))) for k in want)

  files = sorted(
    os.path.relpath(os.path.join(d, f), out_dir) for d, _, fs in os.walk(out_dir) for f in fs
  )
  outputs = {
    name: {k: v.dtype.name for k, v in loaded.signatures[name].structured_outputs.items()}
    for name in SIGNATURES
  }
  return {
    "max_abs_diff": diff,
    "max_abs_diff_against": f"JAX fp32 forward, token_ids signature, {len(enc['input_ids'])} texts",
    "files": files,
    "saved_model_dir": VERSION_DIR,
    "input_signature": {
      "serving_default": {"text": "string[batch]"},
      "serving_pair": {"text": "string[batch]", "text_pair": "string[batch]"},
      "token_ids": dict.fromkeys(INPUT_NAMES, "int32[batch, length]"),
      "tokenize": {"text": "string[batch]"},
      "tokenize_pair": {"text": "string[batch]", "text_pair": "string[batch]"},
    },
    "signatures": list(SIGNATURES),
    "outputs": outputs,
    "platforms": list(platforms),
    "tokenizer": {
      "lowercase": spec["lowercase"],
      "strip_accents": spec["strip_accents"],
      "max_length": int(source.max_length),
      "padding": "longest in batch",
      "truncation": "longest_first (BERT tie rule) for pairs",
    },
    "load": "import tensorflow_text; tf.saved_model.load(OUT/1)",
  }
