"""Hugging Face interop: read and write local HF directories (PyTorch naming).

``from_pretrained(path)`` reads ``config.json`` and ``model.safetensors`` (also a
sharded ``model.safetensors.index.json`` or a ``pytorch_model.bin``) and returns a
kdjax NNX model; ``save_pretrained(model, path)`` writes ``config.json``,
``model.safetensors`` and the tokenizer files so that ``transformers.AutoModel*``
loads the directory with no missing or unexpected keys. Nothing is downloaded:
``path`` must be a local directory.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models import params as P
from kdjax.models.bert import create_model, encoder_of, head_of
from kdjax.models.config import BertConfig

log = logging.getLogger(__name__)

# kdjax sub-path -> HF sub-name inside one encoder layer.
_LAYER_NAMES = {
  "query": "attention.self.query",
  "key": "attention.self.key",
  "value": "attention.self.value",
  "attention_output": "attention.output.dense",
  "attention_layer_norm": "attention.output.LayerNorm",
  "intermediate": "intermediate.dense",
  "output": "output.dense",
  "output_layer_norm": "output.LayerNorm",
}
_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def _hf_name(path: tuple[str, ...], cfg: BertConfig, head: str) -> tuple[str, bool]:
  """Maps a kdjax parameter path to (HF tensor name, needs transpose)."""
  roberta = cfg.model_type == "roberta"
  prefix = "" if head == "none" else ("roberta." if roberta else "bert.")
  if head != "none":
    if path[0] == "bert":
      path = path[1:]
    else:  # head parameters
      return _head_name(path, roberta)
  leaf = path[-1]
  body = [p for p in path[:-1] if p != "norm"]
  transpose = leaf == "kernel"
  if body[0] == "embeddings":
    sub = {"layer_norm": "LayerNorm"}.get(body[1], body[1])
    name = f"embeddings.{sub}"
  elif body[0] == "layer":
    name = f"encoder.layer.{body[1]}.{_LAYER_NAMES[body[2]]}"
  elif body[0] == "pooler":
    name = "pooler.dense"
  else:
    raise KeyError(f"no Hugging Face name for kdjax parameter {'/'.join(path)}")
  return f"{prefix}{name}.{_LEAF_NAMES[leaf]}", transpose


def _head_name(path, roberta):
  leaf = path[-1]
  transpose = leaf == "kernel"
  body = [p for p in path[:-1] if p != "norm"]
  if body[0] == "classifier":
    if roberta:
      name = f"classifier.{body[1]}"
    else:
      name = "classifier"
  elif body[0] == "mlm":
    base = "lm_head" if roberta else "cls.predictions"
    if len(body) == 1:  # the output bias
      return f"{base}.bias", False
    sub = {"dense": "dense", "layer_norm": "layer_norm" if roberta else "LayerNorm"}[body[1]]
    name = f"{base}.{sub}" if roberta else f"{base}.transform.{sub}"
  else:
    raise KeyError(f"no Hugging Face name for kdjax parameter {'/'.join(path)}")
  return f"{name}.{_LEAF_NAMES[leaf]}", transpose


def _architecture(cfg: BertConfig, head: str) -> str:
  base = "Roberta" if cfg.model_type == "roberta" else "Bert"
  return (
    base
    + {"none": "Model", "classification": "ForSequenceClassification", "mlm": "ForMaskedLM"}[head]
  )


# ----------------------------------------------------------------------------- reading
class _Tensors:
  """The tensors of a checkpoint by name, read one at a time when asked for (``pop``), so
  that loading holds at most the model plus one tensor, not the model plus the whole file."""

  def __init__(self, readers: dict, opened: list):
    self._readers = readers  # name -> (shape, () -> np.ndarray)
    self._opened = opened  # safetensors handles, closed by close()

  def __contains__(self, name):
    return name in self._readers

  def __iter__(self):
    return iter(self._readers)

  def shape(self, name) -> tuple[int, ...]:
    return self._readers[name][0]

  def pop(self, name) -> np.ndarray:
    return self._readers.pop(name)[1]()

  def renamed(self, fn) -> _Tensors:
    return _Tensors({fn(k): v for k, v in self._readers.items()}, self._opened)

  def close(self):
    for f in self._opened:
      f.__exit__(None, None, None)
    self._opened = []


def _read_tensors(path: str) -> tuple[_Tensors, str]:
  st = os.path.join(path, "model.safetensors")
  idx = os.path.join(path, "model.safetensors.index.json")
  pt = os.path.join(path, "pytorch_model.bin")
  from safetensors import safe_open

  opened = []

  def open_file(fn) -> dict:
    try:
      f = safe_open(fn, "np")
      h = f.__enter__()
      opened.append(f)
      out = {}
      for name in h.keys():  # noqa: SIM118 (safe_open is not iterable)
        shape = tuple(h.get_slice(name).get_shape())
        out[name] = (shape, lambda h=h, name=name, fn=fn: _get(h, name, fn))
      return out
    except Exception as e:  # safetensors raises its own (Rust) error types
      raise ValueError(
        f"{fn}: not a readable safetensors file ({type(e).__name__}: {e}); it may be "
        "truncated or corrupt: copy or export it again"
      ) from None

  if os.path.exists(st):
    return _Tensors(open_file(st), opened), st
  if os.path.exists(idx):
    with open(idx, encoding="utf-8") as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for fn in files:
      out.update(open_file(os.path.join(path, fn)))
    return _Tensors(out, opened), idx
  if os.path.exists(pt):
    try:
      import torch  # only for legacy .bin checkpoints
    except ImportError:
      raise ImportError(
        f"{pt} is a PyTorch pickle; install torch to read it, or convert "
        "the directory to model.safetensors"
      ) from None
    sd = torch.load(pt, map_location="cpu", weights_only=True)
    out = {
      k: (tuple(v.shape), lambda v=v: v.float().numpy() if v.is_floating_point() else v.numpy())
      for k, v in sd.items()
    }
    return _Tensors(out, []), pt
  raise FileNotFoundError(
    f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
  )


def _get(handle, name: str, fn: str) -> np.ndarray:
  try:
    return handle.get_tensor(name)
  except Exception as e:  # safetensors raises its own (Rust) error types
    raise ValueError(
      f"{fn}: tensor {name!r} is not readable ({type(e).__name__}: {e}); the file may be "
      "truncated or corrupt: copy or export it again"
    ) from None


def _normalise(name: str) -> str:
  name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
  return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def _infer_head(hf_config: dict, tensors: dict) -> str:
  archs = " ".join(hf_config.get("architectures") or [])
  if "ForSequenceClassification" in archs:
    return "classification"
  if "ForMaskedLM" in archs or "ForPreTraining" in archs:
    return "mlm"
  return "none"


def load_config(path: str, **overrides) -> tuple[BertConfig, dict]:
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"{path} is not a directory (kdjax reads local Hugging Face "
      "directories only; nothing is downloaded)"
    )
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path}: missing config.json")
  with open(cfg_path, encoding="utf-8") as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  cfg = BertConfig.from_hf_dict(raw, source=cfg_path)
  if overrides:
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
  return cfg, raw


def from_pretrained(
  path: str,
  head: str = "auto",
  *,
  num_labels: int | None = None,
  dtype: str | None = None,
  seed: int = 0,
) -> nnx.Module:
  """Loads a local HF directory into a kdjax model.

  Args:
    path: directory with ``config.json`` and weights.
    head: "auto" (from ``architectures``), "none", "classification" or "mlm". Head
      weights missing from the checkpoint are initialised randomly (logged), as HF does.
    num_labels: overrides the label count (a fresh classifier is then created if the
      checkpoint's has another size).
    dtype: compute dtype override ("float32", "bfloat16").
  """
  cfg, raw = load_config(path, dtype=dtype)
  tensors, source = _read_tensors(path)
  try:
    return _from_tensors(
      path, cfg, raw, tensors.renamed(_normalise), source, head, num_labels, seed
    )
  finally:
    tensors.close()


def _from_tensors(path, cfg, raw, tensors, source, head, num_labels, seed) -> nnx.Module:
  """The model of ``from_pretrained``, built without a random initialisation: the skeleton is
  abstract (``nnx.eval_shape``), each checkpoint tensor is read, checked and placed in turn,
  and only head parameters missing from the checkpoint are drawn (one jitted init whose other
  outputs XLA drops). Peak memory is the model plus one tensor."""
  if head == "auto":
    head = _infer_head(raw, tensors)
  resize_head = num_labels is not None and num_labels != cfg.num_labels
  if num_labels is not None:
    cfg = cfg.replace(num_labels=num_labels, id2label=cfg.id2label if not resize_head else None)
  has_pooler = any(k.endswith("pooler.dense.weight") for k in tensors)

  def make():
    return create_model(cfg, head, seed=seed, add_pooling_layer=has_pooler)

  skeleton, template = P.abstract_skeleton(make)
  flat = P.flatten(template)
  found_names, fresh = {}, []
  for kpath in flat:
    name, transpose = _hf_name(kpath, cfg, head)
    candidates = [name]
    for pre in ("bert.", "roberta."):  # accept checkpoints with or without the prefix
      candidates.append(name[len(pre) :] if name.startswith(pre) else pre + name)
    found = next((c for c in candidates if c in tensors), None)
    is_head = head != "none" and kpath[0] != "bert"
    if found is None or (is_head and resize_head):
      if is_head:
        fresh.append(kpath)
        continue
      raise KeyError(
        f"{source}: missing tensor {name!r} (needed for kdjax parameter {'/'.join(kpath)})"
      )
    shape = tensors.shape(found)
    want = tuple(flat[kpath].shape)
    if (shape[::-1] if transpose else shape) != want:
      raise ValueError(
        f"{source}: tensor {found!r} has shape {shape}, "
        f"config.json implies {want[::-1] if transpose else want}"
      )
    found_names[kpath] = (found, transpose)
  used = {f for f, _ in found_names.values()}
  unused = sorted(k for k in tensors if k not in used and not _ignorable(k))
  for kpath, (found, transpose) in found_names.items():
    value = np.asarray(tensors.pop(found), dtype=np.float32)
    flat[kpath] = jnp.asarray(value.T if transpose else value, dtype=flat[kpath].dtype)
  if fresh:
    log.warning(
      "%s: newly initialised head parameters (not in the checkpoint): %s",
      path,
      ", ".join(_hf_name(k, cfg, head)[0] for k in fresh),
    )

    def draw():
      drawn = P.flatten(P.params_of(make()))
      return [drawn[k] for k in fresh]

    flat.update(zip(fresh, jax.jit(draw)(), strict=True))
  if unused:
    log.info("%s: tensors not used by a %s model: %s", path, head, ", ".join(unused[:20]))
  model = P.bind(skeleton, P.unflatten(flat))
  model.tokenizer_dir = _tokenizer_dir(path)
  return model


def _ignorable(name: str) -> bool:
  return name.endswith("position_ids") or "decoder" in name


def _tokenizer_dir(path: str) -> str | None:
  for f in ("vocab.txt", "tokenizer.json"):
    if os.path.exists(os.path.join(path, f)):
      return os.path.abspath(path)
  return None


# ----------------------------------------------------------------------------- writing
def hf_compatible(model: nnx.Module) -> nnx.Module:
  """``model`` in a form stock transformers can hold: itself unless its attention width
  (``num_attention_heads * attention_head_size``) differs from ``hidden_size``.

  transformers derives the head size as ``hidden_size / num_attention_heads``, so a
  head-pruned model (e.g. 9 heads of 64 over hidden 768) is padded back to
  ``hidden_size / head_size`` heads: the added heads have zero query/key/value columns and
  biases and zero attention-output rows, which contribute exactly zero, so the padded model
  computes the same function (the feed-forward width stays as it is). An error when no head
  count fits (``hidden_size`` not a multiple of the head size, or more heads than fit).
  """
  cfg = model.config
  if cfg.attention_head_size is None:
    return model
  d, n, h = cfg.head_dim, cfg.num_attention_heads, cfg.hidden_size
  if n * d == h:
    padded_cfg, pad = cfg.replace(attention_head_size=None), 0
  elif h % d or n * d > h:
    raise ValueError(
      f"cannot write a Hugging Face directory for a model with {n} attention heads of size "
      f"{d} over hidden_size {h}: transformers derives the head size as hidden_size / "
      f"num_attention_heads, so hidden_size must be a multiple of the head size {d} with at "
      f"least {n} heads of it (pruned heads are restored as zero weights); export this model "
      "as a kdjax model directory or ONNX instead"
    )
  else:
    padded_cfg, pad = cfg.replace(num_attention_heads=h // d, attention_head_size=None), h - n * d
  head = head_of(model)
  pool = encoder_of(model).pooler is not None
  skeleton, _ = P.split(
    nnx.eval_shape(lambda: create_model(padded_cfg, head, add_pooling_layer=pool))
  )
  flat = {k: np.asarray(v, np.float32) for k, v in P.flatten(P.params_of(model)).items()}
  if pad:
    for k, v in flat.items():
      owner, leaf = k[-2], k[-1]
      if owner in ("query", "key", "value"):
        width = [(0, 0)] * (v.ndim - 1) + [(0, pad)]  # kernel [H, A] columns, bias [A]
        flat[k] = np.pad(v, width)
      elif owner == "attention_output" and leaf == "kernel":
        flat[k] = np.pad(v, [(0, pad), (0, 0)])  # rows [A, H]
  out = P.bind(skeleton, P.unflatten(flat))
  if getattr(model, "tokenizer_dir", None):
    out.tokenizer_dir = model.tokenizer_dir
  return out


def to_hf_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """kdjax parameters as HF-named float32 numpy arrays ([out, in] Linear weights); a
  head-pruned model in its padded form (:func:`hf_compatible`)."""
  model = hf_compatible(model)
  head = head_of(model)
  cfg = model.config
  out = {}
  for kpath, v in P.flatten(P.params_of(model)).items():
    name, transpose = _hf_name(kpath, cfg, head)
    v = np.asarray(v, dtype=np.float32)
    out[name] = np.ascontiguousarray(v.T if transpose else v)
  return out


def save_pretrained(model: nnx.Module, path: str, tokenizer=None) -> None:
  """Writes an HF directory: config.json, model.safetensors and tokenizer files.

  ``tokenizer`` may be a :class:`kdjax.data.Tokenizer` or a directory with
  ``vocab.txt``/``tokenizer.json``; by default the tokenizer of the directory the
  model was loaded from is copied. A head-pruned model (``attention_head_size`` with an
  attention width other than ``hidden_size``) is written in the padded form that stock
  transformers loads (:func:`hf_compatible`: same outputs, zero weights for pruned heads).
  """
  from safetensors.numpy import save_file

  model = hf_compatible(model)
  head = head_of(model)
  cfg = encoder_of(model).config if head == "none" else model.config
  os.makedirs(path, exist_ok=True)
  tensors = to_hf_state_dict(model)
  tmp = os.path.join(path, "model.safetensors.tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # as any file the user writes (safetensors writes 0600)
  os.replace(tmp, os.path.join(path, "model.safetensors"))
  cfg.to_json_file(os.path.join(path, "config.json"), [_architecture(cfg, head)])
  tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer_dir", None)
  if tok is None:
    log.warning("save_pretrained(%s): no tokenizer known; only weights and config written", path)
    return
  if isinstance(tok, str):
    from kdjax.data.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tok)
  tok.save(path)
