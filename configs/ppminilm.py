"""PP-MiniLM task-agnostic distillation (seed: PaddleNLP examples/model_compression/pp-minilm).

MiniLMv2's Q-Q/K-K/V-V relations plus head-head relations (weight ``alpha``) and
sample-sample relations (weight ``beta``; relations over the batch after the transpose to
[seq_len, heads, batch, head_dim]). Seed defaults (general_distill.py's flags and README):
alpha = beta = 0.0; the seed's ``general_distill/run.sh`` runs alpha=0, beta=1.0 (sample
relations only, the variant PP-MiniLM reports +0.36 CLUE average with): ``--config.beta=1.0``.

Layer indices are 0-based here. The seed's "teacher layer 20, student layer 6" are 1-based:
teacher_layer_index=19 of the 24-layer roberta-wwm-ext-large, student_layer_index=5 (the last
of 6). ``num_relation_heads`` is 64 for a large teacher, 48 for a base one.

Students, ``layers=6|4|2`` (``--num_layers`` in the seed, e.g.
``--config=configs/ppminilm.py:layers=4``), as pp-minilm/general_distill/general_distill.py
builds them: ``PPMiniLMModel(vocab_size=tokenizer.vocab_size, ...)`` with the values below and
everything else at PPMiniLMModel's defaults (512 positions, 2 token types, dropout 0.1,
LayerNorm eps 1e-12), which equal roberta-wwm-ext-large's; kdjax takes the vocabulary and
those from the teacher's config and overrides the rest:

  ======  ======  =====  ============  ==========  =================================
  layers  hidden  heads  intermediate  hidden_act  student_layer_index (last layer)
  ======  ======  =====  ============  ==========  =================================
  6       768     12     3072          relu        5 (run.sh)
  4       256     16     1024          relu        3
  2       128     8 *    512           relu        1
  ======  ======  =====  ============  ==========  =================================

  * The reference passes no head count for 2 layers, so PPMiniLMModel's default 12 applies,
    which does not divide 128 (Paddle's MultiHeadAttention rejects it: that branch cannot
    run). kdjax uses 8 heads: head size 16, as the reference's own 4-layer student.

The 6-layer shape is the released ``ppminilm-6l-768h`` (paddlenlp/transformers/ppminilm:
relu, 768 hidden, 12 heads, 3072 intermediate, 6 layers). The seed's general_distill.py reads
Q/K/V at ``student_layer_index`` (default 5), so for 4 / 2 layers it must be set to the last
layer, as here.

Batch: run.sh's ``bs=128`` is per GPU on 8 GPUs (``--gpus "0,...,7"``): global batch
128 x 8 = 1024. ``--config.per_device_batch_size=128 --config.batch_size=0`` scales with the
device count instead. Optimizer (pp-minilm general_distill.py): AdamW beta1 0.9, beta2 0.999,
epsilon 1e-8 (``--adam_epsilon``), weight decay 0.01 (not on biases / LayerNorm), clipping
1.0; lr 6e-4, 4000 warm-up steps, 400k steps (run.sh). run.sh trains with AMP (fp16): the
teacher runs in bfloat16 here on GPU / TPU (``teacher.dtype`` "auto"; float32 on CPUs without
AMX, where XLA's bfloat16 dots are no faster).

``demo`` / ``tiny`` as in configs/minilmv2.py with beta=0.1 so the sample relation is
exercised. ``relation_reduction`` as in configs/minilmv2.py.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
  "kdjax_configs_minilmv2", os.path.join(os.path.dirname(__file__), "minilmv2.py")
)
_minilmv2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_minilmv2)

# layers -> (hidden_size, num_attention_heads, intermediate_size): the seed's students
# (examples/model_compression/pp-minilm/general_distill/general_distill.py, do_train).
STUDENTS = {6: (768, 12, 3072), 4: (256, 16, 1024), 2: (128, 8, 512)}


def get_config(arg=None):
  variant, layers = None, None
  for part in filter(None, (arg or "").split(",")):
    if part.startswith("layers="):
      layers = int(part.split("=", 1)[1])
      if layers not in STUDENTS:
        raise ValueError(
          f"ppminilm: layers must be 2, 4 or 6 (the seed's num_layers), got {layers}"
        )
    else:
      variant = part
  if variant is not None and layers is not None:
    raise ValueError(f"ppminilm: layers= applies to the seed's setting, not to {variant!r}")
  c = _minilmv2.get_config(variant)
  c.alpha = 0.0
  c.beta = 0.0
  # pp-minilm general_distill.py: AdamW(beta1=0.9, beta2=0.999, epsilon=args.adam_epsilon).
  c.adam_b1, c.adam_b2, c.adam_eps = 0.9, 0.999, 1e-8
  if variant is None:
    layers = layers or 6
    hidden, heads, ffn = STUDENTS[layers]
    c.num_relation_heads = 64  # large teacher (roberta-wwm-ext-large, hidden 1024)
    c.teacher_layer_index = 19  # the seed's 20th layer (1-based)
    c.student.num_hidden_layers = layers
    c.student.hidden_size = hidden
    c.student.num_attention_heads = heads
    c.student.intermediate_size = ffn
    c.student.hidden_act = "relu"
    c.student_layer_index = layers - 1
    c.batch_size = 1024  # run.sh: bs=128 per GPU x 8 GPUs
    c.learning_rate = 6e-4
    c.warmup_steps = 4000
    c.max_steps = 400000
    c.save_steps = 20000
    c.weight_decay = 1e-2
  else:
    c.beta = 0.1
  return c
