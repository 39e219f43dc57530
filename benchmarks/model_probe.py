"""Where does a BERT step's time go? Times the encoder forward and forward+backward by compute
dtype and with/without dropout, in one process (ratios are against float32, no dropout).

  python benchmarks/model_probe.py --layers=6 --hidden=384 --heads=12 --ffn=1536 --batch=256
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import models


def timeit(fn, *args, n=10):
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--hidden", type=int, default=384)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--ffn", type=int, default=1536)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, 30000, (a.batch, a.seq)), jnp.int32)
  mask = jnp.ones((a.batch, a.seq), jnp.int32)
  base = None
  for dtype in ("float32", "bfloat16"):
    cfg = models.BertConfig(
      vocab_size=30522,
      hidden_size=a.hidden,
      num_hidden_layers=a.layers,
      num_attention_heads=a.heads,
      intermediate_size=a.ffn,
      dtype=dtype,
    )
    skel, params = models.split(models.create_model(cfg, "none", add_pooling_layer=False))
    for dropout in (False, True):

      def loss(p, key, skel=skel, dropout=dropout):
        out = models.bind(skel, p)(
          ids, attention_mask=mask, deterministic=not dropout, dropout_rng=key
        )
        return jnp.mean(out.last_hidden_state.astype(jnp.float32) ** 2)

      fwd = jax.jit(loss)
      grad = jax.jit(jax.grad(loss))
      key = jax.random.key(0)
      tf = timeit(fwd, params, key, n=a.steps)
      tg = timeit(grad, params, key, n=a.steps)
      base = base or (tf, tg)
      print(
        f"{dtype:9s} dropout={dropout!s:5s} fwd {1000 * tf:8.2f} ms ({tf / base[0]:.2f}x)  "
        f"fwd+bwd {1000 * tg:8.2f} ms ({tg / base[1]:.2f}x)",
        flush=True,
      )


if __name__ == "__main__":
  main()
