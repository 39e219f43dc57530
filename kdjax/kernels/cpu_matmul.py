"""bfloat16 matmuls on CPU through oneDNN (AMX / AVX512-BF16), as an XLA FFI custom call.

Why: XLA CPU (jaxlib 0.10.2) lowers bfloat16 dots without the CPU's bf16 instructions. Measured
with ``benchmarks/roofline.py`` (2 threads): on a Xeon with AMX, ``jnp.dot`` reaches ~240 GFLOP/s
in bfloat16 and ~290 in float32, while oneDNN (what PyTorch's bf16 autocast uses) reaches
~2,400 GFLOP/s in bfloat16. No ``XLA_FLAGS`` setting of this jaxlib changes it: its oneDNN
options leave bf16 dots alone. So a model in bfloat16 on CPU gains nothing from the hardware
unless its matmuls leave XLA.

What: :func:`dot_general` is a drop-in ``dot_general`` for ``nnx.Linear`` (the BERT model's dense
layers use it). For the dense-layer contraction ``x[..., K] @ w[K, N]`` with both operands in
bfloat16 it reshapes ``x`` to ``[M, K]`` and calls the custom call ``kdjax_onednn_matmul``
(``onednn_matmul.cc``: oneDNN's matmul primitive, float32 accumulation, bfloat16 output as
XLA's bf16 dot returns, or float32 with ``preferred_element_type=float32``); everything else
goes to ``jax.lax.dot_general``. The gradient is written out (``jax.custom_vjp``):
``dx = g @ w^T`` and ``dw = x^T @ g``, both through the same kernel.

When (``KDJAX_CPU_MATMUL`` or :func:`set_mode`, read at trace time):
  ``auto`` (default)  oneDNN when the backend is CPU with one device, the CPU has ``amx_bf16``
                      or ``avx512_bf16``, and the kernel is built; XLA otherwise
  ``onednn``          always for the bf16 dense contraction on CPU; an error naming the build
                      command if the kernel is not built
  ``xla``             never
Inside :func:`portable` (every exporter traces the model there) never: a serialized artefact
(jax.export, SavedModel, ONNX) must not name a kernel that only this venv has.
One CPU device only: a custom call is opaque to the SPMD partitioner, which would gather a
batch-sharded operand, so sharded CPU meshes (the multi-device tests) keep XLA's dots.
float32 dense layers go to the kernel on AVX-512 CPUs (:func:`dense_enabled`), XLA's dots
elsewhere.
Batched einsums (attention, MiniLM relations: :func:`einsum`) go to oneDNN in float32 too, where
XLA is 5-7x slower; there ``auto`` needs only a built kernel, no bf16 flags.
:func:`dense` is :func:`dot_general`'s dense case with the bias and activation in the same call.

float32 products in the kernel (:func:`matmul`, :func:`dense` without a fused activation, and
their gradients) run on MKL's ``cblas_sgemm`` where the ``mkl`` wheel is installed (opened at
run time with the GNU OpenMP threading layer, the libgomp oneDNN uses; a fixed thread count, so
the same sums every call), oneDNN's otherwise (``KDJAX_CPU_SGEMM``: ``auto`` (default) / ``mkl``
(an error if MKL is missing) / ``onednn``; :func:`set_sgemm` switches a running process). Why: on
a 2-core AMX Xeon MKL runs the BERT-base dense shapes at 280-336 GFLOP/s inside jit against
oneDNN 3.2's 253-314 (standalone 305-361 against 139-317: oneDNN's float32 kernel is slow on
some shapes), and the float32 TinyBERT 32 x 128 step takes 3.80-3.93 s against 4.17-4.30 s.
The same MKL sgemm is what PyTorch's float32 matmuls use.

Build (done by ``bash run.sh install``; needs a C++17 compiler and the ``onednn-cpu-gomp`` +
``onednn-devel-cpu-gomp`` wheels of requirements.txt, which put ``libdnnl.so`` and its headers
into the venv)::

  python -m kdjax.kernels.cpu_matmul --build     # compile; prints where the library went
  python -m kdjax.kernels.cpu_matmul             # status: built?, CPU flags, mode in effect
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "kdjax_onednn_matmul"
BMM_TARGET = "kdjax_onednn_bmm"
DENSE_TARGET = "kdjax_onednn_dense"
# activations oneDNN applies inside the dense call (its post-op codes in onednn_matmul.cc)
FUSED_ACTIVATIONS = {"gelu_erf": 1, "gelu_tanh": 2, "relu": 3}
MODES = ("auto", "onednn", "xla")
ENV = "KDJAX_CPU_MATMUL"
SGEMM_MODES = ("auto", "mkl", "onednn")
SGEMM_ENV = "KDJAX_CPU_SGEMM"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_matmul.cc")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
BUILD_CMD = "python -m kdjax.kernels.cpu_matmul --build"

_mode_override: str | None = None
_portable = contextvars.ContextVar("kdjax_cpu_matmul_portable", default=False)


@contextlib.contextmanager
def portable():
  """Functions traced inside use XLA's dots only (no custom call): what exporters need."""
  token = _portable.set(True)
  try:
    yield
  finally:
    _portable.reset(token)


