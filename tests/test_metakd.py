"""Meta-KD: losses against NumPy references written from EasyNLP's code, data readers and
their errors, per-domain evaluation."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import metakd as M
from kdjax.losses import metakd as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON = os.path.join(ROOT, "tests", "fixtures", "metakd_amazon", "sorted_data_acl")


# ----------------------------------------------------------------------------- references
def _np_prototype(emb, dom, names):
  """generate_meta_weights.py, line by line (1 - scipy cosine distance)."""

  def cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

  cent = {d: np.mean(emb[dom == i], axis=0) for i, d in enumerate(names)}
  out = []
  for x, i in zip(emb, dom):
    d = names[i]
    others = np.mean(np.array([cent[o] for o in names if o != d]), axis=0)
    out.append((cos(x, cent[d]) + cos(x, others)) / 2)
  return np.array(out)


def test_prototype_scores_match_easynlp_formula():
  rng = np.random.RandomState(0)
  emb = rng.randn(23, 7) + 0.5
  dom = rng.randint(0, 4, 23)
  dom[:4] = [0, 1, 2, 3]
  got = np.asarray(L.prototype_scores(emb.astype(np.float32), dom, 4))
  np.testing.assert_allclose(got, _np_prototype(emb, dom, list("abcd")), rtol=1e-5, atol=1e-6)
  # two domains: the "others" centroid is the other domain's centroid
  got2 = np.asarray(L.prototype_scores(emb[:10].astype(np.float32), dom[:10] % 2, 2))
  np.testing.assert_allclose(got2, _np_prototype(emb[:10], dom[:10] % 2, ["x", "y"]), rtol=1e-5)


def test_domain_expertise_matches_easynlp():
  rng = np.random.RandomState(1)
  logits = rng.randn(9, 3).astype(np.float32) * 3
  labels = rng.randint(0, 3, 9)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  onehot = np.eye(3)[labels]
  ref = 1 / (np.exp(np.sum(((p - onehot) * onehot) ** 2, axis=-1)) + 1)  # grt_sample_weights
  np.testing.assert_allclose(np.asarray(L.domain_expertise(logits, labels)), ref, rtol=1e-5)
  sure = np.array([[20.0, -20.0]], np.float32)
  assert float(L.domain_expertise(sure, np.array([0]))[0]) == pytest.approx(0.5)
  assert float(L.domain_expertise(sure, np.array([1]))[0]) == pytest.approx(1 / (1 + np.e))


def _branch(rng, h=6, d=3, classifier=True):
  b = {
    "domain_embedding": rng.randn(d, h).astype(np.float32),
    "corrupt_dense": {
      "kernel": rng.randn(h, h).astype(np.float32) * 0.3,
      "bias": rng.randn(h).astype(np.float32),
    },
  }
  if classifier:
    b["domain_classifier"] = {
      "kernel": rng.randn(h, d).astype(np.float32),
      "bias": rng.randn(d).astype(np.float32),
    }
  return b


def test_content_mean_and_domain_branch_match_numpy():
  rng = np.random.RandomState(2)
  hid = rng.randn(4, 5, 6).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
  c = np.asarray(L.content_mean(hid, mask))
  for b in range(3):
    n = mask[b].sum()
    np.testing.assert_allclose(c[b], hid[b, 1:n].mean(0), rtol=1e-5)
  np.testing.assert_allclose(c[3], 0.0)  # no token after [CLS]
  # EasyNLP: torch.mean(last_hidden_state[:, 1:, :], dim=1), padding included
  np.testing.assert_allclose(np.asarray(L.content_mean(hid)), hid[:, 1:].mean(1), rtol=1e-5)

  br = _branch(rng)
  dom = np.array([2, 0, 1, 2])
  h = np.tanh(
    (br["domain_embedding"][dom] + c) @ br["corrupt_dense"]["kernel"] + br["corrupt_dense"]["bias"]
  )
  ref = h @ br["domain_classifier"]["kernel"] + br["domain_classifier"]["bias"]
  np.testing.assert_allclose(np.asarray(L.domain_branch(br, c, dom)), ref, rtol=1e-5, atol=1e-5)
  rep = (br["domain_embedding"][dom] + c) @ br["corrupt_dense"]["kernel"] + br["corrupt_dense"][
    "bias"
  ]
  np.testing.assert_allclose(np.asarray(L.domain_representation(br, c, dom)), rep, rtol=1e-5)
  # dropout: zeroes some units with an rng, identity without
  d1 = L.domain_branch(br, c, dom, dropout_rate=0.5, rng=jax.random.key(0))
  assert not np.allclose(np.asarray(d1), ref)
  # gradients flow into every branch parameter
  g = jax.grad(lambda p: jnp.sum(L.domain_branch(p, c, dom) ** 2))(br)
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g))


def _np_ce(logits, y):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


def test_meta_teacher_loss_matches_numpy():
  rng = np.random.RandomState(3)
  z = rng.randn(6, 2).astype(np.float32)
  y = rng.randint(0, 2, 6)
  dz = rng.randn(6, 4).astype(np.float32)
  dom = np.array([0, 1, 2, 3, 0, 1])
  targets = np.asarray(L.shuffle_domains(jnp.asarray(dom), jax.random.key(5)))
  assert sorted(targets) == sorted(dom)  # a permutation of the batch's ids
  w = np.array([0.9, 0.8, 0.0, 1.0, 0.7, 0.95], np.float32)
  loss, m = L.meta_teacher_loss(
    z, y, domain_logits=dz, domain_targets=targets, domain_loss_weight=0.5, weights=w
  )
  per = _np_ce(z, y) + 0.5 * _np_ce(dz, targets)
  np.testing.assert_allclose(float(loss), (w * per).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(m["ce"]), (w * _np_ce(z, y)).sum() / w.sum(), rtol=1e-5)
  plain, _ = L.meta_teacher_loss(z, y)
  np.testing.assert_allclose(float(plain), _np_ce(z, y).mean(), rtol=1e-5)


def test_weighted_student_losses_match_numpy():
  """Stage first's weighting s_b = (1 + w_b) g_b through the TinyBERT losses and the domain
  MSE: each example's terms scaled by s_b."""
  from kdjax.losses import attention_mse, hidden_mse

  rng = np.random.RandomState(4)
  B, T, H = 3, 5, 4
  w = np.array([0.9, 0.5, 0.7], np.float32)
  g = np.asarray(L.domain_expertise(rng.randn(B, 2).astype(np.float32), np.array([0, 1, 1])))
  s = (1 + w) * g
  rs, rt = rng.randn(B, H).astype(np.float32), rng.randn(B, H).astype(np.float32)
  ref = (s * ((rs - rt) ** 2).mean(-1)).sum() / s.sum()
  got = L.domain_representation_mse(rs, teacher_rep=rt, weights=s)
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
  hs, ht = rng.randn(B, T, H), rng.randn(B, T, H)
  tok = mask * s[:, None]
  ref_h = ((hs - ht) ** 2 * tok[..., None]).sum() / (tok.sum() * H)
  np.testing.assert_allclose(
    float(hidden_mse(hs, teacher_hidden=ht, attention_mask=mask, weights=s)), ref_h, rtol=1e-5
  )
  a_s, a_t = rng.randn(B, 2, T, T), rng.randn(B, 2, T, T)
  pair = (mask[:, None, :, None] * mask[:, None, None, :]) * s[:, None, None, None]
  pair = np.broadcast_to(pair, a_s.shape)
  ref_a = ((a_s - a_t) ** 2 * pair).sum() / pair.sum()
  got_a = attention_mse(a_s, teacher_scores=a_t, attention_mask=mask, weights=s)
  np.testing.assert_allclose(float(got_a), ref_a, rtol=1e-5)
  with pytest.raises(ValueError, match="project"):
    L.domain_representation_mse(rs, teacher_rep=rng.randn(B, H + 1))


