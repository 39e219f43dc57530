"""Calibration of the activation thresholds of INT8 post-training quantization.

The observed tensors are the inputs of the six quantized matmuls of every encoder layer
(``kdjax.compress.quant.LINEARS``), collected from a float32 forward pass over the first
``batch_nums`` batches of ``batch_size`` examples (in file order, each batch cut to its longest
example as PaddleNLP's ``Pad`` collation does; padded positions inside a batch are observed, as
in PaddleSlim). The algorithms follow PaddleSlim's ``PostTrainingQuantization``
(``onnx_format=True``) exactly:

* ``abs_max``: ``T = max over batches of max |x|``.
* ``avg``: per batch, the mean over its examples of each example's ``max |x|``;
  ``T = the mean over batches`` of those.
* ``mse``: per batch, with ``m = max |x|`` of the batch (1e-8 if 0), try ``T = r * m`` for
  ``r = 0.3, 0.32, ...`` while ``r <= 1.0`` (accumulated in float64 as PaddleSlim does, so the
  grid is 35 values ending at 0.98), the loss ``mean((x - dq(x; T))^2)`` with
  ``dq = clip(round(x / T * 127), -128, 127) / 127 * T``; keep the ``T`` of the lowest loss seen
  over every (batch, r) (ties: the later one, PaddleSlim's ``<=``).
* ``hist``: a first pass takes ``lo, hi = min / max of |x|`` over the batches, a second pass
  accumulates the 2048-bin (``histogram_bins``) histogram of ``|x|`` on ``[lo, hi]``; with the
  normalized histogram, ``k`` = the first bin index (1-based) at which the cumulative sum
  reaches ``hist_percent``, ``T = (k - 0.5) * bin_width`` (PaddleSlim's formula, which does not
  add ``lo``). PaddleSlim's default ``hist_percent`` is 0.99999; PP-MiniLM's ``quant_post.py``
  passes 0.9999 (:data:`HIST_PERCENT`, our default).

Weights need no calibration (per-output-channel abs_max, ``quant.weight_scales``).

One pass computes every algorithm's per-batch statistics (the reductions run jitted on the
device; ``hist`` adds the second pass, histograms in NumPy), so a table over algorithms x
``batch_nums`` costs ``2 * max(batch_nums)`` forward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.compress.quant import encoder_linears

ALGORITHMS = ("abs_max", "avg", "mse", "hist")
HIST_PERCENT = 0.9999  # PP-MiniLM quant_post.py (PaddleSlim's default: 0.99999)
HISTOGRAM_BINS = 2048  # PaddleSlim's default
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")

__all__ = [
  "ALGORITHMS",
  "HISTOGRAM_BINS",
  "HIST_PERCENT",
  "calibrate",
  "calibrate_tensors",
  "calibration_batches",
  "check_algorithms",
  "collect_fn",
  "hist_threshold",
  "mse_grid",
  "mse_search",
]


def mse_grid() -> np.ndarray:
  """PaddleSlim's search ratios: ``r = 0.3; while r <= 1.0: ...; r += 0.02`` (float64)."""
  out, r = [], 0.3
  while r <= 1.0:
    out.append(r)
    r += 0.02
  return np.asarray(out, np.float64)


def check_algorithms(algorithms: Sequence[str], key: str = "algorithms") -> tuple[str, ...]:
  algos = tuple(algorithms)
  if not algos:
    raise ValueError(f"config key {key!r} is empty: name one or more of {', '.join(ALGORITHMS)}")
  for a in algos:
    if a not in ALGORITHMS:
      raise ValueError(
        f"config key {key!r}: unknown calibration algorithm {a!r} (one of {', '.join(ALGORITHMS)})"
      )
  return algos


# ------------------------------------------------------------------------- per-batch stats
def mse_search(x, grid=None):
  """(best loss, best threshold) of one batch's tensor ``x`` over :func:`mse_grid` (traceable;
  ties go to the larger ratio, as PaddleSlim's ``<=``)."""
  grid = jnp.asarray(mse_grid() if grid is None else grid, jnp.float32)
  x = jnp.asarray(x, jnp.float32).reshape(-1)
  m = jnp.max(jnp.abs(x))
  m = jnp.where(m == 0, jnp.float32(1e-8), m)

  def loss(r):
    t = r * m
    q = jnp.clip(jnp.round(x / t * 127.0), -128.0, 127.0)
    return jnp.mean(jnp.square(x - q / 127.0 * t))

  losses = jax.lax.map(loss, grid)
  last = grid.shape[0] - 1 - jnp.argmin(losses[::-1])
  return losses[last], grid[last] * m