def is_portable() -> bool:
  """Whether the function being traced is for an export (inside :func:`portable`)."""
  return _portable.get()


def set_mode(mode: str | None) -> None:
  """Override ``KDJAX_CPU_MATMUL`` for this process (None: back to the environment). Applies to
  functions traced afterwards: a function jit already traced keeps its choice."""
  global _mode_override
  if mode is not None and mode not in MODES:
    raise ValueError(f"cpu matmul mode {mode!r} is not one of {MODES}")
  _mode_override = mode


def mode() -> str:
  m = _mode_override or os.environ.get(ENV, "auto") or "auto"
  if m not in MODES:
    raise ValueError(f"environment variable {ENV}={m!r} is not one of {MODES}")
  return m


def _prefix() -> str:
  return sys.prefix


def _dnnl_paths(prefix: str | None = None) -> tuple[str, str]:
  prefix = prefix or _prefix()
  return os.path.join(prefix, "include"), os.path.join(prefix, "lib")


def library_path(prefix: str | None = None) -> str:
  """Where the built kernel lives: in the venv, named by a hash of the source and of the jaxlib
  version (the FFI headers it was compiled against)."""
  import jaxlib

  with open(SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read() + jaxlib.__version__.encode()).hexdigest()[:12]
  return os.path.join(prefix or _prefix(), "lib", "kdjax_kernels", f"onednn_matmul-{digest}.so")


def build(prefix: str | None = None, cxx: str | None = None, verbose: bool = True) -> str:
  """Compile ``onednn_matmul.cc`` into :func:`library_path`; returns the path. Raises
  RuntimeError with the compiler's message (and what to install) on failure."""
  include, lib = _dnnl_paths(prefix)
  if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
    raise RuntimeError(
      f"oneDNN headers not found under {include}: install the wheels of requirements.txt "
      "(onednn-cpu-gomp, onednn-devel-cpu-gomp) into this environment"
    )
  if not any(f.startswith("libdnnl.so") for f in os.listdir(lib)):
    raise RuntimeError(f"libdnnl.so not found in {lib}: pip install onednn-cpu-gomp")
  cxx = cxx or os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not cxx:
    raise RuntimeError("no C++ compiler (c++ / g++ / $CXX) to build the oneDNN matmul kernel")
  out = library_path(prefix)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
  os.close(fd)
  cmd = [
    cxx,
    "-O2",
    "-std=c++17",
    "-shared",
    "-fPIC",
    f"-I{jax.ffi.include_dir()}",
    f"-I{include}",
    SOURCE,
    f"-L{lib}",
    "-ldnnl",
    "-ldl",
    f"-Wl,-rpath,{lib}",
    "-o",
    tmp,
  ]
  r = subprocess.run(cmd, capture_output=True, text=True)
  if r.returncode:
    os.unlink(tmp)
    raise RuntimeError(f"building {SOURCE} failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
  os.replace(tmp, out)  # atomic: a concurrent reader sees the old file or the whole new one
  if verbose:
    print(f"built {out}")
  return out


@functools.cache
def _load() -> tuple[bool, str]:
  """(available, detail): registers the FFI target once per process."""
  if not os.path.exists(SOURCE):
    return False, f"not built ({SOURCE} is missing from this install)"
  path = library_path()
  if not os.path.exists(path):
    return False, f"not built ({path} missing; run `{BUILD_CMD}`)"
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    return False, f"{path} does not load: {e}"
  gemm = _open_mkl(lib)
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.KdjaxOnednnMatmul), platform="cpu")
  jax.ffi.register_ffi_target(BMM_TARGET, jax.ffi.pycapsule(lib.KdjaxOnednnBmm), platform="cpu")
  jax.ffi.register_ffi_target(DENSE_TARGET, jax.ffi.pycapsule(lib.KdjaxOnednnDense), platform="cpu")
  lib.kdjax_onednn_version.restype = ctypes.c_char_p
  return True, f"oneDNN {lib.kdjax_onednn_version().decode()} ({path}); float32 GEMM: {gemm}"