# --------------------------------------------------------------------------------- data
def _senti(path, rows, header=M.SENTI_HEADER):
  path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), "utf-8")
  return path


def _row(i, dom="books", label="positive", weight="0.9", text_b="None"):
  return [f"g{i}", f"text {i}", text_b, label, dom, weight]


def test_read_senti_and_task(tmp_path):
  d = tmp_path / "SENTI"
  d.mkdir()
  _senti(d / M.TRAIN_FILE, [_row(0), _row(1, "dvd", "negative", "0.5"), _row(2, "kitchen")])
  _senti(d / M.DEV_FILE, [_row(3, "dvd", weight="0", text_b=""), _row(4, "books")])
  exs, names = M.read_senti(d / M.TRAIN_FILE)
  assert names == ("books", "dvd", "kitchen")
  assert [(e.label, e.domain, e.weight, e.text_b) for e in exs] == [
    (0, 0, 0.9, None),
    (1, 1, 0.5, None),
    (0, 2, 0.9, None),
  ]
  task = M.MetaKDTask(str(d))
  assert task.domain_names == names and task.score_domain is None
  assert [e.domain for e in task.load(str(d), "dev")] == [1, 0]
  fixed = M.MetaKDTask(str(d), M.DEFAULT_DOMAINS, genre="dvd")
  assert fixed.domain_names == M.DEFAULT_DOMAINS and fixed.score_domain == "dvd"
  train = fixed.load(str(d), "train")
  assert [(e.id, e.domain) for e in train] == [("g1", 1)]  # the genre's rows only
  assert len(fixed.load(str(d), "dev")) == 2  # dev keeps every domain
  unweighted = M.MetaKDTask(str(d), use_weights=False)
  assert {e.weight for e in unweighted.load(str(d), "train")} == {1.0}


