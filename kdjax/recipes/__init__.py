"""One small module per method. Each exposes ``build(config, workdir) -> recipe`` where the
recipe implements the trainer's interface (``kdjax.trainer.recipe.Recipe``)."""

from __future__ import annotations

import importlib

RECIPES = {
  "general_distill": "kdjax.recipes.general_distill",  # MiniLMv2, PP-MiniLM
  "finetune": "kdjax.recipes.finetune",  # CLUE / GLUE / demo fine-tuning
  "vanilla_kd": "kdjax.recipes.vanilla_kd",  # EasyNLP vanilla KD from saved teacher logits
  "tinybert": "kdjax.recipes.tinybert",  # TinyBERT task distillation (2 stages)
  "metakd_teacher": "kdjax.recipes.metakd_teacher",  # Meta-KD meta-teacher (EasyNLP)
  "metakd_student": "kdjax.recipes.metakd_student",  # Meta-KD meta-student (2 stages)
  "prune": "kdjax.recipes.prune",  # DynaBERT / OFA width pruning (PP-MiniLM)
}


def build(config, workdir: str):
  name = config.get("recipe")
  if name not in RECIPES:
    raise ValueError(f"config key 'recipe'={name!r} is not one of {sorted(RECIPES)}")
  return importlib.import_module(RECIPES[name]).build(config, workdir)
