"""The train state: a plain dict pytree, and the shardings it lives in.

    {"params":    the trainable student (any pytree of float arrays),
     "opt_state": optax state,
     "step":      int32 scalar, number of optimizer updates done,
     "rng":       uint32[2] raw key data (`jax.random.key_data`), fixed for the whole run}

The rng is stored as raw key data because orbax saves plain uint32 arrays everywhere; the
per-step key is `fold_in(rng, step)`, so a resumed run draws exactly the keys of an
uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

TrainState = dict  # {"params", "opt_state", "step", "rng"}


def create_state(params, optimizer, rng) -> TrainState:
  return {
    "params": params,
    "opt_state": optimizer.init(params),
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(rng),
  }


def step_rng(state: TrainState):
  """Typed PRNG key for the update `state["step"]` (independent of how many ran here)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def opt_state_shardings(abstract_opt_state, params, param_shardings, mesh):
  """Shard optimizer moments like the parameters they shadow, everything else replicated.

  Matching is by key-path suffix plus shape, so it works for any optax chain (masked states
  drop leaves, chains add prefixes such as `[1][0].mu`) without relying on optax internals.
  """
  by_path = {}
  for (path, leaf), sharding in zip(
    jax.tree.leaves_with_path(params), jax.tree.leaves(param_shardings)
  ):
    by_path[tuple(path)] = (tuple(np.shape(leaf)), sharding)
  repl = NamedSharding(mesh, P())

  def pick(path, leaf):
    path = tuple(path)
    for i in range(len(path) + 1):
      hit = by_path.get(path[i:])
      if hit is not None and hit[0] == tuple(np.shape(leaf)):
        return hit[1]
    return repl

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(abstract_state: TrainState, param_shardings, mesh) -> TrainState:
  repl = NamedSharding(mesh, P())
  return {
    "params": param_shardings,
    "opt_state": opt_state_shardings(
      abstract_state["opt_state"], abstract_state["params"], param_shardings, mesh
    ),
    "step": repl,
    "rng": repl,
  }


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying target shardings (for orbax restore / jit init)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings
  )


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def finite_flags(tree) -> list:
  """One bool scalar per leaf of ``tree`` (jittable): True when every value of the leaf is
  finite (always True for integer and bool leaves)."""
  return [
    jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    for x in jax.tree.leaves(tree)
  ]


_finite_flags_jit = jax.jit(finite_flags)


def _name(path) -> str:
  keys = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        keys.append(str(getattr(k, attr)))
        break
    else:
      keys.append(str(k))
  return "/".join(keys)


def nonfinite_paths(tree, flags=None) -> list[str]:
  """Names ("dense1/kernel") of the leaves of ``tree`` holding NaN or Inf.

  ``flags``: ``finite_flags(tree)`` computed elsewhere (e.g. by a jitted function with
  replicated outputs on a multi-host mesh); by default computed here, one fetch in all."""
  names = [_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  if flags is None:
    flags = _finite_flags_jit(tree)
  return [n for n, ok in zip(names, jax.device_get(flags)) if not bool(ok)]
