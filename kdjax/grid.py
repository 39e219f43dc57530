"""PP-MiniLM grid search: fine-tune every (batch size, learning rate) pair on one or more
tasks and keep each task's best dev score.

  python -m kdjax.grid --config=configs/finetune.py:task=afqmc \\
      --config.model.path=runs/ppminilm --config.data_dir=/data/clue --workdir=runs/grid \\
      [--tasks=all_clue | --tasks=afqmc,tnews]

The grid is ``config.grid.batch_sizes`` x ``config.grid.learning_rates`` (default 16/32/64 x
3e-5/5e-5/1e-4, the PP-MiniLM search); everything else comes from the config (per-task
epochs and max_seq_length from the task table unless set). ``--tasks`` overrides
``config.task``; ``all_clue`` = AFQMC TNEWS IFLYTEK CMNLI OCNLI CLUEWSC2020 CSL (data_dir is
then the CLUE root holding the task folders).

Every run is an in-process call of the one trainer (kdjax.train.run) in its own sub-workdir
``WORKDIR/<TASK>/<lr>_<batch size>`` (PP-MiniLM's naming, e.g. ``AFQMC/1e-4_32``). A run that
finished has ``grid_result.json`` there and is skipped when the search is started again; an
interrupted run resumes from its checkpoints. After every run ``WORKDIR/results.json`` and
``WORKDIR/results.md`` are rewritten: per task every run's best dev score (the task's main
metric, from the trainer's metrics.jsonl) and the best configuration, plus the CLUE average
of the best scores when the tasks run are CLUE tasks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import app, flags, logging

# --config and --workdir are kdjax.train's flags (absl flags are process-global; every grid
# point is a kdjax.train.run call in this process).
from kdjax import train as train_lib

_TASKS = flags.DEFINE_string(
  "tasks", None, "Comma list of tasks or 'all_clue' (default: config.task)."
)

RESULT_FILE = "grid_result.json"


def task_list(tasks: str | None, default: str) -> list[str]:
  from kdjax.data.task import CLUE_TASKS, get_classification_task

  if not tasks:
    tasks = default
  if tasks == "all_clue":
    return list(CLUE_TASKS)
  names = [t.strip() for t in tasks.split(",") if t.strip()]
  if not names:
    raise ValueError("no task: set config.task or --tasks")
  return [get_classification_task(t).name for t in names]


def format_lr(learning_rate: float) -> str:
  """3e-05 -> '3e-5', 0.0001 -> '1e-4', 2.5e-05 -> '2.5e-5' (PP-MiniLM's run names)."""
  mantissa, exponent = f"{learning_rate:e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def run_name(learning_rate: float, batch_size: int) -> str:
  return f"{format_lr(learning_rate)}_{batch_size}"


def best_eval(workdir: str) -> dict:
  """{"step", "score", "metrics"} of the best eval record in ``workdir/metrics.jsonl``."""
  best = None
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        rec = json.loads(line)
        if "eval/score" in rec and (best is None or rec["eval/score"] > best["score"]):
          best = {
            "step": rec["step"],
            "score": rec["eval/score"],
            "metrics": {k[len("eval/") :]: v for k, v in rec.items() if k.startswith("eval/")},
          }
  if best is None:
    raise RuntimeError(f"{workdir}: the run recorded no dev evaluation (eval_steps=0?)")
  return best


def run_one(config, workdir: str) -> dict:
  """Trains one grid point unless its result file exists; returns its result."""
  import jax

  path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  train_lib.run(config, workdir)
  result = {
    "task": config.task,
    "batch_size": int(config.batch_size),
    "learning_rate": float(config.learning_rate),
    "workdir": workdir,
    "max_steps": int(config.max_steps),
    **best_eval(workdir),
  }
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
  return result


def run_grid(config, workdir: str, tasks: str | None = None) -> dict:
  """Runs the whole search (see the module docstring); returns the results.json content."""
  import jax

  names = task_list(tasks, config.get("task", ""))
  results: dict = {"tasks": {}}
  for task in names:
    runs = []
    for bs in config.grid.batch_sizes:
      for lr in config.grid.learning_rates:
        cfg = config.copy_and_resolve_references()
        cfg.task, cfg.batch_size, cfg.learning_rate = task, int(bs), float(lr)
        sub = os.path.join(workdir, task, run_name(lr, bs))
        logging.info("grid: %s batch_size=%d learning_rate=%g -> %s", task, bs, lr, sub)
        runs.append(run_one(cfg, sub))
        results["tasks"][task] = {"runs": runs, "best": max(runs, key=lambda r: r["score"])}
        results["clue_average"] = clue_average(results)
        if jax.process_index() == 0:
          write_results(results, workdir)
  return results


def clue_average(results: dict) -> float | None:
  from kdjax.data.task import CLUE_TASKS

  scores = [t["best"]["score"] for name, t in results["tasks"].items() if name in CLUE_TASKS]
  return sum(scores) / len(scores) if scores else None


def write_results(results: dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
    json.dump(results, f, indent=2)
  os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "results.md.tmp"), "w") as f:
    f.write(results_markdown(results))
  os.replace(os.path.join(workdir, "results.md.tmp"), os.path.join(workdir, "results.md"))


def results_markdown(results: dict) -> str:
  tasks = results["tasks"]
  lines = [
    "# Grid search results",
    "",
    "Best dev score (the task's main metric, x100) of every run.",
    "",
  ]
  names = list(tasks)
  header = (
    "| | "
    + " | ".join(names)
    + (" | CLUE avg |" if results.get("clue_average") is not None else " |")
  )
  lines += [header, "|" + " --- |" * (header.count("|") - 1)]
  row = "| best | " + " | ".join(f"{100 * tasks[n]['best']['score']:.2f}" for n in names)
  if results.get("clue_average") is not None:
    row += f" | {100 * results['clue_average']:.2f}"
  lines += [row + " |", ""]
  for n in names:
    b = tasks[n]["best"]
    lines += [
      f"## {n}",
      "",
      f"best: learning_rate {format_lr(b['learning_rate'])}, batch_size "
      f"{b['batch_size']} -> {100 * b['score']:.2f} (step {b['step']}, "
      f"{b['workdir']})",
      "",
      "| learning_rate | batch_size | best dev score | step |",
      "| --- | --- | --- | --- |",
    ]
    for r in tasks[n]["runs"]:
      lines.append(
        f"| {format_lr(r['learning_rate'])} | {r['batch_size']} | "
        f"{100 * r['score']:.2f} | {r['step']} |"
      )
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str]):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(train_lib._QuietLibraries())
  run_grid(flags.FLAGS.config, flags.FLAGS.workdir, _TASKS.value)


if __name__ == "__main__":
  train_lib.cli(main, __doc__)
