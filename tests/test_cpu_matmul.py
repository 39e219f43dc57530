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
  # float32 operands or another contraction: XLA's dot
  assert not _has_custom_call(dense, x.astype(jnp.float32), w.astype(jnp.float32))
  other = lambda a, b: cpu_matmul.dot_general(a, b, (((1,), (1,)), ((), ())))
  assert not _has_custom_call(other, x[0], w.T)
  # bfloat16 operands with a float32 result asked for: oneDNN, output not rounded to bf16
  f32_out = lambda a, b: cpu_matmul.dot_general(
    a, b, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )
  assert _has_custom_call(f32_out, x, w)
  got = f32_out(x, w)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(
    np.asarray(got, np.float64), np.einsum("abk,kn->abn", _f64(x), _f64(w)), rtol=1e-5, atol=1e-5
  )
  # its gradient: the float32 cotangent rounded to bf16, as torch's autocast backward does
  g = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
  dx, dw = jax.grad(lambda a, b: jnp.sum(f32_out(a, b) * g), argnums=(0, 1))(x, w)
  g16 = _f64(g.astype(jnp.bfloat16))
  np.testing.assert_allclose(_f64(dx), g16 @ _f64(w).T, rtol=2**-7, atol=3e-2)
  np.testing.assert_allclose(
    _f64(dw), np.einsum("abk,abn->kn", _f64(x), g16), rtol=2**-7, atol=3e-2
  )
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
    hlo = f.lower(params).as_text()
    for target in (cpu_matmul.DENSE_TARGET, cpu_matmul.BMM_TARGET):  # layers and attention
      assert (target in hlo) == (mode == "onednn")
    results[mode] = f(params)
  (_, zx), gx = results["xla"]
  (_, zo), go = results["onednn"]
  np.testing.assert_allclose(_f64(zo), _f64(zx), rtol=0.05, atol=0.05)
  flat_x, flat_o = jax.tree.leaves(gx), jax.tree.leaves(go)
  for a, b in zip(flat_x, flat_o, strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(a).max() + 1e-6
    assert np.abs(a - b).max() <= 0.05 * scale

  # Forward only (a frozen teacher): GELU fused into the call, same logits.
  import re

  erf = lambda: re.search(r"\berf\b", jax.jit(lambda p: loss(p)[1]).lower(params).as_text())
  cpu_matmul.set_mode("xla")
  assert erf()  # the unfused GELU
  cpu_matmul.set_mode("onednn")
  assert not erf()
  np.testing.assert_allclose(
    _f64(jax.jit(lambda p: loss(p)[1])(params)), _f64(zx), rtol=0.05, atol=0.05
  )


# --------------------------------------------------------------------------- batched einsum
ATTENTION_SPECS = [
  ("bqnd,bknd->bnqk", (2, 5, 3, 4), (2, 6, 3, 4), jnp.float32),  # scores, float32 out
  ("bnqk,bknd->bqnd", (2, 3, 5, 6), (2, 6, 3, 4), None),  # context, into [B, L, N, D]
  ("bqnd,bnqk->bknd", (2, 5, 3, 4), (2, 3, 5, 6), None),  # a backward form (output transposed)
  ("ij,jk->ik", (7, 9), (9, 4), None),  # no batch dims
  ("brld,brmd->brlm", (2, 3, 4, 5), (2, 3, 6, 5), jnp.float32),  # MiniLM relations
]


@pytest.mark.parametrize("spec,xs,ys,out", ATTENTION_SPECS)
def test_einsum_matches_numpy_with_gradients(bf16_kernel, spec, xs, ys, out):
  rng = np.random.default_rng(len(spec))
  x, y = _bf16(rng, *xs), _bf16(rng, *ys)
  cpu_matmul.set_mode("onednn")
  f = lambda a, b: cpu_matmul.einsum(spec, a, b, preferred_element_type=out)
  assert cpu_matmul.BMM_TARGET in jax.jit(f).lower(x, y).as_text()
  got = jax.jit(f)(x, y)
  assert got.dtype == (out or jnp.bfloat16)
  want = np.einsum(spec, _f64(x), _f64(y))
  # float32 operands: float32 all through, to float32 precision (gradients included)
  x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
  f32 = lambda a, b: cpu_matmul.einsum(spec, a, b)
  assert cpu_matmul.BMM_TARGET in jax.jit(f32).lower(x32, y32).as_text()
  np.testing.assert_allclose(_f64(jax.jit(f32)(x32, y32)), want, rtol=1e-5, atol=1e-5)
  g32 = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  d32 = jax.jit(jax.grad(lambda a, b: jnp.sum(f32(a, b) * g32), argnums=(0, 1)))(x32, y32)
  ins32, o32 = spec.split("->")
  for got_d, sub in zip(d32, (f"{o32},{ins32.split(',')[1]}->{ins32.split(',')[0]}",
                              f"{ins32.split(',')[0]},{o32}->{ins32.split(',')[1]}")):  # fmt: skip
    a, b = (g32, y32) if got_d is d32[0] else (x32, g32)
    assert got_d.dtype == jnp.float32
    np.testing.assert_allclose(_f64(got_d), np.einsum(sub, _f64(a), _f64(b)), rtol=1e-5, atol=1e-5)
  tol = 1e-5 if out == jnp.float32 else 2**-7
  np.testing.assert_allclose(_f64(got), want, rtol=tol, atol=tol * np.abs(want).max())
  g = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  dx, dy = jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b) * g), argnums=(0, 1)))(x, y)
  ins, o = spec.split("->")
  xsub, ysub = ins.split(",")
  g16 = _f64(g.astype(jnp.bfloat16))  # the cotangent is rounded to bf16 first
  for got_d, want_d in (
    (dx, np.einsum(f"{o},{ysub}->{xsub}", g16, _f64(y))),
    (dy, np.einsum(f"{xsub},{o}->{ysub}", _f64(x), g16)),
  ):
    assert got_d.dtype == jnp.bfloat16
    np.testing.assert_allclose(_f64(got_d), want_d, rtol=2**-7, atol=2**-7 * np.abs(want_d).max())


