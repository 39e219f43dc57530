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

Student: ``student.path`` + ``init_from_student=True`` (default) starts from that checkpoint;
with ``init_from_student=False`` the student is random, with the architecture of
``student.path`` (or ``teacher.path``, read for its config.json / tokenizer only) overridden by
the ``student.*`` keys. Hyper-parameters left at -1 come from the task's defaults, as in
configs/finetune.py (max_steps <= 0: num_train_epochs epochs; eval once per epoch).
"""

import ml_collections

from kdjax.config_args import apply_arg
from kdjax.trainer.config import default_trainer_config


def _int():
  return ml_collections.FieldReference(None, field_type=int)


def _float():
  return ml_collections.FieldReference(None, field_type=float)


def base_config():
  c = default_trainer_config()
  c.recipe = "vanilla_kd"
  c.task = ""
  c.data_dir = ""
  c.logits_saved_path = ""  # TSV from `python -m kdjax.evaluate --split=train --logits_output`
  c.temperature = 5.0       # EasyNLP example: temperature=5
  c.alpha = 0.2             # weight of the teacher (KD) term; EasyNLP example: alpha=0.2
  c.teacher = ml_collections.ConfigDict(dict(path=""))  # only for the student's architecture
  c.student = ml_collections.ConfigDict(dict(
      path="", init_from_student=True,
      num_hidden_layers=_int(), hidden_size=_int(), num_attention_heads=_int(),
      intermediate_size=_int(), hidden_dropout_prob=_float(),
      attention_probs_dropout_prob=_float(),
      dtype="float32", seed=0))
  c.tokenizer_path = ""  # default: the student's (or teacher's) directory
  c.max_seq_length = -1
  c.num_train_epochs = -1.0
  c.learning_rate = -1.0
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_steps = -1
  c.warmup_steps = -1
  c.warmup_proportion = 0.1
  c.weight_decay = 0.01
  c.max_grad_norm = 1.0
  c.eval_steps = -1
  c.save_steps = -1
  c.keep_checkpoints = 1
  c.logging_steps = 50
  c.seed = 42
  return c


def _tiny(c):
  c.max_seq_length = 16
  c.batch_size = 2
  c.eval_batch_size = 4
  c.learning_rate = 1e-3
  c.num_train_epochs = 2.0
  c.logging_steps = 1
  c.async_checkpoint = False
  c.progress_bar = False
  c.tensorboard = False


VARIANTS = {"tiny": _tiny}
ALIASES = {"student": "student.path", "logits": "logits_saved_path", "model": "student.path"}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
