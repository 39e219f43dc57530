"""Environment for tests that start `python -m kdjax...` subprocesses."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pythonpath() -> str:
  """This checkout first, then whatever the caller's PYTHONPATH had (e.g. extra site dirs)."""
  rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  return os.pathsep.join([ROOT] + rest)
