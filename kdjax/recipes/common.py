"""Pieces every recipe shares: building teacher and student models from the config,
binding params inside jitted functions, FLOP estimates, exporting the student."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import models
from kdjax.models import native
from kdjax.models import params as P
from kdjax.models.bert import layer_flops_per_token

log = logging.getLogger(__name__)

# Student architecture keys that may override the teacher's config (HF names).
ARCH_KEYS = (
  "num_hidden_layers",
  "hidden_size",
  "num_attention_heads",
  "intermediate_size",
  "hidden_dropout_prob",
  "attention_probs_dropout_prob",
)


class ModelHandle:
  """A model split into a skeleton (structure) and params (a string-keyed dict)."""

  def __init__(self, model):
    self.config = model.config
    self.head = models.head_of(model)
    self.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    self.skeleton, self.params = P.split(model)

  def bind(self, params):
    return P.bind(self.skeleton, params)

  def model(self, params=None):
    m = self.bind(self.params if params is None else params)
    if self.tokenizer_dir:
      m.tokenizer_dir = self.tokenizer_dir
    return m


class TeacherStudent:
  """Recipe mixin: BERT logical axes for the trainable params and for the frozen teacher
  (``self.teacher``, a :class:`ModelHandle`), whose params are the trainer's frozen pytree."""

  def param_logical_axes(self, params):
    return models.param_logical_axes(params)

  def init_frozen(self):
    return self.teacher.params

  def frozen_logical_axes(self, frozen):
    return models.param_logical_axes(frozen)


def require_path(value: str | None, key: str, what: str = "a local Hugging Face directory"):
  if not value:
    raise ValueError(f"config key {key!r} is not set: it must name {what}")
  if not os.path.isdir(value):
    raise FileNotFoundError(
      f"config key {key!r}: {value} is not a directory ({what}; nothing is downloaded)"
    )
  return value


def load_teacher(tcfg: ml_collections.ConfigDict, head: str = "none") -> ModelHandle:
  path = require_path(tcfg.path, "teacher.path")
  return ModelHandle(models.from_pretrained(path, head=head, dtype=tcfg.get("dtype") or None))


def student_config(scfg: ml_collections.ConfigDict, base: models.BertConfig) -> models.BertConfig:
  """The student's BertConfig: from ``student.path``'s config.json, or the teacher's
  config with the architecture keys given in ``student`` overriding it."""
  if scfg.get("path"):
    cfg, _ = models.load_config(require_path(scfg.path, "student.path"))
  else:
    cfg = base
  overrides = {k: scfg[k] for k in ARCH_KEYS if scfg.get(k) is not None}
  if scfg.get("dtype"):
    overrides["dtype"] = scfg.dtype
  try:
    return cfg.replace(**overrides)
  except ValueError as e:
    raise ValueError(f"config key 'student': {e}") from None


def build_student(
  scfg,
  base: models.BertConfig,
  head: str = "none",
  num_labels=None,
  tokenizer_dir: str | None = None,
) -> ModelHandle:
  cfg = student_config(scfg, base)
  if num_labels is not None:
    cfg = cfg.replace(num_labels=num_labels)
  if scfg.get("init_from_student"):
    path = require_path(
      scfg.get("path"),
      "student.path",
      "the student checkpoint to initialise from (init_from_student=True)",
    )
    model = models.from_pretrained(path, head=head, num_labels=num_labels, dtype=cfg.dtype)
    if model.config.num_hidden_layers != cfg.num_hidden_layers:
      raise ValueError(
        "student.init_from_student: the checkpoint's architecture differs from "
        "the student.* overrides"
      )
  else:
    model = models.create_model(
      cfg, head, seed=int(scfg.get("seed") or 0), add_pooling_layer=head != "none"
    )
  if tokenizer_dir and not getattr(model, "tokenizer_dir", None):
    model.tokenizer_dir = tokenizer_dir
  return ModelHandle(model)


def init_fns(handle: ModelHandle, head: str, from_checkpoint: bool):
  """(init_params, initial_params) for the trainer: a fresh random init traced by jit, or
  the loaded values handed over as host arrays (never baked into a compiled program)."""
  if from_checkpoint:
    values = handle.params
    return (lambda rng: jax.tree.map(jnp.asarray, values)), (lambda: values)
  cfg = handle.config
  pool = models.encoder_of(handle.model()).pooler is not None
  return (
    lambda rng: P.params_of(models.create_model(cfg, head, seed=rng, add_pooling_layer=pool))
  ), (lambda: None)


def encoder_flops_per_example(
  cfg: models.BertConfig, seq_len: int, num_layers: int, train: bool
) -> float:
  """Matmul FLOPs per example of ``num_layers`` layers: x3 for forward + backward."""
  f = layer_flops_per_token(cfg, seq_len) * seq_len * num_layers
  return 3.0 * f if train else f


def tokens_per_example(batch) -> float:
  return float(batch["attention_mask"].sum()) / max(1, batch["attention_mask"].shape[0])


def export_student(handle: ModelHandle, params, directory: str, tokenizer=None) -> None:
  """Final student as an HF directory (save_pretrained) in ``directory``."""
  model = handle.model(jax.tree.map(jnp.asarray, params))
  models.save_pretrained(model, directory, tokenizer=tokenizer)


def write_student_description(handle: ModelHandle, workdir: str) -> None:
  """``workdir/student/kdjax_model.json`` (+ tokenizer): lets ``kdjax.convert`` turn any
  checkpoint of the workdir into an HF directory."""
  if jax.process_index() == 0:
    native.write_description(handle.model(), os.path.join(workdir, "student"))
