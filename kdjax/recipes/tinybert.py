"""TinyBERT task-specific distillation (Jiao et al. 2020), in two stages run one after the other.

Stage 1, ``stage="intermediate"`` (the loss has no logits)::

    L = MSE(E_s W_h, E_t) + sum_i MSE(H_s^i W_h, H_t^{g(i)}) + sum_i MSE(A_s^i, A_t^{g(i)})

  * ``E``: embedding outputs; ``H^i``: output of layer i; ``A^i``: pre-softmax attention
    scores ``q k^T / sqrt(d)`` of layer i, all heads (head counts must be equal).
  * ``W_h`` [student_hidden, teacher_hidden] (+ bias): ONE learned linear map shared by the
    embeddings and every layer (TinyBERT's ``fit_dense``), present only when the widths
    differ. It is trained with the student (top-level key ``"proj"`` of the params) and never
    exported.
  * ``g``: student layer i <- teacher layer ``(i+1)*k - 1`` (0-based, k = teacher / student
    depth: ``uniform_layer_map``) or the explicit list ``layer_map``. The teacher runs only
    up to ``max(g)``.
  * Padding is excluded: hidden/embedding MSEs average over real tokens, the attention MSE
    over (query, key) pairs of real tokens (the reference zeroes masked scores instead).

Stage 2, ``stage="prediction"``::

    L = soft_CE(z_s / T, z_t / T) + hard_label_weight * CE(z_s, y)

  (regression tasks: MSE(z_s, z_t) [+ weight * MSE(z_s, y)], as the reference). The student
  starts from stage 1's export (``student.path=<stage-1 workdir>/export``); its classifier is
  trained here. ``evaluate`` scores the dev split(s) every ``eval_steps`` and the trainer keeps
  the best params in ``workdir/best`` (``python -m kdjax.evaluate`` / ``kdjax.convert`` read
  them).

Both stages train a classification model (encoder + pooler + classifier; stage 1 leaves the
head untouched) and export it as a Hugging Face ``BertForSequenceClassification`` directory in
``workdir/export``. Params are the student's own dict (plus ``"proj"`` in stage 1) so the
workdir's checkpoints load with ``kdjax.convert`` / ``kdjax.evaluate`` like any student.

Data: a registry task (``task`` + ``data_dir``) or ``task="rotten_tomatoes"``; ``train_file``
replaces the train split with a file in the task's own format (e.g. the output of
``python -m kdjax.augment``; Rotten Tomatoes: an SST-2-style ``sentence<TAB>label`` TSV).
Unset hyper-parameters (-1) come from the seed's table (see ``SEED_TABLE``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kdjax import models
from kdjax.data import Tokenizer
from kdjax.data.classification import ClassificationData, encode_examples
from kdjax.data.tasks import get_task
from kdjax.losses import (
  attention_mse,
  cross_entropy,
  embedding_mse,
  hidden_mse,
  mse_regression,
  soft_cross_entropy,
  uniform_layer_map,
)
from kdjax.models import params as P
from kdjax.recipes import classify, common
from kdjax.recipes.finetune import evaluate_splits, resolve_steps, write_resolved_config

STAGES = ("intermediate", "prediction")
TRAIN_KEYS = classify.INPUT_KEYS + ("labels",)
PROJ = "proj"
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")

# The seed's table (PaddleNLP TinyBERT README): max_seq_length, intermediate-layer epochs;
# prediction-layer epochs are 3 and the learning rates 5e-5 / 3e-5 for every task, batch 32.
SEED_TABLE = {
  "SST-2": (64, 20),
  "QQP": (128, 10),
  "MRPC": (128, 20),
  "CoLA": (64, 50),
  "STS-B": (128, 20),
  "RTE": (128, 20),
  "MNLI": (128, 10),
  "QNLI": (128, 10),
}
DEFAULT_ROW = (128, 20)  # tasks outside the table (CLUE, the Rotten Tomatoes demo)
PREDICTION_EPOCHS = 3
LEARNING_RATES = {"intermediate": 5e-5, "prediction": 3e-5}


def resolve_hparams(config, task: classify.Task) -> None:
  """Fills the -1 sentinels of max_seq_length / num_train_epochs / learning_rate (in place)."""
  seq_len, inter_epochs = SEED_TABLE.get(task.name, DEFAULT_ROW)
  defaults = {
    "max_seq_length": seq_len,
    "num_train_epochs": inter_epochs if config.stage == "intermediate" else PREDICTION_EPOCHS,
    "learning_rate": LEARNING_RATES[config.stage],
  }
  for key, value in defaults.items():
    if config[key] is not None and config[key] < 0:
      config[key] = type(config[key])(value)


def resolve_layer_map(layer_map, n_student: int, n_teacher: int) -> tuple[int, ...]:
  """Teacher layer (0-based) for each student layer: ``layer_map`` or the uniform map."""
  if not layer_map:
    try:
      return tuple(uniform_layer_map(n_student, n_teacher))
    except ValueError as e:
      raise ValueError(
        f"config key 'layer_map' is not set and the uniform map does not apply: {e}"
      ) from None
  layer_map = tuple(
    int(t) if isinstance(t, str) and t.strip().lstrip("-").isdigit() else t for t in layer_map
  )
  if len(layer_map) != n_student:
    raise ValueError(
      f"config key 'layer_map'={list(layer_map)} must have one teacher layer "
      f"per student layer ({n_student})"
    )
  for t in layer_map:
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_teacher:
      raise ValueError(
        f"config key 'layer_map'={list(layer_map)}: {t!r} is not a teacher "
        f"layer index (0-based: 0..{n_teacher - 1})"
      )
  return layer_map


# ------------------------------------------------------------------------------------ models
def _has_trained_classifier(path: str, model) -> bool:
  if classify.model_kind(path) != "hf":
    return models.head_of(model) == "classification"
  _, raw = models.load_config(path)
  if "ForSequenceClassification" in " ".join(raw.get("architectures") or []):
    return True
  st = os.path.join(path, "model.safetensors")
  if os.path.exists(st):
    from safetensors import safe_open

    with safe_open(st, "np") as f:
      return any(k.startswith("classifier") for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
  return False


def load_teacher(tcfg, task: classify.Task, stage: str) -> common.ModelHandle:
  """Stage 1: the teacher's encoder. Stage 2: the fine-tuned classifier (must have a trained
  head of the task's size)."""
  path = common.require_path(
    tcfg.path,
    "teacher.path",
    "the fine-tuned teacher: a Hugging Face / kdjax model directory or a finetune workdir",
  )
  dtype = tcfg.get("dtype") or None
  if stage == "intermediate":
    model = classify.load_model(path, head="auto", dtype=dtype)
    handle = common.ModelHandle(models.encoder_of(model))
    handle.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    return handle
  model = classify.load_model(path, head="classification", dtype=dtype)
  if models.head_of(model) != "classification" or not _has_trained_classifier(path, model):
    raise ValueError(
      f"teacher.path={path} has no trained classification head: stage "
      "'prediction' distils the logits of a teacher fine-tuned on the task"
    )
  if model.config.num_labels != task.num_labels:
    raise ValueError(
      f"teacher.path={path} has {model.config.num_labels} outputs but task "
      f"{task.name} has {task.num_labels}"
    )
  return common.ModelHandle(model)


