"""kdjax against its peers, every run in its own process, alternating kdjax and peer.

  benchmarks/peers/setup.sh                      # once: one venv per peer (benchmarks/peers/.venvs)
  .venv/bin/python benchmarks/peers/run.py       # every shape, every peer (long: hours on 2 cores)
  .venv/bin/python benchmarks/peers/run.py --shapes=tiny --reps=1 --steps=2   # a quick check

Rows are (shape, dtype, relation): MiniLMv2 shapes run float32 and bfloat16, each with the token
relation only and with PP-MiniLM's sample relation added ("+sample": (1-b) token + b sample,
b = 0.5); TinyBERT shapes run float32 and bfloat16. Implementations:
  kdjax       MiniLMv2: benchmarks/distill_throughput.py's jitted step; TinyBERT: the tinybert
              recipe's stage-1 step (both through kdjax_side.py), kdjax venv
  torch       plain PyTorch + transformers MiniLMv2 (torch_minilm.py)          venv "torch"
  textbrewer  TextBrewer GeneralDistiller, TinyBERT-style (textbrewer_tinybert.py) venv "textbrewer"
  paddle      PaddleNLP MiniLMv2 (paddle_minilm.py)                            venv "paddle"
A peer whose venv is missing or failed to install (setup.sh leaves a FAILED file) is reported
as unavailable with the reason; the other rows still run.

Order: for each row, --reps rounds of (kdjax, peer 1, peer 2, ...), so slow drifts of the machine
hit every implementation alike. Before each process starts, the harness waits until the 1-minute
load average is below --idle_load (at most --max_wait seconds; the load seen at start and whether
the machine was idle are recorded per run). Each process runs --warmup untimed steps (compile)
and --steps timed ones, pinned to --threads CPUs (sched_setaffinity; OMP/MKL thread counts and
torch.set_num_threads follow) and reports its own peak RSS (VmHWM in /proc/self/status).
On a busy machine the numbers are not comparable: PyTorch's OpenMP threads spin on barriers, and
with 2 threads at load 10 on 2 cores its tiny step took 0.5-1.1 s against 0.06 s with 1 thread.

Output: one table (step min/median/max over all timed steps of all rounds, examples/s and
tokens/s at the median, peak RSS; kdjax/peer = peer median step / kdjax median step, > 1 means
kdjax is faster; mem = kdjax RSS / peer RSS) and a JSON file benchmarks/results/peers-<time>.json
with the machine (CPU model, flags, threads), package versions per venv and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import common  # noqa: E402

SCHEMA = "kdjax-peers/1"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
VERSION_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "torch",
  "transformers",
  "textbrewer",
  "paddlepaddle",
  "paddlenlp",
  "numpy",
)

# name -> (venv name or None for the kdjax venv, script, method, dtypes, supports +sample)
IMPLS = {
  "kdjax": (None, "kdjax_side.py", "minilm", ("float32", "bfloat16"), True),
  "torch": ("torch", "torch_minilm.py", "minilm", ("float32", "bfloat16"), True),
  "textbrewer": (
    "textbrewer",
    "textbrewer_tinybert.py",
    "tinybert",
    ("float32", "bfloat16"),
    False,
  ),
  "paddle": ("paddle", "paddle_minilm.py", "minilm", ("float32", "bfloat16"), True),
}
PEERS = tuple(n for n in IMPLS if n != "kdjax")


# -- pure logic (tests/test_peers_harness.py) ----------------------------------------------------


def parse_cpuinfo(text: str) -> dict:
  """CPU model, logical CPU count and the vector/matrix flags that matter for matmuls."""
  model, flags, count = None, set(), 0
  for line in text.splitlines():
    key, _, value = line.partition(":")
    key = key.strip()
    if key == "processor":
      count += 1
    elif key == "model name" and model is None:
      model = value.strip()
    elif key == "flags" and not flags:
      flags = set(value.split())
  return dict(
    model=model,
    logical_cpus=count,
    flags={f: f in flags for f in CPU_FLAGS},
    amx=sorted(f for f in flags if f.startswith("amx")),
  )


def expand_shapes(spec: str) -> list[str]:
  names = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    group = {"all": list(common.SHAPES), "tiny": list(common.TINY_SHAPES)}.get(part)
    if group is None and part not in common.SHAPES:
      raise SystemExit(f"unknown shape {part!r}; choose from all, tiny, {', '.join(common.SHAPES)}")
    names += group or [part]
  return list(dict.fromkeys(names))


def make_rows(shapes, dtypes, relations, teacher_forward: bool = False) -> list[dict]:
  """One row per (shape, dtype, relation); with ``teacher_forward`` each TinyBERT row is followed
  by one that times only the frozen teacher's forward (how much of the step no student-side
  speed-up can touch)."""
  rows = []
  for name in shapes:
    method = common.SHAPES[name]["method"]
    for dtype in dtypes:
      for rel in relations if method == "minilm" else ["token"]:
        rows.append(dict(shape=name, method=method, dtype=dtype, sample_relation=rel == "sample"))
      if teacher_forward and method == "tinybert":
        rows.append(dict(rows[-1], teacher_only=True))
  return rows


def row_id(row) -> str:
  rel = {"minilm": "+sample" if row["sample_relation"] else "token", "tinybert": "tinybert"}
  kind = "teacher-fwd" if row.get("teacher_only") else rel[row["method"]]
  return f"{row['shape']}/{row['dtype']}/{kind}"


def impls_for(row, peers) -> list[str]:
  out = []
  for name in ("kdjax", *peers):
    _, _, method, dtypes, sample = IMPLS[name]
    covers = name == "kdjax" or (method == row["method"] and row["dtype"] in dtypes)
    if covers and (not row["sample_relation"] or sample):
      out.append(name)
  return out


def schedule(rows, peers, reps) -> list[tuple[dict, str, int]]:
  """Per row, ``reps`` rounds of kdjax then each peer: kdjax, p1, p2, kdjax, p1, p2, ..."""
  order = []
  for row in rows:
    impls = impls_for(row, peers)
    if len(impls) < 2:  # no peer selected for this row
      continue
    for rep in range(reps):
      order += [(row, impl, rep) for impl in impls]
  return order


def summarize(runs) -> list[dict]:
  """One entry per (row, impl): step stats over every timed step of every round."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in runs:
    groups.setdefault((row_id(r["row"]), r["impl"]), []).append(r)
  out = []
  for (rid, impl), rs in groups.items():
    s = common.shape(rs[0]["row"]["shape"])
    ok = [r for r in rs if r.get("step_times_s")]
    entry = dict(row=rid, impl=impl, runs=len(rs), ok_runs=len(ok))
    if not ok:
      reasons = {r.get("unavailable") or r.get("error") or "no result" for r in rs}
      entry["unavailable"] = "; ".join(sorted(reasons))
      out.append(entry)
      continue
    times = [t for r in ok for t in r["step_times_s"]]
    stats = common.summarize(times)
    rss = [r["peak_rss_bytes"] for r in ok if r.get("peak_rss_bytes")]
    entry.update(
      step_s=stats,
      rep_medians_s=[statistics.median(r["step_times_s"]) for r in ok],
      examples_per_s=s["batch"] / stats["median"],
      tokens_per_s=real_tokens(s) / stats["median"],
      peak_rss_bytes=max(rss) if rss else None,
      loss=ok[-1].get("loss"),
      load_at_start=[r.get("load_at_start") for r in rs],
    )
    out.append(entry)
  add_ratios(out)
  return out


