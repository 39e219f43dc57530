"""What every task-level recipe (finetune, vanilla_kd, tinybert, ...) shares, by composition:

  task = resolve_task(config, "finetune")            # the task; -1 lr/epochs/length resolved
  student, _ = loading.build_student(...)            # kdjax.models.loading
  setup = TaskSetup(config, task, student)           # tokenizer, encoded splits, steps, dev
  return TaskRecipe(setup, student, loss, ...)       # the trainer's recipe interface

A recipe module is then its loss function plus small extras (extra trainable params such as
TinyBERT's projection, extra training columns such as saved teacher logits).

Order of resolution (done once, before the trainer is built; ``kdjax.train`` then writes the
resolved config to ``workdir/config.json``):
  1. ``learning_rate`` / ``num_train_epochs`` / ``max_seq_length`` (and ``weight_decay`` /
     ``warmup_proportion``) left at -1 come from ``kdjax.data.hparams`` for the recipe's table;
  2. the training split is loaded (``train_file`` replaces it with a file in the task's
     format) and encoded; ``steps_per_epoch = N // batch_size``;
  3. ``max_steps <= 0`` -> ``ceil(num_train_epochs * steps_per_epoch)``; ``eval_steps < 0`` ->
     once per epoch; ``save_steps < 0`` -> ``eval_steps``; an ``eval_steps`` above
     ``max_steps`` is capped there (the trainer also evaluates at the last step).

Batches carry ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``, ``weights``
(float32 per-example weight, 1.0 unless the data has a weight column) and ``domain_ids``
(int32, 0 unless the data has a domain column), plus any recipe extras.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kdjax import models
from kdjax.data import Tokenizer
from kdjax.data.classification import ClassificationData, encode_examples, eval_batches
from kdjax.data.hparams import default_hparams
from kdjax.data.task import Task, get_classification_task
from kdjax.data.tokenizer import check_same_tokenizer
from kdjax.losses import cross_entropy, mse_regression
from kdjax.models import loading
from kdjax.recipes import common
from kdjax.recipes.common import forward

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
TRAIN_KEYS = INPUT_KEYS + ("labels", "weights", "domain_ids")

__all__ = [
  "INPUT_KEYS",
  "TRAIN_KEYS",
  "Predictor",
  "TaskRecipe",
  "TaskSetup",
  "evaluate_splits",
  "forward",
  "resolve_hparams",
  "resolve_steps",
  "resolve_task",
  "task_loss",
]


# ------------------------------------------------------------------------------ resolution
def resolve_hparams(config, task: Task, table: str = "finetune") -> None:
  """Fills the -1 sentinels of learning_rate, num_train_epochs, max_seq_length,
  weight_decay and warmup_proportion from ``kdjax.data.hparams`` (in place)."""
  for key, value in default_hparams(task, table).items():
    if key in config and config[key] is not None and config[key] < 0:
      config[key] = type(config[key])(value)


def resolve_steps(config, steps_per_epoch: int) -> None:
  """max_steps / eval_steps / save_steps sentinels (in place; module docstring)."""
  if config.max_steps <= 0:
    config.max_steps = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
  if config.eval_steps < 0:
    config.eval_steps = steps_per_epoch
  config.eval_steps = min(config.eval_steps, config.max_steps)
  if config.save_steps < 0:
    config.save_steps = config.eval_steps or min(steps_per_epoch, config.max_steps)


def resolve_task(config, table: str = "finetune") -> Task:
  """The config's ``task``, with its -1 hyper-parameters resolved from ``table``."""
  task = get_classification_task(config.task)
  resolve_hparams(config, task, table)
  return task