def _batch_stats(x):
  a = jnp.abs(jnp.asarray(x, jnp.float32))
  per_example = jnp.max(a.reshape(a.shape[0], -1), axis=1)
  loss, t = mse_search(x)
  return {
    "abs_max": jnp.max(a),
    "abs_min": jnp.min(a),
    "avg": jnp.mean(per_example),
    "mse_loss": loss,
    "mse_threshold": t,
  }


_batch_stats_jit = jax.jit(_batch_stats)  # per tensor: one compile per shape, not per dict


def hist_threshold(hist: np.ndarray, edges: np.ndarray, percent: float) -> float:
  """PaddleSlim's ``_get_hist_scaling_factor``."""
  h = np.asarray(hist, np.float64)
  h = h / float(h.sum())
  cum, index = 0.0, 0
  for i, v in enumerate(h):
    cum += v
    if cum >= percent:
      index = i + 1
      break
  return float((index - 0.5) * (edges[1] - edges[0]))


# --------------------------------------------------------------------------- observation
class _Collect:
  active: dict | None = None


@contextlib.contextmanager
def _collecting():
  _Collect.active = {}
  try:
    yield _Collect.active
  finally:
    _Collect.active = None


class _Observed(nnx.Module):
  """A linear that records its input (while :func:`_collecting`), then runs unchanged."""

  def __init__(self, linear: nnx.Module, key: str):
    self.linear = linear
    self.key = key

  def __call__(self, x):
    if _Collect.active is not None:
      _Collect.active[self.key] = x
    return self.linear(x)


def _key(i: int, name: str) -> str:
  return f"{i}/{name}"


def _name(k) -> str:
  return _key(*k) if isinstance(k, tuple) else str(k)


def collect_fn(model: nnx.Module):
  """``fn(ids, mask, types) -> {"<layer>/<name>": input activation}`` (jitted, float32): a
  copy of ``model`` with observers around its quantizable linears."""
  from kdjax.models import params as P
  from kdjax.models.bert import encoder_of

  skeleton, params = P.split(model)
  m = P.bind(skeleton, params)  # a copy: the caller's model is left as it is
  enc = encoder_of(m)
  for (i, name), mod in encoder_linears(m).items():
    setattr(enc.layer[i], name, _Observed(mod, _key(i, name)))
  graphdef, state = nnx.split(m)

  @jax.jit
  def fn(ids, mask, types):
    mm = nnx.merge(graphdef, state)
    with _collecting() as got:
      mm(ids, attention_mask=mask, token_type_ids=types)
    return dict(got)

  return fn


# ------------------------------------------------------------------------------ the data
def calibration_batches(
  features: Mapping[str, np.ndarray],
  batch_size: int,
  batch_nums: int,
  *,
  what: str = "the calibration data",
) -> list[dict[str, np.ndarray]]:
  """The first ``batch_nums`` full batches of ``features`` (file order), each cut to its
  longest example. Errors name the config keys ``batch_size`` / ``batch_nums``."""
  n = len(features["input_ids"]) if features else 0
  if batch_size <= 0:
    raise ValueError(f"config key 'batch_size'={batch_size} must be positive")
  if batch_nums <= 0:
    raise ValueError(f"config key 'batch_nums'={batch_nums} must be positive")
  if n == 0:
    raise ValueError(
      f"no calibration data: {what} has no examples (set config keys 'calibration_split' / "
      "'data_dir' to a split with examples)"
    )
  if n < batch_size * batch_nums:
    raise ValueError(
      f"{what} has {n} examples, fewer than config keys 'batch_nums'={batch_nums} x "
      f"'batch_size'={batch_size} = {batch_size * batch_nums}"
    )
  out = []
  for b in range(batch_nums):
    rows = slice(b * batch_size, (b + 1) * batch_size)
    mask = np.asarray(features["attention_mask"][rows])
    length = max(int(mask.sum(axis=1).max()), 1)
    out.append({k: np.asarray(features[k][rows][:, :length], np.int32) for k in INPUT_KEYS})
  return out


