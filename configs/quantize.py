"""INT8 post-training static quantization of a fine-tuned classifier (PP-MiniLM's last stage).

  python -m kdjax.compress.quantize --config=configs/quantize.py --config.model=runs/tnews \\
      --config.task=tnews --config.data_dir=/data/clue --workdir=runs/tnews_int8
  # the seed's table: every algorithm x 4 and 8 calibration batches
  python -m kdjax.compress.quantize --config=configs/quantize.py:task=tnews,model=runs/tnews \\
      --config.algorithms=abs_max,avg,mse,hist --config.batch_nums=4,8 --workdir=runs/q
  python -m kdjax.compress.quantize --config=configs/quantize.py:demo,model=runs/ft_demo \\
      --workdir=runs/q_demo

Calibrates the inputs of the six encoder matmuls of every layer on ``batch_nums`` batches of
``batch_size`` examples of ``calibration_split`` (file order) with each of ``algorithms``
(``kdjax/compress/calibrate.py`` defines them as PaddleSlim does), scores each simulated-INT8
model on the dev split(s), and writes into ``--workdir``:

  results.json          float and per-(algorithm, batch_nums) dev metrics, the chosen one
  calibration_table.md  the seed's table (dev main metric, algorithms x batch_nums)
  scales/<algo>_b<n>.json  the quantization.json of every combination
  int8/                 the best combination as a quantized model directory (the float kdjax
                        model + quantization.json): python -m kdjax.evaluate --model=OUT/int8
  onnx_int8/            its QDQ ONNX (python -m kdjax.export OUT/int8 ... --precision=int8)

``algorithms`` / ``batch_nums``: comma lists on the command line (``;`` inside ``:arg``).
PP-MiniLM's ``quant_post.py`` calibrates on ONE dev batch of 4 or 8 examples
(``batch_nums=1``, ``batch_size`` 4 / 8, ``calibration_split=dev``); the issue asks for 4 or 8
batches. The default here calibrates on the training split so that dev stays unseen.
Variants: ``tiny`` (test shapes), ``demo`` (Rotten Tomatoes; set ``model`` to a fine-tuned run,
e.g. ``python -m kdjax.train --config=configs/finetune.py:demo --workdir=runs/ft_demo``),
``ppminilm`` (PP-MiniLM's own setting: one dev batch of 4 examples; add ``batch_size=8`` for
its other run).
"""

import ml_collections

from kdjax.config_args import apply_arg


def base_config():
  c = ml_collections.ConfigDict()
  c.model = ""  # fine-tuned classifier: trainer workdir, kdjax model directory or HF directory
  c.task = ""  # kdjax.data.tasks name (tnews, sst-2, ...) or rotten_tomatoes
  c.data_dir = ""  # the task folder or the CLUE / GLUE root holding it
  c.tokenizer_path = ""  # default: the model's
  c.max_seq_length = -1  # -1: the run's max_seq_length, else the task's default
  c.calibration_split = "train"  # PP-MiniLM: dev
  c.algorithms = "abs_max,avg,mse,hist"
  c.batch_nums = "4,8"
  c.batch_size = 8  # calibration batch size
  c.hist_percent = 0.9999  # PP-MiniLM's quant_post.py (PaddleSlim's default 0.99999)
  c.histogram_bins = 2048
  c.eval_batch_size = 64
  c.export_onnx = True  # write onnx_int8/ (QDQ) for the chosen combination
  return c


def _tiny(c):
  c.max_seq_length = 16
  c.batch_size = 2
  c.batch_nums = "1,2"
  c.eval_batch_size = 8


def _demo(c):
  c.task = "rotten_tomatoes"
  c.max_seq_length = 64
  c.batch_size = 8
  c.batch_nums = "4,8"
  c.eval_batch_size = 64


def _ppminilm(c):
  c.calibration_split = "dev"
  c.batch_nums = "1"
  c.batch_size = 4


VARIANTS = {"tiny": _tiny, "demo": _demo, "ppminilm": _ppminilm}


def get_config(arg=None):
  return apply_arg(base_config(), arg, VARIANTS)