def build_student(
  scfg, teacher_cfg: models.BertConfig, task: classify.Task, tokenizer_dir
) -> tuple[common.ModelHandle, bool]:
  """(handle of a classification model, loaded-from-a-checkpoint?)."""
  if scfg.get("path"):
    shape_keys = [k for k in SHAPE_KEYS if scfg.get(k) is not None]
    if shape_keys:
      raise ValueError(
        f"set either student.path or the student architecture keys "
        f"{shape_keys}, not both (the weights fix the architecture)"
      )
    path = common.require_path(
      scfg.path,
      "student.path",
      "a Hugging Face / kdjax model directory or trainer workdir (e.g. <stage-1 workdir>/export)",
    )
    model = classify.load_classifier(
      path, task.num_labels, seed=int(scfg.seed), dtype=scfg.get("dtype") or None
    )
    dropout = {
      k: scfg[k] for k in common.ARCH_KEYS if k not in SHAPE_KEYS and scfg.get(k) is not None
    }
    if dropout:  # same weights, a model built with the new dropout rates
      cfg = model.config.replace(**dropout)
      tokenizer_dir = getattr(model, "tokenizer_dir", None) or tokenizer_dir
      skeleton, _ = P.abstract_skeleton(lambda: models.create_model(cfg, "classification"))
      model = P.bind(skeleton, models.params_of(model))
    from_checkpoint = True
  else:
    cfg = common.student_config(scfg, teacher_cfg.replace(dtype="float32"))
    cfg = cfg.replace(num_labels=task.num_labels, id2label=None)
    model = models.create_model(cfg, "classification", seed=int(scfg.seed))
    from_checkpoint = False
  handle = common.ModelHandle(model)
  if not handle.tokenizer_dir:
    handle.tokenizer_dir = tokenizer_dir
  return handle, from_checkpoint


