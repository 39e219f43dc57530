"""Structural edits of a model that keep its weights: layer selection (DistilBERT-style
student initialisation from a teacher's layers)."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from kdjax.models import params as P
from kdjax.models.bert import create_model, encoder_of, head_of


def keep_layers(model: nnx.Module, layers: Sequence[int]) -> nnx.Module:
  """A copy of ``model`` with only the encoder layers ``layers`` (0-based, in that order);
  embeddings, pooler and heads are kept. E.g. ``keep_layers(m, [0, 2, 4])`` turns a 6-layer
  model into a 3-layer one initialised from every other layer."""
  cfg = model.config
  n = cfg.num_hidden_layers
  layers = list(layers)
  if not layers or any(not 0 <= i < n for i in layers):
    raise ValueError(
      f"keep_layers {layers}: indices must be in 0..{n - 1} (the model has {n} layers)"
    )
  new_cfg = cfg.replace(num_hidden_layers=len(layers))
  head = head_of(model)
  pool = encoder_of(model).pooler is not None
  skeleton, _ = P.split(nnx.eval_shape(lambda: create_model(new_cfg, head, add_pooling_layer=pool)))
  params = P.params_of(model)
  enc = params if head == "none" else params["bert"]
  new_enc = dict(enc, layer={str(j): enc["layer"][str(i)] for j, i in enumerate(layers)})
  new_params = new_enc if head == "none" else dict(params, bert=new_enc)
  out = P.bind(skeleton, new_params)
  if getattr(model, "tokenizer_dir", None):
    out.tokenizer_dir = model.tokenizer_dir
  return out
