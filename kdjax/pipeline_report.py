"""The pipeline's report (``kdjax.pipeline``): ``report.md``, ``report.json``, ``report.svg``
and, where matplotlib is installed, ``report.png``, rewritten after each stage.

Per stage with a model: the dev main metric (``kdjax.evaluate`` in this process on the
stage's model: a workdir's best dev checkpoint, a pruned export, the simulated-INT8 model's
score from the quantization's ``results.json``), the parameter count, the size of the weight
files and an INDICATIVE inference speed-up over the teacher: the jitted JAX forward of both
models on one fixed random batch (``report.speed_batch_size`` x ``report.speed_seq_length``),
timed alternately in this process, ratio of the medians. Entries are cached in
``workdir/report_cache/`` by the stage's fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time

TOKENIZER_FILES = {
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
}


def dir_bytes(path: str, skip_tokenizer: bool = True) -> int:
  total = 0
  for root, dirs, files in os.walk(path):
    dirs[:] = [d for d in dirs if not (skip_tokenizer and d == "tokenizer")]
    for f in files:
      if skip_tokenizer and f in TOKENIZER_FILES:
        continue
      with contextlib.suppress(OSError):
        total += os.path.getsize(os.path.join(root, f))
  return total


def weight_bytes(path: str) -> int:
  """Bytes of the weights a user would ship: a workdir's best (else exported) params, a model
  directory's files without the tokenizer."""
  from kdjax.models import native

  try:
    kind = native.kind(path)
  except FileNotFoundError:
    return dir_bytes(path)
  if kind == "kdjax" and os.path.isdir(os.path.join(path, "params")):
    return dir_bytes(os.path.join(path, "params"))  # not a pruned export's hf/ copy
  if kind == "workdir":
    best = native.best_step(path)
    if best is not None:
      return dir_bytes(os.path.join(path, "best", str(best), "params"))
    if os.path.isdir(os.path.join(path, "export")):
      return dir_bytes(os.path.join(path, "export"))
  return dir_bytes(path)


class _Timer:
  """The jitted forward of one model on a fixed batch."""

  def __init__(self, path: str, batch: int, length: int):
    import jax
    import numpy as np

    from kdjax.models import loading

    net = loading.load_model(path, head="auto")
    self.handle = loading.ModelHandle(net)
    cfg = net.config
    length = min(length, cfg.max_position_embeddings - cfg.position_offset)
    rng = np.random.default_rng(0)
    self.ids = rng.integers(5, cfg.vocab_size, (batch, length), dtype=np.int32)
    self.mask = np.ones((batch, length), np.int32)
    self.types = np.zeros((batch, length), np.int32)
    h = self.handle
    self.fn = jax.jit(lambda p, i, m, t: h.bind(p)(i, attention_mask=m, token_type_ids=t))
    for _ in range(3):  # compile, warm-up
      self()

  def __call__(self) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(self.fn(self.handle.params, self.ids, self.mask, self.types))
    return time.perf_counter() - t0


def speedup(teacher: str, model: str, batch: int, length: int, repeats: int) -> dict:
  t, s = _Timer(teacher, batch, length), _Timer(model, batch, length)
  tt, ts = [], []
  for _ in range(repeats):  # alternately, so that machine load hits both alike
    tt.append(t())
    ts.append(s())
  mt, ms = statistics.median(tt), statistics.median(ts)
  return {"speedup": mt / ms, "latency_ms": 1e3 * ms, "teacher_latency_ms": 1e3 * mt}


def teacher_onnx(teacher: str, cache_dir: str) -> str:
  """The teacher as fp32 ONNX (python -m kdjax.export, once per teacher): the ONNX baseline."""
  from kdjax.pipeline import PipelineError, path_fingerprint, subprocess_runner

  out = os.path.join(cache_dir, f"teacher_onnx_{path_fingerprint(teacher)}")
  if not os.path.isfile(os.path.join(out, "model.onnx")):
    log = os.path.join(cache_dir, "teacher_onnx.log")
    rc = subprocess_runner(["-m", "kdjax.export", teacher, out, "--format=onnx", "--force"], log)
    if rc:
      raise PipelineError(f"exporting the teacher to ONNX failed: see {log}")
  return os.path.join(out, "model.onnx")


