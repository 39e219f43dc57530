"""Fine-tuning a BERT encoder on one classification / regression task (PaddleNLP run_clue,
the second stage of PP-MiniLM and MiniLMv2).

loss = cross-entropy of the classifier logits (STS-B: MSE of the single output). The model
comes from ``model.path`` (HF directory, kdjax model directory or trainer workdir; a fresh
classifier head where it has none of the task's size). ``evaluate`` scores every dev split
of the task (MNLI: dev_matched, also dev_mismatched) and returns ``score`` = the first
split's main metric, so the trainer keeps the best dev params in ``workdir/best``.

Unset hyper-parameters (-1) are resolved here, in the config object itself, before the
trainer reads it: learning_rate / num_train_epochs / max_seq_length from
``default_hparams(task)``, max_steps = ceil(num_train_epochs * steps_per_epoch), eval_steps
= one epoch, save_steps = eval_steps. The resolved config replaces ``workdir/config.json``.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kdjax.data import Tokenizer
from kdjax.data.classification import ClassificationData, encode_examples
from kdjax.data.tasks import default_hparams
from kdjax.losses import cross_entropy, mse_regression
from kdjax.models import param_logical_axes
from kdjax.recipes import classify, common

TRAIN_KEYS = classify.INPUT_KEYS + ("labels",)


def resolve_hparams(config, task: classify.Task) -> None:
  """Fills the -1 sentinels of learning_rate, num_train_epochs, max_seq_length and
  weight_decay / warmup_proportion from the task's defaults (in place)."""
  defaults = (
    default_hparams(task.spec)
    if task.spec is not None
    else {
      "learning_rate": 2e-5,
      "num_train_epochs": 3,
      "max_seq_length": 128,
      "warmup_proportion": 0.1,
      "weight_decay": 0.01,
    }
  )
  for key, value in defaults.items():
    if key in config and config[key] is not None and config[key] < 0:
      config[key] = type(config[key])(value)


def resolve_steps(config, steps_per_epoch: int) -> None:
  """max_steps / eval_steps / save_steps sentinels (in place)."""
  if config.max_steps <= 0:
    config.max_steps = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
  if config.eval_steps < 0:
    config.eval_steps = min(steps_per_epoch, config.max_steps)
  if config.save_steps < 0:
    config.save_steps = config.eval_steps


def write_resolved_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2) + "\n")


