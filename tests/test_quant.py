"""INT8 post-training quantization: calibration algorithms against NumPy ports of PaddleSlim's
PostTrainingQuantization (onnx_format=True), fake quantization, per-channel weight scales, the
simulated-INT8 model and quantization.json, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_classification import write_tiny_model

from kdjax.compress import calibrate as C
from kdjax.compress import quant as Q


# ------------------------------------------------------------------ NumPy references
def ref_abs_max(batches):
  t = None
  for x in batches:
    v = float(np.max(np.abs(x)))
    if t is None or v > t:
      t = v
  return t


def ref_avg(batches):
  vals = [float(np.mean(np.max(np.abs(x.reshape(x.shape[0], -1)), axis=1))) for x in batches]
  return float(np.array(vals).mean())


def ref_mse(batches):
  best_loss, best = float("inf"), None
  for x in batches:
    x = x.flatten()
    m = float(np.max(np.abs(x)))
    m = 1e-8 if m == 0.0 else m
    s = 0.3
    while s <= 1.0:
      scale = s * m
      s += 0.02
      q = np.clip(np.round(x / scale * 127), -128, 127)
      loss = ((x - q / 127 * scale) ** 2).mean()
      if loss <= best_loss:
        best_loss, best = loss, scale
  return best


def ref_hist(batches, percent, bins):
  lo = min(float(np.min(np.abs(x))) for x in batches)
  hi = max(float(np.max(np.abs(x))) for x in batches)
  hist, edges = np.histogram([], bins=bins, range=(lo, hi))
  for x in batches:
    hist = hist + np.histogram(np.abs(x), bins=edges)[0]
  hist = hist / float(sum(hist))
  total, index = 0, 0
  for i in range(len(hist)):
    total += hist[i]
    if total >= percent:
      index = i + 1
      break
  return (index - 0.5) * (edges[1] - edges[0])


def _fixed_batches(n=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for j in range(n):
    a = rng.standard_t(3, (3, 5, 16)).astype(np.float32) * (1 + 0.3 * j)  # heavy tails
    b = np.maximum(rng.normal(0, 1, (3, 5, 24)), 0).astype(np.float32)  # ReLU-like
    out.append({"a": a, "b": b})
  return out


@pytest.fixture(scope="module")
def calibrated():
  batches = _fixed_batches()
  res = C.calibrate_tensors(
    lambda: iter(batches), ["a", "b"], C.ALGORITHMS, [2, 4], hist_percent=0.999, histogram_bins=256
  )
  return batches, res


@pytest.mark.parametrize("algo", C.ALGORITHMS)
@pytest.mark.parametrize("n", [2, 4])
def test_algorithms_match_numpy_reference(calibrated, algo, n):
  batches, res = calibrated
  for key in ("a", "b"):
    xs = [b[key] for b in batches[:n]]
    if algo == "abs_max":
      want = ref_abs_max(xs)
    elif algo == "avg":
      want = ref_avg(xs)
    elif algo == "mse":
      want = ref_mse(xs)
    else:
      want = ref_hist(xs, 0.999, 256)
    got = res[algo, n][key]
    np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=f"{algo} n={n} {key}")
  assert list(res) == [(a, m) for m in (2, 4) for a in C.ALGORITHMS]


def test_algorithms_differ_and_are_ordered(calibrated):
  _, res = calibrated
  t = {a: res[a, 4]["a"] for a in C.ALGORITHMS}
  assert t["avg"] < t["abs_max"] and t["mse"] < t["abs_max"] and t["hist"] < t["abs_max"]
  assert len({round(v, 6) for v in t.values()}) == 4


def test_mse_grid_is_paddleslims():
  g = C.mse_grid()
  assert len(g) == 35 and g[0] == 0.3 and abs(g[-1] - 0.98) < 1e-9  # 1.0 is never reached


def test_fake_quant_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(0, 2, (4, 7)).astype(np.float32)
  x[0, :3] = [1000.0, -1000.0, 0.5 * Q.scale_of(3.0)]  # saturation both ways, a rounding tie
  s = Q.scale_of(3.0)
  assert s == np.float32(np.float32(3.0) / np.float32(127))
  want = np.clip(np.round(x / s), -128, 127).astype(np.float32) * s
  got = np.asarray(Q.fake_quant(x, s))
  np.testing.assert_array_equal(got, want)
  assert got[0, 0] == 127 * s and got[0, 1] == -128 * s and got[0, 2] == 0.0  # half to even
  assert Q.scale_of(0.0) > 0  # an all-zero tensor still has a valid scale


def test_per_channel_weight_scales():
  rng = np.random.default_rng(2)
  w = rng.normal(0, 0.05, (6, 4)).astype(np.float32)
  w[:, 2] = 0.0  # a dead output channel
  s = Q.weight_scales(w)
  assert s.shape == (4,) and s.dtype == np.float32
  for j in range(4):
    want = max(float(np.max(np.abs(w[:, j]))), Q.MIN_THRESHOLD) / 127
    np.testing.assert_allclose(s[j], want, rtol=1e-6)
  q, s2 = Q.quantize_weight(w)
  assert q.dtype == np.int8 and np.array_equal(s, s2)
  assert np.abs(q).max() == 127 and (q[:, 2] == 0).all()
  fq = np.asarray(Q.fake_quant_weight(w))
  np.testing.assert_array_equal(fq, q.astype(np.float32) * s[None, :])
  assert np.max(np.abs(fq - w)) <= s.max() / 2 + 1e-9


# ------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from kdjax.models import loading

  d = write_tiny_model(str(tmp_path_factory.mktemp("quant") / "cls"), head="classification")
  return d, loading.load_model(d, head="auto")


def _batches(n=2, b=3, length=9, seed=0):
  rng = np.random.default_rng(seed)
  feats = {
    "input_ids": rng.integers(5, 60, (n * b, length)).astype(np.int32),
    "attention_mask": np.ones((n * b, length), np.int32),
    "token_type_ids": np.zeros((n * b, length), np.int32),
  }
  feats["attention_mask"][0, 6:] = 0
  feats["attention_mask"][1:, 7:] = 0  # every batch's longest example: 7 tokens
  return feats


def test_observers_see_the_matmul_inputs(tiny):
  import jax.numpy as jnp

  _, model = tiny
  f = _batches()
  batches = C.calibration_batches(f, 3, 2)
  assert [b["input_ids"].shape for b in batches] == [(3, 7), (3, 7)]  # cut to the longest
  x = batches[0]
  acts = C.collect_fn(model)(*(jnp.asarray(x[k]) for k in C.INPUT_KEYS))
  assert len(acts) == 6 * model.config.num_hidden_layers
  out = model(
    x["input_ids"], attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"]
  )
  np.testing.assert_allclose(acts["0/query"], out.hidden_states[0], atol=1e-6)
  np.testing.assert_allclose(acts["1/key"], out.hidden_states[1], atol=1e-6)
  assert acts["0/output"].shape[-1] == model.config.intermediate_size
  assert np.array_equal(acts["0/query"], acts["0/value"])  # Q, K and V read the same tensor


def test_simulated_int8_model_and_file(tiny, tmp_path):
  import jax

  from kdjax.models import loading

  d, model = tiny
  batches = C.calibration_batches(_batches(), 3, 2)
  res = C.calibrate(model, batches, ["abs_max", "mse"], [1, 2])
  assert set(res) == {("abs_max", 1), ("mse", 1), ("abs_max", 2), ("mse", 2)}
  th = res["mse", 2]
  qp = Q.QuantParams(th, {"algorithm": "mse", "batch_nums": 2})
  qm = Q.quantize_model(loading.load_model(d, head="auto"), qp)
  assert isinstance(qm.bert.layer[1].output, Q.QuantLinear)
  assert not isinstance(qm.bert.pooler, Q.QuantLinear)
  handle = loading.ModelHandle(qm)  # same params dict as the float model
  assert jax.tree.structure(handle.params) == jax.tree.structure(loading.ModelHandle(model).params)

  # the simulated model equals a NumPy fake-quant of layer 0's query matmul
  x = batches[0]
  ids, mask = x["input_ids"], x["attention_mask"]
  emb = np.asarray(model(ids, attention_mask=mask).hidden_states[0])
  s = Q.scale_of(th[0, "query"])
  k = np.asarray(model.bert.layer[0].query.kernel[...])
  b = np.asarray(model.bert.layer[0].query.bias[...])
  ws = Q.weight_scales(k)
  want = (np.clip(np.round(emb / s), -128, 127) * s) @ (np.round(k / ws) * ws) + b
  got = np.asarray(qm.bert.layer[0].query(emb))
  np.testing.assert_allclose(got, want, atol=1e-5)
  lf = np.asarray(model(ids, attention_mask=mask).logits)
  lq = np.asarray(qm(ids, attention_mask=mask).logits)
  assert 0 < np.max(np.abs(lf - lq)) < 0.05  # quantized, but close

  Q.write(str(tmp_path), qp, model)
  back = Q.read(str(tmp_path), model)
  assert back.meta["algorithm"] == "mse"
  assert all(back.scale(*key) == qp.scale(*key) for key in th)
  other = write_tiny_model(str(tmp_path / "other"), head="classification", seed=3)
  with pytest.raises(ValueError, match="another model"):
    Q.read(str(tmp_path), loading.load_model(other, head="auto"))
  with pytest.raises(ValueError, match="already quantized"):
    Q.quantize_model(qm, qp)


def test_bad_inputs_name_the_config_key(tiny):
  _, model = tiny
  with pytest.raises(ValueError, match="'algorithms'.*'kl'"):
    C.check_algorithms(["abs_max", "kl"])
  with pytest.raises(ValueError, match="no calibration data.*'calibration_split'"):
    C.calibration_batches({}, 2, 4)
  with pytest.raises(ValueError, match="'batch_nums'=4 x 'batch_size'=3"):
    C.calibration_batches(_batches(), 3, 4)
  with pytest.raises(ValueError, match="'batch_nums'"):
    C.calibration_batches(_batches(), 3, 0)
  with pytest.raises(ValueError, match="no calibration data"):
    C.calibrate(model, [], ["abs_max"], [1])
