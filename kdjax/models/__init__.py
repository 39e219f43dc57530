"""Flax NNX BERT/RoBERTa encoders with captured internals, heads and HF interop."""

from kdjax.models.bert import (
  BertForMaskedLM,
  BertForSequenceClassification,
  BertModel,
  BertOutput,
  LayerInternals,
  create_model,
  encoder_of,
  head_of,
  param_logical_axes,
)
from kdjax.models.config import BertConfig
from kdjax.models.hf import from_pretrained, load_config, save_pretrained, to_hf_state_dict
from kdjax.models.params import bind, count_params, params_of, split