def sgemm_mode() -> str:
  m = os.environ.get(SGEMM_ENV, "auto") or "auto"
  if m not in SGEMM_MODES:
    raise ValueError(f"environment variable {SGEMM_ENV}={m!r} is not one of {SGEMM_MODES}")
  return m


def mkl_library(prefix: str | None = None) -> str | None:
  """MKL's single dynamic library as the ``mkl`` wheel installs it (``<venv>/lib``), or None."""
  lib = os.path.join(prefix or _prefix(), "lib")
  for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"):
    if os.path.exists(os.path.join(lib, name)):
      return os.path.join(lib, name)
  return None


_kernel_lib: ctypes.CDLL | None = None


def _open_mkl(lib: ctypes.CDLL) -> str:
  """Points the kernel's float32 products at MKL's ``cblas_sgemm`` (``KDJAX_CPU_SGEMM``:
  ``auto`` when the ``mkl`` wheel is installed, ``mkl`` always, or an error naming what is
  missing, ``onednn`` never); returns what float32 products run on, for :func:`status`."""
  global _kernel_lib
  _kernel_lib = lib
  m = sgemm_mode()
  if m == "onednn":
    return f"oneDNN ({SGEMM_ENV}=onednn)"
  path = mkl_library()
  rc = lib.kdjax_use_mkl(path.encode()) if path else -1
  if rc == 0:
    lib.kdjax_mkl_version.restype = ctypes.c_char_p
    v = re.search(r"Version ([0-9][0-9.]*)", lib.kdjax_mkl_version().decode())
    return f"MKL {v.group(1) if v else '?'} ({path})"
  why = (
    f"not installed (no libmkl_rt in {os.path.join(_prefix(), 'lib')}: pip install mkl)"
    if path is None
    else f"{path} does not load"
    + {
      2: " (a cblas / MKL_* symbol is missing)",
      3: " (MKL already runs in this process with another threading layer than GNU OpenMP)",
    }.get(rc, "")
  )
  if m == "mkl":
    raise RuntimeError(f"{SGEMM_ENV}=mkl but MKL is {why}")
  return f"oneDNN (MKL {why})"


def set_sgemm(mode: str) -> None:
  """Switch the float32 products between MKL and oneDNN for this process: ``"mkl"`` (an error if
  MKL is not open) or ``"onednn"``. Unlike :func:`set_mode` this acts when a kernel runs, not
  when it is traced, so compiled functions follow it too (tests and benchmarks compare the two)."""
  if mode not in ("mkl", "onednn"):
    raise ValueError(f"float32 GEMM {mode!r} is not 'mkl' or 'onednn'")
  ok, detail = _load()
  if not ok:
    raise RuntimeError(f"the oneDNN matmul kernel is {detail}")
  if _kernel_lib.kdjax_set_mkl(int(mode == "mkl")) != int(mode == "mkl"):
    raise RuntimeError(f"MKL is not open: {detail}")


@functools.cache
def cpu_flags() -> frozenset[str]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def available() -> bool:
  return _load()[0]


def status() -> dict:
  ok, detail = _load()
  flags = sorted(cpu_flags() & set(BF16_FLAGS))
  gemm = detail.split("float32 GEMM: ", 1)[1] if ok else "XLA"
  return dict(
    mode=mode(),
    built=ok,
    detail=detail,
    bf16_flags=flags,
    used_for_bf16=_enabled(),
    float32_gemm=gemm,
  )


def concrete(*arrays) -> bool:
  """Whether every dimension is a known integer: shape-polymorphic tracing (``jax.export`` with
  symbolic dims) keeps XLA's ops, as the custom calls take their sizes as attributes."""
  return all(isinstance(d, int) for a in arrays for d in np.shape(a))


def _enabled(bf16: bool = True) -> bool:
  """Whether a contraction traced now goes to oneDNN (module docstring): a bfloat16 one, or with
  ``bf16=False`` a float32 batched einsum (oneDNN's float32 kernels need no bf16 flags)."""
  m = mode()
  if m == "xla" or _portable.get() or jax.default_backend() != "cpu" or jax.device_count() != 1:
    return False
  if m == "onednn":
    ok, detail = _load()
    if not ok:
      raise RuntimeError(f"{ENV}=onednn but the oneDNN matmul kernel is {detail}")
    return True
  return (not bf16 or bool(cpu_flags() & set(BF16_FLAGS))) and available()