def real_tokens(s) -> int:
  return int(common.batch(s)["attention_mask"].sum())


def add_ratios(summary) -> None:
  """kdjax/peer speed (peer median step / kdjax median step: > 1 = kdjax faster) and memory
  (kdjax RSS / peer RSS) on every peer entry; on kdjax's, the ratio to the fastest peer."""
  by_row: dict[str, dict[str, dict]] = {}
  for e in summary:
    by_row.setdefault(e["row"], {})[e["impl"]] = e
  for entries in by_row.values():
    k = entries.get("kdjax")
    if not k or "step_s" not in k:
      continue
    peers = [e for n, e in entries.items() if n != "kdjax" and "step_s" in e]
    for e in peers:
      e["kdjax_speedup"] = e["step_s"]["median"] / k["step_s"]["median"]
      if e.get("peak_rss_bytes") and k.get("peak_rss_bytes"):
        e["kdjax_memory_ratio"] = k["peak_rss_bytes"] / e["peak_rss_bytes"]
    if peers:
      fastest = min(peers, key=lambda e: e["step_s"]["median"])
      k["fastest_peer"] = fastest["impl"]
      k["speedup_vs_fastest_peer"] = fastest["step_s"]["median"] / k["step_s"]["median"]


def format_table(summary) -> str:
  head = (
    f"{'row':38s} {'impl':10s} {'step min/med/max s':>22s} {'ex/s':>8s} {'tok/s':>9s} "
    f"{'RSS GiB':>7s} {'kdjax/peer':>10s} {'mem':>5s}"
  )
  lines = [head, "-" * len(head)]
  for e in summary:
    if "step_s" not in e:
      lines.append(f"{e['row']:38s} {e['impl']:10s} unavailable: {e['unavailable'][:80]}")
      continue
    st = e["step_s"]
    steps = f"{st['min']:.3f}/{st['median']:.3f}/{st['max']:.3f}"
    rss = f"{e['peak_rss_bytes'] / 2**30:.2f}" if e.get("peak_rss_bytes") else "-"
    if e["impl"] == "kdjax":
      ratio = f"{e['speedup_vs_fastest_peer']:.2f}x*" if "speedup_vs_fastest_peer" in e else "-"
    else:
      ratio = f"{e['kdjax_speedup']:.2f}x" if "kdjax_speedup" in e else "-"
    mem = f"{e['kdjax_memory_ratio']:.2f}" if "kdjax_memory_ratio" in e else "-"
    lines.append(
      f"{e['row']:38s} {e['impl']:10s} {steps:>22s} {e['examples_per_s']:8.2f} "
      f"{e['tokens_per_s']:9.0f} {rss:>7s} {ratio:>10s} {mem:>5s}"
    )
  lines.append(
    "kdjax/peer: peer median step / kdjax median step (> 1: kdjax faster); "
    "* on kdjax rows: against the fastest peer. mem: kdjax RSS / peer RSS."
  )
  return "\n".join(lines)