def test_einsum_routing(bf16_kernel):
  rng = np.random.default_rng(0)
  x, y = _bf16(rng, 2, 5, 3, 4), _bf16(rng, 2, 6, 3, 4)
  cpu_matmul.set_mode("onednn")
  has = lambda spec, a, b: (
    cpu_matmul.BMM_TARGET
    in jax.jit(lambda a, b: cpu_matmul.einsum(spec, a, b)).lower(a, b).as_text()
  )
  assert has("bqnd,bknd->bnqk", x, y)
  f32 = lambda a: a.astype(jnp.float32)
  assert has("bqnd,bknd->bnqk", f32(x), f32(y))  # float32 batched matmuls too
  assert not has("bqnd,bknd->bnqk", f32(x), y)  # mixed dtypes: XLA
  assert not has("bqnd,bknd->bnqk", x.astype(jnp.float16), y.astype(jnp.float16))
  assert not has("bqnd,bknd->bn", x, y)  # two contracted letters: XLA
  assert not has("...d,...d->...", x[:, :5], y[:, :5])  # ellipsis: XLA
  # the output's last dim a batch dim: no oneDNN layout, XLA computes it
  x3, y3 = x[:, :, 0], y[:, :, 0]
  assert not has("bqd,bkd->qkb", x3, y3)
  np.testing.assert_allclose(
    _f64(cpu_matmul.einsum("bqd,bkd->qkb", x3, y3)),
    np.einsum("bqd,bkd->qkb", _f64(x3), _f64(y3)),
    rtol=2**-7,
    atol=0.05,
  )
  cpu_matmul.set_mode("xla")
  assert not has("bqnd,bknd->bnqk", x, y)