def ort_speedup(teacher: str, model: str, batch: int, length: int, repeats: int) -> dict:
  """onnxruntime (CPU) latency of two ONNX files on one fixed batch, timed alternately."""
  import numpy as np
  import onnxruntime as ort

  def session(path):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
      dtype = np.int64 if "int64" in i.type else np.int32
      if i.name == "input_ids":
        feeds[i.name] = np.random.default_rng(0).integers(5, 30, (batch, length)).astype(dtype)
      elif i.name == "attention_mask":
        feeds[i.name] = np.ones((batch, length), dtype)
      else:
        feeds[i.name] = np.zeros((batch, length), dtype)
    for _ in range(3):  # warm-up
      sess.run(None, feeds)

    def run():
      t0 = time.perf_counter()
      sess.run(None, feeds)
      return time.perf_counter() - t0

    return run

  t, s = session(teacher), session(model)
  tt, ts = [], []
  for _ in range(repeats):
    tt.append(t())
    ts.append(s())
  mt, ms = statistics.median(tt), statistics.median(ts)
  return {"speedup": mt / ms, "latency_ms": 1e3 * ms, "teacher_latency_ms": 1e3 * mt}


def count_params(path: str) -> int:
  from kdjax.models import count_params as cp
  from kdjax.models import loading, params_of

  return cp(params_of(loading.load_model(path, head="auto")))


def dev_metric(path: str, task: str, data_dir: str, out_dir: str, batch_size: int):
  from kdjax.data.task import get_classification_task
  from kdjax.evaluate import evaluate

  t = get_classification_task(task)
  res = evaluate(path, task, data_dir or None, "dev", out_dir, batch_size=batch_size)
  split = t.eval_splits[0]
  return t.main_metric, res[split].get(t.main_metric)


def trainer_dev_metric(model: str, task: str, key: str = "", metric: str = ""):
  """(metric, value) the trainer logged at the best dev checkpoint of the run that produced
  ``model`` (a workdir, or a prune run's ``export/``); None when it logged none. ``key`` /
  ``metric``: the logged key and its name where the task's own do not apply (the Meta-KD
  student logs its target domain's accuracy as ``eval/score``)."""
  from kdjax.data.task import get_classification_task
  from kdjax.models import native

  t = None if key else get_classification_task(task)
  workdir, prefix = model, ""
  prune_json = os.path.join(model, "prune.json")
  if os.path.isfile(prune_json):  # prune export: the run's score at the exported width
    with open(prune_json) as f:
      pj = json.load(f)
    workdir, prefix = os.path.dirname(os.path.abspath(model)), f"w{pj['width']:g}/"
    step = pj.get("step")
  else:
    step = native.best_step(model) if os.path.isdir(os.path.join(model, "best")) else None
  path = os.path.join(workdir, "metrics.jsonl")
  if step is None or not os.path.isfile(path):
    return None
  if not key:
    key, metric = f"eval/{prefix}{t.eval_splits[0]}/{t.main_metric}", t.main_metric
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if rec.get("step") == step and key in rec:
        return metric, float(rec[key])
  return None