# -- processes -----------------------------------------------------------------------------------


def env_python(venvs, impl) -> tuple[str | None, str | None]:
  """(python, None) or (None, why unavailable)."""
  env = IMPLS[impl][0]
  if env is None:
    return sys.executable, None
  root = os.path.join(venvs, env)
  failed = os.path.join(root, "FAILED")
  if os.path.exists(failed):
    with open(failed) as f:
      return None, f"setup failed: {f.read().strip()}"
  if not os.path.exists(os.path.join(root, ".complete")):
    return None, f"venv {root} not set up (run benchmarks/peers/setup.sh)"
  return os.path.join(root, "bin", "python"), None


def versions(python) -> dict:
  code = (
    "import importlib.metadata as m, json, sys\n"
    f"names = {list(VERSION_PACKAGES)!r}\n"
    "out = {'python': sys.version.split()[0]}\n"
    "for n in names:\n"
    "  try: out[n] = m.version(n)\n"
    "  except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
  )
  try:
    return json.loads(
      subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=120, check=True
      ).stdout
    )
  except (subprocess.SubprocessError, ValueError, OSError) as e:
    return {"error": str(e)}


def wait_idle(threshold, max_wait, poll=5.0, loadavg=os.getloadavg, sleep=time.sleep):
  """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` s)."""
  waited = 0.0
  while True:
    load = loadavg()
    if load[0] < threshold or waited >= max_wait:
      return dict(load_at_start=list(load), idle=load[0] < threshold, waited_s=waited)
    sleep(poll)
    waited += poll


def run_one(row, impl, rep, args, python) -> dict:
  script = os.path.join(HERE, IMPLS[impl][1])
  cmd = [
    python,
    script,
    f"--shape={row['shape']}",
    f"--dtype={row['dtype']}",
    f"--steps={args.steps}",
    f"--warmup={args.warmup}",
  ]
  if row["sample_relation"]:
    cmd.append("--sample_relation")
  if row.get("teacher_only"):
    cmd.append("--teacher_only")
  cpus = sorted(os.sched_getaffinity(0))[: args.threads]
  env = dict(
    os.environ,
    PEERS_THREADS=str(len(cpus)),
    OMP_NUM_THREADS=str(len(cpus)),
    MKL_NUM_THREADS=str(len(cpus)),
    TOKENIZERS_PARALLELISM="false",
  )
  env.pop("PYTHONPATH", None)  # each venv sees only its own packages (kdjax_side finds the repo)
  record = dict(row=row, impl=impl, rep=rep, cmd=cmd, cpus=cpus)
  record.update(wait_idle(args.idle_load, args.max_wait))
  t0 = time.time()
  try:
    p = subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
      timeout=args.timeout,
      preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    result = common.parse_result(p.stdout)
    if result is None:
      tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
      record["error"] = f"rc {p.returncode}: " + " | ".join(tail)
    else:
      record.update(result)
  except subprocess.TimeoutExpired:
    record["error"] = f"timed out after {args.timeout}s"
  record["wall_s"] = time.time() - t0
  record["load_at_end"] = list(os.getloadavg())
  return record