# ------------------------------------------------------------------------------ the setup
class TaskSetup:
  """Task, tokenizer, encoded training and dev splits, resolved schedule, dev evaluation.

  ``student`` is the trained model (its tokenizer is the default; dev evaluation runs it);
  ``teacher`` (optional) is checked against the length and the vocabulary too.
  ``extra_columns(examples) -> {name: array [N, ...]}`` adds training arrays (rows aligned
  with the training examples), batched with the rest. ``evaluate=False`` skips the dev sets
  (a stage that does not train the head).
  """

  def __init__(
    self,
    config,
    task: Task,
    student: loading.ModelHandle,
    *,
    teacher: loading.ModelHandle | None = None,
    extra_columns: Callable[[list], Mapping[str, np.ndarray]] | None = None,
    evaluate: bool = True,
    name: str | None = None,
  ):
    self.config = c = config
    self.task = task
    self.tokenizer = Tokenizer.from_dir(self._tokenizer_dir(student, teacher))
    for who, handle in (("student", student), ("teacher", teacher)):
      if handle is not None:
        self._check_model(who, handle.config)

    examples = self.train_examples()
    pairs = any(ex.text_b is not None for ex in examples[:100])
    if c.max_seq_length < (5 if pairs else 3):
      raise ValueError(
        f"config key 'max_seq_length'={c.max_seq_length} leaves no room for text: {task.name} "
        f"needs at least {'5 ([CLS] a [SEP] b [SEP])' if pairs else '3 ([CLS] a [SEP])'}"
      )
    self.train_features = self.encode(examples)
    self.train_keys = TRAIN_KEYS
    if extra_columns is not None:
      extra = dict(extra_columns(examples))
      self.train_features.update(extra)
      self.train_keys = TRAIN_KEYS + tuple(extra)
    n = len(examples)
    if c.batch_size <= 0:
      raise ValueError(f"config key 'batch_size'={c.batch_size} must be positive")
    self.steps_per_epoch = n // c.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"{task.name}: {n} training examples cannot fill one batch of "
        f"config key 'batch_size'={c.batch_size}"
      )
    resolve_steps(c, self.steps_per_epoch)
    self.eval_sets = (
      {s: self.encode(task.load(c.data_dir, s)) for s in task.eval_splits} if evaluate else {}
    )
    self.predictor = Predictor(student, c.get("eval_batch_size", 64))
    logging.info(
      "%s: %s, %d train examples%s, %d steps per epoch, max_steps=%d, lr=%g, "
      "max_seq_length=%d, eval every %d steps",
      name or c.get("recipe", "task"),
      task.name,
      n,
      f" (train_file {c.train_file})" if c.get("train_file") else "",
      self.steps_per_epoch,
      c.max_steps,
      c.learning_rate,
      c.max_seq_length,
      c.eval_steps,
    )

  def _tokenizer_dir(self, student, teacher) -> str:
    """``tokenizer_path``, else the student's, else the teacher's tokenizer; all of those
    that exist must tokenize alike (vocabulary, casing, special tokens)."""
    c = self.config
    named = {
      "tokenizer_path": c.get("tokenizer_path")
      and loading.require_dir(c.tokenizer_path, "tokenizer_path", "a directory with vocab.txt"),
      "student": student.tokenizer_dir,
      "teacher": teacher.tokenizer_dir if teacher is not None else None,
    }
    check_same_tokenizer(named)
    for d in named.values():
      if d:
        return d
    raise ValueError(
      "the model directories have no tokenizer (vocab.txt / tokenizer.json): set config "
      "key 'tokenizer_path'"
    )

  def _check_model(self, who: str, cfg: models.BertConfig) -> None:
    length = self.config.max_seq_length
    if length + cfg.position_offset > cfg.max_position_embeddings:
      raise ValueError(
        f"config key 'max_seq_length'={length} exceeds the {who}'s "
        f"max_position_embeddings={cfg.max_position_embeddings}"
      )
    if self.tokenizer.vocab_size > cfg.vocab_size:
      raise ValueError(
        f"the tokenizer has {self.tokenizer.vocab_size} tokens but the {who}'s "
        f"vocab_size is {cfg.vocab_size}: token ids would fall outside its embeddings"
      )

  def train_examples(self) -> list:
    c = self.config
    if c.get("train_file"):
      return self.task.load_file(c.train_file)
    return self.task.load(c.data_dir, "train")

  def encode(self, examples) -> dict[str, np.ndarray]:
    feats = encode_examples(
      examples, self.tokenizer, self.config.max_seq_length, regression=self.task.is_regression
    )
    n = len(examples)
    feats.setdefault("weights", np.ones(n, np.float32))
    feats.setdefault("domain_ids", np.zeros(n, np.int32))
    return feats

  def train_data(self, process_index: int, process_count: int) -> ClassificationData:
    c = self.config
    feats = {k: self.train_features[k] for k in self.train_keys}
    return ClassificationData(
      feats,
      c.batch_size // process_count,
      seed=c.seed,
      process_index=process_index,
      process_count=process_count,
    )

  def evaluate(self, params) -> dict[str, float]:
    return evaluate_splits(
      self.task,
      self.predictor,
      params,
      self.eval_sets,
      domains=getattr(self.task, "domain_names", None),
      score_domain=getattr(self.task, "score_domain", None),
    )


# ------------------------------------------------------------------- losses and evaluation
def task_loss(task: Task, logits, labels, weights=None):
  """(loss, metrics): cross-entropy (+ batch accuracy), or MSE for regression tasks; both the
  ``weights``-weighted mean over the batch (``kdjax.losses``)."""
  if task.is_regression:
    return mse_regression(logits, labels, weights=weights), {}
  acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return cross_entropy(logits, labels, weights=weights), {"accuracy": acc}


