"""PP-MiniLM task-agnostic distillation (seed: PaddleNLP examples/model_compression/pp-minilm).

MiniLMv2's Q-Q/K-K/V-V relations plus head-head relations (weight ``alpha``) and
sample-sample relations (weight ``beta``; relations over the batch after the transpose to
[seq_len, heads, batch, head_dim]). Seed defaults: alpha = beta = 0.0; set
``--config.beta=...`` for the sample relations PP-MiniLM reports +0.36 CLUE average with.

Layer indices are 0-based here. The seed's "teacher layer 20, student layer 6" are 1-based:
teacher_layer_index=19 of the 24-layer roberta-wwm-ext-large, student_layer_index=5 (the last
of 6). ``num_relation_heads`` is 64 for a large teacher, 48 for a base one.

Variants: (none) the seed's setting; ``layers=2|4|6`` picks the student depth (``num_layers``
in the seed), e.g. ``--config=configs/ppminilm.py:layers=4``; ``demo`` / ``tiny`` as in
configs/minilmv2.py with beta=0.1 so the sample relation is exercised.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
  "kdjax_configs_minilmv2", os.path.join(os.path.dirname(__file__), "minilmv2.py")
)
_minilmv2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_minilmv2)


def get_config(arg=None):
  variant, layers = None, 6
  for part in filter(None, (arg or "").split(",")):
    if part.startswith("layers="):
      layers = int(part.split("=", 1)[1])
      if layers not in (2, 4, 6):
        raise ValueError(
          f"ppminilm: layers must be 2, 4 or 6 (the seed's num_layers), got {layers}"
        )
    else:
      variant = part
  c = _minilmv2.get_config(variant)
  c.alpha = 0.0
  c.beta = 0.0
  if variant is None:
    c.num_relation_heads = 64  # large teacher (roberta-wwm-ext-large, hidden 1024)
    c.teacher_layer_index = 19  # the seed's 20th layer (1-based)
    c.student.num_hidden_layers = layers
    c.student.hidden_size = 768
    c.student.num_attention_heads = 12
    c.student.intermediate_size = 3072
    c.student_layer_index = layers - 1
    c.max_steps = 400000
  else:
    c.beta = 0.1
  return c
