"""Helpers every recipe shares (general and task level): the model forward on a batch, FLOP and
token counts for the trainer's throughput metrics, and the student's export and description.
Building teachers and students lives in ``kdjax.models.loading``; the task-level setup in
``kdjax.recipes.task_setup``."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from kdjax import models
from kdjax.models import native
from kdjax.models.bert import layer_flops_per_token
from kdjax.models.loading import ModelHandle

__all__ = [
  "encoder_flops_per_example",
  "export_student",
  "forward",
  "tokens_per_example",
  "write_student_description",
]


def forward(handle: ModelHandle, params, batch, rng=None, **kwargs):
  """``handle``'s model under ``params`` on a batch's inputs: dropout on when ``rng`` is given
  (training), off otherwise; ``kwargs`` go to the model (``capture_layers``, ...)."""
  return handle.bind(params)(
    batch["input_ids"],
    attention_mask=batch["attention_mask"],
    token_type_ids=batch["token_type_ids"],
    deterministic=rng is None,
    dropout_rng=rng,
    **kwargs,
  )


def encoder_flops_per_example(
  cfg: models.BertConfig, seq_len: int, num_layers: int, train: bool
) -> float:
  """Matmul FLOPs per example of ``num_layers`` layers: x3 for forward + backward."""
  f = layer_flops_per_token(cfg, seq_len) * seq_len * num_layers
  return 3.0 * f if train else f


def tokens_per_example(batch) -> float:
  return float(batch["attention_mask"].sum()) / max(1, batch["attention_mask"].shape[0])


def export_student(handle: ModelHandle, params, directory: str, tokenizer=None) -> None:
  """The student as a Hugging Face directory (``save_pretrained``) in ``directory``."""
  model = handle.model(jax.tree.map(jnp.asarray, params))
  models.save_pretrained(model, directory, tokenizer=tokenizer)


def write_student_description(handle: ModelHandle, workdir: str | None) -> None:
  """``workdir/student/kdjax_model.json`` (+ tokenizer): lets ``kdjax.convert`` /
  ``kdjax.evaluate`` load any checkpoint of the workdir."""
  if workdir is not None and jax.process_index() == 0:
    native.write_description(handle.model(), os.path.join(workdir, "student"))