# ------------------------------------------------------------------------------------ recipe
class _TaskDistill(common.TeacherStudent):
  """What both stages share: task data, teacher, student, export."""

  def __init__(self, config, workdir: str):
    self.config = c = config
    if c.stage not in STAGES:
      raise ValueError(f"config key 'stage'={c.stage!r} is not one of {STAGES}")
    self.task = classify.get_classification_task(c.task)
    resolve_hparams(c, self.task)
    if c.batch_size <= 0 or c.batch_size % jax.process_count():
      raise ValueError(
        f"config key 'batch_size'={c.batch_size} must be a positive multiple of "
        f"the number of processes ({jax.process_count()})"
      )
    self.teacher = load_teacher(c.teacher, self.task, c.stage)
    tcfg = self.teacher.config
    self.student, from_ckpt = build_student(c.student, tcfg, self.task, self.teacher.tokenizer_dir)
    scfg = self.student.config
    if scfg.vocab_size != tcfg.vocab_size:
      raise ValueError(
        f"student vocab_size {scfg.vocab_size} != teacher vocab_size "
        f"{tcfg.vocab_size}: both must read the same token ids"
      )
    for who, cfg in (("teacher", tcfg), ("student", scfg)):
      if c.max_seq_length + cfg.position_offset > cfg.max_position_embeddings:
        raise ValueError(
          f"config key 'max_seq_length'={c.max_seq_length} exceeds the {who}'s "
          f"max_position_embeddings={cfg.max_position_embeddings}"
        )
    tok_dir = c.get("tokenizer_path") or self.teacher.tokenizer_dir
    self.tokenizer = Tokenizer.from_dir(
      common.require_path(
        tok_dir,
        "tokenizer_path",
        "a directory with vocab.txt or tokenizer.json (default: the teacher's directory)",
      )
    )
    self._student_init, self._student_initial = common.init_fns(
      self.student, "classification", from_ckpt
    )

    examples = self._train_examples()
    self.train_features = self.encode(examples)
    n = len(examples)
    self.steps_per_epoch = n // c.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(
        f"{self.task.name}: {n} training examples cannot fill one batch of "
        f"config key 'batch_size'={c.batch_size}"
      )
    resolve_steps(c, self.steps_per_epoch)
    logging.info(
      "tinybert %s: %s, %d train examples%s, %d steps per epoch, max_steps=%d, "
      "lr=%g, max_seq_length=%d",
      c.stage,
      self.task.name,
      n,
      f" (train_file {c.train_file})" if c.get("train_file") else "",
      self.steps_per_epoch,
      c.max_steps,
      c.learning_rate,
      c.max_seq_length,
    )
    write_resolved_config(c, workdir)
    common.write_student_description(self.student, workdir)

  def _train_examples(self):
    c = self.config
    if not c.get("train_file"):
      return self.task.load(c.data_dir, "train")
    path = Path(c.train_file)
    if not path.is_file():
      raise FileNotFoundError(f"config key 'train_file': {path} is not a file")
    spec = self.task.spec if self.task.spec is not None else get_task("SST-2")
    return spec.reader(spec, path, "train", None)

  def encode(self, examples):
    return encode_examples(
      examples, self.tokenizer, self.config.max_seq_length, regression=self.task.is_regression
    )

  # -- trainer interface ---------------------------------------------------------------------
  def train_data(self, process_index: int, process_count: int):
    c = self.config
    feats = {k: self.train_features[k] for k in TRAIN_KEYS}
    return ClassificationData(
      feats,
      c.batch_size // process_count,
      seed=c.seed,
      process_index=process_index,
      process_count=process_count,
    )

  def tokens_per_example(self, batch) -> float:
    return common.tokens_per_example(batch)

  def export(self, params, directory: str) -> None:
    student = {k: v for k, v in params.items() if k != PROJ}
    common.export_student(self.student, student, directory, tokenizer=self.tokenizer)


