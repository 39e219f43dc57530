"""kdjax: JAX-native knowledge distillation for BERT-style encoders."""

import os as _os

__version__ = "0.1.0"

# XLA flags kdjax adds to ``XLA_FLAGS`` when it is imported, each unless ``XLA_FLAGS`` already
# names it (the user's setting wins); ``KDJAX_XLA_DEFAULTS=0`` adds none. XLA reads the variable
# when its first backend starts, so they apply to processes that import kdjax before running
# anything in JAX (every kdjax CLI does).
#
# ``xla_cpu_enable_concurrency_optimized_scheduler=false``: XLA CPU's default schedule orders a
# step's independent ops (teacher and student branches, the optimizer's leaves) to run at the
# same time on its thread pool. kdjax's matmul kernel (``kdjax.kernels.cpu_matmul``) already uses
# every core per call through OpenMP, so the concurrent ops only compete with it for the cores.
# The memory-oriented schedule measured faster and smaller on a 2-core AMX Xeon (fresh process
# per run, alternating, min step time): MiniLMv2 8 x 128 float32 -5 to -7 %, 32 x 128 -6 %,
# 8 x 512 -6 %; bfloat16 8 x 128 -2 to -13 %, 32 x 128 -10 to +2 %; TinyBERT float32 -1 to -5 %,
# bfloat16 -16 to +5 %; peak RSS lower in 18 of 19 pairs (8 x 512: 3.79 -> 3.26 GiB;
# benchmarks/peers/README.md). GPU and TPU compilers ignore the flag.
XLA_DEFAULTS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def _add_xla_defaults(environ=_os.environ) -> None:
  if environ.get("KDJAX_XLA_DEFAULTS", "1").strip() == "0":
    return
  flags = environ.get("XLA_FLAGS", "")
  add = [f for f in XLA_DEFAULTS if f.split("=", 1)[0] not in flags]
  if add:
    environ["XLA_FLAGS"] = " ".join([flags.strip(), *add]).strip()


_add_xla_defaults()
