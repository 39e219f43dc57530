"""Model compression after task distillation (PP-MiniLM's last stages).

Modules:
  ``kdjax.compress.prune``   DynaBERT / PaddleSlim-OFA width pruning: head and FFN-neuron
                             importance from mask gradients, reordering by importance,
                             extraction of the standalone narrower model (the width-adaptive
                             distillation itself is the ``prune`` recipe,
                             ``kdjax.recipes.prune`` / ``configs/prune.py``).
  ``kdjax.compress.quant``   INT8 post-training static quantization.
"""
