"""The generic training loop every recipe plugs into (see `loop.py` for the config keys)."""

from kdjax.trainer.checkpoint import BestCheckpointer, Checkpointer
from kdjax.trainer.config import default_trainer_config, resolve_trainer_config
from kdjax.trainer.distributed import maybe_initialize_distributed
from kdjax.trainer.loop import Trainer
from kdjax.trainer.metrics import MetricsLogger, peak_flops_per_device
from kdjax.trainer.optim import decay_mask, make_optimizer, make_schedule
from kdjax.trainer.recipe import DataIterator, Recipe
from kdjax.trainer.sharding import (
  batch_sharding,
  logical_to_mesh,
  make_mesh,
  place,
  replicated,
  tree_shardings,
)
from kdjax.trainer.state import (
  TrainState,
  create_state,
  opt_state_shardings,
  state_shardings,
  step_rng,
)
from kdjax.trainer.step import make_train_step, split_micro_batches

__all__ = [
  "BestCheckpointer",
  "Checkpointer",
  "DataIterator",
  "MetricsLogger",
  "Recipe",
  "TrainState",
  "Trainer",
  "batch_sharding",
  "create_state",
  "decay_mask",
  "default_trainer_config",
  "logical_to_mesh",
  "make_mesh",
  "make_optimizer",
  "make_schedule",
  "make_train_step",
  "maybe_initialize_distributed",
  "opt_state_shardings",
  "peak_flops_per_device",
  "place",
  "replicated",
  "resolve_trainer_config",
  "split_micro_batches",
  "state_shardings",
  "step_rng",
  "tree_shardings",
]
