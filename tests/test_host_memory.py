"""kdjax.trainer.host_memory: free C-heap pages go back to the OS, and the trainer's step is
compiled once, ahead of its first run."""

from __future__ import annotations

import ctypes
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.trainer.host_memory import CompileFirstCall, release_free_host_memory


def _rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_returns_free_heap_pages():
  libc = ctypes.CDLL(None)
  if not hasattr(libc, "malloc_trim"):
    pytest.skip("libc without malloc_trim")
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  block, count = 64 * 1024, 3200  # 200 MiB of blocks below the mmap threshold: heap memory
  ptrs = [libc.malloc(block) for _ in range(count)]
  for p in ptrs:
    ctypes.memset(p, 1, block)  # make the pages resident
  keep = ptrs[-1]  # a live block above the others: malloc cannot just shrink the heap's top
  for p in ptrs[:-1]:
    libc.free(p)
  before = _rss_bytes()
  assert release_free_host_memory()
  freed = before - _rss_bytes()
  libc.free(keep)
  assert freed > 100 * 2**20, f"only {freed / 2**20:.0f} MiB returned"


def test_compile_first_call_compiles_once_and_matches_jit():
  traces = []

  def f(x, y):
    traces.append(1)
    return (x * y).sum(), x + 1

  jitted = jax.jit(f, donate_argnums=0)
  step = CompileFirstCall(jitted)
  x, y = jnp.arange(6.0).reshape(2, 3), jnp.full((2, 3), 2.0)
  want = f(np.arange(6.0).reshape(2, 3), np.full((2, 3), 2.0))
  got = step(x, y)
  np.testing.assert_allclose(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1])
  assert len(traces) == 2  # one trace for `want` (eager), one for the ahead-of-time compile
  got = step(got[1], y)
  assert len(traces) == 2 and jitted._cache_size() == 1  # the call reused the AOT executable
  np.testing.assert_allclose(got[1], np.arange(6.0).reshape(2, 3) + 2)
  assert step.lower(x, y).as_text() == jitted.lower(x, y).as_text()  # attributes pass through
