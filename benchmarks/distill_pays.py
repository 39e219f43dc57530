"""Does distillation pay? Arms (a)-(d) of a student that does not start from the teacher's
layers, several seeds each, on real Rotten Tomatoes, every run through ``kdjax.pipeline``.

  python benchmarks/distill_pays.py --workdir=runs/distill_pays                # 3 seeds
  python benchmarks/distill_pays.py --workdir=runs/distill_pays --seeds=0 --scale=0.1   # short
  python benchmarks/distill_pays.py --workdir=runs/dp --dry_run   # print every command line

The budgets are ``configs/pipeline.py:rotten_tomatoes``'s (``--scale`` multiplies every step
count: max_steps, save_steps, eval_steps, warmup_steps): all-MiniLM-L6-v2 (6L/384H) is the
teacher, the student is 3L/384H (12 heads, FFN 1536) from **random** init, and every arm's
label-level stage gets the same number of steps.

  teacher  all-MiniLM-L6-v2 fine-tuned on the labels, once (seed 0), shared by every arm
  (a) alone      the random student fine-tuned on the labels (stages: student_finetune)
  (b) GD + FT    MiniLMv2 general distillation on the Rotten Tomatoes texts (the corpus
                 builder), then fine-tuning on the labels
  (c) GD + TinyBERT   (b)'s general-distilled student, TinyBERT intermediate + prediction
                 stages; on GloVe-augmented training data unless --no_augment
                 (``python -m kdjax.augment --glove_only``, once, seed 0)
  (d) GD + KD    (b)'s general-distilled student, vanilla KD from the teacher's logits
Seed ``s`` sets every stage's trainer seed (data order, dropout) and the student's init seed
(``student.seed``, the random student or the new classifier head); (b), (c) and (d) of one seed
share that seed's general distillation, as the pipeline runs them. Then the best arm's seed-0
student is pruned (width 0.75) and quantized to INT8 (stages prune, quantize, export), with the
pipeline report's speed-ups over the teacher.

Writes ``results.json`` / ``results.md`` in --workdir (mean +- sample standard deviation over the
seeds, % of the teacher, per-seed values) and prints the table. Finished pipelines are skipped
when run again (the pipeline's own resume), so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import cpu_info, sh, versions  # noqa: E402

STEP_KEYS = ("max_steps", "save_steps", "eval_steps", "warmup_steps")
ARMS = {
  "a": ("(a) student alone, random init", "student_finetune"),
  "b": ("(b) general distillation + fine-tuning", "student_finetune"),
  "c": ("(c) general distillation + TinyBERT", "tinybert_prediction"),
  "d": ("(d) general distillation + vanilla KD", "vanilla_kd"),
}
# the trainer seed and the student's init seed, per stage
SEED_KEYS = {
  "general_distill": ("seed", "student.seed"),
  "student_finetune": ("seed", "model.seed"),
  "tinybert": ("seed", "student.seed"),
  "vanilla_kd": ("seed", "student.seed"),
}


def scaled(text: str, scale: float) -> str:
  """``"max_steps=1200 eval_steps=200 lr=1"`` with every step count times ``scale``."""
  out = []
  for tok in shlex.split(text or ""):
    k, _, v = tok.partition("=")
    if k in STEP_KEYS and scale != 1.0:
      v = str(max(2 if k == "max_steps" else 1, round(int(v) * scale)))
    out.append(f"{k}={v}")
  return " ".join(out)


def stat(values: list[float]) -> dict:
  return {
    "mean": statistics.fmean(values),
    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    "n": len(values),
  }


class Bench:
  def __init__(self, args):
    import importlib.util

    self.args = args
    self.W = os.path.abspath(args.workdir)
    self.logs = os.path.join(self.W, "logs")
    spec = importlib.util.spec_from_file_location(
      "_pipeline_config", os.path.join(ROOT, "configs", "pipeline.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    self.base = mod.get_config(args.config_arg)  # the budgets the overrides scale

  def overrides(self, stage: str, seed: int | None, extra: str = "") -> list[str]:
    text = scaled(str(self.base.stages[stage].overrides), self.args.scale)
    if seed is not None:
      text += "".join(f" {k}={seed}" for k in SEED_KEYS.get(stage, ()))
    if extra:
      text += " " + extra
    return [f"--config.stages.{stage}.overrides={text.strip()}"]

  def pipeline(self, name: str, order: str, *flags: str) -> dict | None:
    """One ``kdjax.pipeline`` run in ``workdir/name``; its report.json (None on --dry_run)."""
    wd = os.path.join(self.W, name)
    cmd = [
      "-m",
      "kdjax.pipeline",
      f"--config=configs/pipeline.py:{self.args.config_arg}",
      f"--workdir={wd}",
      f"--config.stages.order={order}",
      *flags,
    ]
    log = os.path.join(self.logs, name.replace("/", "_") + ".log")
    if self.args.dry_run:
      cmd.append("--dry_run")
    print(f"  {name}: {order} ...", flush=True)
    secs = sh(cmd, log)
    if self.args.dry_run:
      with open(log, encoding="utf-8") as f:
        print(f.read())
      return None
    with open(os.path.join(wd, "report.json"), encoding="utf-8") as f:
      report = json.load(f)
    report["wall_s"] = secs
    return report

  def run(self) -> dict:
    a = self.args
    os.makedirs(self.logs, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in ARMS]
    if bad or not arms:
      raise SystemExit(f"--arms: {bad or a.arms!r} not a comma list of {', '.join(ARMS)}")
    no_speed = ["--config.report.speed=False"]

    print("teacher", flush=True)
    t = self.pipeline("teacher", "teacher_finetune", *self.overrides("teacher_finetune", 0))
    teacher = os.path.join(self.W, "teacher", "02_teacher_finetune", "export")
    if a.dry_run:  # the pipeline checks that a given model exists: the pretrained one stands in
      teacher = str(self.base.teacher)
    given_teacher = f"--config.stages.teacher_finetune.model={teacher}"
    aug = []
    if "c" in arms and not a.no_augment:
      from kdjax.data.demo import minilm_dir

      aug_file = os.path.join(self.W, "augmented", "train.tsv")
      if not os.path.exists(aug_file) and not a.dry_run:
        print("augmentation (GloVe only)", flush=True)
        task = str(self.base.task)
        data = [f"--data_dir={self.base.data_dir}"] if self.base.data_dir else []
        tok = str(self.base.teacher) or minilm_dir()
        sh(
          [
            "-m",
            "kdjax.augment",
            f"--task={task}",
            *data,
            "--glove_only",
            f"--tokenizer={tok}",
            f"--num_aug={a.num_aug}",
            f"--output={aug_file}",
            "--no_progress",
          ],
          os.path.join(self.logs, "augment.log"),
        )
      aug = [f"train_file={aug_file}"]

    results = {
      "teacher": None,
      "arms": {k: {"label": ARMS[k][0], "seeds": {}} for k in arms},
      "scale": a.scale,
      "seeds": seeds,
      "config_arg": a.config_arg,
      "augment": bool(aug),
      "machine": cpu_info(),
      "versions": versions(("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")),
    }
    if t:
      row = _row(t, "teacher_finetune")
      results["teacher"] = {"dev": row.get("value"), "params": row.get("params")}
    for s in seeds:
      print(f"seed {s}", flush=True)
      if "a" in arms:
        r = self.pipeline(
          f"seed{s}/alone",
          "student_finetune",
          f"--config.student.seed={s}",
          *self.overrides("student_finetune", s),
          *no_speed,
        )
        if r:
          results["arms"]["a"]["seeds"][s] = _result(r, "student_finetune")
      distill = [x for x in ("b", "c", "d") if x in arms]
      if distill:
        order = ["general_distill"] + [
          {"b": "student_finetune", "c": "tinybert", "d": "vanilla_kd"}[x] for x in distill
        ]
        flags = [given_teacher, *no_speed, *self.overrides("general_distill", s)]
        for x in distill:
          stage = {"b": "student_finetune", "c": "tinybert", "d": "vanilla_kd"}[x]
          flags += self.overrides(stage, s, " ".join(aug) if x == "c" else "")
        if "c" in distill:
          for k in ("intermediate_overrides", "prediction_overrides"):
            text = scaled(str(self.base.stages.tinybert[k]), a.scale)
            flags.append(f"--config.stages.tinybert.{k}={text}")
        r = self.pipeline(f"seed{s}/distill", ",".join(order), *flags)
        if r:
          for x in distill:
            results["arms"][x]["seeds"][s] = _result(r, ARMS[x][1])
      self.write(results)

    if not a.no_compress:
      self.compress(results, arms, given_teacher)
    self.write(results)
    return results

  def compress(self, results, arms, given_teacher):
    """Width pruning and INT8 of the best arm's seed-0 student (by mean dev accuracy)."""
    done = {k: v for k, v in results["arms"].items() if v["seeds"]}
    if self.args.dry_run:
      best, model = arms[-1], str(self.base.teacher)  # stands in for the trained student
    elif not done:
      return
    else:
      best = max(done, key=lambda k: stat([v["dev"] for v in done[k]["seeds"].values()])["mean"])
      model = next(iter(done[best]["seeds"].values()))["model"]
    key = {"a": "student_finetune", "b": "student_finetune", "c": "tinybert", "d": "vanilla_kd"}
    src = key[best]
    r = self.pipeline(
      "compress",
      "prune,quantize,export",
      given_teacher,
      f"--config.stages.{src}.model={model}",
      f"--config.stages.prune.source={src}",
      *self.overrides("prune", None),
    )
    if r:
      results["compressed"] = {
        "from_arm": best,
        "rows": [
          {k: row.get(k) for k in ("name", "stage", "value", "params", "bytes", "speedup")}
          for row in r["rows"]
        ],
      }

  def write(self, results):
    if self.args.dry_run:
      return
    with open(os.path.join(self.W, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    md = markdown(results)
    with open(os.path.join(self.W, "results.md"), "w", encoding="utf-8") as f:
      f.write(md)
    print(md, flush=True)


def _row(report: dict, name: str) -> dict:
  for row in report["rows"]:
    if row["name"] == name:
      return row
  raise SystemExit(f"report of {report.get('teacher')}: no row {name!r}")


def _result(report: dict, name: str) -> dict:
  row = _row(report, name)
  if row.get("value") is None:
    raise SystemExit(f"stage {name}: no dev metric in the report ({row.get('notes')})")
  return {"dev": row["value"], "params": row.get("params"), "model": row["model"]}


def markdown(results: dict) -> str:
  t = (results.get("teacher") or {}).get("dev")
  lines = [
    "| model | dev accuracy, mean +- std | % of teacher | seeds | per seed |",
    "| --- | --- | --- | --- | --- |",
  ]
  if t is not None:
    lines.append(f"| teacher (all-MiniLM-L6-v2, 6L/384H) | {100 * t:.2f} | 100.0 | 1 | |")
  for arm in results["arms"].values():
    vals = [v["dev"] for v in arm["seeds"].values()]
    if not vals:
      continue
    st = stat(vals)
    pct = f"{100 * st['mean'] / t:.1f}" if t else "-"
    per = ", ".join(f"{100 * v:.2f}" for v in vals)
    lines.append(
      f"| {arm['label']} | {100 * st['mean']:.2f} +- {100 * st['std']:.2f} | {pct} | "
      f"{st['n']} | {per} |"
    )
  comp = results.get("compressed")
  if comp:
    for row in comp["rows"]:
      if row["name"] in ("prune", "quantize") and row.get("value") is not None:
        pct = f"{100 * row['value'] / t:.1f}" if t else "-"
        sp = f", {row['speedup']:.2f}x teacher" if row.get("speedup") else ""
        lines.append(
          f"| arm {comp['from_arm']} seed 0 -> {row['stage']}{sp} | {100 * row['value']:.2f} | "
          f"{pct} | 1 | |"
        )
  m = results.get("machine", {})
  lines.append("")
  lines.append(
    f"Rotten Tomatoes dev (2,562 snippets), 3L/384H student from random init; budgets of "
    f"configs/pipeline.py:{results['config_arg']} x {results['scale']}; seeds "
    f"{results['seeds']}; TinyBERT on augmented data: {results['augment']}. "
    f"Machine: {m.get('model')}, {m.get('cpus')} CPUs, flags {m.get('flags')}."
  )
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", default="runs/distill_pays")
  p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
  p.add_argument("--arms", default="a,b,c,d", help="comma list of a, b, c, d")
  p.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
  p.add_argument(
    "--config_arg",
    default="rotten_tomatoes",
    help="configs/pipeline.py's :arg (the budgets and the task; default the benchmark)",
  )
  p.add_argument("--num_aug", type=int, default=4, help="augmented copies per training row")
  p.add_argument("--no_augment", action="store_true", help="TinyBERT on the plain training data")
  p.add_argument("--no_compress", action="store_true", help="skip pruning + INT8 of the best")
  p.add_argument("--dry_run", action="store_true", help="print the pipelines' commands only")
  args = p.parse_args(argv)
  Bench(args).run()
  return 0


if __name__ == "__main__":
  sys.exit(main())
