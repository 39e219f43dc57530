"""TinyBERT task distillation (recipe "tinybert") on tiny models and the SST-2 fixture."""

import copy
import json
import os
import re

import helpers_env
import jax
import numpy as np
import pytest

from kdjax import models
from kdjax.data import Tokenizer
from kdjax.recipes import tinybert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(ROOT, "tests", "fixtures", "glue", "SST-2")


def _config(arg):
  return helpers_env.config("tinybert", arg)


def _vocab():
  words = set()
  for split in ("train", "dev"):
    with open(os.path.join(SST2, f"{split}.tsv"), encoding="utf-8") as f:
      next(f)
      for line in f:
        words.update(re.findall(r"\w+|[^\w\s]", line.split("\t")[0].lower()))
  return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("tinybert")
  (root / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
  tok = Tokenizer.from_vocab(str(root / "vocab.txt"))
  cfg = models.BertConfig(
    vocab_size=tok.vocab_size,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  )
  teacher = models.create_model(cfg, "classification", seed=3)
  models.save_pretrained(teacher, str(root / "teacher"), tokenizer=tok)
  encoder_only = models.create_model(cfg, "none", seed=3)
  models.save_pretrained(encoder_only, str(root / "encoder"), tokenizer=tok)
  return {"teacher": str(root / "teacher"), "encoder": str(root / "encoder"), "root": root}


def _tiny(assets, stage="intermediate", **kw):
  c = _config(f"tiny,{stage},task=sst-2")
  c.data_dir = SST2
  c.teacher.path = assets["teacher"]
  c.student.num_hidden_layers = 2
  c.student.hidden_size = 16
  c.student.num_attention_heads = 4
  c.student.intermediate_size = 32
  c.batch_size = 2
  for k, v in kw.items():
    c[k] = v
  return c


def _masked_mse(a, b, mask_bl):
  w = mask_bl[..., None].astype(np.float64)
  return float(((a - b) ** 2 * w).sum() / (w.sum() * a.shape[-1]))


def _expected_stage1(recipe, params, batch):
  """The stage-1 loss recomputed in NumPy from fresh full forwards of both models."""
  ids, mask, types = (
    np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")
  )
  teacher = models.from_pretrained(recipe.config.teacher.path, head="none")
  t = teacher(ids, mask, types, capture_layers="all")
  student_params = {k: v for k, v in params.items() if k != "proj"}
  s = recipe.student.bind(student_params)(ids, mask, types, capture_layers="all")

  def proj(name, x):
    x = np.asarray(x, np.float64)
    if "proj" not in params:
      return x
    p = params["proj"] if "kernel" in params["proj"] else params["proj"][name]
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)

  f64 = lambda x: np.asarray(x, np.float64)
  emb = _masked_mse(proj("embeddings", s.embedding_output), f64(t.embedding_output), mask)
  hid = att = 0.0
  pair = (mask[:, None, :, None] * mask[:, None, None, :]).astype(bool)
  for i, j in enumerate(recipe.layer_map):
    hid += _masked_mse(proj(str(i), s.layers[i].hidden), f64(t.layers[j].hidden), mask)
    ss, ts = f64(s.layers[i].scores), f64(t.layers[j].scores)
    pairs = np.broadcast_to(pair, ss.shape)
    att += float(((ss - ts) ** 2)[pairs].mean())
  return emb, hid, att


@pytest.mark.parametrize(
  "layer_map,projection,width",
  [
    ((), "shared", 16),
    ((0, 2), "shared", 16),
    ((), "per_layer", 16),
    ((), "none", 32),
    ((), "shared", 32),
  ],
)
def test_stage1_loss_matches_numpy(assets, tmp_path, layer_map, projection, width):
  c = _tiny(assets, layer_map=layer_map, max_seq_length=24, projection=projection)
  c.student.hidden_size = width
  recipe = tinybert.build(c, str(tmp_path))
  assert recipe.layer_map == (layer_map or (1, 3))  # uniform: (i+1)*2 - 1
  assert recipe.teacher_layers[-1] == max(recipe.layer_map)
  params = recipe.init_params(jax.random.key(0))
  if projection == "shared":  # the original's fit_dense: also at equal widths
    assert params["proj"]["kernel"].shape == (width, 32)
  elif projection == "per_layer":
    assert set(params["proj"]) == {"embeddings", "0", "1"}
    assert params["proj"]["1"]["kernel"].shape == (width, 32)
  else:
    assert "proj" not in params
  batch = next(recipe.train_data(0, 1))
  assert batch["attention_mask"].sum(1).min() < 24  # padding is present
  loss, m = jax.jit(recipe.loss_fn)(params, recipe.init_frozen(), batch, None)
  emb, hid, att = _expected_stage1(recipe, params, batch)
  np.testing.assert_allclose(float(m["embedding_mse"]), emb, rtol=1e-4)
  np.testing.assert_allclose(float(m["hidden_mse"]), hid, rtol=1e-4)
  np.testing.assert_allclose(float(m["attention_mse"]), att, rtol=1e-4)
  np.testing.assert_allclose(float(loss), emb + hid + att, rtol=1e-4)


