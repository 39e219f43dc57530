"""SavedModel export (jax2tf + tensorflow_text): in-graph tokenizer parity with kdjax's
Tokenizer, numerics against the JAX forward, reload without JAX."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_text")

import tensorflow as tf

from kdjax import models
from kdjax.data.tokenizer import Tokenizer
from kdjax.export import savedmodel
from kdjax.export.source import INPUT_NAMES, load_source

MAX_LEN = 32
VOCAB = (
  (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the film is good bad movie hello world cafe deja vu "
    "un ##aff ##able ##s ##ing play word . , ! ? ' - ( ) Café déjà é à HELLO The"
  ).split()
  + list("abcdefghijklmnopqrstuvwxyz")
  + list("这部电影很好看不中文的")
)
LABELS = ("neg", "neu", "pos")

TEXTS = [
  "The film is good.",
  "这部电影很好看",
  "good 电影 film! 中文的",
  "Café déjà vu",
  "",
  "HELLO World",
  "unaffable playing films",
  "a [SEP] b [CLS]",
  "x" * 150,
  "good " * 60,
  "tab\tand\nnew\u3000line\u00a0nb",
  "ctrl\x01char\u200bzero width",
  "(deja-vu)?!",
  "很" * 50,
]


def _model_dir(directory, head="classification", lowercase=True, strip_accents=None):
  os.makedirs(directory, exist_ok=True)
  vocab = os.path.join(directory, "vocab_src.txt")
  with open(vocab, "w", encoding="utf-8") as f:
    f.write("\n".join(VOCAB) + "\n")
  tok = Tokenizer.from_vocab(vocab, lowercase=lowercase, strip_accents=strip_accents)
  kw = {}
  if head == "classification":
    kw = dict(num_labels=3, id2label=tuple(enumerate(LABELS)))
  cfg = models.BertConfig(
    vocab_size=len(VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=MAX_LEN,
    **kw,
  )
  model = models.create_model(cfg, head, seed=1, add_pooling_layer=head != "none")
  models.save_pretrained(model, directory, tokenizer=tok)
  os.remove(vocab)
  return directory


def _pairs():
  lens = (0, 1, 5, 14, 15, 16, 30)
  return [("good " * n1).strip() for n1 in lens for _ in lens], [
    ("很" * n2) for _ in lens for n2 in lens
  ]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  root = tmp_path_factory.mktemp("sm_cls")
  src = load_source(_model_dir(str(root / "model")))
  out = str(root / "out")
  os.makedirs(out)
  manifest = savedmodel.export(src, out, "fp32", platforms=("cpu",))
  return src, out, manifest, tf.saved_model.load(os.path.join(out, "1"))


def _encode(tok, texts, pairs=None):
  return tok.encode(texts, pairs, max_seq_length=MAX_LEN, padding="longest")


def _assert_same_ids(got, want):
  for k in INPUT_NAMES:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)


def _check_parity(tokenize, tokenize_pair, tok):
  for text in TEXTS:  # one by one: each row its own padding
    _assert_same_ids(tokenize(text=tf.constant([text])), _encode(tok, [text]))
  _assert_same_ids(tokenize(text=tf.constant(TEXTS)), _encode(tok, TEXTS))
  a, b = _pairs()
  _assert_same_ids(tokenize_pair(text=tf.constant(a), text_pair=tf.constant(b)), _encode(tok, a, b))
  _assert_same_ids(
    tokenize_pair(text=tf.constant(TEXTS), text_pair=tf.constant(TEXTS[::-1])),
    _encode(tok, TEXTS, TEXTS[::-1]),
  )


def test_saved_tokenizer_matches_kdjax(classifier):
  src, _, _, loaded = classifier
  sig = loaded.signatures
  _check_parity(sig["tokenize"], sig["tokenize_pair"], src.tokenizer)


@pytest.mark.parametrize("lowercase,strip_accents", [(False, None), (False, True), (True, False)])
def test_in_graph_tokenizer_options_match_kdjax(tmp_path, lowercase, strip_accents):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  tok = Tokenizer.from_vocab(str(vocab), lowercase=lowercase, strip_accents=strip_accents)
  module, spec = savedmodel.build_tokenizer(tok, MAX_LEN)
  assert spec["lowercase"] == lowercase
  _check_parity(module.tokenize, module.tokenize_pair, tok)


def test_manifest_and_layout(classifier):
  _, out, manifest, _ = classifier
  assert manifest["max_abs_diff"] <= 1e-5
  assert os.path.isfile(os.path.join(out, "1", "saved_model.pb"))
  assert "1/saved_model.pb" in manifest["files"] and "vocab.txt" in manifest["files"]
  assert set(manifest["signatures"]) == set(savedmodel.SIGNATURES)
  assert json.loads(json.dumps(manifest)) == manifest
  with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
    assert f.read().split("\n")[: len(VOCAB)] == VOCAB


def test_string_signatures_equal_jax_forward(classifier):
  src, _, _, loaded = classifier
  fwd = src.forward_fn("fp32")
  enc = _encode(src.tokenizer, TEXTS)
  want = np.asarray(fwd(src.params, *(enc[k] for k in INPUT_NAMES))["logits"])
  got = loaded.signatures["serving_default"](text=tf.constant(TEXTS))
  np.testing.assert_allclose(got["logits"].numpy(), want, atol=1e-5, rtol=0)
  probs = np.exp(want) / np.exp(want).sum(-1, keepdims=True)
  np.testing.assert_allclose(got["probabilities"].numpy(), probs, atol=1e-6)
  labels = [x.decode() for x in got["label"].numpy()]
  assert labels == [LABELS[i] for i in want.argmax(-1)]

  a, b = _pairs()
  enc = _encode(src.tokenizer, a, b)
  want = np.asarray(fwd(src.params, *(enc[k] for k in INPUT_NAMES))["logits"])
  got = loaded.signatures["serving_pair"](text=tf.constant(a), text_pair=tf.constant(b))
  np.testing.assert_allclose(got["logits"].numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch,length", [(1, 5), (7, 5), (1, MAX_LEN), (7, MAX_LEN)])
def test_token_ids_dynamic_shapes(classifier, batch, length):
  src, _, _, loaded = classifier
  rng = np.random.default_rng(batch * 100 + length)
  ids = rng.integers(5, len(VOCAB), (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, length - 2 :] = 0
  types = np.zeros_like(ids)
  types[:, length // 2 :] = 1
  want = np.asarray(src.forward_fn("fp32")(src.params, ids, mask, types)["logits"])
  got = loaded.signatures["token_ids"](
    input_ids=tf.constant(ids), attention_mask=tf.constant(mask), token_type_ids=tf.constant(types)
  )
  assert got["logits"].shape == (batch, 3)
  np.testing.assert_allclose(got["logits"].numpy(), want, atol=1e-5, rtol=0)


def test_encoder_signatures(tmp_path):
  # The save / reload path is the classifier's; here the unsaved module (same graph).
  src = load_source(_model_dir(str(tmp_path / "model"), "none"))
  module, _ = savedmodel._build_module(src, "fp32", ("cpu",))
  got = module.serving_default(tf.constant(TEXTS[:4]))
  enc = _encode(src.tokenizer, TEXTS[:4])
  want = src.forward_fn("fp32")(src.params, *(enc[k] for k in INPUT_NAMES))
  np.testing.assert_array_equal(got["attention_mask"].numpy(), enc["attention_mask"])
  assert set(got) == {"last_hidden_state", "pooled_output", "attention_mask"}
  for k in ("last_hidden_state", "pooled_output"):
    np.testing.assert_allclose(got[k].numpy(), np.asarray(want[k]), atol=1e-5, rtol=0)


def test_reloads_with_tensorflow_only(classifier):
  _, out, _, loaded = classifier
  # TensorFlow's own tf.lite util imports jax when it is installed; block jax, flax and kdjax
  # to show the artefact runs without them.
  code = (
    "import json, sys\n"
    "for m in ('jax', 'jaxlib', 'flax', 'kdjax'):\n"
    "  sys.modules[m] = None\n"
    "import tensorflow as tf, tensorflow_text  # noqa\n"
    f"m = tf.saved_model.load({os.path.join(out, '1')!r})\n"
    f"r = m.signatures['serving_default'](text=tf.constant({TEXTS[:3]!r}))\n"
    "print(json.dumps({'logits': r['logits'].numpy().tolist(),\n"
    "  'label': [x.decode() for x in r['label'].numpy()],\n"
    "  'jax': [k for k in sys.modules if k.split('.')[0] in ('jax', 'kdjax', 'flax')\n"
    "          and sys.modules[k] is not None]}))\n"
  )
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  res = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
  )
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.loads(res.stdout.strip().splitlines()[-1])
  assert got["jax"] == []
  want = loaded.signatures["serving_default"](text=tf.constant(TEXTS[:3]))
  np.testing.assert_allclose(np.array(got["logits"]), want["logits"].numpy(), atol=1e-6)
  assert got["label"] == [x.decode() for x in want["label"].numpy()]


def test_rejects_bad_precision(classifier, tmp_path):
  src = classifier[0]
  with pytest.raises(ValueError, match="precision"):
    savedmodel.export(src, str(tmp_path), "int8")


@pytest.mark.parametrize("precision,bound", [("bf16", 3e-2)])
def test_reduced_precision_within_its_bound(classifier, tmp_path, precision, bound):
  """A bf16 SavedModel (weights and matmuls in bfloat16, LayerNorm and softmax statistics in
  float32, float32 outputs): logits within ``bound`` of the JAX fp32 forward (the manifest's
  figure and a fresh check on the raw-string signature), same labels on the check texts."""
  src, _, _, fp32 = classifier
  out = str(tmp_path / precision)
  os.makedirs(out)
  m = savedmodel.export(src, out, precision, platforms=("cpu",))
  assert 0 < m["max_abs_diff"] <= bound
  loaded = tf.saved_model.load(os.path.join(out, "1"))
  texts = tf.constant(TEXTS[:6])
  got = loaded.signatures["serving_default"](text=texts)
  want = fp32.signatures["serving_default"](text=texts)
  assert got["logits"].dtype == tf.float32
  np.testing.assert_allclose(got["logits"].numpy(), want["logits"].numpy(), atol=bound)
