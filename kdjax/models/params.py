"""Moving between NNX modules and plain parameter pytrees.

The trainer, optimizer and checkpoints see parameters as nested dicts with string
keys (``{"bert": {"layer": {"0": {"query": {"kernel": ...}}}}}``); models are
rebuilt from them inside jitted functions with :func:`bind`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def _str_keys(tree):
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _restore_keys(template, tree):
  """Map string keys back onto the key types of ``template`` (nnx.List uses ints)."""
  if not isinstance(template, dict):
    return tree
  by_str = {str(k): k for k in template}
  out = {}
  for k, v in tree.items():
    if k not in by_str:
      raise KeyError(f"unexpected parameter {k!r}")
    out[by_str[k]] = _restore_keys(template[by_str[k]], v)
  return out


def split(model: nnx.Module) -> tuple[Any, dict]:
  """(graphdef-with-abstract-state, params) where params is a string-keyed dict."""
  graphdef, state = nnx.split(model, nnx.Param)
  return (graphdef, state), _str_keys(nnx.to_pure_dict(state))


def params_of(model: nnx.Module) -> dict:
  return split(model)[1]


def bind(skeleton, params: dict) -> nnx.Module:
  """Rebuild a module from :func:`split`'s skeleton and a params dict (jit-safe)."""
  graphdef, state = skeleton
  template = nnx.to_pure_dict(state)
  state = jax.tree.map(lambda x: x, state)  # do not mutate the skeleton's state
  nnx.replace_by_pure_dict(state, _restore_keys(template, params))
  return nnx.merge(graphdef, state)


HOST_ALIGNMENT = 64  # bytes: XLA CPU uses a host array in place only at this alignment


def host_aligned(x: np.ndarray) -> np.ndarray:
  """``x`` with its data at a ``HOST_ALIGNMENT``-byte boundary (copied only if it is not).

  XLA CPU takes an aligned numpy argument of a jitted call in place and copies a misaligned
  one on every call. Orbax restores most tensors of a checkpoint misaligned, so a loaded
  model's host params cost a full copy per forward: the pruned 3L/384H Rotten Tomatoes student
  at 32 x 64 ran 98.6 ms per batch with them against 78.3 ms with aligned ones (2-core AMX
  Xeon)."""
  x = np.asarray(x)
  if x.ctypes.data % HOST_ALIGNMENT == 0:
    return x
  buf = np.empty(x.nbytes + HOST_ALIGNMENT, np.uint8)
  start = -buf.ctypes.data % HOST_ALIGNMENT
  out = buf[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
  out[...] = x
  return out


def abstract_skeleton(make_model) -> Any:
  """A skeleton without allocating parameters (for loading big checkpoints)."""
  model = nnx.eval_shape(make_model)
  return split(model)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def flatten(params: dict, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in params.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out