def test_layer_map_and_head_errors(assets, tmp_path):
  with pytest.raises(ValueError, match="0..3"):
    tinybert.build(_tiny(assets, layer_map=(0, 4)), str(tmp_path))
  with pytest.raises(ValueError, match="one teacher layer per student layer"):
    tinybert.build(_tiny(assets, layer_map=(1, 2, 3)), str(tmp_path))
  c = _tiny(assets)
  c.student.num_hidden_layers = 3  # 4 teacher layers: no uniform map
  with pytest.raises(ValueError, match="layer_map"):
    tinybert.build(c, str(tmp_path))
  c = _tiny(assets)
  c.student.num_attention_heads = 2
  with pytest.raises(ValueError, match="head counts"):
    tinybert.build(c, str(tmp_path))
  with pytest.raises(ValueError, match="'projection'='none' needs equal widths"):
    tinybert.build(_tiny(assets, projection="none"), str(tmp_path))
  with pytest.raises(ValueError, match="'projection'='diagonal' is not one of"):
    tinybert.build(_tiny(assets, projection="diagonal"), str(tmp_path))
  c = _tiny(assets)
  c.student.path = assets["encoder"]  # the weights fix the architecture
  with pytest.raises(ValueError, match="student.num_hidden_layers"):
    tinybert.build(c, str(tmp_path))
  # The ':arg' form of a map (strings) is accepted.
  c = _config("tiny,task=sst-2,layer_map=0;3")
  assert tuple(c.layer_map) == ("0", "3")
  assert tinybert.resolve_layer_map(c.layer_map, 2, 4) == (0, 3)
  # Stage 2 needs a teacher with a trained classifier.
  with pytest.raises(ValueError, match="classification head"):
    tinybert.build(_tiny(assets, "prediction", teacher=_teacher(assets["encoder"])), str(tmp_path))


def _teacher(path):
  import ml_collections

  return ml_collections.ConfigDict(dict(path=path, dtype="float32"))


def test_seed_table_defaults():
  from kdjax.recipes.task_setup import resolve_task

  c = _config("task=sst-2")
  resolve_task(c, "tinybert_intermediate")
  assert (c.max_seq_length, c.num_train_epochs, c.learning_rate) == (64, 20.0, 5e-5)
  c = _config("prediction,task=mnli")
  resolve_task(c, "tinybert_prediction")
  assert (c.max_seq_length, c.num_train_epochs, c.learning_rate) == (128, 3.0, 3e-5)
  assert (c.batch_size, c.temperature, c.hard_label_weight) == (32, 1.0, 0.0)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_two_stages_end_to_end(assets, tmp_path):
  from safetensors import safe_open

  from kdjax.train import run

  # Stage 1 on the SST-2 fixture (5 examples, batch 2 -> 2 steps per epoch).
  w1 = str(tmp_path / "inter")
  state = run(_tiny(assets, num_train_epochs=6.0), w1)
  assert set(state["params"]) == {"bert", "classifier", "proj"}
  assert state["params"]["proj"]["kernel"].shape == (16, 32)
  rows = [r for r in _metrics(w1) if "loss" in r]
  assert rows[-1]["step"] == 12
  assert {"embedding_mse", "hidden_mse", "attention_mse"} <= set(rows[0])
  assert rows[-1]["loss"] < rows[0]["loss"]
  export1 = os.path.join(w1, "export")
  with safe_open(os.path.join(export1, "model.safetensors"), "np") as f:
    keys = set(f.keys())
  assert not any("proj" in k for k in keys)
  fresh = models.to_hf_state_dict(
    models.create_model(models.load_config(export1)[0], "classification")
  )
  assert keys == set(fresh)
  with open(os.path.join(export1, "config.json")) as f:
    cfg = json.load(f)
  assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (16, 2)
  assert cfg["architectures"] == ["BertForSequenceClassification"]

  # Stage 2 starts from stage 1's export, evaluates on dev, keeps the best, exports.
  c2 = _tiny(assets, "prediction", num_train_epochs=2.0, hard_label_weight=0.5, temperature=2.0)
  for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
    c2.student[k] = None
  c2.student.path = export1
  c2.student.hidden_dropout_prob = 0.0  # a dropout override is allowed with a path
  (tmp_path / "probe").mkdir()
  recipe = tinybert.build(copy.deepcopy(c2), str(tmp_path / "probe"))
  assert recipe.student.config.hidden_dropout_prob == 0.0
  init = recipe.init_params(jax.random.key(0))
  loaded = models.params_of(models.from_pretrained(export1, head="classification"))
  np.testing.assert_array_equal(
    np.asarray(init["bert"]["layer"]["1"]["query"]["kernel"]),
    np.asarray(loaded["bert"]["layer"]["1"]["query"]["kernel"]),
  )
  w2 = str(tmp_path / "pred")
  state2 = run(c2, w2)
  assert "proj" not in state2["params"]
  rows = _metrics(w2)
  evals = [r for r in rows if "eval/score" in r]
  assert [r["step"] for r in evals] == [2, 4], rows
  assert all(0.0 <= r["eval/score"] <= 1.0 for r in evals)
  train_rows = [r for r in rows if "loss" in r]
  assert {"soft_ce", "hard_loss", "teacher_agreement"} <= set(train_rows[0])
  assert os.listdir(os.path.join(w2, "best"))
  with open(os.path.join(w2, "config.json")) as f:
    resolved = json.load(f)
  assert resolved["max_steps"] == 4 and resolved["eval_steps"] == 2
  student = models.from_pretrained(os.path.join(w2, "export"))
  assert models.head_of(student) == "classification"
  assert student.config.hidden_size == 16
  # The stage-2 workdir is an ordinary student workdir for the evaluation tooling.
  from kdjax.models import loading

  best = loading.load_model(w2)
  assert models.head_of(best) == "classification"


