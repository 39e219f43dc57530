"""Sequence-classification pieces shared by the fine-tuning, vanilla-KD and evaluation code:
the task (registry task or the Rotten Tomatoes demo), loading any model directory as a
classifier, and a jitted batched prediction over a feature dict.

Model directories (``model_kind``):
  * ``hf``       a Hugging Face directory (config.json + weights);
  * ``kdjax``    a kdjax model directory (kdjax_model.json + orbax params/);
  * ``workdir``  a kdjax trainer workdir (student/kdjax_model.json + checkpoints/ [+ best/]):
                 the best dev checkpoint (``best/<step>/params``) when there is one and
                 ``checkpoint="best"``, else the latest (or ``step``) training checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import jax
import numpy as np

from kdjax import models
from kdjax.data import task_metrics
from kdjax.data.classification import eval_batches
from kdjax.data.tasks import Example, TaskSpec, get_task, load_split
from kdjax.models import native
from kdjax.models import params as P

log = logging.getLogger(__name__)

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
DEMO_TASK = "rotten_tomatoes"
CLUE_TASKS = ("AFQMC", "TNEWS", "IFLYTEK", "CMNLI", "OCNLI", "CLUEWSC2020", "CSL")


# --------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
  """A classification / regression task: a registry ``TaskSpec`` or the demo data."""

  name: str
  spec: TaskSpec | None

  @property
  def is_regression(self) -> bool:
    return bool(self.spec and self.spec.is_regression)

  @property
  def num_labels(self) -> int:
    return self.spec.num_labels if self.spec else 2

  @property
  def labels(self):
    return self.spec.labels if self.spec else ("rotten", "fresh")

  @property
  def eval_splits(self) -> tuple[str, ...]:
    """Dev splits; the first one's main metric selects checkpoints (MNLI: dev_matched)."""
    return self.spec.eval_splits if self.spec else ("dev",)

  @property
  def test_splits(self) -> tuple[str, ...]:
    return tuple(self.spec.submission_files) if self.spec else ()

  @property
  def main_metric(self) -> str:
    return self.spec.main_metric if self.spec else "accuracy"

  def label_string(self, label) -> str:
    """The label as written in data files ('' for a missing label)."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
      return ""
    if self.is_regression:
      return repr(float(label))
    return self.labels[int(label)]

  def load(self, data_dir: str | None, split: str) -> list[Example]:
    if self.spec is None:
      train, dev = _rotten_tomatoes()
      rows = {"train": train, "dev": dev}.get(split)
      if rows is None:
        raise ValueError(f"{DEMO_TASK} has splits train and dev, not {split!r}")
      return [Example(i, text, None, label) for i, (text, label) in enumerate(rows)]
    if not data_dir:
      raise ValueError(
        f"config key 'data_dir' is not set: it must name the {self.spec.name} "
        "folder (or the CLUE / GLUE root holding it)"
      )
    return load_split(self.spec, data_dir, split)

  def metrics(self, predictions, labels) -> dict[str, float]:
    """The task's metrics plus "main" (predictions: logits [N, C] or scores)."""
    if self.spec is not None:
      return task_metrics.compute_metrics(self.spec, predictions, labels)
    acc = task_metrics.accuracy(np.argmax(predictions, -1), labels)
    return {"accuracy": acc, "main": acc}

  def predictions(self, logits: np.ndarray) -> np.ndarray:
    """Label indices (classification) or scores (regression) from logits [N, C]."""
    return logits[:, 0] if self.is_regression else np.argmax(logits, -1)


def get_classification_task(name: str) -> Task:
  if not name:
    raise ValueError(
      f"config key 'task' is not set: name a CLUE / GLUE task (e.g. tnews, sst-2) or {DEMO_TASK!r}"
    )
  if name.lower().replace("-", "_") == DEMO_TASK:
    return Task(DEMO_TASK, None)
  spec = get_task(name)
  return Task(spec.name, spec)


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes():
  from kdjax.data.demo import rotten_tomatoes_classification

  return rotten_tomatoes_classification()


# -------------------------------------------------------------------------------------- models
model_kind = native.kind
best_step = native.best_step


def load_model(
  path: str,
  *,
  head: str = "auto",
  num_labels: int | None = None,
  dtype: str | None = None,
  checkpoint: str = "best",
  step: int | None = None,
):
  """Any model directory as a kdjax model (see the module docstring for the kinds).

  ``head``/``num_labels`` only apply to HF directories (as in ``from_pretrained``); kdjax
  directories and workdirs come back with the head they were saved with.
  """
  kind = model_kind(path)
  if kind == "hf":
    try:
      return models.from_pretrained(path, head=head, num_labels=num_labels, dtype=dtype)
    except KeyError:
      if head != "classification":
        raise
      # e.g. an encoder exported without a pooler: load the encoder, add the head later.
      return models.from_pretrained(path, head="none", dtype=dtype)
  return native.load(path, step=step, dtype=dtype, checkpoint=checkpoint)


