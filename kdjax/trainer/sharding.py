"""Mesh construction and the one place that maps logical axis names to mesh axes.

Logical names follow T5X (`batch, embed, mlp, heads, kv, vocab, length`). A rule maps a
logical name to a mesh axis, a tuple of mesh axes, or None (replicated). Rules live in the
config (`logical_axis_rules`) so a recipe only says what each dimension *is*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", None),
  ("length", None),
  ("kv", None),
)

_logged_once: set[str] = set()


def _log_once(msg: str) -> None:
  if msg not in _logged_once:
    _logged_once.add(msg)
    logging.info(msg)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves a `{axis: size}` config where one size may be -1 (= all remaining devices)."""
  sizes = {name: int(mesh_config.get(name, 1)) for name in MESH_AXES}
  extra = set(mesh_config.keys()) - set(MESH_AXES)
  if extra:
    raise ValueError(f"Unknown mesh axes {sorted(extra)}; expected a subset of {MESH_AXES}.")
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {fill}.")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices cannot be split into mesh {dict(sizes)}.")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"Mesh {sizes} needs {math.prod(sizes.values())} devices, have {num_devices}.")
  return sizes


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a ("data", "fsdp", "tensor") mesh over `devices` (default: all global devices).

  Axis types are Auto: jax>=0.7's `jax.make_mesh` defaults to Explicit axes, which would make
  sharding part of the array type and break plain `jax.jit(..., out_shardings=...)` code.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[name] for name in MESH_AXES)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    # Topology-aware device order on TPU/GPU; on CPU this is just the device list.
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except (ValueError, NotImplementedError, AssertionError) as e:  # odd device counts / subsets
    logging.warning("jax.make_mesh failed (%s); falling back to a plain device reshape.", e)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _rules_dict(rules) -> dict[str, Any]:
  out = {}
  for name, target in rules:
    if isinstance(target, list):
      target = tuple(target)
    out[name] = target
  return out


def logical_to_mesh(logical_axes, rules, shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec for an array of `shape` whose dims are named by `logical_axes`.

  `logical_axes` is a tuple (len == ndim) of logical names or None, or None for "replicate".
  A mesh axis is dropped (logged once) when the dimension is not divisible by it, and a mesh
  axis already used by an earlier dimension is not reused.
  """
  if logical_axes is None:
    return P()
  logical_axes = tuple(logical_axes)
  if len(logical_axes) != len(shape):
    raise ValueError(f"Logical axes {logical_axes} do not match shape {tuple(shape)}.")
  table = _rules_dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"No logical_axis_rules entry for logical axis {name!r}.")
    target = table[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = []
    for axis in axes:
      size = mesh.shape[axis]
      if axis in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in kept) * size):
        _log_once(
          f"sharding: dim {name}={dim} of shape {tuple(shape)} not divisible by mesh "
          f"axis {axis}={size}; not sharding it along {axis}."
        )
        continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def tree_shardings(tree, logical_tree, rules, mesh: Mesh):
  """NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs).

  `logical_tree` has `tree`'s structure, each leaf a tuple of logical names or None; it may
  itself be None, meaning "replicate everything".
  """
  if logical_tree is None:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
  return jax.tree.map(
    lambda x, axes: NamedSharding(mesh, logical_to_mesh(axes, rules, np.shape(x), mesh)),
    tree,
    logical_tree,
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules, logical_axes=("batch",), shape=None) -> NamedSharding:
  """Sharding for a batch array; by default only the leading (batch) dim is sharded."""
  if shape is None:
    table = _rules_dict(rules)
    target = table.get(logical_axes[0])
    return NamedSharding(mesh, P(target) if target is not None else P())
  return NamedSharding(mesh, logical_to_mesh(logical_axes, rules, shape, mesh))


def num_batch_shards(mesh: Mesh, rules) -> int:
  """How many ways the "batch" logical axis is split on this mesh."""
  target = _rules_dict(rules).get("batch")
  axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
  return math.prod(mesh.shape[a] for a in axes)


def place(tree, shardings):
  """Puts a host (or single-device) pytree on the mesh; works multi-host.

  Every process must pass the same values. Leaves already carrying the target sharding are
  kept as they are.
  """

  def put(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree, shardings)
