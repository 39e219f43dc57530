"""A toy recipe for the trainer tests, runnable as a script in subprocesses.

Student: 2-layer MLP (8 -> 16 -> 8) with dropout on the hidden layer (so the step key
matters). Teacher: a frozen random MLP of the same shape whose outputs are the targets.
Data: global batch k is `normal(seed + k)`; process p of P yields rows [p*B/P, (p+1)*B/P).

    python tests/helpers_trainer.py WORKDIR '{"max_steps": 6, ...}'
(PYTHONPATH must contain the repo root; KDJAX_* env vars select devices / processes.)
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

D_IN, D_HIDDEN, D_OUT = 8, 16, 8


def _mlp_init(rng_np, scale=1.0):
  return {
    "dense1": {
      "kernel": rng_np.normal(size=(D_IN, D_HIDDEN)).astype(np.float32) * scale / np.sqrt(D_IN),
      "bias": np.zeros(D_HIDDEN, np.float32),
    },
    "dense2": {
      "kernel": rng_np.normal(size=(D_HIDDEN, D_OUT)).astype(np.float32)
      * scale
      / np.sqrt(D_HIDDEN),
      "bias": rng_np.normal(size=(D_OUT,)).astype(np.float32) * 0.1,
    },
  }


MLP_AXES = {
  "dense1": {"kernel": ("embed", "mlp"), "bias": ("mlp",)},
  "dense2": {"kernel": ("mlp", "embed"), "bias": ("embed",)},
}


def mlp_apply(params, x, dropout_rng=None, rate=0.0):
  import jax
  import jax.numpy as jnp

  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  if dropout_rng is not None and rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - rate, h.shape)
    h = jnp.where(keep, h / (1.0 - rate), 0.0)
  return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]


class ToyData:
  def __init__(
    self, batch_size, process_index=0, process_count=1, seed=0, block_at=None, marker=None
  ):
    self.batch_size, self.seed = batch_size, seed
    self.pi, self.pc = process_index, process_count
    self.index = 0
    self.block_at, self.marker = block_at, marker

  def __iter__(self):
    return self

  def __next__(self):
    if self.block_at is not None and self.index == self.block_at:
      # Simulates a job that hangs here until it is killed (the test SIGKILLs it).
      open(self.marker, "w").close()
      time.sleep(3600)
    x = (
      np.random.default_rng(self.seed + self.index)
      .normal(size=(self.batch_size, D_IN))
      .astype(np.float32)
    )
    rows = self.batch_size // self.pc
    self.index += 1
    return {"x": x[self.pi * rows : (self.pi + 1) * rows]}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


class ToyRecipe:
  """MLP regression onto a frozen teacher. `dropout` > 0 makes the loss depend on the key."""

  def __init__(self, batch_size=8, dropout=0.1, data_seed=0, block_at=None, marker=None):
    self.batch_size, self.dropout = batch_size, dropout
    self.data_seed, self.block_at, self.marker = data_seed, block_at, marker
    self.evaluated, self.exported = [], None

  def init_params(self, rng):
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(rng)
    return {
      "dense1": {
        "kernel": jax.random.normal(k1, (D_IN, D_HIDDEN)) / np.sqrt(D_IN),
        "bias": jnp.zeros(D_HIDDEN),
      },
      "dense2": {
        "kernel": jax.random.normal(k2, (D_HIDDEN, D_OUT)) / np.sqrt(D_HIDDEN),
        "bias": jnp.zeros(D_OUT),
      },
    }

  def param_logical_axes(self, params):
    return MLP_AXES

  def init_frozen(self):
    return _mlp_init(np.random.RandomState(1234), scale=2.0)

  def frozen_logical_axes(self, frozen):
    return MLP_AXES

  def loss_fn(self, params, frozen, batch, rng):
    import jax
    import jax.numpy as jnp

    target = jax.lax.stop_gradient(mlp_apply(frozen, batch["x"]))
    pred = mlp_apply(params, batch["x"], rng, self.dropout)
    mse = jnp.mean((pred - target) ** 2)
    return mse, {"mse": mse, "pred_abs": jnp.mean(jnp.abs(pred))}

  def train_data(self, process_index, process_count):
    return ToyData(
      self.batch_size, process_index, process_count, self.data_seed, self.block_at, self.marker
    )

  def flops_per_example(self):
    return 6.0 * (D_IN * D_HIDDEN + D_HIDDEN * D_OUT)

  def tokens_per_example(self, batch):
    return 1.0

  def evaluate(self, params, frozen, step):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(999).normal(size=(16, D_IN)), jnp.float32)
    mse = jax.jit(lambda p, f: jnp.mean((mlp_apply(p, x) - mlp_apply(f, x)) ** 2))(params, frozen)
    mse = float(mse)
    self.evaluated.append(step)
    return {"mse": mse, "score": -mse}

  def export(self, params, directory):
    import jax

    flat = {
      jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    np.savez(os.path.join(directory, "params.npz"), **flat)
    self.exported = directory


def toy_config(**overrides):
  from kdjax.trainer import default_trainer_config

  c = default_trainer_config()
  c.batch_size = 8
  c.max_steps = 6
  c.learning_rate = 3e-2
  c.warmup_steps = 1
  c.save_steps = 0
  c.logging_steps = 1
  c.progress_bar = False
  c.tensorboard = False
  c.mesh.data = -1
  with c.ignore_type():
    for k, v in overrides.items():
      if k == "mesh":
        c.mesh.update(v)
      else:
        c[k] = v
  return c


def load_params(workdir):
  with np.load(os.path.join(workdir, "export", "params.npz")) as z:
    return {k: z[k] for k in z.files}


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def main(argv):
  from absl import logging

  logging.set_verbosity(logging.INFO)
  from kdjax.trainer.distributed import maybe_initialize_distributed

  maybe_initialize_distributed()
  workdir, overrides = argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
  recipe_kw = overrides.pop("recipe", {})
  config = toy_config(**overrides)
  recipe = ToyRecipe(batch_size=config.batch_size, **recipe_kw)
  from kdjax.trainer import Trainer

  trainer = Trainer(config, recipe, workdir)
  state = trainer.train()
  import jax

  sharding = {
    jax.tree_util.keystr(p): str(x.sharding.spec)
    for p, x in jax.tree_util.tree_leaves_with_path(state["params"])
  }
  opt_spec = {
    jax.tree_util.keystr(p): str(x.sharding.spec)
    for p, x in jax.tree_util.tree_leaves_with_path(state["opt_state"])
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
      json.dump(
        {
          "params_spec": sharding,
          "opt_spec": opt_spec,
          "devices": jax.device_count(),
          "processes": jax.process_count(),
          "mesh": dict(trainer.mesh.shape),
        },
        f,
      )


if __name__ == "__main__":
  main(sys.argv)
