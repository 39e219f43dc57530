"""benchmarks/inference.py runs end to end (tiny model, two runtimes, each in its own process);
it measures, it asserts no speed."""

from __future__ import annotations

import json
import os

import helpers_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  return helpers_env.load_script("benchmarks/inference.py")


def test_inference_benchmark_smoke(tmp_path, capsys):
  bench = _module()
  out = tmp_path / "r.json"
  argv = ["--models=tiny", "--runtimes=xla,onnx", "--batch=4", "--length=16", "--reps=1"]
  argv += ["--warmup=0", "--idle_wait=0", f"--workdir={tmp_path}/w", f"--out={out}"]
  assert bench.main(argv) == 0
  res = json.loads(out.read_text())
  assert [r["runtime"] for r in res["rows"]] == ["xla", "onnx"]
  for r in res["rows"]:
    assert "error" not in r, r
    assert r["shape"] == [4, 16] and r["ids"]["median"] > 0 and r["text"]["median"] > 0
    assert r["peak_rss_mib"] > 0
  assert res["cpu"]["cpus"] and res["versions"]["jax"]
  assert "tiny" in capsys.readouterr().out


def test_scratch_workdir_is_removed(tmp_path, monkeypatch):
  import tempfile

  bench = _module()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  argv = ["--models=tiny", "--runtimes=xla", "--batch=2", "--length=8", "--reps=1"]
  argv += ["--warmup=0", "--idle_wait=0", f"--out={tmp_path / 'r.json'}"]
  assert bench.main(argv) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
  try:
    bench.main(["--models=tiny", "--prepare_only"])
  except SystemExit as e:
    assert "--prepare_only needs --workdir" in str(e)
  else:
    raise AssertionError("--prepare_only without --workdir must fail")


def test_bench_texts_fill_the_length():
  bench = _module()
  texts = bench.bench_texts(3)
  assert len(texts) == 3 and all(len(t.split()) >= 160 for t in texts)
