"""Run one Python module as N cooperating JAX processes on this machine.

    python launch/local.py --num_processes 2 --num_cpu_devices 4 -m kdjax.train -- --config ...

Each process gets KDJAX_COORDINATOR / KDJAX_NUM_PROCESSES / KDJAX_PROCESS_ID (and
KDJAX_NUM_CPU_DEVICES) which `kdjax.trainer.distributed.maybe_initialize_distributed()` reads.
Output lines are prefixed with the rank. If any process fails, the others are terminated and
the launcher exits with that process's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, b""):
    out.write(prefix + line.decode(errors="replace"))
    out.flush()
  stream.close()


def launch(
  module: str,
  args: list[str],
  num_processes: int,
  num_cpu_devices: int | None = None,
  port: int | None = None,
  env: dict | None = None,
  timeout: float | None = None,
) -> int:
  """Starts the processes, waits, returns 0 or the first non-zero exit code."""
  port = port or free_port()
  procs, pumps = [], []
  base_env = dict(os.environ if env is None else env)
  for rank in range(num_processes):
    proc_env = dict(
      base_env,
      KDJAX_COORDINATOR=f"127.0.0.1:{port}",
      KDJAX_NUM_PROCESSES=str(num_processes),
      KDJAX_PROCESS_ID=str(rank),
      PYTHONUNBUFFERED="1",
    )
    if num_cpu_devices:
      proc_env["KDJAX_NUM_CPU_DEVICES"] = str(num_cpu_devices)
      proc_env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.Popen(
      [sys.executable, "-m", module, *args],
      env=proc_env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    procs.append(proc)
    pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{rank}] ", sys.stdout), daemon=True)
    pump.start()
    pumps.append(pump)

  def stop_all(sig=signal.SIGTERM):
    for p in procs:
      if p.poll() is None:
        p.send_signal(sig)

  previous = signal.getsignal(signal.SIGTERM)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda *_: stop_all())
  code, deadline = 0, None if timeout is None else time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed:
        code = failed[0].returncode
        print(
          f"[launch] process {procs.index(failed[0])} exited with {code}; stopping the rest",
          file=sys.stderr,
        )
        break
      if deadline is not None and time.monotonic() > deadline:
        print("[launch] timeout; stopping all processes", file=sys.stderr)
        code = 124
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    code = 130
  finally:
    stop_all()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for t in pumps:
      t.join(timeout=5)
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, previous)
  if code == 0:
    code = next((p.returncode for p in procs if p.returncode), 0)
  return code


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument(
    "--num_cpu_devices",
    type=int,
    default=None,
    help="fake CPU devices per process (sets JAX_PLATFORMS=cpu)",
  )
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
  parser.add_argument("-m", dest="module", required=True, help="python module to run")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module")
  ns = parser.parse_args(argv)
  args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
  return launch(ns.module, args, ns.num_processes, ns.num_cpu_devices, ns.port, timeout=ns.timeout)


if __name__ == "__main__":
  sys.exit(main())
