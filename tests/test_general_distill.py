"""MiniLMv2 / PP-MiniLM general distillation end to end on tiny models (train.run and CLI)."""

import json
import os
import signal
import subprocess
import sys
import time

import helpers_env
import jax
import numpy as np
import pytest
from helpers_env import ROOT, pythonpath

from kdjax import models
from kdjax.data import Tokenizer
from kdjax.models import native

WORDS = (
  "the a cat dog sat on mat ran fast slow big small red blue green house tree "
  "bird sky sun moon star water fire earth wind play jump run walk talk eat"
).split()


def _config(name, arg):
  return helpers_env.config(name, arg)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("gd")
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [".", ","]
  vocab_file = root / "vocab.txt"
  vocab_file.write_text("\n".join(vocab) + "\n")
  tok = Tokenizer.from_vocab(str(vocab_file))
  cfg = models.BertConfig(
    vocab_size=len(vocab),
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  )
  teacher = models.create_model(cfg, "none", seed=11)
  models.save_pretrained(teacher, str(root / "teacher"), tokenizer=tok)
  corpus = root / "corpus"
  corpus.mkdir()
  rng = np.random.default_rng(0)
  for f in range(3):
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 14))) for _ in range(40)]
    (corpus / f"shard{f}.txt").write_text("\n".join(lines) + "\n")
  return str(root / "teacher"), str(corpus)


def _tiny(assets, **kw):
  c = _config("minilmv2", "tiny")
  c.teacher.path, c.input_dir = assets
  c.student.hidden_size = 16
  c.student.num_attention_heads = 2
  c.student.intermediate_size = 32
  for k, v in kw.items():
    c[k] = v
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_minilmv2_trains_and_exports_hf(assets, tmp_path):
  from kdjax.train import run

  c = _tiny(assets, max_steps=30, logging_steps=5, save_steps=15, warmup_steps=3)
  workdir = str(tmp_path / "run")
  run(c, workdir)
  rows = [r for r in _metrics(workdir) if "loss" in r]
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], rows
  assert {"token_relation", "learning_rate", "examples_per_sec", "tokens_per_sec"} <= set(rows[0])
  # The student comes out as an HF directory that transformers reads.
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  export = os.path.join(workdir, "export")
  hf = transformers.AutoModel.from_pretrained(export, add_pooling_layer=False).eval()
  student = models.from_pretrained(export)
  assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2
  ids = np.array([[2, 5, 6, 7, 3, 0]])
  mask = (ids > 0).astype(np.int64)
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  out = student(ids, attention_mask=mask).last_hidden_state
  assert np.max(np.abs(np.asarray(out) - ref)) < 1e-5
  # Any checkpoint of the workdir converts to HF.
  from kdjax.convert import convert

  convert(workdir, str(tmp_path / "hf15"), step=15)
  assert os.path.exists(tmp_path / "hf15" / "model.safetensors")


def test_ppminilm_terms_logged(assets, tmp_path, monkeypatch):
  from kdjax.train import run

  c = _config("ppminilm", "tiny")
  c.teacher.path, c.input_dir = assets
  c.alpha, c.beta, c.max_steps, c.save_steps = 0.2, 0.3, 4, 2
  c.per_device_batch_size, c.batch_size = 4, 0  # run() resolves the global batch first
  monkeypatch.chdir(tmp_path)
  run(c, "pp")  # a relative workdir (orbax itself wants absolute paths)
  assert (tmp_path / "pp" / "checkpoints" / "4").is_dir()
  with open(tmp_path / "pp" / "config.json") as f:
    assert json.load(f)["batch_size"] == 4 * jax.device_count()
  rows = _metrics(str(tmp_path / "pp"))
  last = [r for r in rows if "loss" in r][-1]
  assert {"token_relation", "head_relation", "sample_relation"} <= set(last)
  expect = (
    0.5 * last["token_relation"] + 0.2 * last["head_relation"] + 0.3 * last["sample_relation"]
  )
  assert last["loss"] == pytest.approx(expect, rel=1e-4)


def test_config_errors(assets, tmp_path):
  from kdjax.recipes.general_distill import GeneralDistill

  with pytest.raises(ValueError, match="teacher_layer_index.*out of range.*3 layers"):
    GeneralDistill(_tiny(assets, teacher_layer_index=3), str(tmp_path))
  with pytest.raises(ValueError, match="num_relation_heads.*3.*hidden size"):
    GeneralDistill(_tiny(assets, num_relation_heads=3), str(tmp_path))
  c = _tiny(assets)
  c.teacher.path = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="teacher.path"):
    GeneralDistill(c, str(tmp_path))
  c = _tiny(assets, input_dir=str(tmp_path / "missing"))
  with pytest.raises((FileNotFoundError, ValueError), match="input_dir"):
    GeneralDistill(c, str(tmp_path)).train_data(0, 1)