def test_bad_input_errors(tmp_path):
  d = tmp_path / "SENTI"
  d.mkdir()
  _senti(d / M.TRAIN_FILE, [_row(0), _row(1, "dvd")])
  _senti(d / M.DEV_FILE, [_row(2, "dvd"), _row(3, "electronics")])
  task = M.MetaKDTask(str(d))
  # a dev domain that training never saw
  with pytest.raises(
    ValueError,
    match=r"dev_standard\.tsv, line 3: domain 'electronics' is not"
    r" one of the domains of the training file \['books', 'dvd'\]",
  ):
    task.load(str(d), "dev")
  # a genre not in the data
  with pytest.raises(ValueError, match=r"'genre'='kitchen' is not a domain of .*books"):
    M.MetaKDTask(str(d), genre="kitchen")
  # a weight that is not a number
  bad = _senti(tmp_path / "w.tsv", [_row(0), _row(1, weight="heavy")])
  with pytest.raises(ValueError, match=r"w\.tsv, line 3: weight 'heavy' is not a number"):
    M.read_senti(bad)
  neg = _senti(tmp_path / "n.tsv", [_row(0, weight="-0.2")])
  with pytest.raises(ValueError, match=r"n\.tsv, line 2: weight '-0.2' is not a finite number"):
    M.read_senti(neg)
  lab = _senti(tmp_path / "l.tsv", [_row(0, label="neutral")])
  with pytest.raises(ValueError, match=r"l\.tsv, line 2: label 'neutral' is not one of"):
    M.read_senti(lab)
  short = tmp_path / "s.tsv"
  short.write_text("h\nonly\ttwo\n")
  with pytest.raises(ValueError, match=r"s\.tsv, line 2: 2 tab-separated fields, expected 6"):
    M.read_senti(short)
  unknown = _senti(tmp_path / "u.tsv", [_row(0, "toys")])
  with pytest.raises(ValueError, match=r"u\.tsv, line 2: domain 'toys' is not one of"):
    M.read_senti(unknown, M.DEFAULT_DOMAINS)
  with pytest.raises(FileNotFoundError, match="no such file"):
    M.MetaKDTask(str(tmp_path / "missing"))


def test_amazon_layout_and_raw_split(tmp_path):
  reviews = M.read_amazon_reviews(AMAZON)
  assert len(reviews) == 40
  assert {r.domain for r in reviews} == set(M.DEFAULT_DOMAINS)  # kitchen_&_housewares -> kitchen
  first = next(r for r in reviews if r.domain == "dvd" and r.label == "negative")
  assert first.text == "the film bad film. the film is bad !"
  with pytest.raises(FileNotFoundError, match="no such domain folder"):
    M.read_amazon_reviews(AMAZON, ["books", "toys"])
  broken = tmp_path / "x" / "books"
  broken.mkdir(parents=True)
  (broken / "positive.review").write_text("<review_text>\nfine\n")
  (broken / "negative.review").write_text("x\n")
  with pytest.raises(ValueError, match=r"positive\.review, line 1: <review_text> is never closed"):
    M.read_amazon_reviews(tmp_path / "x", ["books"])
  raw = tmp_path / "raw.tsv"
  M.write_raw_senti(raw, reviews[:3])
  assert M.read_raw_senti(raw) == [M.RawReview(r.text, r.domain, r.label) for r in reviews[:3]]
  raw.write_text("review\tdomain\tsentiment\nok\tbooks\tmaybe\n")
  with pytest.raises(ValueError, match=r"raw\.tsv, line 2: sentiment 'maybe'"):
    M.read_raw_senti(raw)


def test_evaluate_splits_per_domain():
  from kdjax.recipes import task_setup

  class FakePredictor:
    def logits(self, params, feats):
      return np.eye(2)[feats["pred"]]

  labels = np.array([0, 1, 0, 1, 1])
  feats = {
    "labels": labels,
    "pred": np.array([0, 1, 1, 1, 0]),
    "domain_ids": np.array([0, 0, 1, 2, 2]),
  }
  task = M.MetaKDTask.__new__(M.MetaKDTask)  # metrics only
  out = task_setup.evaluate_splits(
    task, FakePredictor(), None, {"dev": feats}, domains=("a", "b", "c", "d"), score_domain="c"
  )
  assert out["dev/accuracy"] == pytest.approx(0.6)
  assert out["dev/a/accuracy"] == 1.0 and out["dev/b/accuracy"] == 0.0
  assert out["dev/c/accuracy"] == 0.5 and "dev/d/accuracy" not in out
  assert out["score"] == 0.5
  plain = task_setup.evaluate_splits(task, FakePredictor(), None, {"dev": feats})
  assert plain == {"dev/accuracy": pytest.approx(0.6), "score": pytest.approx(0.6)}
