"""Vanilla knowledge distillation from saved teacher logits (Hinton et al.; EasyNLP
``type=vanilla_kd``).

The teacher is run once, beforehand, in predict mode over the training split::

    python -m kdjax.evaluate --model=TEACHER --task=sst-2 --data_dir=... --split=train \\
        --logits_output=teacher_logits.tsv

and the student trains on the task's training split joined row by row with that TSV
(``logits_saved_path``; ids, labels and the logit count are checked, see
kdjax/data/logits_tsv.py)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(labels, s)

(``kdjax.losses.vanilla_kd_loss``; EasyNLP's defaults T = 5, alpha = 0.2). Everything else
(dev evaluation, best checkpoint, export, hyper-parameter defaults) is the finetune recipe's.

Student: ``student.path`` with ``init_from_student=True`` starts from that checkpoint (HF
directory, kdjax model directory or trainer workdir, e.g. a general-distillation run; a fresh
classifier head where it has none); otherwise a random model with the architecture of
``student.path`` (or of ``teacher.path``) overridden by the ``student.*`` keys.
"""

from __future__ import annotations

import os

from kdjax import models
from kdjax.data.logits_tsv import read_logits_tsv
from kdjax.data.tasks import resolve_path
from kdjax.losses import vanilla_kd_loss
from kdjax.recipes import classify, common
from kdjax.recipes.finetune import Finetune


class VanillaKD(Finetune):
  def __init__(self, config, workdir: str):
    c = config
    if not c.temperature > 0:
      raise ValueError(f"config key 'temperature'={c.temperature} must be > 0")
    if not 0.0 <= c.alpha <= 1.0:
      raise ValueError(f"config key 'alpha'={c.alpha} must be in [0, 1]")
    super().__init__(config, workdir)

  def extra_train_columns(self, examples) -> dict:
    c = self.config
    if self.task.is_regression:
      raise ValueError(f"{self.task.name} is a regression task; vanilla KD needs class logits")
    path = c.get("logits_saved_path")
    if not path:
      raise ValueError(
        "config key 'logits_saved_path' is not set: it must name the teacher "
        "logits TSV written by `python -m kdjax.evaluate --split=train "
        "--logits_output=...`"
      )
    source = (
      f"the training split ({resolve_path(self.task.spec, c.data_dir, 'train')})"
      if self.task.spec is not None
      else f"the {self.task.name} training split"
    )
    logits = read_logits_tsv(path, examples, self.task.num_labels, self.task.label_string, source)
    return {"teacher_logits": logits}

  def build_model(self):
    c = self.config
    s = c.student
    num_labels = self.task.num_labels
    overrides = {k: s[k] for k in common.ARCH_KEYS if s.get(k) is not None}
    dtype = s.get("dtype") or None
    if s.get("init_from_student"):
      path = common.require_path(
        s.get("path"),
        "student.path",
        "the student checkpoint to start from (init_from_student=True)",
      )
      model = classify.load_classifier(path, num_labels, seed=int(s.seed), dtype=dtype)
      try:
        return classify.with_config(model, model.config.replace(**overrides), int(s.seed))
      except ValueError as e:
        raise ValueError(f"config key 'student': {e}") from None
    base_path = s.get("path") or c.teacher.get("path")
    base_path = common.require_path(
      base_path,
      "student.path",
      "a model directory whose architecture the student copies (or set teacher.path)",
    )
    cfg = classify.read_config(base_path).replace(num_labels=num_labels, id2label=None, **overrides)
    if dtype:
      cfg = cfg.replace(dtype=dtype)
    model = models.create_model(cfg, "classification", seed=int(s.seed))
    tokenizer_dir = _tokenizer_dir(base_path)
    if tokenizer_dir:
      model.tokenizer_dir = tokenizer_dir
    return model

  def loss_fn(self, params, frozen, batch, rng):
    del frozen
    c = self.config
    logits = self.logits(params, batch, rng)
    loss, terms = vanilla_kd_loss(
      logits, batch["teacher_logits"], batch["labels"], float(c.temperature), float(c.alpha)
    )
    return loss, terms


def _tokenizer_dir(path: str):
  kind = classify.model_kind(path)
  d = path if kind != "workdir" else os.path.join(path, "student")
  return (
    os.path.abspath(d)
    if any(os.path.exists(os.path.join(d, f)) for f in ("vocab.txt", "tokenizer.json"))
    else None
  )


def build(config, workdir):
  return VanillaKD(config, workdir)
