"""Loading any model directory, and building the teacher and student of a recipe from its
config blocks. One meaning for the path keys, in every recipe:

  ``teacher.path``        the teacher: its weights are loaded and frozen.
  ``student.path``        the weights the student STARTS FROM (e.g. a general-distillation run,
                          ``kdjax.convert --keep_layers`` output, TinyBERT stage 1's export).
                          The architecture is the checkpoint's: the shape keys
                          (``student.num_hidden_layers`` ...) may not be set with it; the
                          dropout rates may (same weights, other rates).
  ``student.config_path`` without ``student.path``: a directory whose config gives the base
                          architecture of a RANDOMLY initialised student (default: the
                          teacher's), overridden by the ``student.*`` shape keys.
  (fine-tuning names its one model ``model.path``, with the meaning of ``student.path``.)

Every path may be a Hugging Face directory (config.json + weights), a kdjax model directory
(kdjax_model.json + orbax params/) or a kdjax trainer workdir (student/kdjax_model.json +
checkpoints/ [+ best/]: the best dev checkpoint when there is one, else the latest).
Nothing is downloaded: a path that is not a local directory is an error naming its key.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.kernels import cpu_matmul
from kdjax.models import native
from kdjax.models import params as P
from kdjax.models.bert import create_model, encoder_of, head_of
from kdjax.models.config import BertConfig
from kdjax.models.hf import from_pretrained, load_config

log = logging.getLogger(__name__)

__all__ = [
  "ARCH_KEYS",
  "DROPOUT_KEYS",
  "ModelHandle",
  "as_classifier",
  "build_student",
  "build_teacher",
  "check_labels",
  "has_trained_classifier",
  "load_classifier",
  "load_model",
  "read_config",
  "require_dir",
  "tokenizer_dir_of",
  "trained_labels",
  "trained_max_seq_length",
  "with_config",
  "with_labels",
]

# Student keys (HF names) that change parameter shapes or the function computed...
ARCH_KEYS = (
  "num_hidden_layers",
  "hidden_size",
  "num_attention_heads",
  "attention_head_size",
  "intermediate_size",
  "hidden_act",
)
# ... and those that only change training behaviour (allowed with student.path).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


class ModelHandle:
  """A model split into a skeleton (structure) and params (a string-keyed dict)."""

  def __init__(self, model: nnx.Module):
    self.config = model.config
    self.head = head_of(model)
    self.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    self.skeleton, self.params = P.split(model)

  def bind(self, params):
    return P.bind(self.skeleton, params)

  def frozen_params(self) -> dict:
    """``params`` as a frozen teacher holds them: the kernels of dense layers that compute in
    bfloat16 stored in bfloat16. Same outputs (each layer casts its kernel to its compute dtype
    anyway), half their memory, and no float32 -> bfloat16 cast of every kernel in every step.
    LayerNorm, embeddings, biases and float32 layers keep float32."""
    model = self.bind(self.params)
    changed = False
    for _, m in nnx.iter_graph(model):
      if isinstance(m, nnx.Linear) and m.dtype is not None and jnp.dtype(m.dtype) == jnp.bfloat16:
        m.kernel.value = m.kernel.value.astype(jnp.bfloat16)
        changed = True
    return P.split(model)[1] if changed else self.params

  def freeze(self) -> ModelHandle:
    """Keeps only :meth:`frozen_params`, as device arrays, for a model that is never trained
    (a teacher): the float32 copies of bfloat16-computing kernels are released instead of
    living next to the frozen tree for the whole run. Returns ``self``."""
    self.params = jax.tree.map(jnp.asarray, self.frozen_params())
    return self

  def model(self, params=None):
    m = self.bind(self.params if params is None else params)
    if self.tokenizer_dir:
      m.tokenizer_dir = self.tokenizer_dir
    return m


def require_dir(value: str | None, key: str, what: str = "a local Hugging Face directory") -> str:
  """``value`` if it is an existing directory; else an error naming the config ``key``."""
  if not value:
    raise ValueError(f"config key {key!r} is not set: it must name {what}")
  if not os.path.isdir(value):
    raise FileNotFoundError(
      f"config key {key!r}: {value} is not a directory ({what}; nothing is downloaded)"
    )
  return value


# ------------------------------------------------------------------------------- directories
def load_model(
  path: str,
  *,
  head: str = "auto",
  num_labels: int | None = None,
  dtype: str | None = None,
  checkpoint: str = "best",
  step: int | None = None,
) -> nnx.Module:
  """Any model directory as a kdjax model (see the module docstring for the kinds).

  ``head``/``num_labels`` only apply to HF directories (as in ``from_pretrained``); kdjax
  directories and workdirs come back with the head they were saved with.
  """
  if native.kind(path) == "hf":
    try:
      return from_pretrained(path, head=head, num_labels=num_labels, dtype=dtype)
    except KeyError:
      if head != "classification":
        raise
      # e.g. an encoder exported without a pooler: load the encoder, add the head later.
      return from_pretrained(path, head="none", dtype=dtype)
  return native.load(path, step=step, dtype=dtype, checkpoint=checkpoint)


def read_config(path: str) -> BertConfig:
  """The BertConfig of any model directory, without loading weights."""
  kind = native.kind(path)
  if kind == "hf":
    return load_config(path)[0]
  d = path if kind == "kdjax" else os.path.join(path, "student")
  return native.model_from_description(d).config


def tokenizer_dir_of(path: str) -> str | None:
  """The directory holding the tokenizer files (vocab.txt / tokenizer.json) of a model
  directory (a workdir's is ``student/``), or None."""
  d = os.path.join(path, "student") if native.kind(path) == "workdir" else path
  found = any(os.path.exists(os.path.join(d, f)) for f in ("vocab.txt", "tokenizer.json"))
  return os.path.abspath(d) if found else None


def trained_max_seq_length(path: str) -> int | None:
  """``max_seq_length`` of the run that trained a workdir (its resolved config.json), if any."""
  import json

  try:
    with open(os.path.join(path, "config.json")) as f:
      value = json.load(f).get("max_seq_length")
  except (OSError, ValueError, AttributeError):
    return None
  return int(value) if isinstance(value, int) and value > 2 else None


def has_trained_classifier(path: str, model: nnx.Module) -> bool:
  """Whether ``model`` (loaded from ``path``) carries classifier weights from its directory
  (not a head created fresh by the loader)."""
  if native.kind(path) != "hf":
    return head_of(model) == "classification"
  _, raw = load_config(path)
  if "ForSequenceClassification" in " ".join(raw.get("architectures") or []):
    return True
  st = os.path.join(path, "model.safetensors")
  if os.path.exists(st):
    from safetensors import safe_open

    with safe_open(st, "np") as f:
      return any(k.startswith("classifier") for k in f.keys())  # noqa: SIM118 (not iterable)
  return False


# ---------------------------------------------------------------------------- transformations
def _with_tokenizer(out: nnx.Module, source: nnx.Module) -> nnx.Module:
  if getattr(source, "tokenizer_dir", None):
    out.tokenizer_dir = source.tokenizer_dir
  return out


def as_classifier(model: nnx.Module, num_labels: int, seed: int = 0) -> nnx.Module:
  """``model`` as a classification model with ``num_labels`` outputs.

  A model that already is one is returned as is; otherwise a fresh classification model
  takes over every encoder parameter (the pooler and classifier stay freshly initialised
  where the source has none or a different size, as Hugging Face does).
  """
  if head_of(model) == "classification" and model.config.num_labels == num_labels:
    return model
  cfg = model.config.replace(num_labels=num_labels, id2label=None)
  skeleton, params = P.split(create_model(cfg, "classification", seed=seed))
  dst = P.flatten(params)
  src = P.flatten(P.params_of(encoder_of(model)))
  new = []
  for k, v in dst.items():
    s = src.get(k[1:]) if k[0] == "bert" else None
    if s is not None and tuple(s.shape) == tuple(v.shape):
      dst[k] = np.asarray(s)
    else:
      new.append("/".join(k))
  if new:
    log.warning("newly initialised classification parameters: %s", ", ".join(new))
  return _with_tokenizer(P.bind(skeleton, P.unflatten(dst)), model)


def load_classifier(
  path: str,
  num_labels: int,
  *,
  seed: int = 0,
  dtype: str | None = None,
  checkpoint: str = "best",
  step: int | None = None,
) -> nnx.Module:
  """A classification model with ``num_labels`` outputs from any model directory; a fresh
  head (seeded by ``seed``) where the directory has none of that size."""
  model = load_model(
    path,
    head="classification",
    num_labels=num_labels,
    dtype=dtype,
    checkpoint=checkpoint,
    step=step,
  )
  return as_classifier(model, num_labels, seed)


def with_config(model: nnx.Module, cfg: BertConfig, seed: int = 0) -> nnx.Module:
  """``model`` rebuilt under ``cfg`` (same parameter shapes: e.g. other dropout rates)."""
  if cfg == model.config:
    return model
  pool = encoder_of(model).pooler is not None
  skeleton, params = P.split(create_model(cfg, head_of(model), seed=seed, add_pooling_layer=pool))
  dst, src = P.flatten(params), P.flatten(P.params_of(model))
  for k, v in dst.items():
    if k not in src or tuple(src[k].shape) != tuple(v.shape):
      raise ValueError(
        f"parameter {'/'.join(k)} of the checkpoint does not fit the requested "
        "architecture (only non-shape settings such as dropout can change)"
      )
    dst[k] = np.asarray(src[k])
  return _with_tokenizer(P.bind(skeleton, P.unflatten(dst)), model)


# ------------------------------------------------------------------- teacher and student
def trained_labels(cfg: BertConfig) -> tuple[str, ...] | None:
  """The label names a classifier records (``id2label``), or None when it records only the
  placeholders ``LABEL_0``, ``LABEL_1``, ... (nothing to check against)."""
  if not cfg.id2label:
    return None
  names = tuple(name for _, name in sorted(cfg.id2label))
  if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
    return None
  return names


def check_labels(cfg: BertConfig, labels, what: str) -> None:
  """An error when ``what`` records label names other than ``labels`` (e.g. an SST-2 model
  used on RTE); models recording none pass."""
  have = trained_labels(cfg)
  if labels is not None and have is not None and tuple(have) != tuple(labels):
    raise ValueError(
      f"{what} was trained for the labels {list(have)}, but the task's labels are "
      f"{list(labels)}: it was trained for another task"
    )


def with_labels(model: nnx.Module, labels) -> nnx.Module:
  """``model`` recording ``labels`` as its ``id2label`` (written to config.json on export)."""
  if labels is None or head_of(model) != "classification":
    return model
  cfg = model.config.replace(id2label=tuple(enumerate(str(x) for x in labels)))
  return with_config(model, cfg)


def resolve_compute_dtype(
  dtype: str | None, key: str = "dtype", *, backend=None, cpu_flags=None, onednn=None
):
  """``"auto"``: bfloat16 on GPU / TPU, on CPUs with AMX (``amx_bf16``), and on CPUs with
  AVX512-BF16 when kdjax's oneDNN matmul kernel is in use (``kdjax.kernels.cpu_matmul``: built,
  ``KDJAX_CPU_MATMUL`` not ``xla``); float32 on other CPUs. XLA CPU itself lowers bfloat16 dots
  without the CPU's bf16 instructions (``benchmarks/roofline.py``, jax 0.10.2: 165 GFLOP/s bf16
  against 190 float32 on an AVX512-BF16 EPYC; ~240 against ~290 on an AMX Xeon), so without the
  kernel bf16 only adds casts there; the kernel's oneDNN matmuls reach ~1,600-1,900 GFLOP/s
  on the AMX Xeon. ``onednn`` overrides the kernel check (tests). Any other value is returned
  unchanged (None: the checkpoint's own)."""
  if dtype != "auto":
    return dtype
  backend = backend or jax.default_backend()
  if backend != "cpu":
    chosen, why = "bfloat16", f"the {backend} backend"
  else:
    flags = set(cpu_matmul.cpu_flags() if cpu_flags is None else cpu_flags)
    if onednn is None:
      onednn = cpu_matmul.mode() != "xla" and cpu_matmul.available()
    if "amx_bf16" in flags:
      chosen, why = "bfloat16", "a CPU with AMX" + (" (oneDNN matmuls)" if onednn else "")
    elif "avx512_bf16" in flags and onednn:
      chosen, why = "bfloat16", "a CPU with AVX512-BF16 (oneDNN matmuls)"
    else:
      chosen, why = "float32", "a CPU without AMX or oneDNN AVX512-BF16 matmuls"
  log.info("%s=auto: %s on %s", key, chosen, why)
  return chosen


def build_teacher(
  tcfg,
  *,
  head: str = "none",
  num_labels: int | None = None,
  labels=None,
  key: str = "teacher",
  what: str = "a Hugging Face / kdjax model directory or trainer workdir",
) -> ModelHandle:
  """The frozen teacher from ``<key>.path`` (``<key>.dtype`` = its compute dtype).

  ``head="none"``: its encoder (any head is dropped). ``head="classification"``: a classifier
  whose head was trained (a fresh head would teach noise): an error otherwise, or when its
  output count differs from ``num_labels``, or when it records label names other than
  ``labels``.
  """
  path = require_dir(tcfg.get("path"), f"{key}.path", what)
  dtype = resolve_compute_dtype(tcfg.get("dtype") or None, f"{key}.dtype")
  if head == "none":
    model = load_model(path, head="auto", dtype=dtype)
    return ModelHandle(_with_tokenizer(encoder_of(model), model)).freeze()
  if head != "classification":
    raise ValueError(f"build_teacher: head must be 'none' or 'classification', not {head!r}")
  model = load_model(path, head="classification", dtype=dtype)
  if head_of(model) != "classification" or not has_trained_classifier(path, model):
    raise ValueError(
      f"{key}.path={path} has no trained classification head: distilling logits needs a "
      "teacher fine-tuned on the task (recipe finetune)"
    )
  if num_labels is not None and model.config.num_labels != num_labels:
    raise ValueError(
      f"{key}.path={path} has {model.config.num_labels} outputs but the task has {num_labels}"
    )
  check_labels(model.config, labels, f"{key}.path={path}")
  return ModelHandle(model).freeze()


def build_student(
  scfg,
  *,
  base: BertConfig | None = None,
  head: str = "none",
  num_labels: int | None = None,
  labels=None,
  tokenizer_dir: str | None = None,
  key: str = "student",
) -> tuple[ModelHandle, bool]:
  """(the student, whether its weights were loaded) from the ``<key>`` config block (see
  the module docstring): ``path`` to start from those weights, else a random model with the
  architecture of ``config_path`` (or ``base``, usually the teacher's config) overridden by
  the block's shape keys. ``head``: "none" (encoder) or "classification" (``num_labels``
  outputs; a fresh head where the checkpoint has none of that size). ``dtype`` is the compute
  dtype; ``seed`` seeds the random parts. ``tokenizer_dir`` is the fallback tokenizer.
  ``labels``: the task's label names, recorded as the classifier's ``id2label`` (so that
  ``kdjax.evaluate`` can tell a model trained for another task)."""
  seed = int(scfg.get("seed") or 0)
  dtype = scfg.get("dtype") or None
  shapes = {k: scfg[k] for k in ARCH_KEYS if scfg.get(k) is not None}
  dropout = {k: scfg[k] for k in DROPOUT_KEYS if scfg.get(k) is not None}
  if scfg.get("path"):
    if shapes:
      raise ValueError(
        f"config key '{key}.path' fixes the architecture (the weights are loaded): do not "
        f"set {', '.join(f'{key}.{k}' for k in shapes)} with it (use '{key}.config_path' for "
        "a randomly initialised student of another architecture)"
      )
    path = require_dir(
      scfg.path,
      f"{key}.path",
      "the checkpoint the student starts from (HF / kdjax model directory or trainer workdir)",
    )
    if head == "classification":
      model = load_classifier(path, num_labels, seed=seed, dtype=dtype)
    else:
      loaded = load_model(path, head="auto", dtype=dtype)
      model = _with_tokenizer(encoder_of(loaded), loaded)
    if dropout:
      try:
        model = with_config(model, model.config.replace(**dropout), seed)
      except ValueError as e:
        raise ValueError(f"config key '{key}': {e}") from None
    from_checkpoint = True
  else:
    if scfg.get("config_path"):
      cpath = require_dir(scfg.config_path, f"{key}.config_path", "a model directory")
      cfg = read_config(cpath)
      tokenizer_dir = tokenizer_dir_of(cpath) or tokenizer_dir
    elif base is not None:
      cfg = base
    else:
      raise ValueError(f"config key '{key}.path' (or '{key}.config_path') is not set")
    overrides = {**shapes, **dropout, "dtype": dtype or "float32"}
    if num_labels is not None:
      overrides.update(num_labels=num_labels, id2label=None)
    try:
      cfg = cfg.replace(**overrides)
    except ValueError as e:
      raise ValueError(f"config key '{key}': {e}") from None
    model = create_model(cfg, head, seed=seed, add_pooling_layer=head != "none")
    from_checkpoint = False
  model = with_labels(model, labels)
  if tokenizer_dir and not getattr(model, "tokenizer_dir", None):
    model.tokenizer_dir = tokenizer_dir
  return ModelHandle(model), from_checkpoint


def init_fns(handle: ModelHandle, from_checkpoint: bool):
  """(init_params, initial_params) for the trainer: a fresh random init traced by jit, or
  the loaded values handed over as host arrays (never baked into a compiled program)."""
  if from_checkpoint:
    values = handle.params
    return (lambda rng: jax.tree.map(jnp.asarray, values)), (lambda: values)
  cfg, head = handle.config, handle.head
  pool = encoder_of(handle.model()).pooler is not None
  return (lambda rng: P.params_of(create_model(cfg, head, seed=rng, add_pooling_layer=pool))), (
    lambda: None
  )