class Finetune:
  def __init__(self, config, workdir: str):
    self.config = c = config
    self.workdir = workdir
    self.task = classify.get_classification_task(c.task)
    resolve_hparams(c, self.task)
    if c.batch_size <= 0 or c.batch_size % jax.process_count():
      raise ValueError(
        f"config key 'batch_size'={c.batch_size} must be a positive multiple of "
        f"the number of processes ({jax.process_count()})"
      )
    self.model = common.ModelHandle(self.build_model())
    if c.get("tokenizer_path"):
      self.model.tokenizer_dir = common.require_path(
        c.tokenizer_path, "tokenizer_path", "a directory with vocab.txt"
      )
    if not self.model.tokenizer_dir:
      raise ValueError(
        "the model directory has no tokenizer (vocab.txt / tokenizer.json): "
        "set config key 'tokenizer_path'"
      )
    self.tokenizer = Tokenizer.from_dir(self.model.tokenizer_dir)
    mcfg = self.model.config
    if c.max_seq_length + mcfg.position_offset > mcfg.max_position_embeddings:
      raise ValueError(
        f"config key 'max_seq_length'={c.max_seq_length} exceeds the model's "
        f"max_position_embeddings={mcfg.max_position_embeddings}"
      )

    self.train_examples = self.task.load(c.data_dir, "train")
    self.train_features = self.encode(self.train_examples)
    extra = self.extra_train_columns(self.train_examples)
    self.train_features.update(extra)
    self.train_keys = TRAIN_KEYS + tuple(extra)
    n = len(self.train_examples)
    self.steps_per_epoch = n // c.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"{self.task.name}: {n} training examples cannot fill one batch of "
        f"config key 'batch_size'={c.batch_size}"
      )
    resolve_steps(c, self.steps_per_epoch)
    self.eval_sets = {s: self.encode(self.task.load(c.data_dir, s)) for s in self.task.eval_splits}
    self.predictor = classify.Predictor(self.model, c.get("eval_batch_size", 64))
    logging.info(
      "%s: %d train examples, %d steps per epoch, max_steps=%d, lr=%g, max_seq_length=%d",
      self.task.name,
      n,
      self.steps_per_epoch,
      c.max_steps,
      c.learning_rate,
      c.max_seq_length,
    )
    write_resolved_config(c, workdir)
    common.write_student_description(self.model, workdir)

  def build_model(self):
    """The classification model to train (with ``tokenizer_dir`` when its directory has one)."""
    c = self.config
    path = common.require_path(
      c.model.path, "model.path", "a Hugging Face / kdjax model directory or trainer workdir"
    )
    return classify.load_classifier(
      path, self.task.num_labels, seed=int(c.model.seed), dtype=c.model.get("dtype") or None
    )

  def extra_train_columns(self, examples) -> dict:
    """More per-example training arrays (rows aligned with ``examples``); none here."""
    del examples
    return {}

  def encode(self, examples):
    return encode_examples(
      examples, self.tokenizer, self.config.max_seq_length, regression=self.task.is_regression
    )

  # -- trainer interface ---------------------------------------------------------------------
  def init_params(self, rng):
    """Shapes only (the trainer uses initial_params' values): loaded, not random, weights."""
    del rng
    return jax.tree.map(jnp.asarray, self.model.params)

  def initial_params(self):
    return self.model.params

  def param_logical_axes(self, params):
    return param_logical_axes(params)

  def train_data(self, process_index: int, process_count: int):
    c = self.config
    feats = {k: self.train_features[k] for k in self.train_keys}
    return ClassificationData(
      feats,
      c.batch_size // process_count,
      seed=c.seed,
      process_index=process_index,
      process_count=process_count,
    )

  def logits(self, params, batch, rng):
    model = self.model.bind(params)
    return model(
      batch["input_ids"],
      attention_mask=batch["attention_mask"],
      token_type_ids=batch["token_type_ids"],
      deterministic=False,
      dropout_rng=rng,
    ).logits

  def loss_fn(self, params, frozen, batch, rng):
    del frozen
    logits = self.logits(params, batch, rng)
    return task_loss(self.task, logits, batch["labels"])

  def evaluate(self, params, frozen, step):
    del frozen, step
    return evaluate_splits(self.task, self.predictor, params, self.eval_sets)

  def flops_per_example(self) -> float:
    cfg = self.model.config
    return common.encoder_flops_per_example(
      cfg, self.config.max_seq_length, cfg.num_hidden_layers, True
    )

  def tokens_per_example(self, batch) -> float:
    return common.tokens_per_example(batch)

  def export(self, params, directory: str) -> None:
    common.export_student(self.model, params, directory, tokenizer=self.tokenizer)


def task_loss(task: classify.Task, logits, labels):
  """(loss, metrics): cross-entropy + batch accuracy, or MSE for regression tasks."""
  if task.is_regression:
    return mse_regression(logits, labels), {}
  acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return cross_entropy(logits, labels), {"accuracy": acc}


def evaluate_splits(
  task: classify.Task, predictor: classify.Predictor, params, eval_sets: dict
) -> dict[str, float]:
  """``<split>/<metric>`` for every dev split plus ``score`` (first split's main metric)."""
  out = {}
  for i, (split, feats) in enumerate(eval_sets.items()):
    logits = predictor.logits(params, feats)
    metrics = task.metrics(logits, feats["labels"])
    out.update({f"{split}/{k}": float(v) for k, v in metrics.items() if k != "main"})
    if i == 0:
      score = float(metrics["main"])
      out["score"] = score if np.isfinite(score) else -1.0
  return out


def build(config, workdir):
  return Finetune(config, workdir)
