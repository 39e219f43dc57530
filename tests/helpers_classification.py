"""Tiny BERT directories for the fine-tuning / vanilla-KD tests (hidden 32, 2 layers)."""

from __future__ import annotations

import os

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GLUE = os.path.join(FIXTURES, "glue")
CLUE = os.path.join(FIXTURES, "clue")

_WORDS = (
  "[PAD] [UNK] [CLS] [SEP] [MASK] the a of and to is in it that film movie good bad "
  "plane man woman playing flute no wit gags"
).split()
VOCAB = (
  _WORDS
  + [chr(c) for c in range(ord("a"), ord("z") + 1)]
  + list(".,!?'")
  + list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年")
)


def tiny_config(**kw):
  from kdjax import models

  base = dict(
    vocab_size=len(VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
  )
  base.update(kw)
  return models.BertConfig(**base)


def write_tiny_model(directory: str, head: str = "none", seed: int = 0, **cfg_kw) -> str:
  """An HF directory (config.json, model.safetensors, vocab.txt ...) of a random tiny BERT.
  head="none" has no pooler (like a general-distillation export)."""
  from kdjax import models
  from kdjax.data.tokenizer import Tokenizer

  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(VOCAB) + "\n")
  tok = Tokenizer.from_dir(directory)
  model = models.create_model(
    tiny_config(**cfg_kw), head, seed=seed, add_pooling_layer=head != "none"
  )
  models.save_pretrained(model, directory, tokenizer=tok)
  return directory
