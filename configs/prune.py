"""DynaBERT / OFA width pruning of a fine-tuned model (recipe "prune"; seed: PP-MiniLM's pruning
stage, PaddleNLP ``pp-minilm/pruning/run_ofa.sh``).

  python -m kdjax.train --config=configs/prune.py:task=tnews,teacher=runs/tnews \\
      --config.data_dir=/data/clue --workdir=runs/tnews_prune
  python -m kdjax.evaluate --model=runs/tnews_prune/export --task=tnews --data_dir=/data/clue
  # the demo: prune the Rotten Tomatoes model of `configs/finetune.py:demo` (runs/ft_demo)
  python -m kdjax.train --config=configs/prune.py:demo --workdir=runs/prune_demo

``:arg`` is a comma list (kdjax/config_args.py): variants ``demo``, ``tiny`` and ``key=value``
pairs (``task=``, ``data_dir=``, ``teacher=`` for ``teacher.path``, ``widths=0.75;0.5``,
``export_width=``, ...).

What it does (kdjax/recipes/prune.py): the student starts as the teacher (``student.path``
empty) with its heads and FFN neurons reordered by DynaBERT importance on dev; every step
distils the sub-network of every width in ``prune.widths`` (logits soft CE + hidden-state MSE
of the embeddings and every layer, weights ``lambda_logit`` / ``lambda_rep``); dev scores per
width, the best checkpoint by the ``export_width`` score; ``workdir/export`` is the extracted
narrow model (kdjax model directory, ``export/hf`` the transformers-loadable padded form).

Seed settings: width 0.75; learning rate and batch size as in fine-tuning (e.g. 5e-5, 16),
epochs 50 for CLUEWSC2020, max_seq_length 128; -1 here = the fine-tuning table of the task
(kdjax.data.hparams). lambda_logit 1.0, lambda_rep 0.1, T = 1 (run_ofa.py's defaults).
"""

import ml_collections

from kdjax.config_args import apply_arg, student_block, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "prune"
  c.task = ""  # kdjax.data.tasks name (tnews, afqmc, sst-2, ...) or rotten_tomatoes
  c.data_dir = ""  # the task folder or the CLUE / GLUE root holding it
  # The fine-tuned full-width model (HF / kdjax directory or a finetune workdir: its best dev
  # checkpoint): the frozen teacher, and the student's starting weights.
  c.teacher = ml_collections.ConfigDict(dict(path="", dtype="float32"))
  # student.path: other starting weights of the same shape (default: teacher.path); dropout
  # overrides allowed.
  c.student = student_block()
  c.tokenizer_path = ""  # default: the teacher's directory
  c.prune = ml_collections.ConfigDict(
    dict(
      widths=(0.75,),  # kept fraction of the heads and FFN neurons of every layer
      export_width=-1.0,  # the width extracted at the end and scored for best/; -1 = narrowest
      lambda_logit=1.0,
      lambda_rep=0.1,
      temperature=1.0,
      importance_batches=0,  # dev batches (of eval_batch_size) for the importance; 0 = all
    )
  )
  task_schedule(c)  # -1: the task's fine-tuning table
  return c


def _demo(c):
  c.task = "rotten_tomatoes"
  c.teacher.path = "runs/ft_demo"  # python -m kdjax.train --config=configs/finetune.py:demo
  c.max_seq_length = 64
  c.batch_size = 32
  c.learning_rate = 5e-5
  c.max_steps = 200
  c.eval_steps = 100
  c.save_steps = 100
  c.logging_steps = 10
  c.prune.importance_batches = 8


def _tiny(c):
  tiny_task_schedule(c, batch_size=2, epochs=2.0)
  c.teacher.dtype = "float32"


VARIANTS = {"demo": _demo, "tiny": _tiny}
ALIASES = {
  "teacher": "teacher.path",
  "student": "student.path",
  "widths": "prune.widths",
  "export_width": "prune.export_width",
}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
