"""Vanilla KD from saved teacher logits (EasyNLP ``type=vanilla_kd``; recipe "vanilla_kd").

  # 1. fine-tune the teacher, 2. export its logits over the training split
  python -m kdjax.train --config=configs/finetune.py:task=sst-2,model=/models/bert-large \\
      --config.data_dir=/data/glue --workdir=runs/teacher
  python -m kdjax.evaluate --model=runs/teacher --task=sst-2 --data_dir=/data/glue \\
      --split=train --logits_output=runs/teacher/train_logits.tsv
  # 3. distil into a student (here: the general-distilled 6-layer student)
  python -m kdjax.train --config=configs/vanilla_kd.py:task=sst-2 \\
      --config.logits_saved_path=runs/teacher/train_logits.tsv \\
      --config.student.path=runs/minilmv2 --config.data_dir=/data/glue --workdir=runs/kd

``:arg`` is a comma list of variants (``tiny``) and ``key=value`` pairs (kdjax/config_args.py);
``student=`` / ``logits=`` are short for ``student.path=`` / ``logits_saved_path=``.

Student (kdjax/models/loading.py): ``student.path`` starts from that checkpoint; without it the
student is random, with the architecture of ``student.config_path`` (default ``teacher.path``,
read for its config.json / tokenizer only) overridden by the ``student.*`` keys. Hyper-parameters left at -1 come from the task's defaults, as in
configs/finetune.py (max_steps <= 0: num_train_epochs epochs; dev evaluation every 100 steps).
"""

import ml_collections

from kdjax.config_args import apply_arg, student_block, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "vanilla_kd"
  c.task = ""
  c.data_dir = ""
  c.logits_saved_path = ""  # TSV from `python -m kdjax.evaluate --split=train --logits_output`
  c.temperature = 5.0  # EasyNLP example: temperature=5
  c.alpha = 0.2  # weight of the teacher (KD) term; EasyNLP example: alpha=0.2
  c.teacher = ml_collections.ConfigDict(dict(path=""))  # only for the student's architecture
  c.student = student_block()
  c.tokenizer_path = ""  # default: the student's (or teacher's) directory
  task_schedule(c)
  return c


def _tiny(c):
  tiny_task_schedule(c, batch_size=2, epochs=2.0)


VARIANTS = {"tiny": _tiny}
ALIASES = {"student": "student.path", "logits": "logits_saved_path", "model": "student.path"}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