# --------------------------------------------------------------------------- dense layer
@pytest.mark.parametrize("activation", [None, "gelu_erf", "gelu_tanh", "relu"])
def test_dense_matches_numpy_forward_and_gradient(bf16_kernel, activation):
  import math

  fns = {
    None: (None, lambda v: v),
    "gelu_erf": (
      lambda v: jax.nn.gelu(v, approximate=False),
      np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2)))),
    ),
    "gelu_tanh": (
      lambda v: jax.nn.gelu(v, approximate=True),
      lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
    ),
    "relu": (jax.nn.relu, lambda v: np.maximum(v, 0)),
  }
  act_fn, np_act = fns[activation]
  rng = np.random.default_rng(7)
  x, w = _bf16(rng, 2, 9, 16), _bf16(rng, 16, 24)
  b = jnp.asarray(rng.normal(size=24), jnp.float32)
  cpu_matmul.set_mode("onednn")
  f = lambda x, w, b: cpu_matmul.dense(x, w, b, activation=activation, act_fn=act_fn)
  assert cpu_matmul.DENSE_TARGET in jax.jit(f).lower(x, w, b).as_text()
  pre = np.einsum("blk,kn->bln", _f64(x), _f64(w)) + np.asarray(b, np.float64)
  got = jax.jit(f)(x, w, b)  # fused: the activation inside the oneDNN call
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(_f64(got), np_act(pre), rtol=2**-7, atol=2e-2)
  g = jnp.asarray(rng.normal(size=(2, 9, 24)), jnp.float32)
  val, grads = jax.jit(
    jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * g), argnums=(0, 1, 2))
  )(x, w, b)
  np.testing.assert_allclose(float(val), float(np.sum(np_act(pre) * _f64(g))), rtol=0.02)
  # reference gradient: through the activation at the bf16-rounded pre-activation
  pre16 = jnp.asarray(pre, jnp.bfloat16)
  gpre = (
    _f64(g)
    if act_fn is None
    else np.asarray(
      jax.vjp(act_fn, pre16)[1](g.astype(jnp.bfloat16))[0].astype(jnp.float32), np.float64
    )
  )
  gpre = _f64(jnp.asarray(gpre, jnp.bfloat16))
  dx, dw, db = grads
  assert (dx.dtype, dw.dtype, db.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
  for got_d, want_d in (
    (dx, np.einsum("bln,kn->blk", gpre, _f64(w))),
    (dw, np.einsum("blk,bln->kn", _f64(x), gpre)),
    (db, gpre.sum(axis=(0, 1))),
  ):
    np.testing.assert_allclose(_f64(got_d), want_d, rtol=0.02, atol=0.02 * np.abs(want_d).max())


def test_dense_rejects_an_unknown_activation(bf16_kernel):
  x, w = jnp.ones((2, 3), jnp.bfloat16), jnp.ones((3, 4), jnp.bfloat16)
  with pytest.raises(ValueError, match="'swish' is not one of"):
    cpu_matmul.dense(x, w, jnp.zeros(4), activation="swish")


def test_concurrent_custom_calls_in_one_step_are_safe(kernel):
  """XLA's thunk executor runs independent custom calls at the same time on its thread pool,
  while oneDNN's library scratchpad is shared by all primitives (the wheel is built without
  ONEDNN_ENABLE_CONCURRENT_EXEC), so the kernel serialises executes. Without that, this
  float32 MiniLMv2-like step (dense Q/K/V of a student and a teacher, the relation KL in 12
  chunks of 4 heads, with its gradient) returned NaN or crashed within a few calls; with it,
  every call gives the same loss."""
  from kdjax.losses import minilm

  cpu_matmul.set_mode("onednn")
  if not cpu_matmul.dense_enabled(jnp.float32):
    pytest.skip("float32 dense layers stay on XLA on this CPU")
  b, l = 32, 128
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((b * l, 384)), jnp.float32)
  xt = jnp.asarray(rng.standard_normal((b * l, 768)), jnp.float32)
  ws = [jnp.asarray(rng.standard_normal((384, 384)) * 0.05, jnp.float32) for _ in range(3)]
  wt = [jnp.asarray(rng.standard_normal((768, 768)) * 0.05, jnp.float32) for _ in range(3)]
  mask = jnp.ones((b, l), jnp.int32)

  def loss(ws):
    s = [cpu_matmul.dense(xs, w, jnp.zeros(384)).reshape(b, l, 384) for w in ws]
    t = [cpu_matmul.dense(xt, w, jnp.zeros(768)).reshape(b, l, 768) for w in wt]
    t = jax.lax.stop_gradient(t)
    return minilm.minilm_relation_loss(
      s, teacher=t, attention_mask=mask, num_relation_heads=48, chunk_heads=4
    )

  f = jax.jit(jax.value_and_grad(loss))
  first = None
  for _ in range(6):
    v, g = f(ws)
    v = float(v)
    first = v if first is None else first
    assert np.isfinite(v) and abs(v - first) <= 1e-5 * abs(first), (v, first)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


@pytest.fixture
def mkl(kernel):
  """MKL opened by the kernel (the ``mkl`` wheel of requirements.txt); the float32 products go
  back to it after each test."""
  if cpu_matmul.mkl_library() is None:
    if SUPPORTED and os.environ.get("KDJAX_REQUIRE_ASSETS"):
      pytest.fail("MKL (the mkl wheel of requirements.txt) is not installed")
    pytest.skip("MKL is not installed")
  assert cpu_matmul.status()["float32_gemm"].startswith("MKL "), cpu_matmul.status()
  yield
  cpu_matmul.set_sgemm("mkl")


