"""Fine-tuning a BERT encoder on one classification / regression task (PaddleNLP run_clue,
the second stage of PP-MiniLM and MiniLMv2).

  loss = wmean_b CE(z_b, y_b)     (STS-B: wmean_b (z_b - y_b)^2)

over the classifier logits ``z``, ``wmean`` the per-example-weighted batch mean
(``kdjax.losses``; weights are 1 unless the data has a weight column). The model starts
from ``model.path`` (HF / kdjax model directory or trainer workdir; a fresh classifier head
where it has none of the task's size: ``kdjax.models.loading``). The dev split(s) are scored
every ``eval_steps`` (default 100, as the seed's scripts) and at the end; the trainer keeps
the best params in ``workdir/best``. The -1 hyper-parameters resolve as described in
``kdjax.recipes.task_setup`` (table ``finetune`` of ``kdjax.data.hparams``).
"""

from __future__ import annotations

from kdjax.models import loading
from kdjax.recipes import task_setup


def build(config, workdir):
  task = task_setup.resolve_task(config, "finetune")
  loading.require_dir(
    config.model.path,
    "model.path",
    "the model to fine-tune: a Hugging Face / kdjax model directory or trainer workdir",
  )
  model, _ = loading.build_student(
    config.model,
    head="classification",
    num_labels=task.num_labels,
    labels=task.labels if not task.is_regression else None,
    key="model",
  )
  setup = task_setup.TaskSetup(config, task, model, name="finetune")

  def loss(params, frozen, batch, rng):
    del frozen
    logits = task_setup.forward(model, params, batch, rng).logits
    return task_setup.task_loss(task, logits, batch["labels"], batch["weights"])

  return task_setup.TaskRecipe(setup, model, loss, workdir=workdir)