def _padded_batch(tok, lengths, seq=12):
  rng = np.random.default_rng(3)
  ids = np.zeros((len(lengths), seq), np.int32)
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(5, tok.vocab_size, size=n)
  mask = (ids > 0).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_relation_reduction_reaches_the_loss(assets, tmp_path):
  from kdjax.losses import minilm_relation_loss
  from kdjax.recipes.general_distill import GeneralDistill

  assert _config("minilmv2", None).relation_reduction == "kdjax"
  assert _config("ppminilm", None).relation_reduction == "kdjax"
  kw = dict(alpha=0.2, beta=0.3)
  mine = GeneralDistill(_tiny(assets, **kw), None)
  ref = GeneralDistill(_tiny(assets, relation_reduction="reference", **kw), None)
  params, frozen = mine.student.params, mine.teacher.params
  rng = jax.random.key(0)
  padded = _padded_batch(mine.tokenizer, [12, 7, 4, 9])
  full = _padded_batch(mine.tokenizer, [12, 12, 12, 12])
  a, _ = mine.loss_fn(params, frozen, padded, rng)
  b, _ = ref.loss_fn(params, frozen, padded, rng)
  assert abs(float(a) - float(b)) > 1e-4 * abs(float(a))  # padding counts in the reference
  a, _ = mine.loss_fn(params, frozen, full, rng)
  b, _ = ref.loss_fn(params, frozen, full, rng)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)  # ... and only padding
  # The recipe's value is minilm_relation_loss(reduction="reference") on the layers' Q/K/V.
  t = mine.teacher.bind(frozen)(
    padded["input_ids"], padded["attention_mask"], padded["token_type_ids"], capture_layers=[2]
  )
  s = mine.student.bind(params)(
    padded["input_ids"],
    padded["attention_mask"],
    padded["token_type_ids"],
    capture_layers=[1],
    deterministic=False,
    dropout_rng=rng,
  )
  qkv = lambda x: (x.q, x.k, x.v)
  expected = minilm_relation_loss(
    qkv(s.layers[1]),
    teacher=qkv(t.layers[2]),
    attention_mask=padded["attention_mask"],
    num_relation_heads=4,
    reduction="reference",
    **kw,
  )
  b, _ = ref.loss_fn(params, frozen, padded, rng)
  np.testing.assert_allclose(float(b), float(expected), rtol=1e-5)
  with pytest.raises(ValueError, match="'relation_reduction'='mean'.*kdjax, reference"):
    GeneralDistill(_tiny(assets, relation_reduction="mean"), None)


def test_relation_chunk_heads_reaches_the_loss(assets, tmp_path, monkeypatch):
  """``relation_chunk_heads`` is passed to the loss (chunked and whole give the same value)."""
  import kdjax.recipes.general_distill as gd

  seen = []
  loss = gd.minilm_relation_loss

  def spy(*a, **kw):
    seen.append(kw["chunk_heads"])
    return loss(*a, **kw)

  monkeypatch.setattr(gd, "minilm_relation_loss", spy)
  values = []
  for chunk in (-1, 0, 2):
    r = gd.GeneralDistill(_tiny(assets, alpha=0.2, beta=0.3, relation_chunk_heads=chunk), None)
    batch = _padded_batch(r.tokenizer, [12, 7, 4, 9])
    v, _ = r.loss_fn(r.student.params, r.teacher.params, batch, jax.random.key(0))
    values.append(float(v))
  assert seen == [None, 0, 2]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)


def test_student_hidden_act_override_reaches_student_and_export(assets, tmp_path):
  from kdjax.recipes.general_distill import GeneralDistill

  c = _tiny(assets)
  c.student.hidden_act = "relu"
  recipe = GeneralDistill(c, None)
  assert recipe.student.config.hidden_act == "relu"
  assert recipe.teacher.config.hidden_act == "gelu"
  recipe.export(recipe.student.params, str(tmp_path / "export"))
  with open(tmp_path / "export" / "config.json") as f:
    assert json.load(f)["hidden_act"] == "relu"
  assert models.from_pretrained(str(tmp_path / "export")).config.hidden_act == "relu"