def _entry(c, stage, teacher_path: str | None, cache_dir: str) -> dict:
  rc = c.report
  e = {
    "stage": stage.label,
    "name": stage.name,
    "role": stage.role,
    "model": stage.output,
    "given": bool(stage.given),
    "notes": [],
  }
  task, data_dir = str(c.task or ""), str(c.data_dir or "")
  data_dir = os.path.abspath(data_dir) if data_dir else ""
  model = stage.output
  if stage.role == "artefact":
    e["bytes"] = dir_bytes(stage.output)
    e["notes"].append(f"artefact of {stage.settings.get('source_stage')}: dev metric as it")
    onnx = next(
      (
        os.path.join(os.path.dirname(p), "model.onnx")
        for p in stage.outputs.values()
        if os.path.isfile(os.path.join(os.path.dirname(p), "model.onnx"))
      ),
      None,
    )
    if rc.onnx_speed and onnx and teacher_path:
      try:
        t_onnx = teacher_onnx(teacher_path, cache_dir)
        e.update(
          {
            f"onnx_{k}": v
            for k, v in ort_speedup(
              t_onnx, onnx, rc.speed_batch_size, rc.speed_seq_length, rc.speed_repeats
            ).items()
          }
        )
        e["notes"].append("ONNX speed-up: onnxruntime CPU vs the teacher's fp32 ONNX")
      except Exception as err:
        e["notes"].append(f"ONNX speed: {type(err).__name__}: {str(err)[:200]}")
    return e
  if stage.role == "int8":
    res_path = os.path.join(os.path.dirname(model), "results.json")
    if os.path.isfile(res_path):
      with open(res_path) as f:
        res = json.load(f)
      ch = res.get("chosen", {})
      row = next(
        (
          r
          for r in res.get("rows", [])
          if r["algorithm"] == ch.get("algorithm") and r["batch_nums"] == ch.get("batch_nums")
        ),
        None,
      )
      if row:
        e["metric"], e["value"] = res.get("metric"), row["score"]
        e["notes"].append(f"simulated INT8 ({ch.get('algorithm')}, {ch.get('batch_nums')} batches)")
      onnx_dir = os.path.join(os.path.dirname(model), "onnx_int8")
      if os.path.isdir(onnx_dir):
        e["bytes"] = dir_bytes(onnx_dir)
        e["notes"].append("size: the INT8 ONNX")
    try:
      e["params"] = count_params(model)
    except Exception as err:
      e["notes"].append(f"params: {err}")
    e.setdefault("bytes", weight_bytes(model))
    e["notes"].append("speed: not timed (JAX runs simulated INT8; time the ONNX export)")
    return e
  try:
    e["params"] = count_params(model)
  except Exception as err:
    e["notes"].append(f"params: {type(err).__name__}: {err}")
  e["bytes"] = weight_bytes(model)
  dev_key = stage.settings.get("dev_key", "")
  if dev_key:  # Meta-KD: the target domain's accuracy, as logged (no task of the registry)
    logged = trainer_dev_metric(model, task, dev_key, stage.settings.get("metric", ""))
    if logged is not None:
      e["metric"], e["value"] = logged
      e["notes"].append("dev: as logged by the trainer at the best checkpoint")
  elif stage.role not in ("encoder", "intermediate") and task:
    try:
      logged = trainer_dev_metric(model, task) if rc.dev_from == "trainer" else None
      if logged is not None:
        e["metric"], e["value"] = logged
        e["notes"].append("dev: as logged by the trainer at the best checkpoint")
      else:
        e["metric"], e["value"] = dev_metric(
          model, task, data_dir, os.path.join(cache_dir, f"eval_{stage.label}"), rc.eval_batch_size
        )
    except Exception as err:
      e["notes"].append(f"dev: {type(err).__name__}: {str(err)[:200]}")
  if rc.speed and teacher_path and os.path.abspath(model) == os.path.abspath(teacher_path):
    e["speedup"] = 1.0  # by definition; its latency comes with the other rows
  elif rc.speed and teacher_path and os.path.exists(teacher_path):
    try:
      e.update(
        speedup(teacher_path, model, rc.speed_batch_size, rc.speed_seq_length, rc.speed_repeats)
      )
    except Exception as err:
      e["notes"].append(f"speed: {type(err).__name__}: {str(err)[:200]}")
  return e


def _fmt_bytes(n) -> str:
  if n is None:
    return "-"
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1024 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return "-"


