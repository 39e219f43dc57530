"""python -m kdjax.convert: HF -> kdjax (orbax) -> HF round trip, through the CLI."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers_env import pythonpath

from kdjax import models
from kdjax.models import native


def _run(*args):
  env = dict(os.environ, PYTHONPATH=pythonpath(), JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "kdjax.convert", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_help():
  r = _run("--help")
  assert r.returncode == 0 and "trainer workdir" in r.stdout


def test_cli_roundtrip_real_minilm(tmp_path, minilm_dir):
  kd, hf = str(tmp_path / "kd"), str(tmp_path / "hf")
  r = _run(minilm_dir, kd)
  assert r.returncode == 0, r.stderr
  assert os.path.exists(os.path.join(kd, "kdjax_model.json"))
  assert os.path.exists(os.path.join(kd, "vocab.txt"))
  r = _run(kd, hf)
  assert r.returncode == 0, r.stderr
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
  back, info = transformers.AutoModel.from_pretrained(hf, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  ids = torch.tensor([[101, 7592, 2088, 102, 0]])
  mask = torch.tensor([[1, 1, 1, 1, 0]])
  with torch.no_grad():
    a = ref(ids, attention_mask=mask).last_hidden_state.numpy()
    b = back.eval()(ids, attention_mask=mask).last_hidden_state.numpy()
  np.testing.assert_array_equal(a, b)
  tok = transformers.AutoTokenizer.from_pretrained(hf)
  assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_native_save_load_exact(tmp_path):
  cfg = models.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    num_labels=4,
  )
  m = models.create_model(cfg, "classification", seed=5)
  native.save(m, str(tmp_path / "m"))
  m2 = native.load(str(tmp_path / "m"))
  ids = np.arange(10).reshape(2, 5) % 50
  np.testing.assert_array_equal(m(ids).logits, m2(ids).logits)


def _misaligned(a):
  """A copy of ``a`` whose data starts 4 bytes past a 64-byte boundary."""
  a = np.asarray(a)
  buf = np.zeros(a.nbytes + 64, np.uint8)
  start = -buf.ctypes.data % 64 + 4
  x = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
  x[...] = a
  return x


def test_native_load_gives_aligned_host_params(tmp_path, monkeypatch):
  """Orbax restores big tensors misaligned; XLA CPU would copy those on every jitted call."""
  cfg = models.BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=32,
  )  # fmt: skip
  m = models.create_model(cfg, "none", seed=5)
  native.save(m, str(tmp_path / "m"))
  restore = native._restore_tree
  monkeypatch.setattr(native, "_restore_tree", lambda p: jax.tree.map(_misaligned, restore(p)))
  m2 = native.load(str(tmp_path / "m"))
  leaves = jax.tree.leaves(models.params_of(m2))
  assert all(isinstance(x, np.ndarray) and x.ctypes.data % 64 == 0 for x in leaves)
  ids = np.arange(10).reshape(2, 5) % 50
  np.testing.assert_array_equal(m(ids).last_hidden_state, m2(ids).last_hidden_state)


def test_host_aligned_copies_only_misaligned_arrays():
  from kdjax.models.params import host_aligned

  x = _misaligned(np.arange(60, dtype=np.float32).reshape(6, 10))
  assert x.ctypes.data % 64 == 4
  y = host_aligned(x)
  assert y.ctypes.data % 64 == 0 and y.dtype == x.dtype and y.shape == x.shape
  np.testing.assert_array_equal(y, x)
  assert host_aligned(y) is y  # aligned: returned as is


def test_cli_errors(tmp_path):
  r = _run(str(tmp_path), str(tmp_path / "out"))
  assert r.returncode != 0 and "neither a Hugging Face directory" in r.stderr


def test_keep_layers_hf_to_hf(tmp_path, minilm_dir):
  """A 3-layer student from layers 0,2,4 of the real MiniLM: its layers equal the source's."""
  out = str(tmp_path / "l3")
  r = _run(minilm_dir, out, "--to_same", "--keep_layers=0,2,4")
  assert r.returncode == 0, r.stderr
  src, small = models.from_pretrained(minilm_dir), models.from_pretrained(out)
  assert small.config.num_hidden_layers == 3
  a, b = models.params_of(src), models.params_of(small)
  for j, i in enumerate((0, 2, 4)):
    np.testing.assert_array_equal(
      a["layer"][str(i)]["query"]["kernel"], b["layer"][str(j)]["query"]["kernel"]
    )
  ids = np.array([[101, 7592, 102]])
  e1, e2 = src(ids).embedding_output, small(ids).embedding_output
  np.testing.assert_array_equal(e1, e2)
  r = _run(minilm_dir, str(tmp_path / "bad"), "--keep_layers=0,9")
  assert r.returncode != 0 and "0..5" in r.stderr
