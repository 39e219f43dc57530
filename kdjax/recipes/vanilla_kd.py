"""Vanilla knowledge distillation from saved teacher logits (Hinton et al.; EasyNLP
``type=vanilla_kd``).

The teacher is run once, beforehand, in predict mode over the training split::

    python -m kdjax.evaluate --model=TEACHER --task=sst-2 --data_dir=... --split=train \\
        --logits_output=teacher_logits.tsv

and the student trains on the task's training split joined row by row with that file
(``logits_saved_path``: kdjax's TSV or the file EasyNLP's predictor writes; ids, labels and
the logit count are checked, see kdjax/data/logits_tsv.py)::

    loss = alpha * T^2 * wmean_b KL(softmax(t_b / T) || softmax(s_b / T))
           + (1 - alpha) * wmean_b CE(y_b, s_b)

(``kdjax.losses.vanilla_kd_loss``, ``wmean`` the per-example-weighted batch mean; EasyNLP's
defaults T = 5, alpha = 0.2). Dev evaluation, best checkpoint, export and the -1
hyper-parameters are the shared task setup's (``kdjax.recipes.task_setup``, table
``finetune``).

Student (``kdjax.models.loading``): ``student.path`` starts from those weights (e.g. a
general-distillation run; a fresh classifier head where it has none); without it, a random
model with the architecture of ``student.config_path`` (default ``teacher.path``, read for its
config and tokenizer only) overridden by the ``student.*`` keys.
"""

from __future__ import annotations

from kdjax.data.logits_tsv import read_logits_tsv
from kdjax.data.tasks import resolve_path
from kdjax.losses import vanilla_kd_loss
from kdjax.models import loading
from kdjax.recipes import task_setup


def build(config, workdir):
  c = config
  if not c.temperature > 0:
    raise ValueError(f"config key 'temperature'={c.temperature} must be > 0")
  if not 0.0 <= c.alpha <= 1.0:
    raise ValueError(f"config key 'alpha'={c.alpha} must be in [0, 1]")
  task = task_setup.resolve_task(c, "finetune")
  if task.is_regression:
    raise ValueError(f"{task.name} is a regression task; vanilla KD needs class logits")
  base = base_dir = None
  if not c.student.get("path") and not c.student.get("config_path"):
    base_dir = loading.require_dir(
      c.teacher.get("path"),
      "teacher.path",
      "a model directory whose architecture the random student copies (or set student.path "
      "/ student.config_path)",
    )
    base = loading.read_config(base_dir)
  student, _ = loading.build_student(
    c.student,
    base=base,
    head="classification",
    num_labels=task.num_labels,
    labels=task.labels,
    tokenizer_dir=base_dir and loading.tokenizer_dir_of(base_dir),
  )

  def teacher_logits(examples):
    path = c.get("logits_saved_path")
    if not path:
      raise ValueError(
        "config key 'logits_saved_path' is not set: it must name the teacher logits file "
        "written by `python -m kdjax.evaluate --split=train --logits_output=...`"
      )
    source = (
      f"the training split ({resolve_path(task.spec, c.data_dir, 'train')})"
      if task.spec is not None and not c.get("train_file")
      else f"the {task.name} training examples"
    )
    logits = read_logits_tsv(path, examples, task.num_labels, task.label_string, source)
    return {"teacher_logits": logits}

  setup = task_setup.TaskSetup(c, task, student, extra_columns=teacher_logits, name="vanilla_kd")
  temperature, alpha = float(c.temperature), float(c.alpha)

  def loss(params, frozen, batch, rng):
    del frozen
    logits = task_setup.forward(student, params, batch, rng).logits
    return vanilla_kd_loss(
      logits,
      teacher_logits=batch["teacher_logits"],
      labels=batch["labels"],
      temperature=temperature,
      alpha=alpha,
      weights=batch["weights"],
    )

  return task_setup.TaskRecipe(setup, student, loss, workdir=workdir)