def test_student_path_and_config_path(assets, tmp_path):
  """The seed's --init_from_student True = student.path (weights); False = config_path."""
  from kdjax.recipes.general_distill import GeneralDistill

  c = _config("minilmv2", "tiny")
  c.teacher.path, c.input_dir = assets
  c.student.config_path, c.student.num_hidden_layers = c.teacher.path, None
  c.student_layer_index = 2
  random_init = GeneralDistill(c, None)
  assert random_init.initial_params() is None
  assert random_init.student.config.num_hidden_layers == 3
  c.student.config_path, c.student.path = "", c.teacher.path
  loaded = GeneralDistill(c, None)
  values = loaded.initial_params()
  assert values is not None
  for x, y in zip(jax.tree.leaves(values), jax.tree.leaves(loaded.teacher.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# PP-MiniLM students as pp-minilm/general_distill/general_distill.py (PaddleNLP) builds them:
# PPMiniLMModel(vocab_size=tokenizer.vocab_size, num_hidden_layers=..., hidden_act="relu",
# hidden_size=..., intermediate_size=..., [num_attention_heads=16 for 4 layers]); run.sh:
# teacher roberta-wwm-ext-large, teacher_layer_index 19, student_layer_index 5, numH 64. The
# 2-layer branch passes no head count (default 12 does not divide 128): kdjax uses 8.
PPMINILM_STUDENTS = {
  6: dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
  4: dict(hidden_size=256, num_attention_heads=16, intermediate_size=1024),
  2: dict(hidden_size=128, num_attention_heads=8, intermediate_size=512),
}


@pytest.mark.parametrize("layers", [6, 4, 2])
def test_ppminilm_student_presets(layers):
  from kdjax.models.loading import ARCH_KEYS

  arg = None if layers == 6 else f"layers={layers}"
  c = _config("ppminilm", arg)
  # roberta-wwm-ext-large (hfl/chinese-roberta-wwm-ext-large config.json: a BERT model).
  teacher = models.BertConfig(
    vocab_size=21128,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
  )
  overrides = {k: c.student[k] for k in ARCH_KEYS if c.student.get(k) is not None}
  student = teacher.replace(**overrides)  # what loading.build_student resolves
  want = dict(num_hidden_layers=layers, hidden_act="relu", **PPMINILM_STUDENTS[layers])
  assert {k: getattr(student, k) for k in want} == want
  assert student.vocab_size == 21128 and student.max_position_embeddings == 512
  assert student.type_vocab_size == 2  # PPMiniLMModel's default = the teacher's
  assert (c.teacher_layer_index, c.student_layer_index) == (19, layers - 1)
  assert c.num_relation_heads == 64
  assert student.hidden_size % c.num_relation_heads == 0
  assert teacher.hidden_size % c.num_relation_heads == 0
  assert (c.alpha, c.beta, c.max_steps, c.learning_rate) == (0.0, 0.0, 400000, 6e-4)


def test_ppminilm_layers_arg_errors():
  with pytest.raises(ValueError, match="layers must be 2, 4 or 6"):
    _config("ppminilm", "layers=3")
  with pytest.raises(ValueError, match="layers= applies to the seed's setting"):
    _config("ppminilm", "tiny,layers=4")


def _cli(args, **popen):
  env = dict(os.environ, PYTHONPATH=pythonpath(), JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, "-m", "kdjax.train", *args],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **popen,
  )


def _cli_args(assets, workdir, *extra):
  teacher, corpus = assets
  return [
    "--config=configs/minilmv2.py:tiny",
    f"--workdir={workdir}",
    f"--config.teacher.path={teacher}",
    f"--config.input_dir={corpus}",
    "--config.async_checkpoint=False",
    *extra,
  ]


def test_cli_unknown_key_and_help(assets, tmp_path):
  p = _cli(_cli_args(assets, tmp_path / "x", "--config.no_such_key=1"))
  out, _ = p.communicate(timeout=120)
  assert p.returncode != 0 and "no_such_key" in out
  p = _cli(["--help"])
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0 and "--workdir" in out and "resumes" in out


def test_cli_sigkill_then_resume_is_exact(assets, tmp_path):
  """A run SIGKILLed after its step-4 checkpoint resumes to the same final params."""
  n, every = 8, 4
  full = tmp_path / "full"
  p = _cli(_cli_args(assets, full, f"--config.max_steps={n}", f"--config.save_steps={every}"))
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out

  killed = tmp_path / "killed"
  # Slow steps down after the checkpoint so the kill lands mid-run, not after the end.
  p = _cli(
    _cli_args(
      assets,
      killed,
      f"--config.max_steps={n}",
      f"--config.save_steps={every}",
      "--config.logging_steps=1",
    ),
    start_new_session=True,
  )
  ckpt = killed / "checkpoints" / str(every)
  deadline = time.time() + 240
  while not ckpt.exists() and time.time() < deadline and p.poll() is None:
    time.sleep(0.05)
  os.killpg(p.pid, signal.SIGKILL)
  p.communicate()
  assert ckpt.exists(), "checkpoint never appeared"
  p = _cli(_cli_args(assets, killed, f"--config.max_steps={n}", f"--config.save_steps={every}"))
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out
  a = models.params_of(native.load(str(full)))
  b = models.params_of(native.load(str(killed)))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_multihost_2x4_matches_1x8_and_1x1(assets, tmp_path):
  """The real MiniLMv2 recipe: 2 processes x 4 devices (launch/local.py, jax.distributed) give
  the losses of 1 process x 8 devices and of 1 device on the same global batches (dropout on:
  its masks do not depend on the sharding)."""
  teacher, corpus = assets
  common = [
    "--config=configs/minilmv2.py:tiny",
    f"--config.teacher.path={teacher}",
    f"--config.input_dir={corpus}",
    "--config.data_sharding=global",
    "--config.max_steps=4",
    "--config.logging_steps=1",
    "--config.save_steps=0",
  ]
  env = {k: v for k, v in os.environ.items() if not k.startswith(("KDJAX_", "XLA_FLAGS"))}
  env.update(PYTHONPATH=pythonpath(), JAX_PLATFORMS="cpu")

  def run(name, launcher=(), mesh="--config.mesh.fsdp=4", **extra):
    cmd = [
      sys.executable,
      *launcher,
      *([] if launcher else ["-m", "kdjax.train"]),
      *(["-m", "kdjax.train", "--"] if launcher else []),
      f"--workdir={tmp_path / name}",
      *common,
      mesh,
    ]
    r = subprocess.run(
      cmd, env=dict(env, **extra), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return np.array(
      [[m["loss"], m["grad_norm"]] for m in _metrics(str(tmp_path / name)) if "loss" in m]
    )

  one = run("one", mesh="--config.mesh.fsdp=1")
  eight = run("eight", KDJAX_NUM_CPU_DEVICES="8")
  two = run(
    "two",
    launcher=(
      os.path.join(ROOT, "launch", "local.py"),
      "--num_processes",
      "2",
      "--num_cpu_devices",
      "4",
    ),
  )
  assert one.shape == (4, 2)
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)


def test_teacher_dtype_auto(assets):
  """``teacher.dtype=auto`` (the default): bfloat16 off-CPU, on AMX CPUs and on AVX512-BF16
  CPUs when kdjax's oneDNN matmuls are in use; float32 on other CPUs (XLA CPU's own bfloat16
  dots are no faster there); explicit values pass through."""
  from kdjax.models.loading import resolve_compute_dtype
  from kdjax.recipes.general_distill import GeneralDistill

  assert _config("minilmv2", None).teacher.dtype == "auto"
  assert resolve_compute_dtype("auto", backend="gpu") == "bfloat16"
  assert resolve_compute_dtype("auto", backend="tpu") == "bfloat16"
  bf16_cpu = {"avx512_bf16"}
  assert resolve_compute_dtype("auto", backend="cpu", cpu_flags=bf16_cpu, onednn=False) == "float32"
  assert resolve_compute_dtype("auto", backend="cpu", cpu_flags=bf16_cpu, onednn=True) == "bfloat16"
  assert resolve_compute_dtype("auto", backend="cpu", cpu_flags={"avx2"}, onednn=True) == "float32"
  assert resolve_compute_dtype("auto", backend="cpu", cpu_flags={"amx_bf16"}) == "bfloat16"
  assert resolve_compute_dtype("bfloat16", backend="cpu", cpu_flags=()) == "bfloat16"
  assert resolve_compute_dtype(None) is None
  c = _tiny(assets)
  c.teacher.dtype = "auto"
  want = resolve_compute_dtype("auto")
  assert GeneralDistill(c, None).teacher.config.dtype == want


def test_teacher_keeps_only_the_layers_up_to_the_distilled_one(assets):
  """Layers above ``teacher_layer_index`` never run; the recipe drops their weights (memory of
  a 24-layer teacher distilled at layer 19) and the loss is unchanged."""
  from kdjax.models import loading
  from kdjax.recipes.general_distill import GeneralDistill

  full = loading.build_teacher(_tiny(assets).teacher)
  n = full.config.num_hidden_layers
  r = GeneralDistill(_tiny(assets, teacher_layer_index=1, alpha=0.2, beta=0.3), None)
  assert r.teacher.config.num_hidden_layers == 2 < n
  kept = r.init_frozen()
  assert sorted(kept["layer"]) == ["0", "1"]
  np.testing.assert_array_equal(
    np.asarray(kept["layer"]["1"]["query"]["kernel"]),
    np.asarray(full.params["layer"]["1"]["query"]["kernel"]),
  )
  batch = _padded_batch(r.tokenizer, [12, 7, 4, 9])
  rng = jax.random.key(0)
  got, _ = r.loss_fn(r.student.params, kept, batch, rng)
  # the same loss through the whole teacher (stop_at_layer=1 runs layers 0-1 of it)
  r.teacher = full
  want, _ = r.loss_fn(r.student.params, full.frozen_params(), batch, rng)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  last = GeneralDistill(_tiny(assets, teacher_layer_index=n - 1), None)
  assert last.teacher.config.num_hidden_layers == n