@pytest.mark.parametrize("mode", ["xla", "onednn"])
def test_projection_runs_in_the_students_compute_dtype(mode):
  """float32 students project in float32; bfloat16 students multiply in bfloat16 with a float32
  result (the oneDNN kernel on CPU where built, XLA's dot otherwise), the bias added in f32."""
  import jax.numpy as jnp

  from kdjax.kernels import cpu_matmul

  if mode == "onednn" and not (cpu_matmul.available() and cpu_matmul.cpu_flags() & {"avx512f"}):
    pytest.skip("the oneDNN kernel is not built or this CPU has no bf16 matmul")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6)).astype(np.float32)
  proj = {"kernel": rng.standard_normal((6, 4)).astype(np.float32), "bias": np.ones(4, np.float32)}
  want = np.einsum("blh,hk->blk", x.astype(np.float64), proj["kernel"]) + 1.0
  got = tinybert.project(proj, "0", jnp.asarray(x))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  cpu_matmul.set_mode(mode)
  try:
    # float32 under jit, value and gradients (oneDNN's dense where enabled, XLA's dot otherwise)
    g = rng.standard_normal((2, 5, 4)).astype(np.float32)

    def f32_loss(a, pr):
      return jnp.sum(tinybert.project(pr, "0", a) * g)

    jp = jax.tree.map(jnp.asarray, proj)
    vg = jax.value_and_grad(f32_loss, argnums=(0, 1))
    text = jax.jit(vg).lower(jnp.asarray(x), jp).as_text()
    assert ("kdjax_onednn_dense" in text) == (mode == "onednn")  # the forward
    assert ("kdjax_onednn_matmul" in text) == (mode == "onednn")  # its gradients
    gx, gp = jax.jit(jax.grad(f32_loss, argnums=(0, 1)))(jnp.asarray(x), jp)
    x64, k64, g64 = (a.astype(np.float64) for a in (x, proj["kernel"], g))
    np.testing.assert_allclose(np.asarray(gx), np.einsum("blk,hk->blh", g64, k64), atol=1e-5)
    np.testing.assert_allclose(
      np.asarray(gp["kernel"]), np.einsum("blh,blk->hk", x64, g64), atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(gp["bias"]), g64.sum((0, 1)), atol=1e-5)
    got32 = jax.jit(lambda a: tinybert.project(proj, "0", a))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got32), want, rtol=1e-5, atol=1e-5)
    r = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)
    got16 = jax.jit(lambda a: tinybert.project(proj, "0", a))(jnp.asarray(x, jnp.bfloat16))
    assert got16.dtype == jnp.float32  # not rounded to bf16 after the product
    want16 = np.einsum("blh,hk->blk", r(x), r(proj["kernel"])) + 1.0
    np.testing.assert_allclose(np.asarray(got16, np.float64), want16, rtol=1e-5, atol=1e-5)
  finally:
    cpu_matmul.set_mode(None)
