"""TinyBERT task-specific distillation (recipe "tinybert"; seed: PaddleNLP TinyBERT example).

Two runs, one per stage; stage 2's student starts from stage 1's export:

  # (optional) augmented training set, in the task's own format
  python -m kdjax.augment --task=SST-2 --data_dir=/data/glue/SST-2 \\
      --mlm_model=/models/bert-base-uncased-mlm --output_dir=/data/glue/SST-2-aug
  # stage 1: embeddings + hidden states (through a learned W_h) + attention scores
  python -m kdjax.train --config=configs/tinybert.py:intermediate,task=SST-2 \\
      --config.teacher.path=/models/bert-base-sst2 --config.student.path=/models/tinybert-6l \\
      --config.data_dir=/data/glue/SST-2 --config.train_file=/data/glue/SST-2-aug/train.tsv \\
      --workdir=runs/tinybert_sst2_inter
  # stage 2: soft cross-entropy on the logits, dev evaluation, best checkpoint kept
  python -m kdjax.train --config=configs/tinybert.py:prediction,task=SST-2 \\
      --config.teacher.path=/models/bert-base-sst2 \\
      --config.student.path=runs/tinybert_sst2_inter/export \\
      --config.data_dir=/data/glue/SST-2 --config.train_file=/data/glue/SST-2-aug/train.tsv \\
      --workdir=runs/tinybert_sst2_pred

``:arg`` is a comma list (kdjax/config_args.py): variants ``intermediate`` (default),
``prediction``, ``tiny`` and ``key=value`` pairs (``stage=``, ``task=``, ``data_dir=``,
``teacher=`` / ``student=`` for the model paths, ...).

Seed table (-1 = resolved by the recipe from the task): batch 32; max_seq_length 64 for SST-2
and CoLA, 128 otherwise; intermediate-layer epochs SST-2 20, QQP 10, MRPC 20, CoLA 50, STS-B 20,
RTE 20, MNLI 10, QNLI 10 (other tasks 20); prediction-layer epochs 3; learning rate 5e-5
(stage 1) / 3e-5 (stage 2); temperature T = 1. As elsewhere in kdjax: max_steps <= 0 ->
epochs * steps_per_epoch, dev evaluation every eval_steps = 100 (-1: once per epoch), warm-up 10 %.

The teacher is a model fine-tuned on the task (HF / kdjax directory or a finetune workdir,
whose best dev checkpoint is used). The student is ``student.path`` (e.g. a general-distilled
TinyBERT) or, without a path, the teacher's architecture with the ``student.*`` overrides
(randomly initialised). ``layer_map`` (0-based teacher layer per student layer) overrides the
uniform map; stage 1 needs equal attention head counts.
"""

import ml_collections

from kdjax.config_args import apply_arg, student_block, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "tinybert"
  c.stage = "intermediate"  # intermediate | prediction
  c.task = ""  # kdjax.data.tasks name (sst-2, mrpc, tnews, ...) or rotten_tomatoes
  c.data_dir = ""  # the task folder or the GLUE / CLUE root holding it
  # the frozen teacher's compute dtype; "auto": bfloat16 on GPU / TPU and on CPUs with native
  # bf16 matmuls (AMX; AVX512-BF16 with kdjax's oneDNN kernel), float32 elsewhere
  c.teacher = ml_collections.ConfigDict(dict(path="", dtype="auto"))
  c.student = student_block()
  c.tokenizer_path = ""  # default: the teacher's directory
  # Stage 1: teacher layer (0-based) per student layer, e.g. (2, 5, 8, 11) or, in the ':arg',
  # layer_map=2;5;8;11. Empty: the uniform map, student layer i <- teacher layer (i+1)*k - 1.
  c.layer_map = ()
  # Projection of the student's hidden states to the teacher's width: "shared" (one map for
  # the embeddings and every layer, applied even at equal widths: the original TinyBERT's
  # fit_dense), "per_layer" (one map each: PaddleNLP's v2 students) or "none" (equal widths).
  c.projection = "shared"
  # Stage 2.
  c.temperature = 1.0
  c.hard_label_weight = 0.0
  # Regression tasks (STS-B): "labels" = MSE against the gold scores (the original
  # task_distill.py), "teacher" = MSE against the teacher's predictions (+ hard_label_weight).
  c.regression_target = "labels"
  task_schedule(c)  # -1: the seed's table, see above
  return c


def _intermediate(c):
  c.stage = "intermediate"


def _prediction(c):
  c.stage = "prediction"


def _tiny(c):
  c.teacher.dtype = "float32"
  tiny_task_schedule(c, batch_size=4, epochs=1.0)


VARIANTS = {"intermediate": _intermediate, "prediction": _prediction, "tiny": _tiny}
ALIASES = {"teacher": "teacher.path", "student": "student.path"}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
