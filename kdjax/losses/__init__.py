"""Pure-function distillation losses (float32 math, jit-able, differentiable)."""

from kdjax.losses.kd import cross_entropy, kl_divergence, mse_regression, vanilla_kd_loss
from kdjax.losses.metakd import (
  domain_expertise,
  domain_representation_mse,
  meta_teacher_loss,
  prototype_scores,
)
from kdjax.losses.minilm import (
  head_relation_kl,
  minilm_relation_loss,
  sample_relation_kl,
  split_relation_heads,
  token_relation_kl,
)
from kdjax.losses.tinybert import (
  attention_mse,
  embedding_mse,
  hidden_mse,
  soft_cross_entropy,
  uniform_layer_map,
)

__all__ = [
  "attention_mse",
  "cross_entropy",
  "domain_expertise",
  "domain_representation_mse",
  "embedding_mse",
  "head_relation_kl",
  "hidden_mse",
  "kl_divergence",
  "meta_teacher_loss",
  "minilm_relation_loss",
  "mse_regression",
  "prototype_scores",
  "sample_relation_kl",
  "soft_cross_entropy",
  "split_relation_heads",
  "token_relation_kl",
  "uniform_layer_map",
  "vanilla_kd_loss",
]