class IntermediateDistill(_TaskDistill):
  """Stage 1: embedding, hidden-state and attention-score MSEs (module docstring)."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    tcfg, scfg = self.teacher.config, self.student.config
    if tcfg.num_attention_heads != scfg.num_attention_heads:
      raise ValueError(
        f"the attention-score MSE needs equal head counts: teacher has "
        f"{tcfg.num_attention_heads}, student {scfg.num_attention_heads} (set "
        f"student.num_attention_heads={tcfg.num_attention_heads})"
      )
    self.layer_map = resolve_layer_map(
      config.get("layer_map"), scfg.num_hidden_layers, tcfg.num_hidden_layers
    )
    self.teacher_layers = tuple(sorted(set(self.layer_map)))
    self.widths = (scfg.hidden_size, tcfg.hidden_size)
    logging.info(
      "tinybert intermediate: student layer -> teacher layer %s; projection %s",
      dict(enumerate(self.layer_map)),
      f"{self.widths[0]} -> {self.widths[1]}" if self.has_proj else "none (equal widths)",
    )

  @property
  def has_proj(self) -> bool:
    return self.widths[0] != self.widths[1]

  def init_params(self, rng):
    k_student, k_proj = jax.random.split(rng)
    params = dict(self._student_init(k_student))
    if self.has_proj:
      std = self.student.config.initializer_range
      params[PROJ] = {
        "kernel": std * jax.random.normal(k_proj, self.widths, jnp.float32),
        "bias": jnp.zeros((self.widths[1],), jnp.float32),
      }
    return params

  def initial_params(self):
    """Loaded student weights (+ a fresh projection) as host arrays, or None (random init)."""
    values = self._student_initial()
    if values is None:
      return None
    params = dict(values)
    if self.has_proj:
      rng = np.random.default_rng(self.config.seed)
      std = self.student.config.initializer_range
      params[PROJ] = {
        "kernel": (std * rng.standard_normal(self.widths)).astype(np.float32),
        "bias": np.zeros((self.widths[1],), np.float32),
      }
    return params

  def internals(self, params, frozen, batch, rng):
    """(student output, teacher output, projection fn) for one batch."""
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    teacher = self.teacher.bind(frozen)
    t = teacher(
      ids, mask, types, capture_layers=self.teacher_layers, stop_at_layer=self.teacher_layers[-1]
    )
    t = jax.lax.stop_gradient(t)
    student = self.student.bind({k: v for k, v in params.items() if k != PROJ})
    s = student(ids, mask, types, capture_layers="all", deterministic=rng is None, dropout_rng=rng)
    proj = params.get(PROJ)

    def project(x_BxLxHs):
      if proj is None:
        return x_BxLxHs
      return jnp.einsum("blh,hk->blk", x_BxLxHs.astype(jnp.float32), proj["kernel"]) + proj["bias"]

    return s, t, project

  def loss_fn(self, params, frozen, batch, rng):
    mask = batch["attention_mask"]
    s, t, project = self.internals(params, frozen, batch, rng)
    emb = embedding_mse(project(s.embedding_output), t.embedding_output, mask)
    hid = sum(
      hidden_mse(project(s.layers[i].hidden), t.layers[j].hidden, mask)
      for i, j in enumerate(self.layer_map)
    )
    att = sum(
      attention_mse(s.layers[i].scores, t.layers[j].scores, mask)
      for i, j in enumerate(self.layer_map)
    )
    return emb + hid + att, {"embedding_mse": emb, "hidden_mse": hid, "attention_mse": att}

  def flops_per_example(self) -> float:
    L = self.config.max_seq_length
    return common.encoder_flops_per_example(
      self.teacher.config, L, self.teacher_layers[-1] + 1, False
    ) + common.encoder_flops_per_example(
      self.student.config, L, self.student.config.num_hidden_layers, True
    )


class PredictionDistill(_TaskDistill):
  """Stage 2: soft cross-entropy on the logits (+ optional hard labels); dev evaluation."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    c = config
    if c.temperature <= 0:
      raise ValueError(f"config key 'temperature'={c.temperature} must be positive")
    self.eval_sets = {s: self.encode(self.task.load(c.data_dir, s)) for s in self.task.eval_splits}
    self.predictor = classify.Predictor(self.student, c.get("eval_batch_size", 64))

  def init_params(self, rng):
    return self._student_init(rng)

  def initial_params(self):
    return self._student_initial()

  def loss_fn(self, params, frozen, batch, rng):
    c = self.config
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    z_t = jax.lax.stop_gradient(self.teacher.bind(frozen)(ids, mask, types).logits)
    z_s = self.student.bind(params)(ids, mask, types, deterministic=False, dropout_rng=rng).logits
    if self.task.is_regression:
      soft = mse_regression(z_s, z_t[..., 0])
      hard = mse_regression(z_s, batch["labels"])
      metrics = {"logit_mse": soft}
    else:
      soft = soft_cross_entropy(z_s, z_t, c.temperature)
      hard = cross_entropy(z_s, batch["labels"])
      agree = jnp.mean((jnp.argmax(z_s, -1) == jnp.argmax(z_t, -1)).astype(jnp.float32))
      metrics = {"soft_ce": soft, "teacher_agreement": agree}
    loss = soft
    if c.hard_label_weight:
      loss = loss + c.hard_label_weight * hard
      metrics["hard_loss"] = hard
    return loss, metrics

  def evaluate(self, params, frozen, step):
    del frozen, step
    return evaluate_splits(self.task, self.predictor, params, self.eval_sets)

  def flops_per_example(self) -> float:
    L = self.config.max_seq_length
    t, s = self.teacher.config, self.student.config
    return common.encoder_flops_per_example(
      t, L, t.num_hidden_layers, False
    ) + common.encoder_flops_per_example(s, L, s.num_hidden_layers, True)


def build(config, workdir):
  stage = config.get("stage")
  if stage == "intermediate":
    return IntermediateDistill(config, workdir)
  if stage == "prediction":
    return PredictionDistill(config, workdir)
  raise ValueError(f"config key 'stage'={stage!r} is not one of {STAGES}")
