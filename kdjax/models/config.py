"""Model configuration: one frozen dataclass for BERT and RoBERTa-style encoders.

Field names follow Hugging Face ``config.json`` so that reading and writing HF
directories is a plain field copy. Layer indices everywhere in kdjax are 0-based.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "roberta")
# Hugging Face names of the feed-forward activation (kdjax.models.bert.ACTIVATIONS has one
# function for each; tests/test_models_hf.py checks both against transformers' ACT2FN).
SUPPORTED_ACTIVATIONS = (
  "gelu",
  "gelu_python",
  "gelu_new",
  "gelu_pytorch_tanh",
  "gelu_python_tanh",
  "gelu_fast",
  "gelu_accurate",
  "gelu_10",
  "quick_gelu",
  "relu",
  "relu6",
  "relu2",
  "leaky_relu",
  "silu",
  "swish",
  "mish",
  "hardswish",
  "sigmoid",
  "tanh",
  "linear",
)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT / RoBERTa encoder (HF field names).

  ``dtype`` is the compute dtype ("float32" or "bfloat16"); parameters are
  always stored in float32. It is not written to HF ``config.json``.

  ``attention_head_size`` (None = ``hidden_size / num_attention_heads``, the HF rule) sets the
  width of each head independently: the attention width ``num_attention_heads *
  attention_head_size`` (``attention_width``) may then differ from ``hidden_size``, e.g. 9
  heads of 64 over hidden 768 after width pruning (``kdjax.compress.prune``). It is written
  to ``config.json`` / ``kdjax_model.json`` only when set; transformers ignores the key, so
  ``save_pretrained`` writes such a model in the padded form stock transformers loads.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  pad_token_id: int = 0
  model_type: str = "bert"
  num_labels: int = 2
  classifier_dropout: float | None = None
  id2label: tuple[tuple[int, str], ...] | None = None
  problem_type: str | None = None
  attention_head_size: int | None = None
  dtype: str = "float32"

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f"unsupported model_type {self.model_type!r}; kdjax supports "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}"
      )
    if self.num_attention_heads <= 0:
      raise ValueError(f"num_attention_heads must be positive, got {self.num_attention_heads}")
    if self.attention_head_size is not None:
      if isinstance(self.attention_head_size, bool) or int(self.attention_head_size) <= 0:
        raise ValueError(
          f"attention_head_size must be a positive integer, got {self.attention_head_size!r}"
        )
      object.__setattr__(self, "attention_head_size", int(self.attention_head_size))
    elif self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size {self.hidden_size} is not divisible by "
        f"num_attention_heads {self.num_attention_heads}"
      )
    if self.hidden_act not in SUPPORTED_ACTIVATIONS:
      raise ValueError(
        f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
      )
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

  @property
  def head_dim(self) -> int:
    if self.attention_head_size is not None:
      return self.attention_head_size
    return self.hidden_size // self.num_attention_heads

  @property
  def attention_width(self) -> int:
    """``num_attention_heads * head_dim``: the Q/K/V width (``hidden_size`` unless
    ``attention_head_size`` makes it narrower or wider)."""
    return self.num_attention_heads * self.head_dim

  @property
  def position_offset(self) -> int:
    """RoBERTa numbers positions from ``pad_token_id + 1``; BERT from 0."""
    return self.pad_token_id + 1 if self.model_type == "roberta" else 0

  def replace(self, **kw) -> BertConfig:
    return dataclasses.replace(self, **kw)

  # ---- Hugging Face config.json -------------------------------------------
  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> BertConfig:
    model_type = d.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f"{source}: unsupported model_type {model_type!r}; kdjax "
        f"supports {', '.join(SUPPORTED_MODEL_TYPES)}"
      )
    pet = d.get("position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
      raise ValueError(
        f"{source}: position_embedding_type {pet!r} is not supported (only 'absolute')"
      )
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names and k not in ("id2label", "dtype")}
    for required in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
      if required not in d:
        raise ValueError(f"{source}: missing required key {required!r}")
    if d.get("id2label"):
      items = sorted((int(k), str(v)) for k, v in d["id2label"].items())
      kw["id2label"] = tuple(items)
      kw.setdefault("num_labels", len(items))
    try:
      return cls(**kw)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: {e}") from e

  def to_hf_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.pop("dtype")
    id2label = d.pop("id2label")
    if id2label is None:
      id2label = tuple((i, f"LABEL_{i}") for i in range(self.num_labels))
    d["id2label"] = {str(i): l for i, l in id2label}
    d["label2id"] = {l: i for i, l in id2label}
    d["position_embedding_type"] = "absolute"
    if self.model_type == "roberta":
      d.setdefault("bos_token_id", 0)
      d.setdefault("eos_token_id", 2)
    if architectures:
      d["architectures"] = architectures
    if d["problem_type"] is None:
      d.pop("problem_type")
    if d["classifier_dropout"] is None:
      d.pop("classifier_dropout")
    if d["attention_head_size"] is None:
      d.pop("attention_head_size")
    return d

  @classmethod
  def from_json_file(cls, path: str) -> BertConfig:
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"no config.json at {path}") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    return cls.from_hf_dict(d, source=path)

  def to_json_file(self, path: str, architectures: list[str] | None = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_hf_dict(architectures), f, indent=2, ensure_ascii=False)
      f.write("\n")