def as_classifier(model, num_labels: int, seed: int = 0):
  """``model`` as a classification model with ``num_labels`` outputs.

  A model that already is one is returned as is; otherwise a fresh classification model
  takes over every encoder parameter (the pooler and classifier stay freshly initialised
  where the source has none or a different size, as Hugging Face does).
  """
  tokenizer_dir = getattr(model, "tokenizer_dir", None)
  if models.head_of(model) == "classification" and model.config.num_labels == num_labels:
    return model
  cfg = model.config.replace(num_labels=num_labels, id2label=None)
  fresh = models.create_model(cfg, "classification", seed=seed)
  skeleton, params = P.split(fresh)
  dst = P.flatten(params)
  src = P.flatten(P.params_of(models.encoder_of(model)))
  new = []
  for k, v in dst.items():
    s = src.get(k[1:]) if k[0] == "bert" else None
    if s is not None and tuple(s.shape) == tuple(v.shape):
      dst[k] = np.asarray(s)
    else:
      new.append("/".join(k))
  if new:
    log.warning("newly initialised classification parameters: %s", ", ".join(new))
  out = P.bind(skeleton, P.unflatten(dst))
  if tokenizer_dir:
    out.tokenizer_dir = tokenizer_dir
  return out


def load_classifier(
  path: str,
  num_labels: int,
  *,
  seed: int = 0,
  dtype: str | None = None,
  checkpoint: str = "best",
  step: int | None = None,
):
  """A classification model with ``num_labels`` outputs from any model directory; a fresh
  head (seeded by ``seed``) where the directory has none of that size."""
  model = load_model(
    path,
    head="classification",
    num_labels=num_labels,
    dtype=dtype,
    checkpoint=checkpoint,
    step=step,
  )
  return as_classifier(model, num_labels, seed)


def with_config(model, cfg: models.BertConfig, seed: int = 0):
  """``model`` rebuilt under ``cfg`` (same parameter shapes: e.g. other dropout rates)."""
  if cfg == model.config:
    return model
  skeleton, params = P.split(models.create_model(cfg, models.head_of(model), seed=seed))
  dst, src = P.flatten(params), P.flatten(P.params_of(model))
  for k, v in dst.items():
    if k not in src or tuple(src[k].shape) != tuple(v.shape):
      raise ValueError(
        f"parameter {'/'.join(k)} of the checkpoint does not fit the requested "
        "architecture (only non-shape settings such as dropout can change)"
      )
    dst[k] = np.asarray(src[k])
  out = P.bind(skeleton, P.unflatten(dst))
  if getattr(model, "tokenizer_dir", None):
    out.tokenizer_dir = model.tokenizer_dir
  return out


def read_config(path: str) -> models.BertConfig:
  """The BertConfig of any model directory, without loading weights."""
  kind = model_kind(path)
  if kind == "hf":
    return models.load_config(path)[0]
  d = path if kind == "kdjax" else os.path.join(path, "student")
  return native.model_from_description(d).config


# ---------------------------------------------------------------------------------- prediction
def _replicated_like(params):
  for x in jax.tree.leaves(params):
    s = getattr(x, "sharding", None)
    if isinstance(s, jax.sharding.NamedSharding):
      return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
  return None


class Predictor:
  """Jitted inference forward of a classification model over padded fixed-size batches.

  Inputs are host numpy batches (the same on every process); logits come back replicated,
  so every process gets all of them (also when the params are sharded across hosts).
  """

  def __init__(self, handle, batch_size: int):
    self.handle = handle
    self.batch_size = int(batch_size)
    self._fns: dict = {}

  def _fn(self, params):
    out = _replicated_like(params)
    key = None if out is None else id(out.mesh)
    if key not in self._fns:

      def forward(params, ids, mask, types):
        return self.handle.bind(params)(ids, attention_mask=mask, token_type_ids=types).logits

      self._fns[key] = jax.jit(forward, out_shardings=out)
    return self._fns[key]

  def logits(self, params, features) -> np.ndarray:
    """float32 logits [N, num_labels] for every row of ``features``."""
    fn = self._fn(params)
    outs = []
    for b in eval_batches({k: features[k] for k in INPUT_KEYS}, self.batch_size):
      logits = fn(params, b["input_ids"], b["attention_mask"], b["token_type_ids"])
      outs.append(np.asarray(jax.device_get(logits), np.float32)[b["valid"]])
    return np.concatenate(outs)