def _call(a, b, trans_a: bool, trans_b: bool, out_dtype):
  ok, detail = _load()
  if not ok:
    raise RuntimeError(f"the oneDNN matmul kernel is {detail}")
  m = a.shape[1] if trans_a else a.shape[0]
  n = b.shape[0] if trans_b else b.shape[1]
  return jax.ffi.ffi_call(
    TARGET, jax.ShapeDtypeStruct((m, n), out_dtype), vmap_method="sequential"
  )(a, b, trans_a=np.bool_(trans_a), trans_b=np.bool_(trans_b))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x_MxK, w_KxN, out_dtype):
  return _call(x_MxK, w_KxN, False, False, out_dtype)


def _matmul_fwd(x, w, out_dtype):
  return _matmul(x, w, out_dtype), (x, w)


def _matmul_bwd(out_dtype, res, g_MxN):
  x, w = res
  g = g_MxN.astype(x.dtype)  # a float32 cotangent is rounded to the operands' dtype (autocast)
  dx = _call(g, w, False, True, x.dtype)  # [M, N] @ [K, N]^T
  dw = _call(x, g, True, False, w.dtype)  # [M, K]^T @ [M, N]
  return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x_MxK, w_KxN, out_dtype=None):
  """``x @ w`` through oneDNN: both bfloat16 or both float32, accumulated in float32, returned
  in ``out_dtype`` (default the input dtype; bfloat16 inputs may ask for float32)."""
  return _matmul(x_MxK, w_KxN, jnp.dtype(out_dtype or x_MxK.dtype))


def _is_dense(lhs, rhs, dimension_numbers) -> bool:
  (lc, rc), (lb, rb) = dimension_numbers
  return (
    rhs.ndim == 2
    and lhs.ndim >= 1
    and tuple(lc) == (lhs.ndim - 1,)
    and tuple(rc) == (0,)
    and not tuple(lb)
    and not tuple(rb)
  )


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
  """``jax.lax.dot_general`` with the bfloat16 dense contraction sent to oneDNN on CPU."""
  out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else None
  if (
    lhs.dtype == jnp.bfloat16
    and rhs.dtype == jnp.bfloat16
    and out_dtype in (None, jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
    and all(v is None for v in kwargs.values())  # e.g. nnx.Linear's out_sharding=None
    and _is_dense(lhs, rhs, dimension_numbers)
    and concrete(lhs, rhs)
    and _enabled()
  ):
    k, n = rhs.shape
    y = matmul(lhs.reshape(-1, k), rhs, out_dtype)
    return y.reshape(*lhs.shape[:-1], n)
  return jax.lax.dot_general(
    lhs,
    rhs,
    dimension_numbers,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )


# --------------------------------------------------------------------------- dense layer
def _dense_call(x, w, b, act: int):
  ok, detail = _load()
  if not ok:
    raise RuntimeError(f"the oneDNN matmul kernel is {detail}")
  return jax.ffi.ffi_call(
    DENSE_TARGET, jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype), vmap_method="sequential"
  )(x, w, b, act=np.int64(act))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense(x, w, b, act, act_fn):
  return _dense_call(x, w, b, act)  # not differentiated (a frozen teacher): one fused call


def _dense_fwd(x, w, b, act, act_fn):
  # Differentiated: bias in the call, the activation in XLA, its input kept for the backward.
  pre = _dense_call(x, w, b, 0)
  return (act_fn(pre) if act_fn is not None else pre), (x, w, b, pre if act_fn else None)