# ------------------------------------------------------------------------------ calibrate
def calibrate(
  model: nnx.Module,
  batches: Sequence[Mapping[str, np.ndarray]],
  algorithms: Sequence[str] = ALGORITHMS,
  batch_nums: Sequence[int] | None = None,
  *,
  hist_percent: float = HIST_PERCENT,
  histogram_bins: int = HISTOGRAM_BINS,
) -> dict[tuple[str, int], dict[tuple[int, str], float]]:
  """``{(algorithm, n): {(layer, linear): threshold}}`` for every algorithm and every ``n`` in
  ``batch_nums`` (default: ``len(batches)``), each from the first ``n`` of ``batches``."""
  algorithms = check_algorithms(algorithms)
  nums = sorted({int(n) for n in (batch_nums or [len(batches)])})
  if not batches:
    raise ValueError("no calibration data: no batches to calibrate on")
  if nums[0] <= 0 or nums[-1] > len(batches):
    raise ValueError(f"config key 'batch_nums': {nums} must lie in 1..{len(batches)}")
  fn = collect_fn(model)
  keys = list(encoder_linears(model))

  def activations():
    for b in batches[: nums[-1]]:
      acts = fn(*(jnp.asarray(b[k]) for k in INPUT_KEYS))
      yield {k: acts[_key(*k)] for k in keys}

  return calibrate_tensors(
    activations,
    keys,
    algorithms,
    nums,
    hist_percent=hist_percent,
    histogram_bins=histogram_bins,
  )


def calibrate_tensors(
  activations: Callable[[], Iterable[Mapping]],
  keys: Sequence,
  algorithms: Sequence[str] = ALGORITHMS,
  batch_nums: Sequence[int] = (1,),
  *,
  hist_percent: float = HIST_PERCENT,
  histogram_bins: int = HISTOGRAM_BINS,
) -> dict:
  """The algorithms on given tensors: ``activations()`` yields, per batch, ``{key: array
  [batch, ...]}`` (called twice for ``hist``); returns ``{(algorithm, n): {key: threshold}}``."""
  algorithms = check_algorithms(algorithms)
  nums = sorted({int(n) for n in batch_nums})
  stats = []  # per batch: {key: {stat: float}}
  for j, acts in enumerate(activations()):
    if j >= nums[-1]:
      break
    got = jax.device_get({_name(k): _batch_stats_jit(acts[k]) for k in keys})
    stats.append({k: {s: float(v) for s, v in got[_name(k)].items()} for k in keys})
  if len(stats) < nums[-1]:
    raise ValueError(f"no calibration data: {len(stats)} batches for batch_nums {nums}")

  result: dict[tuple[str, int], dict[tuple[int, str], float]] = {}
  for n in nums:
    for algo in algorithms:
      if algo == "hist":
        continue
      th = {}
      for k in keys:
        per = [stats[j][k] for j in range(n)]
        if algo == "abs_max":
          th[k] = max(p["abs_max"] for p in per)
        elif algo == "avg":
          th[k] = float(np.mean([p["avg"] for p in per]))
        else:  # mse: the lowest loss over (batch, ratio); ties -> the later batch
          best = min(range(n), key=lambda j: (per[j]["mse_loss"], -j))
          th[k] = per[best]["mse_threshold"]
      result[algo, n] = th

  if "hist" in algorithms:
    ranges = {
      n: {
        k: (
          min(stats[j][k]["abs_min"] for j in range(n)),
          max(stats[j][k]["abs_max"] for j in range(n)),
        )
        for k in keys
      }
      for n in nums
    }
    hists = {n: {k: np.zeros(histogram_bins, np.int64) for k in keys} for n in nums}
    edges = {}
    for j, acts in enumerate(activations()):
      if j >= nums[-1]:
        break
      for k in keys:
        a = np.abs(np.asarray(jax.device_get(acts[k]), np.float32))
        for n in nums:
          if j < n:
            h, e = np.histogram(a, bins=histogram_bins, range=ranges[n][k])
            hists[n][k] += h
            edges[n, k] = e
    for n in nums:
      result["hist", n] = {k: hist_threshold(hists[n][k], edges[n, k], hist_percent) for k in keys}
  # the order of the table: algorithms as given, then n
  return {(a, n): result[a, n] for n in nums for a in algorithms}