def machine_info(threads) -> dict:
  try:
    with open("/proc/cpuinfo") as f:
      cpu = parse_cpuinfo(f.read())
  except OSError:
    cpu = {}
  return dict(
    cpu=cpu,
    threads=threads,
    platform=platform.platform(),
    affinity=len(os.sched_getaffinity(0)),
    hostname=platform.node(),
  )


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--shapes",
    default="all",
    help=f"comma list of shapes or groups (all, tiny): {', '.join(common.SHAPES)}",
  )
  p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
  p.add_argument(
    "--dtypes",
    default="float32,bfloat16",
    help="float32 and/or bfloat16 (kdjax compute dtype; PyTorch CPU autocast)",
  )
  p.add_argument(
    "--relations",
    default="token,sample",
    help="MiniLMv2 rows: token (MiniLMv2) and/or sample (+ PP-MiniLM sample relation)",
  )
  p.add_argument(
    "--teacher_forward",
    action="store_true",
    help="after each TinyBERT row, a row timing only the frozen teacher's forward (hidden "
    "states and attention of the layers the loss reads) in kdjax and in the TextBrewer peer",
  )
  p.add_argument(
    "--reps", type=int, default=3, help="rounds (processes) per implementation and row"
  )
  p.add_argument("--steps", type=int, default=5, help="timed steps per process")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per process (compile)")
  p.add_argument(
    "--threads",
    type=int,
    default=len(os.sched_getaffinity(0)),
    help="CPUs each process is pinned to (default: all this process may use)",
  )
  p.add_argument(
    "--idle_load",
    type=float,
    default=0.5,
    help="wait before each run until the 1-minute load average is below this",
  )
  p.add_argument("--max_wait", type=float, default=600, help="give up waiting after this (s)")
  p.add_argument("--timeout", type=float, default=3600, help="per-process limit (s)")
  p.add_argument("--venvs", default=os.path.join(HERE, ".venvs"), help="where setup.sh put them")
  p.add_argument(
    "--out_dir",
    default=os.path.join(REPO, "benchmarks", "results"),
    help="where peers-<UTC time>.json goes",
  )
  p.add_argument("--dry_run", action="store_true", help="print the run order and exit")
  args = p.parse_args(argv)
  peers = [x for x in args.peers.split(",") if x]
  for x in peers:
    if x not in PEERS:
      raise SystemExit(f"unknown peer {x!r}; choose from {', '.join(PEERS)}")
  rows = make_rows(
    expand_shapes(args.shapes),
    args.dtypes.split(","),
    args.relations.split(","),
    args.teacher_forward,
  )
  order = schedule(rows, peers, args.reps)
  if args.dry_run:
    for row, impl, rep in order:
      print(f"{row_id(row):38s} {impl:10s} round {rep}")
    return None

  pythons, env_versions = {}, {}
  for impl in ("kdjax", *peers):
    pythons[impl] = env_python(args.venvs, impl)
    if pythons[impl][0]:
      env_versions[impl] = versions(pythons[impl][0])
  machine = machine_info(args.threads)
  print(
    f"[peers] {machine['cpu'].get('model')} flags {machine['cpu'].get('flags')} "
    f"threads {args.threads}; {len(order)} runs",
    flush=True,
  )
  runs = []
  for row, impl, rep in order:
    python, why = pythons[impl]
    if python is None:
      runs.append(dict(row=row, impl=impl, rep=rep, unavailable=why))
      continue
    r = run_one(row, impl, rep, args, python)
    runs.append(r)
    got = (
      f"median {statistics.median(r['step_times_s']):.3f} s/step"
      if r.get("step_times_s")
      else r.get("unavailable") or r.get("error")
    )
    print(
      f"[peers] {row_id(row):38s} {impl:10s} round {rep}: {got} "
      f"(load {r['load_at_start'][0]:.2f}{'' if r['idle'] else ', NOT idle'})",
      flush=True,
    )
  summary = summarize(runs)
  print(format_table(summary))
  report = dict(
    schema=SCHEMA,
    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    machine=machine,
    versions=env_versions,
    args=vars(args),
    rows=rows,
    runs=runs,
    summary=summary,
  )
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, f"peers-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  print(f"[peers] wrote {path}")
  return report


if __name__ == "__main__":
  main()