def evaluate_splits(
  task: Task,
  predictor: Predictor,
  params,
  eval_sets: Mapping[str, Mapping[str, np.ndarray]],
  *,
  domains=None,
  score_domain: str | None = None,
) -> dict[str, float]:
  """``<split>/<metric>`` for every dev split plus ``score`` (first split's main metric).

  ``domains`` (names of the domain ids, e.g. Meta-KD's): also ``<split>/<domain>/<metric>``
  over the rows of each domain present; ``score_domain``: ``score`` is then that domain's
  main metric on the first split (falling back to the whole split when it has no rows)."""
  out = {}
  for i, (split, feats) in enumerate(eval_sets.items()):
    logits = predictor.logits(params, feats)
    metrics = task.metrics(logits, feats["labels"])
    out.update({f"{split}/{k}": float(v) for k, v in metrics.items() if k != "main"})
    main = metrics["main"]
    for d, name in enumerate(domains or ()):
      rows = np.asarray(feats["domain_ids"]) == d
      if rows.any():
        dm = task.metrics(logits[rows], np.asarray(feats["labels"])[rows])
        out.update({f"{split}/{name}/{k}": float(v) for k, v in dm.items() if k != "main"})
        if name == score_domain:
          main = dm["main"]
    if i == 0:
      score = float(main)
      out["score"] = score if np.isfinite(score) else -1.0
  return out


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

  def __init__(self, handle: loading.ModelHandle, batch_size: int):
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


# ---------------------------------------------------------------------------- the recipe
class TaskRecipe:
  """The trainer's recipe interface (``kdjax.trainer.recipe.Recipe``) for a task-level method.

  Trainable params are the student's dict (its values as built: loaded, or random from
  ``student.seed``; small task-level models are handed to the trainer as host arrays), plus
  the top-level entries of ``extra_params(rng) -> dict`` (e.g. TinyBERT's ``"proj"``: trained with the student, never
  exported). ``loss(params, frozen, batch, rng) -> (loss, metrics)`` is the method.
  ``teacher`` is frozen (the trainer's ``frozen`` pytree) and runs its first
  ``teacher_layers`` layers (default all) for the FLOP count.
  """

  # Batch entries whose axis 1 is the sequence: the trainer trims them to a length bucket
  # (``length_buckets``); every task loss of kdjax excludes padding, so values are unchanged.
  sequence_keys = ("input_ids", "attention_mask", "token_type_ids")

  def __init__(
    self,
    setup: TaskSetup,
    student: loading.ModelHandle,
    loss: Callable,
    *,
    workdir: str | None,
    teacher: loading.ModelHandle | None = None,
    teacher_layers: int | None = None,
    extra_params: Callable[[jax.Array], dict] | None = None,
    evaluate: bool = True,
  ):
    self.setup, self.student, self.teacher = setup, student, teacher
    self.loss_fn = loss
    self.extra_params = extra_params
    self._teacher_layers = teacher_layers
    if not evaluate or not setup.eval_sets:
      self.evaluate = None
    common.write_student_description(student, workdir)

  @property
  def config(self):
    return self.setup.config

  # -- params ----------------------------------------------------------------------------
  def student_params(self, params) -> dict:
    """The student's own entries of the trainable params (extras removed)."""
    if self.extra_params is None:
      return params
    extra = set(jax.eval_shape(self.extra_params, jax.random.key(0)))
    return {k: v for k, v in params.items() if k not in extra}

  def _extra_init(self):
    # From the config seed, not the trainer's key, so that init_params and initial_params
    # agree (the trainer uses initial_params' values).
    return self.extra_params(jax.random.fold_in(jax.random.key(self.setup.config.seed), 1))

  def init_params(self, rng):
    """Shapes for the trainer (its values are initial_params'); ``rng`` is not used."""
    del rng
    params = dict(jax.tree.map(jnp.asarray, self.student.params))
    if self.extra_params is not None:
      params.update(self._extra_init())
    return params

  def initial_params(self):
    """The student's weights as built (loaded, or random from ``student.seed``) plus the
    extras, as host arrays: placed on the mesh directly, never baked into a program."""
    params = dict(self.student.params)
    if self.extra_params is not None:
      params.update(jax.device_get(jax.jit(self._extra_init)()))
    return params

  def param_logical_axes(self, params):
    return models.param_logical_axes(params)

  def init_frozen(self):
    return None if self.teacher is None else self.teacher.frozen_params()

  def frozen_logical_axes(self, frozen):
    return models.param_logical_axes(frozen)

  # -- data, evaluation, export -----------------------------------------------------------
  def train_data(self, process_index: int, process_count: int):
    return self.setup.train_data(process_index, process_count)

  def evaluate(self, params, frozen, step):
    del frozen, step
    return self.setup.evaluate(self.student_params(params))

  def flops_per_example(self) -> float:
    length = self.setup.config.max_seq_length
    s = self.student.config
    flops = common.encoder_flops_per_example(s, length, s.num_hidden_layers, True)
    if self.teacher is not None:
      t = self.teacher.config
      depth = self._teacher_layers or t.num_hidden_layers
      flops += common.encoder_flops_per_example(t, length, depth, False)
    return flops

  def tokens_per_example(self, batch) -> float:
    return common.tokens_per_example(batch)

  def export(self, params, directory: str) -> None:
    common.export_student(
      self.student, self.student_params(params), directory, tokenizer=self.setup.tokenizer
    )
