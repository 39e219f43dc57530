"""kdjax's own model directory: ``kdjax_model.json`` + orbax ``params/`` + tokenizer.

A trainer workdir holds the same description under ``student/`` and the parameters
inside its orbax checkpoints (``checkpoints/<step>/state`` -> ``params``), so both
load with :func:`load`.
"""

from __future__ import annotations

import json
import logging
import os

from flax import nnx

from kdjax.models import params as P
from kdjax.models.bert import create_model, encoder_of, head_of
from kdjax.models.config import BertConfig

log = logging.getLogger(__name__)

DESCRIPTION = "kdjax_model.json"
FORMAT = "kdjax-model-1"


def describe(model: nnx.Module) -> dict:
  head = head_of(model)
  cfg = model.config
  return {
    "format": FORMAT,
    "head": head,
    "config": cfg.to_hf_dict(),
    "add_pooling_layer": encoder_of(model).pooler is not None,
  }


def write_description(model: nnx.Module, directory: str, tokenizer=None) -> None:
  """Writes ``kdjax_model.json`` and the tokenizer files (no parameters)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, DESCRIPTION), "w", encoding="utf-8") as f:
    json.dump(describe(model), f, indent=2, ensure_ascii=False)
  tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer_dir", None)
  if tok is not None:
    if isinstance(tok, str):
      from kdjax.data.tokenizer import Tokenizer

      tok = Tokenizer.from_dir(tok)
    tok.save(directory)


def model_from_description(directory: str, dtype: str | None = None) -> nnx.Module:
  path = os.path.join(directory, DESCRIPTION)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory}: no {DESCRIPTION} (not a kdjax model directory)")
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  if d.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown format {d.get('format')!r} (expected {FORMAT!r})")
  cfg = BertConfig.from_hf_dict(d["config"], source=path)
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  model = nnx.eval_shape(
    lambda: create_model(cfg, d["head"], add_pooling_layer=d["add_pooling_layer"])
  )
  if any(os.path.exists(os.path.join(directory, f)) for f in ("vocab.txt", "tokenizer.json")):
    model.tokenizer_dir = os.path.abspath(directory)
  return model


def save(model: nnx.Module, directory: str, tokenizer=None) -> None:
  """Saves a model as a kdjax model directory (orbax parameters)."""
  import orbax.checkpoint as ocp

  write_description(model, directory, tokenizer)
  params = P.params_of(model)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(os.path.join(directory, "params")), params, force=True)


def _restore_tree(path: str) -> dict:
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path))


def latest_step(checkpoint_dir: str) -> int:
  steps = sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit())
  if not steps:
    raise FileNotFoundError(f"{checkpoint_dir}: no finished checkpoint")
  return steps[-1]


def best_step(workdir: str) -> int | None:
  """Step of the best dev checkpoint kept in ``workdir/best`` (None when there is none)."""
  d = os.path.join(workdir, "best")
  if not os.path.isdir(d):
    return None
  steps = [
    int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n, "params"))
  ]
  return max(steps) if steps else None


def kind(path: str) -> str:
  """ "kdjax" (model directory), "workdir" (trainer workdir) or "hf" (Hugging Face dir)."""
  if os.path.exists(os.path.join(path, DESCRIPTION)):
    return "kdjax"
  if os.path.exists(os.path.join(path, "student", DESCRIPTION)):
    return "workdir"
  if os.path.exists(os.path.join(path, "config.json")):
    return "hf"
  raise FileNotFoundError(
    f"{path}: not a Hugging Face directory (config.json), a kdjax model "
    f"directory ({DESCRIPTION}) or a kdjax trainer workdir "
    f"(student/{DESCRIPTION})"
  )


def load(
  directory: str, step: int | None = None, dtype: str | None = None, checkpoint: str = "latest"
) -> nnx.Module:
  """Loads a kdjax model directory or a trainer workdir.

  For a workdir: checkpoint ``step`` if given, else with ``checkpoint="best"`` the best dev
  params in ``workdir/best`` (when there are any), else the latest checkpoint.
  """
  if os.path.exists(os.path.join(directory, DESCRIPTION)):
    model = model_from_description(directory, dtype)
    params = _restore_tree(os.path.join(directory, "params"))
  elif os.path.exists(os.path.join(directory, "student", DESCRIPTION)):
    model = model_from_description(os.path.join(directory, "student"), dtype)
    best = best_step(directory) if step is None and checkpoint == "best" else None
    if best is not None:
      log.info("%s: using the best dev checkpoint (step %d)", directory, best)
      params = _restore_tree(os.path.join(directory, "best", str(best), "params"))
    else:
      ckpt = os.path.join(directory, "checkpoints")
      if step is not None:
        steps = (
          sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
        )
        if step not in steps:
          raise FileNotFoundError(
            f"{directory}: no checkpoint step {step} (finished steps: "
            f"{', '.join(map(str, steps)) or 'none'})"
          )
      step = latest_step(ckpt) if step is None else step
      params = _restore_tree(os.path.join(ckpt, str(step), "state"))["params"]
  else:
    kind(directory)  # raises the error naming the three kinds
  skeleton, template = P.split(model)
  flat_t, flat_p = P.flatten(template), P.flatten(params)
  missing = sorted("/".join(k) for k in flat_t if k not in flat_p)
  if missing:
    raise KeyError(f"{directory}: checkpoint lacks parameters: {', '.join(missing[:10])}")
  for k, v in flat_t.items():
    if tuple(flat_p[k].shape) != tuple(v.shape):
      raise ValueError(
        f"{directory}: parameter {'/'.join(k)} has shape "
        f"{tuple(flat_p[k].shape)}, expected {tuple(v.shape)}"
      )
  loaded = P.bind(skeleton, P.unflatten({k: P.host_aligned(flat_p[k]) for k in flat_t}))
  if getattr(model, "tokenizer_dir", None):
    loaded.tokenizer_dir = model.tokenizer_dir
  return loaded
