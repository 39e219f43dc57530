"""Width pruning (kdjax.compress.prune): masks, importance, reorder, extract, attention head
size, HF export of a head-pruned model, ONNX of the narrow model."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models
from kdjax.compress import prune
from kdjax.models import native

VOCAB = 40


def _cfg(**kw):
  base = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=12,
    max_position_embeddings=32,
    num_labels=3,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  base.update(kw)
  return models.BertConfig(**base)


def _model(seed=0, **kw):
  # A larger init scale than BERT's 0.02 so that heads and neurons matter measurably.
  return models.create_model(_cfg(initializer_range=0.3, **kw), "classification", seed=seed)


def _batch(b=3, l=7, seed=1, labels=3):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, (b, l)).astype(np.int32)
  mask = np.ones((b, l), np.int32)
  mask[0, 5:] = 0
  ids[0, 5:] = 0
  types = np.zeros((b, l), np.int32)
  types[:, 4:] = 1
  return {
    "input_ids": ids,
    "attention_mask": mask,
    "token_type_ids": types,
    "labels": rng.integers(0, labels, (b,)).astype(np.int32),
  }


def _logits(model, batch, **kw):
  return np.asarray(
    model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw).logits
  )


# ------------------------------------------------------------------------------- config
def test_attention_head_size_config_and_shapes(tmp_path):
  cfg = _cfg(num_attention_heads=3, attention_head_size=4)  # attention width 12 over hidden 16
  cfg = cfg.replace(id2label=((0, "a"), (1, "b"), (2, "c")))
  assert (cfg.head_dim, cfg.attention_width) == (4, 12)
  assert _cfg().head_dim == 4 and _cfg().attention_width == 16
  m = models.create_model(cfg, "classification")
  p = models.params_of(m)["bert"]["layer"]["0"]
  assert p["query"]["kernel"].shape == (16, 12) and p["value"]["bias"].shape == (12,)
  assert p["attention_output"]["kernel"].shape == (12, 16)
  out = m(_batch()["input_ids"], capture_layers=0)
  assert out.layers[0].q.shape == (3, 7, 12) and out.layers[0].scores.shape == (3, 3, 7, 7)
  # Round trips: HF dict, config.json, kdjax_model.json (the key only when set).
  assert models.BertConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  assert "attention_head_size" not in _cfg().to_hf_dict()
  cfg.to_json_file(str(tmp_path / "config.json"))
  assert models.BertConfig.from_json_file(str(tmp_path / "config.json")) == cfg
  native.save(m, str(tmp_path / "kd"))
  with open(tmp_path / "kd" / native.DESCRIPTION) as f:
    assert json.load(f)["config"]["attention_head_size"] == 4
  back = native.load(str(tmp_path / "kd"))
  assert back.config == cfg
  np.testing.assert_array_equal(_logits(back, _batch()), _logits(m, _batch()))
  # Validation: no divisibility check with an explicit head size; a positive size.
  models.BertConfig(hidden_size=10, num_attention_heads=3, attention_head_size=2)
  with pytest.raises(ValueError, match="not divisible"):
    models.BertConfig(hidden_size=10, num_attention_heads=3)
  with pytest.raises(ValueError, match="attention_head_size must be a positive"):
    _cfg(attention_head_size=0)
  # FLOPs use the attention width; sharding axes are unchanged.
  fl = models.bert.layer_flops_per_token
  assert fl(cfg, 8) < fl(_cfg(), 8)
  assert fl(cfg, 8) == 2.0 * (4 * 16 * 12 + 2 * 16 * 12) + 2.0 * 2 * 8 * 12
  axes = models.param_logical_axes(models.params_of(m))
  assert axes["bert"]["layer"]["0"]["query"]["kernel"] == ("embed", "heads")


# ------------------------------------------------------------------------------ masks
def test_masks_of_ones_are_the_plain_forward_and_zero_removes_exactly():
  m, b = _model(), _batch()
  hm, fm = prune.width_masks(m.config, 1.0)
  np.testing.assert_array_equal(_logits(m, b, head_mask=hm, ffn_mask=fm), _logits(m, b))
  # Zeroing head 1 of layer 0 == zeroing its attention-output rows.
  hm = np.ones((2, 4), np.float32)
  hm[0, 1] = 0
  params = jax.tree.map(np.array, models.params_of(m))
  params["bert"]["layer"]["0"]["attention_output"]["kernel"][4:8] = 0
  ref = models.bind(models.split(m)[0], params)
  np.testing.assert_allclose(_logits(m, b, head_mask=hm), _logits(ref, b), atol=1e-6)
  assert np.abs(_logits(m, b, head_mask=hm) - _logits(m, b)).max() > 1e-4


def test_kept_sizes_and_bad_width():
  cfg = _cfg()  # 4 heads, 12 neurons
  assert prune.kept_sizes(cfg, 0.75) == (3, 9)
  assert prune.kept_sizes(cfg, 0.5) == (2, 6)
  assert prune.kept_sizes(cfg, 1.0) == (4, 12)
  assert prune.kept_sizes(cfg, 0.125) == (1, 2)  # 0.5 heads rounds half up
  with pytest.raises(ValueError, match=r"width 0.1 keeps no attention head.*4 heads"):
    prune.kept_sizes(cfg, 0.1)
  with pytest.raises(ValueError, match=r"width 0.1 keeps no attention head"):
    prune.extract(_model(), 0.1)
  for bad in (0.0, 1.5, -0.5):
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
      prune.kept_sizes(cfg, bad)


# ---------------------------------------------------------------------------- importance
def _numpy_reference_importance(model, batches, eps=1e-3):
  """Central finite differences of each batch's loss along every mask entry (float64 sums)."""
  hm0 = np.ones((2, 4), np.float64)
  fm0 = np.ones((2, 12), np.float64)

  skeleton, params = models.split(model)
  fwd = jax.jit(
    lambda ids, mask, types, hm, fm: (
      models.bind(skeleton, params)(ids, mask, types, head_mask=hm, ffn_mask=fm).logits
    )
  )

  def loss(b, hm, fm):
    z = fwd(
      b["input_ids"],
      b["attention_mask"],
      b["token_type_ids"],
      jnp.asarray(hm, jnp.float32),
      jnp.asarray(fm, jnp.float32),
    )
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(z)), b["labels"]].mean()

  hi, ni = np.zeros_like(hm0), np.zeros_like(fm0)
  for b in batches:
    for arr, acc, which in ((hm0, hi, 0), (fm0, ni, 1)):
      for idx in np.ndindex(arr.shape):
        up, dn = arr.copy(), arr.copy()
        up[idx] += eps
        dn[idx] -= eps
        args_up = (up, fm0) if which == 0 else (hm0, up)
        args_dn = (dn, fm0) if which == 0 else (hm0, dn)
        acc[idx] += abs((loss(b, *args_up) - loss(b, *args_dn)) / (2 * eps))
  return hi, ni


