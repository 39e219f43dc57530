"""Handing the C heap's free pages back to the operating system between the trainer's phases.

Loading a teacher, building the state and compiling the step free hundreds of MB of small C
allocations (safetensors reads, host copies, LLVM's working memory) that glibc's malloc keeps
in its arenas: the process's resident set stays at that high-water mark and the first step's
buffers are allocated on top of it. ``malloc_trim(0)`` returns every free page of every arena
(``madvise(MADV_DONTNEED)``), not only the top of the heap as malloc does by itself. On the
TinyBERT BERT-base -> 4L/312H step at 8 x 128 (float32, 2-core Xeon) the peak RSS went from
1.82 to 1.49 GiB with a trim after building and one after compiling (``benchmarks/peers``).

On a libc without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
  if not sys.platform.startswith("linux"):
    return None
  try:
    fn = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return None
  fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
  return fn


def release_free_host_memory() -> bool:
  """glibc ``malloc_trim(0)``: True when memory was returned to the OS, False when none was
  (or the libc has no such call). Costs milliseconds; safe while other threads allocate."""
  fn = _malloc_trim()
  return bool(fn(0)) if fn is not None else False


class CompileFirstCall:
  """A jitted function whose first call compiles ahead of time (``lower(...).compile()``, which
  jit's own cache then reuses: nothing is compiled twice), hands the compiler's freed memory
  back (``release_free_host_memory``), and only then runs, so the run's buffers do not stack on
  the compiler's leftovers. Later calls go straight to the jitted function; every other
  attribute (``lower``, ``trace``, ...) is the jitted function's."""

  def __init__(self, jitted):
    self._jitted = jitted
    self._compiled = False

  def __call__(self, *args):
    if not self._compiled:
      self._jitted.lower(*args).compile()
      release_free_host_memory()
      self._compiled = True
    return self._jitted(*args)

  def __getattr__(self, name):
    return getattr(self._jitted, name)
