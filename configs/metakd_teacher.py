"""Meta-KD meta-teacher (recipe "metakd_teacher", kdjax/recipes/metakd_teacher.py; seed:
EasyNLP examples/knowledge_distillation/metakd, ``meta_teacher_train.py``).

  python -m kdjax.metakd_prep ...          # train_with_weights.tsv, dev_standard.tsv
  python -m kdjax.train --config=configs/metakd_teacher.py:model=/models/bert-base-uncased,data_dir=data/SENTI \\
      --workdir=runs/meta_teacher

``:arg`` is a comma list (kdjax/config_args.py): variants ``tiny`` (test shapes) and
``demo`` (the bundled all-MiniLM-L6-v2) and ``key=value`` pairs (``model=`` = ``model.path``,
``data_dir=``, ``domains=books;dvd;electronics;kitchen``, ...).

Seed values: learning rate 3e-5, 1 epoch, batch 16, max_seq_length 128, seed 42,
use_sample_weights=True, use_domain_loss=True, domain_loss_weight=0.5, logging every 20
steps, a checkpoint every 50 steps. Dev evaluation once per epoch (and at the end).
"""

from kdjax.config_args import apply_arg, student_block, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "metakd_teacher"
  c.data_dir = ""  # the SENTI folder: train_with_weights.tsv, dev_standard.tsv
  # Domain names in id order; empty: the training file's domain names, sorted
  # (EasyNLP's fixed list is books;dvd;electronics;kitchen).
  c.domains = ("",)
  c.model = student_block()  # model.path: the encoder the meta-teacher starts from
  c.tokenizer_path = ""
  c.use_sample_weights = True
  c.use_domain_loss = True
  c.domain_loss_weight = 0.5
  task_schedule(c)
  c.learning_rate = 3e-5
  c.num_train_epochs = 1.0
  c.batch_size = 16
  c.max_seq_length = 128
  c.eval_steps = -1
  c.save_steps = 50
  c.logging_steps = 20
  c.seed = 42
  return c


def _demo(c):
  from kdjax.data.demo import minilm_dir

  c.model.path = minilm_dir()
  c.max_seq_length = 64
  c.batch_size = 16


def _tiny(c):
  tiny_task_schedule(c, batch_size=4, epochs=1.0)
  c.save_steps = -1


VARIANTS = {"demo": _demo, "tiny": _tiny}
ALIASES = {"model": "model.path"}


def get_config(arg=None):
  c = apply_arg(base_config(), arg, VARIANTS, ALIASES)
  c.domains = tuple(d for d in c.domains if d)
  return c
