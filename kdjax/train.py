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

import json
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
_FRESH = flags.DEFINE_bool(
  "fresh",
  False,
  "If --workdir holds checkpoints of a run with another config, move that run aside to "
  "<workdir>/replaced-<time>/ and start fresh (default: an error listing the changed keys).",
)
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

  # Build first with no workdir (the recipe resolves the -1 sentinels and checks every input),
  # then compare with the run already in the workdir, and only then write anything.
  recipe = recipes.build(config, None)
  os.makedirs(workdir, exist_ok=True)
  resolved = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    check_resume_config(workdir, resolved, fresh=_FRESH.value if flags.FLAGS.is_parsed() else False)
  student = getattr(recipe, "student", None)
  if student is not None:
    from kdjax.recipes.common import write_student_description

    write_student_description(student, workdir)
  if jax.process_index() == 0:  # the config as resolved: what this run trains with
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2) + "\n")
  return Trainer(config, recipe, workdir).train()


# Keys a resumed run may change: they alter neither parameter shapes nor the data stream.
RESUMABLE_KEYS = frozenset(
  {
    "max_steps",
    "logging_steps",
    "save_steps",
    "eval_steps",
    "keep_checkpoints",
    "keep_best",
    "progress_bar",
    "tensorboard",
    "async_checkpoint",
    "eval_batch_size",
    "nonfinite",
    "max_skipped_steps",
    "num_train_epochs",
  }
)


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_resume_config(workdir: str, resolved: dict, fresh: bool = False) -> None:
  """Before a run writes into a workdir that holds checkpoints, compare its resolved config
  with the stored ``config.json``: a change of any key outside :data:`RESUMABLE_KEYS` (model
  shapes, data, batch, seed, optimizer ...) is an error listing the keys, and nothing is
  written. Allowed changes are logged and appended to ``config_changes.jsonl``. ``fresh``
  (``--fresh``) moves the old run aside to ``<workdir>/replaced-<time>/`` instead."""
  stored_path = os.path.join(workdir, "config.json")
  ckpts = os.path.join(workdir, "checkpoints")
  has_ckpt = os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
  if not (has_ckpt and os.path.exists(stored_path)):
    return
  with open(stored_path) as f:
    try:
      stored = _flat(json.load(f))
    except ValueError:
      stored = {}
  new = _flat(resolved)
  changed = sorted(k for k in stored.keys() & new.keys() if stored[k] != new[k])
  blocking = [k for k in changed if k.split(".")[-1] not in RESUMABLE_KEYS]
  if blocking and fresh:
    import time

    aside = os.path.join(workdir, time.strftime("replaced-%Y%m%d-%H%M%S"))
    os.makedirs(aside)
    for name in os.listdir(workdir):
      if not name.startswith("replaced-"):
        os.replace(os.path.join(workdir, name), os.path.join(aside, name))
    logging.warning("--fresh: the previous run in %s was moved to %s", workdir, aside)
    return
  if blocking:
    diffs = "; ".join(f"{k}: {stored[k]!r} -> {new[k]!r}" for k in blocking[:8])
    raise ValueError(
      f"{workdir} holds checkpoints of a run with another config ({diffs}"
      f"{'; ...' if len(blocking) > 8 else ''}): resuming would not continue it. Use another "
      "--workdir, or --fresh to move the old run aside"
    )
  if changed:
    logging.info("resuming %s with changed %s", workdir, ", ".join(changed))
    with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
      f.write(json.dumps({k: [stored[k], new[k]] for k in changed}) + "\n")


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