def _fmt_params(n) -> str:
  if n is None:
    return "-"
  return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def write_report(c, workdir: str, stages: list, status: dict) -> dict:
  """Writes the report files for the finished stages; returns the report dict."""
  from kdjax.pipeline import _sha, stage_hash, write_json

  cache_dir = os.path.join(workdir, "report_cache")
  os.makedirs(cache_dir, exist_ok=True)
  by_name = {s.name: s for s in stages}
  teacher = by_name.get("teacher_finetune")
  teacher_path = teacher.output if teacher else (os.path.abspath(c.teacher) if c.teacher else None)
  rc = c.report.to_dict()
  key_extra = [rc, teacher_path, stage_hash(teacher) if teacher else None]
  rows = []
  for st in stages:
    if st.role == "intermediate":
      continue
    key = _sha([stage_hash(st), key_extra])
    path = os.path.join(cache_dir, f"{st.label}.json")
    entry = None
    if os.path.isfile(path):
      try:  # a cache: an unreadable entry (an older kdjax killed mid-write) is measured again
        with open(path) as f:
          cached = json.load(f)
        if cached.get("key") == key:
          entry = cached["entry"]
      except (OSError, ValueError, AttributeError, KeyError):
        entry = None
    if entry is None:
      entry = _entry(c, st, teacher_path, cache_dir)
      write_json(path, {"key": key, "entry": entry})
    entry["status"] = status.get(st.label, "")
    rows.append(entry)
  by_stage = {r["name"]: r for r in rows}
  for r in rows:  # an artefact: the metric and speed of its source
    if r["role"] == "artefact":
      src = next((s for s in stages if s.name == r["name"]), None)
      src_row = by_stage.get(src.settings.get("source_stage")) if src else None
      if src_row:
        for k in ("metric", "value", "speedup", "latency_ms", "params"):
          if k in src_row:
            r[k] = src_row[k]
  t_row = by_stage.get("teacher_finetune")
  t_val = t_row.get("value") if t_row else None
  t_lat = [r["teacher_latency_ms"] for r in rows if r.get("teacher_latency_ms")]
  if t_row and t_lat and t_row.get("latency_ms") is None:
    t_row["latency_ms"] = statistics.median(t_lat)
  for r in rows:
    if t_val and r.get("value") is not None:
      r["pct_of_teacher"] = 100.0 * r["value"] / t_val
  report = {
    "task": c.task,
    "teacher": teacher_path,
    "speed": {
      "what": "indicative: jitted JAX forward on one fixed random batch, teacher and model "
      "timed alternately in one process, ratio of the median times",
      "batch_size": rc["speed_batch_size"],
      "seq_length": rc["speed_seq_length"],
      "repeats": rc["speed_repeats"],
    },
    "rows": rows,
    "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  write_json(os.path.join(workdir, "report.json"), report, indent=2)
  plot = write_plots(report, workdir)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(markdown(report, plot))
  return report


def markdown(report: dict, plot: str) -> str:
  metric = next((r["metric"] for r in report["rows"] if r.get("metric")), "metric")
  lines = [
    f"# kdjax pipeline report: {report['task']}",
    "",
    f"Teacher: `{report['teacher']}`. Dev {metric} of each stage's model; speed-up over the "
    f"teacher is {report['speed']['what']} (batch {report['speed']['batch_size']} x "
    f"{report['speed']['seq_length']} tokens, {report['speed']['repeats']} repeats).",
    "",
    f"| stage | dev {metric} | % of teacher | parameters | weights | speed-up (indicative) "
    "| latency ms | ONNX speed-up | status | notes |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in report["rows"]:
    v = r.get("value")
    lines.append(
      "| "
      + " | ".join(
        [
          r["stage"],
          "-" if v is None else f"{100 * v:.2f}",
          "-" if r.get("pct_of_teacher") is None else f"{r['pct_of_teacher']:.1f}",
          _fmt_params(r.get("params")),
          _fmt_bytes(r.get("bytes")),
          "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x",
          "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f}",
          "-" if r.get("onnx_speedup") is None else f"{r['onnx_speedup']:.2f}x",
          r.get("status", "") + (" (given)" if r.get("given") else ""),
          "; ".join(r.get("notes", [])),
        ]
      )
      + " |"
    )
  lines += [
    "",
    "ONNX speed-up: onnxruntime on the CPU, the exported artefact against the teacher "
    "exported to fp32 ONNX, same batch, timed alternately (indicative).",
    "",
    f"Plot: {plot}",
    "",
  ]
  return "\n".join(lines)


def _points(report):
  """``(label, speed-up, dev metric %, runtime)`` per plotted point: each model's jitted JAX
  forward against the teacher's ("jax"), and each ONNX artefact in onnxruntime against the
  teacher's fp32 ONNX ("onnx": the deployable student, e.g. the INT8 graph)."""
  pts = []
  for r in report["rows"]:
    if r.get("value") is None:
      continue
    if r.get("speedup") is not None and r["role"] != "artefact":
      pts.append((r["stage"], r["speedup"], 100 * r["value"], "jax"))
    if r.get("onnx_speedup") is not None:
      pts.append((f"{r['stage']} (ONNX)", r["onnx_speedup"], 100 * r["value"], "onnx"))
  return pts


def write_svg(report: dict, path: str) -> None:
  """Dev metric (y) against speed-up (x), one labelled point per stage: plain SVG."""
  pts = _points(report)
  W, H, L, R, T, B = 640, 420, 70, 180, 40, 50
  xs = [p[1] for p in pts] or [1.0]
  ys = [p[2] for p in pts] or [50.0]
  x0, x1 = min(0.0, min(xs)), max(xs) * 1.15 + 1e-9
  y0, y1 = min(ys) - 2, max(ys) + 2
  sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
  sy = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)
  metric = next((r["metric"] for r in report["rows"] if r.get("metric")), "metric")
  out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"'
    ' font-size="12">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{report["task"]}: dev '
    f"{metric} vs speed-up over the teacher (indicative)</text>",
    f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
    f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
    f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">speed-up (x)</text>',
    f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" '
    f'text-anchor="middle">dev {metric} (%)</text>',
  ]
  for i in range(5):
    xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
    out.append(f'<text x="{sx(xv)}" y="{H - B + 16}" text-anchor="middle">{xv:.2f}</text>')
    out.append(f'<text x="{L - 6}" y="{sy(yv) + 4}" text-anchor="end">{yv:.1f}</text>')
  for name, x, y, runtime in pts:
    if runtime == "onnx":  # a triangle: another runtime, its speed-up against the teacher's ONNX
      cx, cy = sx(x), sy(y)
      out.append(
        f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx - 6:.1f},{cy + 5:.1f} {cx + 6:.1f},'
        f'{cy + 5:.1f}" fill="darkorange"/>'
      )
    else:
      out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="steelblue"/>')
    out.append(f'<text x="{sx(x) + 8:.1f}" y="{sy(y) + 4:.1f}">{name}</text>')
  if not pts:
    out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no timed stage yet</text>')
  out.append("</svg>")
  with open(path, "w") as f:
    f.write("\n".join(out) + "\n")


def write_plots(report: dict, workdir: str) -> str:
  write_svg(report, os.path.join(workdir, "report.svg"))
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return "report.svg (report.png: matplotlib is not installed)"
  pts = _points(report)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, x, y, runtime in pts:
    ax.scatter([x], [y], marker="^" if runtime == "onnx" else "o")
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
  ax.set_xlabel(
    "speed-up over the teacher (x, indicative)\n"
    "o: JAX forward vs the teacher's; ^: ONNX Runtime vs the teacher's fp32 ONNX"
  )
  metric = next((r["metric"] for r in report["rows"] if r.get("metric")), "metric")
  ax.set_ylabel(f"dev {metric} (%)")
  ax.set_title(str(report["task"]))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "report.png"), dpi=120)
  plt.close(fig)
  return "report.png, report.svg"