def test_importance_matches_finite_differences():
  m = _model(seed=2)
  batches = [_batch(seed=1), _batch(seed=5)]
  hi, ni = prune.importance(m, batches)
  assert hi.shape == (2, 4) and ni.shape == (2, 12)
  ref_h, ref_n = _numpy_reference_importance(m, batches)
  np.testing.assert_allclose(hi, ref_h, rtol=2e-2, atol=2e-4)
  np.testing.assert_allclose(ni, ref_n, rtol=2e-2, atol=2e-4)
  assert hi.min() > 0  # every head matters somewhat
  # Padding rows (valid=False) do not count.
  b = dict(_batch(seed=1), valid=np.array([True, True, False]))
  one = {k: v[:2] for k, v in _batch(seed=1).items()}
  np.testing.assert_allclose(prune.importance(m, [b])[0], prune.importance(m, [one])[0], rtol=1e-4)


def test_reorder_keeps_the_function_and_sorts_importance():
  m, b = _model(seed=3), _batch()
  hi, ni = prune.importance(m, [b])
  r = prune.reorder(m, hi, ni)
  assert r.config == m.config
  np.testing.assert_allclose(_logits(r, b), _logits(m, b), atol=1e-5)
  hi2, ni2 = prune.importance(r, [b])
  np.testing.assert_allclose(hi2, -np.sort(-hi, axis=1), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(ni2, -np.sort(-ni, axis=1), rtol=1e-3, atol=1e-6)
  # The permutation itself against NumPy for one layer.
  order = np.argsort(-hi[1], kind="stable")
  src = models.params_of(m)["bert"]["layer"]["1"]["query"]["kernel"].reshape(16, 4, 4)
  got = models.params_of(r)["bert"]["layer"]["1"]["query"]["kernel"].reshape(16, 4, 4)
  np.testing.assert_array_equal(got, src[:, order])
  with pytest.raises(ValueError, match="importance shapes"):
    prune.reorder(m, hi[:, :3], ni)


@pytest.mark.parametrize("width", [0.75, 0.5, 0.25])
def test_extract_equals_masked_full_model(width):
  m, b = _model(seed=4), _batch()
  small = prune.extract(m, width)
  heads, neurons = prune.kept_sizes(m.config, width)
  c = small.config
  assert (c.num_attention_heads, c.head_dim, c.intermediate_size) == (heads, 4, neurons)
  assert c.attention_head_size == 4 and c.hidden_size == 16
  hm, fm = prune.width_masks(m.config, width)
  np.testing.assert_allclose(
    _logits(small, b), _logits(m, b, head_mask=hm, ffn_mask=fm), rtol=1e-5, atol=1e-6
  )
  assert models.count_params(models.params_of(small)) < models.count_params(models.params_of(m))


# ----------------------------------------------------------------------------- HF export
def _torch_logits(hf, b):
  import torch

  with torch.no_grad():
    return (
      hf(
        input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(b["attention_mask"], dtype=torch.long),
        token_type_ids=torch.tensor(b["token_type_ids"], dtype=torch.long),
      )
      .logits.float()
      .numpy()
    )


def test_head_pruned_model_loads_in_stock_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  m = _model(seed=5)
  small = prune.extract(prune.reorder(m, *prune.importance(m, [_batch()])), 0.75)
  out = str(tmp_path / "hf")
  models.save_pretrained(small, out)
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  assert "attention_head_size" not in cfg
  assert (cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"]) == (4, 16, 9)
  hf, info = transformers.BertForSequenceClassification.from_pretrained(
    out, output_loading_info=True, attn_implementation="eager"
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  b = _batch()
  np.testing.assert_allclose(_torch_logits(hf.eval(), b), _logits(small, b), atol=1e-5)
  # The padded head is exactly zero; kdjax reads the directory back (padded, same logits).
  q = hf.bert.encoder.layer[0].attention.self.query.weight.detach().numpy()
  assert q.shape == (16, 16) and not q[12:].any()
  back = models.from_pretrained(out)
  np.testing.assert_allclose(_logits(back, b), _logits(small, b), atol=1e-6)


def test_hf_export_impossible_padding_is_a_clear_error(tmp_path):
  # 3 heads of 5 over hidden 16: no head count of size 5 spans 16.
  m = models.create_model(_cfg(num_attention_heads=3, attention_head_size=5), "classification")
  with pytest.raises(ValueError, match="multiple of the head size 5"):
    models.save_pretrained(m, str(tmp_path / "x"))
  # 5 heads of 4 over hidden 16: more heads than fit.
  m = models.create_model(_cfg(num_attention_heads=5, attention_head_size=4), "classification")
  with pytest.raises(ValueError, match="at least 5 heads"):
    models.save_pretrained(m, str(tmp_path / "y"))


def test_extracted_model_exports_to_onnx(tmp_path):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from helpers_classification import VOCAB as WORDS
  from helpers_classification import tiny_config

  from kdjax.data.tokenizer import Tokenizer
  from kdjax.export import onnx as kx_onnx
  from kdjax.export.source import load_source

  d = tmp_path / "kd"
  d.mkdir()
  (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
  cfg = tiny_config(num_attention_heads=4, num_labels=2, initializer_range=0.3)
  m = models.create_model(cfg, "classification", seed=6)
  small = prune.extract(m, 0.5)
  native.save(small, str(d), tokenizer=Tokenizer.from_dir(str(d)))
  src = load_source(str(d))
  assert src.config.attention_head_size == 8 and src.config.num_attention_heads == 2
  out = tmp_path / "onnx"
  out.mkdir()
  extra = kx_onnx.export(src, str(out), "fp32")
  assert extra["max_abs_diff"] <= 1e-5
  (batch,) = kx_onnx.probe_inputs(src, ((3, 9),), seed=2)
  (got,) = kx_onnx.ort_outputs(kx_onnx.session(str(out / "model.onnx")), [batch], src.output_names)
  want = _logits(small, batch)
  np.testing.assert_allclose(np.asarray(got["logits"]), want, atol=1e-5)
  # The hf format of kdjax.export writes the padded form (2 zero heads per layer).
  from kdjax.export import hf as kx_hf

  (tmp_path / "hf").mkdir()
  extra = kx_hf.export(src, str(tmp_path / "hf"), "fp32")
  assert extra["padded_heads"] == 2 and extra["max_abs_diff"] <= 1e-5
