"""benchmarks/peers: the harness's logic (no peer venvs needed) and the PyTorch peer's loss."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

PEERS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "peers"
)
sys.path.insert(0, PEERS)

import common
import run

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_parse_cpuinfo():
  info = run.parse_cpuinfo(CPUINFO)
  assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
  assert info["logical_cpus"] == 2
  assert info["flags"]["avx512_bf16"] and info["flags"]["amx_bf16"]
  assert not info["flags"]["avx512_vnni"]
  assert info["amx"] == ["amx_bf16", "amx_int8", "amx_tile"]
  amd = run.parse_cpuinfo("processor : 0\nmodel name : AMD EPYC\nflags : avx2 fma\n")
  assert amd["flags"]["avx2"] and not amd["flags"]["avx512f"] and amd["amx"] == []


def test_rows_and_alternation():
  rows = run.make_rows(run.expand_shapes("tiny"), ["float32", "bfloat16"], ["token", "sample"])
  ids = [run.row_id(r) for r in rows]
  assert ids == [
    "minilm-tiny/float32/token",
    "minilm-tiny/float32/+sample",
    "minilm-tiny/bfloat16/token",
    "minilm-tiny/bfloat16/+sample",
    "tinybert-tiny/float32/tinybert",
    "tinybert-tiny/bfloat16/tinybert",
  ]
  order = run.schedule(rows[:1] + rows[4:5], ["torch", "textbrewer", "paddle"], reps=2)
  got = [(run.row_id(r), impl, rep) for r, impl, rep in order]
  m, t = "minilm-tiny/float32/token", "tinybert-tiny/float32/tinybert"
  assert got == [
    (m, "kdjax", 0),
    (m, "torch", 0),
    (m, "paddle", 0),
    (m, "kdjax", 1),
    (m, "torch", 1),
    (m, "paddle", 1),
    (t, "kdjax", 0),
    (t, "textbrewer", 0),
    (t, "kdjax", 1),
    (t, "textbrewer", 1),
  ]
  # a row no selected peer covers is not run at all
  assert run.schedule(rows[4:5], ["torch"], reps=3) == []
  with pytest.raises(SystemExit):
    run.expand_shapes("minilm-huge")


def _run(impl, times, rss, shape="minilm-b8-l128"):
  row = dict(shape=shape, method="minilm", dtype="float32", sample_relation=False)
  return dict(
    row=row,
    impl=impl,
    step_times_s=times,
    peak_rss_bytes=rss,
    loss=1.0,
    load_at_start=[0.1, 0.1, 0.1],
  )


def test_summary_ratios_and_table():
  gib = 2**30
  runs = [
    _run("kdjax", [2.0, 1.0, 3.0], 2 * gib),
    _run("torch", [4.0, 4.0], 4 * gib),
    _run("paddle", [6.0], 1 * gib),
    _run("kdjax", [2.0, 2.0], 3 * gib),
    _run("torch", [5.0, 3.0], 3 * gib),
    dict(_run("paddle", None, None), error="rc 1: boom"),
  ]
  summary = {e["impl"]: e for e in run.summarize(runs)}
  k, t, p = summary["kdjax"], summary["torch"], summary["paddle"]
  assert k["step_s"] == dict(min=1.0, median=2.0, max=3.0)
  assert k["rep_medians_s"] == [2.0, 2.0] and k["runs"] == 2
  s = common.shape("minilm-b8-l128")
  assert k["examples_per_s"] == pytest.approx(8 / 2.0)
  assert k["tokens_per_s"] == pytest.approx(run.real_tokens(s) / 2.0)
  assert k["peak_rss_bytes"] == 3 * gib  # the worst round
  assert t["kdjax_speedup"] == pytest.approx(4.0 / 2.0)
  assert t["kdjax_memory_ratio"] == pytest.approx(3 / 4)
  assert p["kdjax_speedup"] == pytest.approx(3.0) and p["ok_runs"] == 1
  assert k["fastest_peer"] == "torch" and k["speedup_vs_fastest_peer"] == pytest.approx(2.0)
  table = run.format_table(run.summarize(runs))
  assert "2.00x" in table and "3.00x" in table and "0.75" in table
  gone = run.summarize([dict(row=runs[0]["row"], impl="paddle", unavailable="no wheel")])
  assert gone[0]["unavailable"] == "no wheel"
  assert "unavailable: no wheel" in run.format_table(gone)


def test_wait_idle():
  loads = iter([(3.0, 2, 2), (2.0, 2, 2), (0.2, 1, 1)])
  slept = []
  got = run.wait_idle(0.5, 100, poll=5, loadavg=lambda: next(loads), sleep=slept.append)
  assert got == dict(load_at_start=[0.2, 1, 1], idle=True, waited_s=10.0) and slept == [5, 5]
  got = run.wait_idle(0.5, 5, poll=5, loadavg=lambda: (9.0, 9, 9), sleep=lambda s: None)
  assert got["idle"] is False and got["waited_s"] == 5


def test_json_schema(tmp_path, monkeypatch):
  def fake_run_one(row, impl, rep, args, python):
    times = [1.0, 1.2] if impl == "kdjax" else [2.0, 2.4]
    return dict(
      _run(impl, times, 2**30, shape=row["shape"]),
      row=row,
      rep=rep,
      cpus=[0],
      load_at_start=[0.1, 0.2, 0.3],
      idle=True,
      waited_s=0.0,
    )

  monkeypatch.setattr(run, "run_one", fake_run_one)
  monkeypatch.setattr(run, "versions", lambda python: {"python": "3.11"})
  venvs = tmp_path / "venvs"
  (venvs / "torch").mkdir(parents=True)
  (venvs / "torch" / ".complete").write_text("torch==2.13.0\n")
  (venvs / "paddle").mkdir()
  (venvs / "paddle" / "FAILED").write_text("no wheel for this Python")
  report = run.main(
    [
      "--shapes=minilm-tiny",
      "--peers=torch,paddle",
      "--dtypes=float32",
      "--relations=token",
      "--reps=2",
      f"--venvs={venvs}",
      f"--out_dir={tmp_path / 'out'}",
    ]
  )
  (path,) = (tmp_path / "out").glob("peers-*.json")
  saved = json.loads(path.read_text())
  assert saved["schema"] == run.SCHEMA == report["schema"]
  assert set(saved) >= {"created", "machine", "versions", "args", "rows", "runs", "summary"}
  assert set(saved["machine"]["cpu"]["flags"]) == set(run.CPU_FLAGS)
  assert saved["versions"].keys() == {"kdjax", "torch"}
  assert [r["impl"] for r in saved["runs"]] == ["kdjax", "torch", "paddle"] * 2
  assert saved["runs"][2]["unavailable"].startswith("setup failed: no wheel")
  by = {e["impl"]: e for e in saved["summary"]}
  assert by["torch"]["kdjax_speedup"] == pytest.approx(2.2 / 1.1)
  assert "unavailable" in by["paddle"] and by["kdjax"]["step_s"]["median"] == pytest.approx(1.1)


def test_child_result_line_and_peak_rss(capsys):
  assert common.peak_rss_bytes() > 0
  common.emit(dict(impl="x", step_times_s=[0.5]))
  rec = common.parse_result("noise\n" + capsys.readouterr().out + "more noise\n")
  assert rec["impl"] == "x" and rec["peak_rss_bytes"] > 0 and rec["pid"] == os.getpid()
  assert common.parse_result("no result here\n") is None


def test_batch_matches_distill_throughput():
  sys.path.insert(0, os.path.dirname(PEERS))
  import distill_throughput as dt

  s = common.shape("minilm-b8-l128")
  mine, theirs = common.batch(s), dt._batch(dict(batch=8, seq=128, vocab=common.VOCAB))
  for k in theirs:
    np.testing.assert_array_equal(mine[k], theirs[k])


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_torch_relation_loss_matches_kdjax(beta):
  torch = pytest.importorskip("torch")
  import jax.numpy as jnp
  import torch_minilm

  from kdjax.losses.minilm import minilm_relation_loss

  rng = np.random.default_rng(0)
  b, length, r = 3, 7, 4
  mask = (np.arange(length)[None] < np.array([[7], [4], [2]])).astype(np.int32)
  t_qkv = [rng.normal(size=(b, length, 48)).astype(np.float32) for _ in range(3)]
  s_qkv = [rng.normal(size=(b, length, 24)).astype(np.float32) for _ in range(3)]
  want = minilm_relation_loss(
    [jnp.asarray(x) for x in s_qkv],
    teacher=[jnp.asarray(x) for x in t_qkv],
    attention_mask=jnp.asarray(mask),
    num_relation_heads=r,
    beta=beta,
  )
  got = torch_minilm.relation_loss(
    [torch.from_numpy(x) for x in s_qkv],
    [torch.from_numpy(x) for x in t_qkv],
    torch.from_numpy(mask),
    r,
    beta,
  )
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-6)


def _textbrewer_matches():
  """textbrewer_tinybert.matches, read without importing torch (the module imports it first)."""
  import ast

  with open(os.path.join(PEERS, "textbrewer_tinybert.py")) as f:
    tree = ast.parse(f.read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "matches")
  ns: dict = {}
  exec(compile(ast.Module([fn], []), "matches", "exec"), ns)
  return ns["matches"]


def test_teacher_forward_rows(capsys):
  rows = run.make_rows(["minilm-tiny", "tinybert-tiny"], ["float32"], ["token"], True)
  assert [run.row_id(r) for r in rows] == [
    "minilm-tiny/float32/token",
    "tinybert-tiny/float32/tinybert",
    "tinybert-tiny/float32/teacher-fwd",
  ]
  order = run.schedule(rows[2:], ["torch", "textbrewer"], reps=1)
  assert [impl for _, impl, _ in order] == ["kdjax", "textbrewer"]
  import kdjax_side

  kdjax_side.main(["--shape=tinybert-tiny", "--steps=2", "--teacher_only"])
  rec = common.parse_result(capsys.readouterr().out)
  assert rec["impl"] == "kdjax" and len(rec["step_times_s"]) == 2 and np.isfinite(rec["loss"])


def test_teacher_forward_returns_what_the_loss_reads(tmp_path):
  import jax
  import kdjax_side

  from kdjax.recipes import tinybert
  from kdjax.recipes.common import forward

  s = common.shape("tinybert-tiny")
  trainer, _, frozen, batch = kdjax_side.tinybert_step(s, "float32", str(tmp_path))
  emb, mapped = kdjax_side.teacher_forward(trainer)(frozen, batch)
  layers = tuple(trainer.recipe.teacher_layers)
  assert layers == tuple(tinybert.resolve_layer_map(None, s["student"][0], s["teacher"][0]))
  full = forward(trainer.recipe.teacher, frozen, batch, capture_layers="all")
  np.testing.assert_allclose(np.asarray(emb), np.asarray(full.embedding_output), atol=1e-6)
  assert len(mapped) == len(layers)
  for (hidden, scores), j in zip(mapped, layers, strict=True):
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(full.layers[j].hidden), atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(full.layers[j].scores), atol=1e-5)
  assert jax.tree.leaves(mapped)


def test_kdjax_tinybert_step_matches_textbrewer_peer(tmp_path, capsys):
  """The kdjax TinyBERT row times the tinybert recipe's stage-1 step with the TextBrewer peer's
  layer map and one projection per matched hidden state, on ``common.batch``."""
  import jax
  import kdjax_side

  s = common.shape("tinybert-tiny")
  trainer, state, frozen, batch = kdjax_side.tinybert_step(s, "float32", str(tmp_path))
  m = _textbrewer_matches()(s["teacher"][0], s["student"][0], s["student"][1], s["teacher"][1])
  att = [(x["layer_S"], x["layer_T"]) for x in m if x["feature"] == "attention"]
  assert list(enumerate(trainer.recipe.layer_map)) == att
  hid = [x for x in m if x["feature"] == "hidden"]
  proj = state["params"]["proj"]
  assert len(proj) == len(hid) == s["student"][0] + 1
  assert {p["kernel"].shape for p in proj.values()} == {(s["student"][1], s["teacher"][1])}
  want = common.batch(s)
  for k in ("input_ids", "attention_mask"):
    np.testing.assert_array_equal(np.asarray(batch[k]), want[k])
  state, metrics = trainer.step_fn(state, frozen, batch)
  loss = float(jax.block_until_ready(metrics["loss"]))
  assert np.isfinite(loss) and loss > 0
  kdjax_side.main(["--shape=tinybert-tiny", "--steps=2"])
  rec = common.parse_result(capsys.readouterr().out)
  assert rec["impl"] == "kdjax" and len(rec["step_times_s"]) == 2 and np.isfinite(rec["loss"])


@pytest.mark.parametrize("shape", ["tinybert-tiny", "minilm-tiny"])
def test_profile_step_reports_the_ops_of_a_tiny_step(shape, tmp_path, capsys, monkeypatch):
  import tempfile

  import profile_step

  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  out = tmp_path / "ops.json"
  extra = ["--sample_relation"] if shape.startswith("minilm") else []
  profile_step.main(
    [f"--shape={shape}", "--dtype=float32", "--warmup=1", "--steps=1", "--top=5", *extra]
    + [f"--json={out}", f"--hlo={tmp_path / 'step.hlo'}"]
  )
  text = capsys.readouterr().out
  assert "by kind of op:" in text and "top 5" in text
  got = json.loads(out.read_text())
  assert got["shape"] == shape and len(got["step_s"]) == 1
  assert got["ops_s"] and all(v >= 0 for v in got["ops_s"].values())
  # every op of the trace is an instruction of the compiled step
  hlo = (tmp_path / "step.hlo").read_text()
  assert all(f"%{name} = " in hlo or f" {name} = " in hlo for name in got["ops_s"])
  # the saved teacher and the trace live in one scratch directory that is removed on exit
  assert list(scratch.iterdir()) == []
