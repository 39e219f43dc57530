"""kdjax.kernels.cpu_matmul: the oneDNN bf16 matmul custom call against NumPy and XLA."""

from __future__ import annotations

import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models
from kdjax.kernels import cpu_matmul

SUPPORTED = sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.fixture(autouse=True)
def _restore_mode():
  yield
  cpu_matmul.set_mode(None)


@pytest.fixture(scope="module")
def kernel():
  """The built kernel. On Linux x86-64 `bash run.sh install` builds it, so a missing one fails
  there (KDJAX_REQUIRE_ASSETS, set by `run.sh test`) instead of skipping every test below."""
  if not cpu_matmul.available():
    detail = cpu_matmul.status()["detail"]
    if SUPPORTED and os.environ.get("KDJAX_REQUIRE_ASSETS"):
      pytest.fail(f"the oneDNN matmul kernel is {detail}")
    pytest.skip(f"oneDNN matmul kernel: {detail}")
  return True


@pytest.fixture
def bf16_kernel(kernel):
  """oneDNN 3.2 runs bfloat16 matmuls on AVX-512 (natively with AVX512-BF16 / AMX, emulated
  without); an AVX2-only CPU has no bf16 kernel (kdjax's ``auto`` never uses it there)."""
  if not cpu_matmul.cpu_flags() & {"avx512f", "amx_bf16"}:
    pytest.skip("oneDNN has no bfloat16 matmul for this CPU (needs AVX-512 or AMX)")
  return True


def _bf16(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.bfloat16)


def _f64(x):
  return np.asarray(x.astype(jnp.float32), np.float64)


@pytest.mark.parametrize("m,k,n", [(7, 5, 3), (64, 48, 96), (1, 1, 1), (130, 257, 33)])
def test_forward_and_transposes_match_numpy(bf16_kernel, m, k, n):
  rng = np.random.default_rng(m * 1000 + k)
  x, w = _bf16(rng, m, k), _bf16(rng, k, n)
  want = _f64(x) @ _f64(w)
  got = jax.jit(cpu_matmul.matmul)(x, w)
  assert got.dtype == jnp.bfloat16 and got.shape == (m, n)
  # float32 accumulation, one bfloat16 rounding of the result (relative 2^-8)
  np.testing.assert_allclose(_f64(got), want, rtol=2**-7, atol=1e-2 * np.sqrt(k))
  # the transposed reads the gradient uses
  t_a = cpu_matmul._call(x.T, w, True, False, jnp.float32)  # (x^T)^T @ w
  t_b = cpu_matmul._call(x, w.T, False, True, jnp.float32)  # x @ (w^T)^T
  np.testing.assert_allclose(np.asarray(t_a), want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(t_b), want, rtol=1e-5, atol=1e-4)
  f32 = cpu_matmul.matmul(x.astype(jnp.float32), w.astype(jnp.float32))
  assert f32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(f32), want, rtol=1e-5, atol=1e-4)


def test_gradient_matches_numpy(bf16_kernel):
  rng = np.random.default_rng(1)
  x, w, g = _bf16(rng, 12, 8), _bf16(rng, 8, 6), _bf16(rng, 12, 6)
  _, vjp = jax.vjp(jax.jit(cpu_matmul.matmul), x, w)
  dx, dw = vjp(g)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(_f64(dx), _f64(g) @ _f64(w).T, rtol=2**-7, atol=3e-2)
  np.testing.assert_allclose(_f64(dw), _f64(x).T @ _f64(g), rtol=2**-7, atol=3e-2)


def _has_custom_call(f, *args):
  # a fresh function each time: jit caches traces per function, and the mode is read at trace time
  return cpu_matmul.TARGET in jax.jit(lambda *a: f(*a)).lower(*args).as_text()


def test_dot_general_routing(bf16_kernel):
  rng = np.random.default_rng(2)
  x, w = _bf16(rng, 2, 3, 8), _bf16(rng, 8, 4)
  dense = lambda a, b: cpu_matmul.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))
  cpu_matmul.set_mode("onednn")
  assert _has_custom_call(dense, x, w)
  got = dense(x, w)
  assert got.shape == (2, 3, 4) and got.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    _f64(got), np.einsum("abk,kn->abn", _f64(x), _f64(w)), rtol=2**-7, atol=3e-2
  )
  # float32, another contraction, or a float32 result asked for: XLA's dot
  assert not _has_custom_call(dense, x.astype(jnp.float32), w.astype(jnp.float32))
  other = lambda a, b: cpu_matmul.dot_general(a, b, (((1,), (1,)), ((), ())))
  assert not _has_custom_call(other, x[0], w.T)
  f32_out = lambda a, b: cpu_matmul.dot_general(
    a, b, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )
  assert not _has_custom_call(f32_out, x, w)
  with cpu_matmul.portable():  # what exporters trace under
    assert not _has_custom_call(dense, x, w)
  assert _has_custom_call(dense, x, w)
  cpu_matmul.set_mode("xla")
  assert not _has_custom_call(dense, x, w)


def test_mode_errors(monkeypatch):
  with pytest.raises(ValueError, match="not one of"):
    cpu_matmul.set_mode("mkl")
  monkeypatch.setenv(cpu_matmul.ENV, "fast")
  with pytest.raises(ValueError, match="KDJAX_CPU_MATMUL='fast'"):
    cpu_matmul.mode()
  monkeypatch.setenv(cpu_matmul.ENV, "onednn")
  monkeypatch.setattr(cpu_matmul, "_load", lambda: (False, "not built (x.so missing)"))
  with pytest.raises(RuntimeError, match="KDJAX_CPU_MATMUL=onednn but .* not built"):
    cpu_matmul._enabled()
  monkeypatch.setenv(cpu_matmul.ENV, "auto")  # auto without the kernel: XLA, no error
  assert cpu_matmul._enabled() is False


def test_build_errors_name_what_is_missing(tmp_path):
  (tmp_path / "include").mkdir()
  (tmp_path / "lib").mkdir()
  with pytest.raises(RuntimeError, match="oneDNN headers not found .*onednn-devel-cpu-gomp"):
    cpu_matmul.build(prefix=str(tmp_path), verbose=False)


def test_bert_bf16_with_onednn_matches_xla(bf16_kernel):
  """The whole model (and its gradient) in bfloat16: oneDNN's dense layers against XLA's."""
  cfg = models.BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    dtype="bfloat16",
  )
  model = models.create_model(cfg, "classification", seed=0)
  from flax import nnx

  graph, params = nnx.split(model)
  ids = jnp.asarray(np.random.default_rng(3).integers(5, 50, size=(3, 9)), jnp.int32)

  def loss(p):
    out = nnx.merge(graph, p)(ids, attention_mask=jnp.ones_like(ids))
    return jnp.sum(out.logits.astype(jnp.float32) ** 2), out.logits

  results = {}
  for mode in ("xla", "onednn"):
    cpu_matmul.set_mode(mode)
    f = jax.jit(jax.value_and_grad(loss, has_aux=True))
    assert (cpu_matmul.TARGET in f.lower(params).as_text()) == (mode == "onednn")
    results[mode] = f(params)
  (_, zx), gx = results["xla"]
  (_, zo), go = results["onednn"]
  np.testing.assert_allclose(_f64(zo), _f64(zx), rtol=0.05, atol=0.05)
  flat_x, flat_o = jax.tree.leaves(gx), jax.tree.leaves(go)
  for a, b in zip(flat_x, flat_o, strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(a).max() + 1e-6
    assert np.abs(a - b).max() <= 0.05 * scale
