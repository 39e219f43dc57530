"""Environment for tests that start `python -m kdjax...` subprocesses."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pythonpath() -> str:
  """This checkout first, then whatever the caller's PYTHONPATH had (e.g. extra site dirs)."""
  rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  return os.pathsep.join([ROOT] + rest)


def load_script(relpath: str, name: str | None = None):
  """The module of a file of this checkout that is not a package module (``configs/x.py``,
  ``benchmarks/y.py``), loaded under ``name`` (default: derived from the path)."""
  import importlib.util

  path = os.path.join(ROOT, relpath)
  name = name or "_script_" + relpath.replace("/", "_").removesuffix(".py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def config(name: str, arg=None):
  """``configs/<name>.py``'s ``get_config(arg)``."""
  return load_script(f"configs/{name}.py").get_config(arg)