def _dense_bwd(act, act_fn, res, g):
  x, w, b, pre = res
  if act_fn is not None:
    g = jax.vjp(act_fn, pre)[1](g)[0]
  g = g.astype(x.dtype)
  dx = _call(g, w, False, True, x.dtype)
  dw = _call(x, g, True, False, w.dtype)
  # the bias gradient sum_m g[m, :] as a [1, M] @ [M, N] product: XLA CPU lowers the column sum
  # of a [B, L, N] cotangent as a slow reduce-window (~25 ms for 32 x 128 x 1200 on 2 cores)
  db = _call(jnp.ones((1, g.shape[0]), g.dtype), g, False, False, jnp.float32)[0]
  return dx, dw, db.astype(b.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_enabled(dtype=jnp.bfloat16) -> bool:
  """Whether a dense layer computing in ``dtype`` traced now runs in oneDNN (:func:`dense`):
  bfloat16 as :func:`_enabled`; float32 also on CPUs with AVX-512 (``auto``), where oneDNN's
  float32 kernels on their blocked weights layout are at least XLA's speed and, unlike XLA's
  large fused dots inside a training step, keep it (measured on an AMX Xeon only, so AVX2-only
  CPUs keep XLA's float32 dots)."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.bfloat16:
    return _enabled()
  if dtype != jnp.float32 or not _enabled(bf16=False):
    return False
  return mode() == "onednn" or "avx512f" in cpu_flags()


def dense(x, kernel, bias, activation: str | None = None, act_fn=None):
  """``act(x @ kernel + bias)`` for ``x [..., K]`` and ``kernel [K, N]`` both bfloat16 or both
  float32, ``bias [N]`` (float32 or bfloat16) in one oneDNN call: bias and activation are
  applied to the float32 accumulator, and the result has ``x``'s dtype.

  ``activation`` names a fused one (``FUSED_ACTIVATIONS``) and ``act_fn`` is the same function
  in JAX, used when the layer is differentiated: then the call adds the bias only, XLA applies
  ``act_fn`` and keeps its input for the backward, as an unfused layer does. ``act_fn`` with no
  ``activation`` is applied after the call. Gradients: ``dx = g W^T``, ``dW = x^T g`` and ``db``
  (a ``[1, M] @ [M, N]`` product), all in oneDNN. Callers check :func:`dense_enabled` first.

  oneDNN picks the weights' memory layout (``Prepare`` in ``onednn_matmul.cc``): the kernel is
  reordered into it on each call, which pays for itself many times over (float32 4096 x 768 x
  3072: 125 -> 323 GFLOP/s; bfloat16 1,369 -> 1,870)."""
  if activation is not None and activation not in FUSED_ACTIVATIONS:
    raise ValueError(f"activation {activation!r} is not one of {sorted(FUSED_ACTIVATIONS)}")
  k, n = kernel.shape
  code = FUSED_ACTIVATIONS[activation] if activation is not None else 0
  fn = act_fn if code else None
  y = _dense(x.reshape(-1, k), kernel, bias, code, fn).reshape(*x.shape[:-1], n)
  if act_fn is not None and not code:
    y = act_fn(y)
  return y


# --------------------------------------------------------------------------- batched einsum
def _parse(spec: str, x_ndim: int, y_ndim: int):
  """``(xs, ys, os, batch, m, n, k)`` for a two-operand einsum that is one batched matmul: every
  letter appears once per operand; batch letters in all three, exactly one contracted letter
  ``k`` (both inputs, not the output), one ``m`` (x and output) and one ``n`` (y and output).
  None for anything else (ellipses, traces, broadcasting, sums over one operand)."""
  if "." in spec or "->" not in spec:
    return None
  ins, os_ = spec.replace(" ", "").split("->")
  parts = ins.split(",")
  if len(parts) != 2:
    return None
  xs, ys = parts
  if len(xs) != x_ndim or len(ys) != y_ndim:
    return None
  if any(len(set(t)) != len(t) for t in (xs, ys, os_)):
    return None
  sx, sy, so = set(xs), set(ys), set(os_)
  if not so <= sx | sy:
    return None
  batch = [c for c in os_ if c in sx and c in sy]
  ks = [c for c in xs if c in sy and c not in so]
  ms = [c for c in xs if c in so and c not in sy]
  ns = [c for c in ys if c in so and c not in sx]
  if len(ks) != 1 or len(ms) != 1 or len(ns) != 1 or len(batch) > 3:
    return None
  if len(xs) != len(batch) + 2 or len(ys) != len(batch) + 2:
    return None
  return xs, ys, os_, batch, ms[0], ns[0], ks[0]


def _row_major(sub: str, shape) -> dict:
  st, acc = {}, 1
  for c, d in zip(reversed(sub), reversed(shape)):
    st[c] = acc
    acc *= d
  return st


def _bmm_call(spec: str, x, y, out_dtype):
  ok, detail = _load()
  if not ok:
    raise RuntimeError(f"the oneDNN matmul kernel is {detail}")
  xs, ys, os_, batch, m, n, k = _parse(spec, x.ndim, y.ndim)
  size = {**dict(zip(ys, y.shape)), **dict(zip(xs, x.shape))}
  for c in set(xs) & set(ys):
    if dict(zip(xs, x.shape))[c] != dict(zip(ys, y.shape))[c]:
      raise ValueError(f"einsum {spec!r}: dimension {c!r} differs: {x.shape} vs {y.shape}")
  out_shape = tuple(size[c] for c in os_)
  sx, sy, so = _row_major(xs, x.shape), _row_major(ys, y.shape), _row_major(os_, out_shape)
  if so[n] != 1:
    if so[m] != 1:  # the output's last dim is a batch dim: no oneDNN layout for it
      return jnp.einsum(spec, x, y, preferred_element_type=out_dtype).astype(out_dtype)
    # oneDNN's fast kernels write rows: compute out^T = y^T x^T (its rows are contiguous)
    x, y, sx, sy, m, n = y, x, sy, sx, n, m
  arr = lambda v: np.asarray(v, np.int64)
  return jax.ffi.ffi_call(
    BMM_TARGET, jax.ShapeDtypeStruct(out_shape, out_dtype), vmap_method="sequential"
  )(
    x,
    y,
    batch=arr([size[c] for c in batch]),
    mnk=arr([size[m], size[n], size[k]]),
    a_strides=arr([sx[c] for c in batch] + [sx[m], sx[k]]),
    b_strides=arr([sy[c] for c in batch] + [sy[k], sy[n]]),
    c_strides=arr([so[c] for c in batch] + [so[m], so[n]]),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _bmm(spec, x, y, out_dtype):
  return _bmm_call(spec, x, y, out_dtype)


def _bmm_fwd(spec, x, y, out_dtype):
  return _bmm(spec, x, y, out_dtype), (x, y)


def _bmm_bwd(spec, out_dtype, res, g):
  x, y = res
  xs, ys, os_ = _parse(spec, x.ndim, y.ndim)[:3]
  g = g.astype(x.dtype)  # as _matmul_bwd: the cotangent in the operands' dtype
  return _bmm_call(f"{os_},{ys}->{xs}", g, y, x.dtype), _bmm_call(
    f"{xs},{os_}->{ys}", x, g, y.dtype
  )


_bmm.defvjp(_bmm_fwd, _bmm_bwd)


def einsum(spec: str, x, y, preferred_element_type=None):
  """``jnp.einsum(spec, x, y, preferred_element_type=...)`` with batched matmuls sent to oneDNN
  on CPU: bfloat16 ones when :func:`dot_general` would send a dense layer there, float32 ones
  wherever the kernel is built.

  Applies to two operands of one dtype whose einsum is one batched matmul (:func:`_parse`:
  batch letters, one contracted, one free letter per operand), e.g. attention's
  ``"bqnd,bknd->bnqk"`` and ``"bnqk,bknd->bqnd"``: oneDNN reads each operand through its strides
  as XLA lays it out, so the head split needs no transpose. Result in the operands' dtype, or
  float32 when asked, accumulated in float32. The gradient is two more such einsums
  (``custom_vjp``), with a float32 cotangent of bfloat16 operands rounded to bfloat16 first.
  Anything else is ``jnp.einsum``.

  Why float32 too, when dense float32 layers stay on XLA: XLA CPU runs these many small
  matmuls at 34-54 GFLOP/s in float32 (and ~30 in bfloat16), oneDNN at 200-245 (800-1,000 in
  bfloat16) on a 2-core AMX Xeon, for BERT-base attention at 32 x 128 (``[384, 128, 64]``
  batches)."""
  out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else None
  f32, bf16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
  outs = {bf16: (None, bf16, f32), f32: (None, f32)}.get(jnp.dtype(x.dtype), ())
  if (
    x.dtype == y.dtype
    and out_dtype in outs
    and _parse(spec, x.ndim, y.ndim) is not None
    and concrete(x, y)
    and _enabled(bf16=x.dtype == bf16)
  ):
    return _bmm(spec, x, y, out_dtype or jnp.dtype(x.dtype))
  return jnp.einsum(spec, x, y, preferred_element_type=preferred_element_type)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--build", action="store_true", help="compile the kernel into this venv")
  p.add_argument(
    "--optional",
    action="store_true",
    help="with --build: report a failed build and exit 0 (kdjax then keeps XLA's dots)",
  )
  args = p.parse_args(argv)
  if args.build:
    try:
      build()
    except RuntimeError as e:
      print(f"kdjax.kernels.cpu_matmul: {e}", file=sys.stderr)
      if not args.optional:
        raise SystemExit(1) from None
      print("continuing without it: bfloat16 matmuls on CPU stay on XLA", file=sys.stderr)
  for k, v in status().items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  main()
