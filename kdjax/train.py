"""kdjax training entry point: picks the recipe named by the config and runs the trainer.

  python -m kdjax.train --config=configs/minilmv2.py --workdir=runs/minilmv2
  python -m kdjax.train --config=configs/minilmv2.py:demo --workdir=runs/demo
  python -m kdjax.train --config=configs/ppminilm.py --config.batch_size=128 \\
      --config.teacher.path=/models/roberta-wwm-ext-large --config.input_dir=/data/corpus

The config file's ``get_config(arg)`` receives the text after ':' (``demo``, ``tiny``, ...).
Any key can be overridden with --config.<key>=value; an unknown key is an error naming it.
A run resumes from the latest checkpoint in --workdir (same data position, same RNG).
On several hosts, start one process per host (see launch/); jax.distributed is initialised
from the environment.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file in configs/, optionally followed by ':arg' "
  "(e.g. configs/minilmv2.py:demo).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints, metrics, "
  "TensorBoard logs and the exported student (resumed if it "
  "already holds checkpoints).",
)
flags.mark_flags_as_required(["config", "workdir"])
_VERBOSE = flags.DEFINE_bool(
  "verbose", False, "On an error, print the full traceback (default: one line naming the cause)."
)

# Errors a user can cause (bad config values, paths, data files, a diverged run): one line.
USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError)


def run(config, workdir: str):
  """Builds the recipe and trains; returns the final train state."""
  from kdjax import recipes
  from kdjax.trainer import Trainer, maybe_initialize_distributed

  maybe_initialize_distributed()
  from kdjax.trainer.config import resolve_batch_size

  resolve_batch_size(config)  # per_device_batch_size -> global batch_size, before any reader
  import jax

  os.makedirs(workdir, exist_ok=True)
  recipe = recipes.build(config, workdir)  # resolves the -1 sentinels of task recipes
  if jax.process_index() == 0:  # the config as resolved: what this run trains with
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2) + "\n")
  return Trainer(config, recipe, workdir).train()


class _QuietLibraries(pylogging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console (warnings still show)."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
      f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "absl")
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  run(_CONFIG.value, _WORKDIR.value)


def _parse_flags(argv):
  """absl parsing, with a one-line error for an unknown --config.<key> override."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv if a.startswith("--config.")]
    key = str(e).strip("\"'")
    print(
      f"error: unknown config key {key!r} in {' '.join(bad)}; see the config file for the "
      "keys it defines",
      file=sys.stderr,
    )
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def cli(main_fn=None, doc: str | None = None):
  """Runs an absl main: --help prints ``doc`` and the flags (exit 0), and an unknown
  --config.<key> is a one-line error."""
  if any(a in ("-h", "--help", "--helpshort") for a in sys.argv[1:]):
    print(doc or __doc__)
    print(flags.FLAGS.module_help(sys.modules[__name__]))
    if main_fn is not None:  # another module's main: its own flags too
      print(flags.FLAGS.main_module_help())
    sys.exit(0)
  app.run(_one_line_errors(main_fn or main), flags_parser=_parse_flags)


def _one_line_errors(main_fn):
  def wrapped(argv):
    try:
      return main_fn(argv)
    except USER_ERRORS as e:
      if _VERBOSE.value:
        raise
      msg = str(e).strip().strip("\"'") if isinstance(e, KeyError) else str(e).strip()
      print(f"error: {type(e).__name__}: {msg}  (--verbose: the traceback)", file=sys.stderr)
      sys.exit(2 if not isinstance(e, RuntimeError) else 1)

  return wrapped


if __name__ == "__main__":
  cli()
