"""benchmarks/metakd_real.py: merging earlier runs' results (--previous)."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import metakd_real as M

STEPS = dict(meta_teacher=600, teacher=300, intermediate=200, student=300)


def _write(path, genres, **extra):
  path.write_text(
    json.dumps(dict(steps=STEPS, meta_teacher={"rt/accuracy": 0.8}, genres=genres, **extra))
  )
  return str(path)


def _unit(acc):
  return {"accuracy": acc, "wall_s": 1.0}


def test_previous_merges_finished_seeds(tmp_path):
  a = _write(
    tmp_path / "a.json",
    {
      "rt": {
        "Meta-KD": {"0": _unit(0.7), "1": _unit(0.71)},
        "vanilla KD": {"0": _unit(0.8), "1": _unit(0.81)},
        "TinyBERT": {"0": _unit(0.75)},  # seed 1 unfinished: not taken
        "teacher": 0.82,
      }
    },
  )
  b = _write(
    tmp_path / "b.json",
    {
      "rt": {m: {"2": _unit(0.6)} for m in M.METHODS} | {"teacher": 0.83, "meta_teacher": 0.79},
    },
    settings=M.DEFAULT_SETTINGS,
  )
  got = M.load_previous([a, b], STEPS, M.DEFAULT_SETTINGS)["rt"]
  assert got["done"] == {0, 2}
  assert got["result"]["Meta-KD"] == {0: _unit(0.7), 2: _unit(0.6)}
  assert got["result"]["teacher"] == 0.82 and got["result"]["meta_teacher"] == 0.8


def test_previous_must_match_the_run(tmp_path):
  a = _write(tmp_path / "a.json", {})
  with pytest.raises(SystemExit, match="a.json: steps"):
    M.load_previous([a], dict(STEPS, student=30), M.DEFAULT_SETTINGS)
  with pytest.raises(SystemExit, match="a.json: settings"):
    M.load_previous([a], STEPS, dict(M.DEFAULT_SETTINGS, batch_size=16))
  with pytest.raises(SystemExit, match="missing.json: cannot read"):
    M.load_previous([str(tmp_path / "missing.json")], STEPS, M.DEFAULT_SETTINGS)
