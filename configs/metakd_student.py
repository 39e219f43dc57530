"""Meta-KD meta-student (recipe "metakd_student", kdjax/recipes/metakd_student.py; seed:
EasyNLP examples/knowledge_distillation/metakd, ``meta_student_distill.py``). Two runs:

  # stage first: attention + hidden (+ embedding) MSE through fit_dense + domain MSE
  python -m kdjax.train --config=configs/metakd_student.py:first,genre=books,data_dir=data/SENTI \\
      --config.teacher.path=runs/meta_teacher/export --config.student.path=/models/bert-tiny \\
      --workdir=runs/books/meta_student_pretrain
  # stage second: soft cross-entropy at T=2 from stage first's export; dev per domain
  python -m kdjax.train --config=configs/metakd_student.py:second,genre=books,data_dir=data/SENTI \\
      --config.teacher.path=runs/meta_teacher/export \\
      --config.student.path=runs/books/meta_student_pretrain/export \\
      --workdir=runs/books/meta_student_finetune

``:arg``: variants ``first`` (default), ``second``, ``tiny``, ``demo`` and ``key=value``
pairs (``teacher=`` / ``student=`` for the model paths, ``genre=``, ``data_dir=``, ...).
Without ``student.path`` stage first builds a random student with the teacher's architecture
and the ``student.*`` overrides.

Seed values: learning rate 3e-5, 10 epochs, batch 16, max_seq_length 128, seed 42,
domain_loss_weight 0.5, T 2, logging every 20 steps, a checkpoint every 50 steps.
"""

import ml_collections

from kdjax.config_args import apply_arg, student_block, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "metakd_student"
  c.stage = "first"  # first | second
  c.genre = ""  # the target domain: one of the data's domains
  c.data_dir = ""  # the SENTI folder: train_with_weights.tsv, dev_standard.tsv
  c.domains = ("",)  # empty: the meta-teacher's metakd.json (else the training file's)
  # the frozen teacher's compute dtype; "auto": bfloat16 on GPU / TPU and on CPUs with native
  # bf16 matmuls (AMX; AVX512-BF16 with kdjax's oneDNN kernel), float32 elsewhere
  c.teacher = ml_collections.ConfigDict(dict(path="", dtype="auto"))
  c.student = student_block()
  c.tokenizer_path = ""
  c.domain_loss_weight = 0.5
  c.temperature = 2.0  # EasyNLP's T
  c.layer_map = ()  # stage first: teacher layer per student layer; empty = uniform
  task_schedule(c)
  c.learning_rate = 3e-5
  c.num_train_epochs = 10.0
  c.batch_size = 16
  c.max_seq_length = 128
  c.eval_steps = -1
  c.save_steps = 50
  c.logging_steps = 20
  c.seed = 42
  return c


def _first(c):
  c.stage = "first"


def _second(c):
  c.stage = "second"


def _demo(c):
  c.max_seq_length = 64
  c.num_train_epochs = 3.0


def _tiny(c):
  tiny_task_schedule(c, batch_size=4, epochs=1.0)
  c.save_steps = -1


VARIANTS = {"first": _first, "second": _second, "demo": _demo, "tiny": _tiny}
ALIASES = {"teacher": "teacher.path", "student": "student.path"}


def get_config(arg=None):
  c = apply_arg(base_config(), arg, VARIANTS, ALIASES)
  c.domains = tuple(d for d in c.domains if d)
  return c