def _f32(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


@pytest.mark.parametrize("backend", ["mkl", "onednn"])
@pytest.mark.parametrize("m,k,n", [(7, 5, 3), (130, 257, 33), (1, 64, 40)])
def test_float32_products_match_numpy(mkl, backend, m, k, n):
  """Every float32 form the kernel runs (the product, its two transposed reads, the dense layer
  with its bias and the gradients) on MKL and on oneDNN, against NumPy in float64."""
  cpu_matmul.set_sgemm(backend)
  rng = np.random.default_rng(m + 10 * k + 100 * n)
  x, w, b, g = _f32(rng, m, k), _f32(rng, k, n), _f32(rng, n), _f32(rng, m, n)
  X, W, B, G = (np.asarray(a, np.float64) for a in (x, w, b, g))
  tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(k))
  call = jax.jit(cpu_matmul._call, static_argnums=(2, 3, 4))
  np.testing.assert_allclose(np.asarray(call(x, w, False, False, jnp.float32)), X @ W, **tol)
  np.testing.assert_allclose(np.asarray(call(x.T, w, True, False, jnp.float32)), X @ W, **tol)
  np.testing.assert_allclose(np.asarray(call(x, w.T, False, True, jnp.float32)), X @ W, **tol)
  np.testing.assert_allclose(np.asarray(call(x.T, w.T, True, True, jnp.float32)), X @ W, **tol)
  dense = jax.jit(lambda x, w, b: cpu_matmul.dense(x, w, b))
  assert cpu_matmul.DENSE_TARGET in dense.lower(x, w, b).as_text()
  y = dense(x, w, b)
  np.testing.assert_allclose(np.asarray(y), X @ W + B, **tol)
  assert np.array_equal(np.asarray(dense(x, w, b)), np.asarray(y))  # the same sums every call
  dx, dw, db = jax.jit(jax.grad(lambda *a: jnp.sum(dense(*a) * g), argnums=(0, 1, 2)))(x, w, b)
  np.testing.assert_allclose(np.asarray(dx), G @ W.T, rtol=1e-5, atol=1e-5 * np.sqrt(n))
  np.testing.assert_allclose(np.asarray(dw), X.T @ G, rtol=1e-5, atol=1e-5 * np.sqrt(m))
  np.testing.assert_allclose(np.asarray(db), G.sum(0), rtol=1e-5, atol=1e-5 * np.sqrt(m))


def test_float32_backends_agree_on_a_bert_layer(mkl):
  """MKL and oneDNN give the same float32 BERT-base FFN (up to float32 rounding), so switching
  the backend moves no result beyond the last bits."""
  rng = np.random.default_rng(3)
  x, w, b = _f32(rng, 256, 768), _f32(rng, 768, 3072) * 0.03, _f32(rng, 3072)
  f = jax.jit(lambda x, w, b: jax.nn.gelu(cpu_matmul.dense(x, w, b), approximate=False))
  cpu_matmul.set_sgemm("mkl")
  a = np.asarray(f(x, w, b))
  cpu_matmul.set_sgemm("onednn")
  o = np.asarray(f(x, w, b))
  np.testing.assert_allclose(a, o, rtol=1e-5, atol=1e-5)


def test_mkl_selection_and_errors(kernel, monkeypatch):
  """KDJAX_CPU_SGEMM: auto uses MKL where installed and says why not otherwise; mkl insists
  with an error naming what is missing; onednn never opens it; a bad value is named."""

  class Lib:
    def __init__(self, rc):
      self.rc, self.opened = rc, []

    def kdjax_use_mkl(self, path):
      self.opened.append(path)
      return self.rc

  monkeypatch.setattr(cpu_matmul, "_kernel_lib", cpu_matmul._kernel_lib)  # restored afterwards
  monkeypatch.setattr(cpu_matmul, "mkl_library", lambda prefix=None: None)
  monkeypatch.setenv(cpu_matmul.SGEMM_ENV, "auto")
  assert cpu_matmul._open_mkl(Lib(0)).startswith("oneDNN (MKL not installed")
  monkeypatch.setenv(cpu_matmul.SGEMM_ENV, "mkl")
  with pytest.raises(
    RuntimeError, match="KDJAX_CPU_SGEMM=mkl but MKL is not installed.*pip install mkl"
  ):
    cpu_matmul._open_mkl(Lib(0))
  monkeypatch.setattr(cpu_matmul, "mkl_library", lambda prefix=None: "/x/libmkl_rt.so.3")
  with pytest.raises(RuntimeError, match="/x/libmkl_rt.so.3 does not load .*symbol is missing"):
    cpu_matmul._open_mkl(Lib(2))
  with pytest.raises(RuntimeError, match="another threading layer"):
    cpu_matmul._open_mkl(Lib(3))
  monkeypatch.setenv(cpu_matmul.SGEMM_ENV, "onednn")
  lib = Lib(0)
  assert cpu_matmul._open_mkl(lib) == "oneDNN (KDJAX_CPU_SGEMM=onednn)" and not lib.opened
  monkeypatch.setenv(cpu_matmul.SGEMM_ENV, "fast")
  with pytest.raises(ValueError, match="KDJAX_CPU_SGEMM='fast' is not one of"):
    cpu_matmul._open_mkl(Lib(0))
  with pytest.raises(ValueError, match="'blas' is not 'mkl' or 'onednn'"):
    cpu_matmul.set_sgemm("blas")
