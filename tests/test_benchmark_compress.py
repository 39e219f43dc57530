"""benchmarks/compress_stages.py runs end to end on a tiny model (fine-tune -> prune -> INT8 ->
ONNX through the pipeline, then onnxruntime dev accuracy of every ONNX artefact); it measures,
it asserts no speed."""

from __future__ import annotations

import json
import os

import helpers_env
from helpers_classification import GLUE, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  return helpers_env.load_script("benchmarks/compress_stages.py")


def test_compress_stages_smoke(tmp_path, capsys):
  teacher = write_tiny_model(
    str(tmp_path / "teacher"), head="classification", seed=1, num_attention_heads=4
  )
  sst2 = os.path.join(GLUE, "SST-2")
  arg = (
    f"tiny,task=sst-2,teacher={teacher},data_dir={sst2},"
    "order=teacher_finetune;prune;quantize;export,stages.prune.source=teacher_finetune"
  )
  W = tmp_path / "w"
  argv = [
    f"--workdir={W}",
    "--skip_speed",
    "--length=16",
    f"--config_arg={arg}",
    f"--data_dir={sst2}",
  ]
  assert _module().main(argv) == 0
  res = json.loads((W / "stages.json").read_text())
  rows = {r["name"]: r for r in res["rows"]}
  assert list(rows) == ["finetuned", "pruned", "pruned_int8"]
  for r in rows.values():
    assert 0.0 <= r["dev_onnx"] <= 100.0 and r["onnx_bytes"] > 0
    assert r["dev_jax"] is not None and 0.0 <= r["dev_jax"] <= 100.0
  # the pruned model is narrower (3 of 4 heads, 3/4 of the FFN): fewer parameters, a smaller file
  assert rows["pruned"]["params"] < rows["finetuned"]["params"]
  assert rows["pruned"]["onnx_bytes"] < rows["finetuned"]["onnx_bytes"]
  assert rows["pruned_int8"]["model"].endswith("10_export/onnx")
  assert json.loads((W / "10_export" / "onnx" / "export.json").read_text())["precision"] == "int8"
  out = capsys.readouterr().out
  assert "pruned + INT8" in out and (W / "stages.md").is_file()
