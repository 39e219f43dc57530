"""Per-task default hyper-parameters of the task-level recipes: the one place for the seeds'
tables. A config value of -1 means "take it from here" (``kdjax.recipes.task_setup``).

Fine-tuning (``finetune``, ``vanilla_kd``): PaddleNLP's CLUE table as the MiniLMv2 / PP-MiniLM
seeds give it (learning rate, epochs, max_seq_length per task); GLUE tasks and the Rotten
Tomatoes demo take 2e-5 / 3 epochs / 128. Warm-up 0.1 of the steps, weight decay 0.01.

TinyBERT (``tinybert_intermediate`` / ``tinybert_prediction``): the TinyBERT seed's GLUE table
(max_seq_length and intermediate-layer epochs per task; 3 prediction-layer epochs; learning
rate 5e-5 for stage 1, 3e-5 for stage 2); tasks outside it take 128 / 20.
"""

from __future__ import annotations

__all__ = ["KINDS", "default_hparams"]

# task: (learning_rate, num_train_epochs, max_seq_length)
CLUE_FINETUNE = {
  "AFQMC": (2e-5, 3, 128),
  "TNEWS": (2e-5, 3, 128),
  "IFLYTEK": (2e-5, 6, 128),
  "OCNLI": (3e-5, 6, 128),
  "CMNLI": (3e-5, 3, 128),
  "CLUEWSC2020": (1e-5, 50, 128),
  "CSL": (1e-5, 8, 256),
}
OTHER_FINETUNE = (2e-5, 3, 128)  # GLUE, the Rotten Tomatoes demo

# task: (max_seq_length, intermediate-layer epochs)
TINYBERT_TABLE = {
  "SST-2": (64, 20),
  "QQP": (128, 10),
  "MRPC": (128, 20),
  "CoLA": (64, 50),
  "STS-B": (128, 20),
  "RTE": (128, 20),
  "MNLI": (128, 10),
  "QNLI": (128, 10),
}
TINYBERT_OTHER = (128, 20)
TINYBERT_PREDICTION_EPOCHS = 3
TINYBERT_LR = {"intermediate": 5e-5, "prediction": 3e-5}

KINDS = ("finetune", "tinybert_intermediate", "tinybert_prediction")


def default_hparams(task, kind: str = "finetune") -> dict[str, float | int]:
  """Defaults for ``task`` (a task name, ``TaskSpec`` or ``kdjax.data.task.Task``): keys
  learning_rate, num_train_epochs, max_seq_length, warmup_proportion, weight_decay."""
  name = _name(task)
  if kind == "finetune":
    lr, epochs, max_len = CLUE_FINETUNE.get(name, OTHER_FINETUNE)
  elif kind in ("tinybert_intermediate", "tinybert_prediction"):
    stage = kind.split("_", 1)[1]
    max_len, inter_epochs = TINYBERT_TABLE.get(name, TINYBERT_OTHER)
    epochs = inter_epochs if stage == "intermediate" else TINYBERT_PREDICTION_EPOCHS
    lr = TINYBERT_LR[stage]
  else:
    raise ValueError(f"unknown hyper-parameter table {kind!r} (known: {', '.join(KINDS)})")
  return {
    "learning_rate": lr,
    "num_train_epochs": epochs,
    "max_seq_length": max_len,
    "warmup_proportion": 0.1,
    "weight_decay": 0.01,
  }


def _name(task) -> str:
  if isinstance(task, str):
    from kdjax.data.task import get_classification_task

    return get_classification_task(task).name
  return task.name
