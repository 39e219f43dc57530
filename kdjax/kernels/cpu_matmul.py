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
(``onednn_matmul.cc``: oneDNN's matmul primitive, float32 accumulation, bfloat16 output, as
XLA's bf16 dot returns); everything else goes to ``jax.lax.dot_general``. The gradient is written
out (``jax.custom_vjp``): ``dx = g @ w^T`` and ``dw = x^T @ g``, both through the same kernel.

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
float32 stays on XLA: its float32 dots already match oneDNN's (the roofline table).

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
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "kdjax_onednn_matmul"
MODES = ("auto", "onednn", "xla")
ENV = "KDJAX_CPU_MATMUL"
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
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.KdjaxOnednnMatmul), platform="cpu")
  lib.kdjax_onednn_version.restype = ctypes.c_char_p
  return True, f"oneDNN {lib.kdjax_onednn_version().decode()} ({path})"


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
  return dict(mode=mode(), built=ok, detail=detail, bf16_flags=flags, used_for_bf16=_enabled())


def _enabled() -> bool:
  """Whether a bf16 dense contraction traced now goes to oneDNN (module docstring)."""
  m = mode()
  if m == "xla" or _portable.get() or jax.default_backend() != "cpu" or jax.device_count() != 1:
    return False
  if m == "onednn":
    ok, detail = _load()
    if not ok:
      raise RuntimeError(f"{ENV}=onednn but the oneDNN matmul kernel is {detail}")
    return True
  return bool(cpu_flags() & set(BF16_FLAGS)) and available()


def _call(a, b, trans_a: bool, trans_b: bool, out_dtype):
  ok, detail = _load()
  if not ok:
    raise RuntimeError(f"the oneDNN matmul kernel is {detail}")
  m = a.shape[1] if trans_a else a.shape[0]
  n = b.shape[0] if trans_b else b.shape[1]
  return jax.ffi.ffi_call(
    TARGET, jax.ShapeDtypeStruct((m, n), out_dtype), vmap_method="sequential"
  )(a, b, trans_a=np.bool_(trans_a), trans_b=np.bool_(trans_b))


@jax.custom_vjp
def matmul(x_MxK, w_KxN):
  """``x @ w`` through oneDNN (both bfloat16 or both float32; output in the input dtype)."""
  return _call(x_MxK, w_KxN, False, False, x_MxK.dtype)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(res, g_MxN):
  x, w = res
  g = g_MxN.astype(x.dtype)
  dx = _call(g, w, False, True, x.dtype)  # [M, N] @ [K, N]^T
  dw = _call(x, g, True, False, w.dtype)  # [M, K]^T @ [M, N]
  return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


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
    and out_dtype in (None, jnp.dtype(jnp.bfloat16))
    and all(v is None for v in kwargs.values())  # e.g. nnx.Linear's out_sharding=None
    and _is_dense(lhs, rhs, dimension_numbers)
    and _enabled()
  ):
    k, n = rhs.shape
    y = matmul(lhs.reshape(-1, k), rhs)
    return y.reshape(*lhs.shape[:-1], n)
  return jax.lax.dot_general(
    lhs,
    rhs,
    dimension_numbers,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )


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
