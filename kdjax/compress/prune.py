"""Width pruning of a BERT encoder: DynaBERT (Hou et al. 2020) as PaddleSlim's OFA runs it in
PP-MiniLM's pruning stage.

  head_imp, neuron_imp = importance(model, dev_batches)   # |d task loss / d mask|, summed
  model = reorder(model, head_imp, neuron_imp)            # same function, important first
  ... width-adaptive distillation (recipe "prune") trains the sub-networks at each width ...
  small = extract(model, 0.75)                            # a standalone narrower kdjax model

* **Masks.** A head mask ``m_h`` multiplies head h's context before the attention output
  projection and a neuron mask ``m_j`` the activation of feed-forward neuron j
  (``BertModel(..., head_mask=[L, N], ffn_mask=[L, F])``); all ones is the plain model.
* **Importance** (DynaBERT ``compute_neuron_head_importance``): ``I = sum_batches | dL_b / dm |``
  at ``m = 1``, ``L_b`` the task loss of dev batch b (cross-entropy, or MSE for regression;
  the mean over the batch's real rows). DynaBERT/PaddleNLP take the neuron score from
  ``w * grad w + b * grad b`` of the intermediate dense layer, which is the gradient of a mask
  on the PRE-activation; kdjax masks the activation itself (a 0 then removes the neuron for any
  activation function), so neuron scores differ slightly from the reference's.
* **Width** ``w`` in (0, 1] keeps ``round(w * N)`` heads and ``round(w * F)`` neurons in every
  layer (rounded half up), the first ones in the (reordered) order: the sub-network at width w
  is the full model with the masks :func:`width_masks`, and :func:`extract` cuts it out as a
  model with ``num_attention_heads = round(w * N)``, ``attention_head_size`` = the original
  head size and ``intermediate_size = round(w * F)``. Embeddings, hidden size, LayerNorms and
  heads are unchanged (PP-MiniLM 6L-768H at 0.75: 59.7M -> 49.1M parameters).

CLI (cut the model out of a ``prune`` recipe workdir, whose checkpoints are already reordered;
the recipe's own ``export/`` is this at ``prune.export_width``)::

  python -m kdjax.compress.prune --model=runs/prune_tnews --width=0.75 \\
      --output_dir=runs/prune_tnews/w0.75 [--hf_output_dir=runs/prune_tnews/w0.75_hf]

``--hf_output_dir`` writes the Hugging Face form (pruned heads restored as zero weights, see
``kdjax.models.hf.hf_compatible``) that stock transformers loads.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models import params as P
from kdjax.models.bert import create_model, encoder_of, head_of

__all__ = [
  "extract",
  "importance",
  "kept_sizes",
  "reorder",
  "task_loss",
  "width_masks",
]


# ------------------------------------------------------------------------------- widths
def kept_sizes(config, width: float) -> tuple[int, int]:
  """(heads, neurons) kept per layer at ``width``: ``round(width * n)`` rounded half up.

  A width outside (0, 1] or one that leaves no head or no neuron is a ValueError naming the
  width and the counts."""
  try:
    w = float(width)
  except (TypeError, ValueError):
    raise ValueError(f"width {width!r} is not a number in (0, 1]") from None
  if not 0.0 < w <= 1.0 or not math.isfinite(w):
    raise ValueError(f"width {width!r} must be in (0, 1] (the kept fraction of heads/neurons)")
  n, f = config.num_attention_heads, config.intermediate_size
  heads, neurons = math.floor(w * n + 0.5), math.floor(w * f + 0.5)
  if heads < 1:
    raise ValueError(
      f"width {w:g} keeps no attention head: round({w:g} * {n} heads) = 0 (the smallest "
      f"width that keeps one head of this model is {0.5 / n:.4g})"
    )
  if neurons < 1:
    raise ValueError(f"width {w:g} keeps no feed-forward neuron: round({w:g} * {f} neurons) = 0")
  return heads, neurons


def width_masks(config, width: float) -> tuple[np.ndarray, np.ndarray]:
  """float32 ``(head_mask [L, N], ffn_mask [L, F])`` of the sub-network at ``width``: ones for
  the first :func:`kept_sizes` heads / neurons of every layer, zeros after."""
  heads, neurons = kept_sizes(config, width)
  layers = config.num_hidden_layers
  hm = np.zeros((layers, config.num_attention_heads), np.float32)
  fm = np.zeros((layers, config.intermediate_size), np.float32)
  hm[:, :heads] = 1.0
  fm[:, :neurons] = 1.0
  return hm, fm


# ---------------------------------------------------------------------------- importance
def task_loss(logits, batch) -> jax.Array:
  """The importance loss: cross-entropy with integer ``labels`` (MSE for float labels: a
  regression head), the mean over the batch's real rows (``valid``, else ``weights``, else
  all)."""
  from kdjax.losses import cross_entropy, mse_regression

  labels = jnp.asarray(batch["labels"])
  w = batch.get("valid", batch.get("weights"))
  w = None if w is None else jnp.asarray(w, jnp.float32)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return mse_regression(logits, labels, weights=w)
  return cross_entropy(logits, labels, weights=w)


def importance(
  model: nnx.Module,
  batches: Iterable[Mapping[str, np.ndarray]],
  loss: Callable = task_loss,
) -> tuple[np.ndarray, np.ndarray]:
  """DynaBERT head and neuron importance of a classification ``model`` (module docstring).

  ``batches``: dicts with ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``
  (and optionally ``valid`` / ``weights``), e.g. ``kdjax.data.classification.eval_batches``
  of the dev features. ``loss(logits, batch) -> scalar`` (default :func:`task_loss`).
  Returns float64 ``(head_importance [L, N], neuron_importance [L, F])``: ``sum_b |dL_b/dm|``.
  """
  if head_of(model) != "classification":
    raise ValueError("importance needs a classification model (the task loss needs logits)")
  cfg = model.config
  skeleton, params = P.split(model)
  keys = ("input_ids", "attention_mask", "token_type_ids")

  @jax.jit
  def grads(params, hm, fm, batch):
    def f(hm, fm):
      out = P.bind(skeleton, params)(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        head_mask=hm,
        ffn_mask=fm,
      )
      return loss(out.logits, batch)

    return jax.grad(f, argnums=(0, 1))(hm, fm)

  hm = jnp.ones((cfg.num_hidden_layers, cfg.num_attention_heads), jnp.float32)
  fm = jnp.ones((cfg.num_hidden_layers, cfg.intermediate_size), jnp.float32)
  head_imp = np.zeros(hm.shape, np.float64)
  neuron_imp = np.zeros(fm.shape, np.float64)
  n = 0
  for batch in batches:
    b = {k: np.asarray(batch[k]) for k in keys + ("labels",)}
    for extra in ("valid", "weights"):
      if extra in batch:
        b[extra] = np.asarray(batch[extra])
    gh, gf = grads(params, hm, fm, b)
    head_imp += np.abs(np.asarray(gh, np.float64))
    neuron_imp += np.abs(np.asarray(gf, np.float64))
    n += 1
  if n == 0:
    raise ValueError("importance: no batches (the dev set is empty)")
  return head_imp, neuron_imp


# ------------------------------------------------------------------------------ surgery
def _layers(params: dict, head: str) -> dict:
  return (params if head == "none" else params["bert"])["layer"]


def _rebuild(model: nnx.Module, cfg, params: dict) -> nnx.Module:
  head = head_of(model)
  pool = encoder_of(model).pooler is not None
  skeleton, _ = P.split(nnx.eval_shape(lambda: create_model(cfg, head, add_pooling_layer=pool)))
  out = P.bind(skeleton, params)
  if getattr(model, "tokenizer_dir", None):
    out.tokenizer_dir = model.tokenizer_dir
  return out


def _select(layer: dict, n: int, d: int, heads, neurons) -> dict:
  """One layer's params (numpy) with heads ``heads`` and FFN neurons ``neurons`` (index
  arrays, in that order)."""
  out = {k: dict(v) for k, v in layer.items()}
  cols = (np.asarray(heads)[:, None] * d + np.arange(d)[None, :]).reshape(-1)
  for name in ("query", "key", "value"):
    out[name]["kernel"] = np.asarray(layer[name]["kernel"])[:, cols]
    out[name]["bias"] = np.asarray(layer[name]["bias"])[cols]
  out["attention_output"]["kernel"] = np.asarray(layer["attention_output"]["kernel"])[cols]
  out["intermediate"]["kernel"] = np.asarray(layer["intermediate"]["kernel"])[:, neurons]
  out["intermediate"]["bias"] = np.asarray(layer["intermediate"]["bias"])[neurons]
  out["output"]["kernel"] = np.asarray(layer["output"]["kernel"])[neurons]
  return out


def _with_layers(model, cfg, select) -> nnx.Module:
  head = head_of(model)
  params = jax.tree.map(np.asarray, P.params_of(model))
  layers = _layers(params, head)
  new_layers = {str(i): select(i, layers[str(i)]) for i in range(model.config.num_hidden_layers)}
  if head == "none":
    params = dict(params, layer=new_layers)
  else:
    params = dict(params, bert=dict(params["bert"], layer=new_layers))
  return _rebuild(model, cfg, params)


def reorder(model: nnx.Module, head_importance, neuron_importance) -> nnx.Module:
  """A copy of ``model`` whose heads and FFN neurons are permuted, in every layer, by
  descending importance (``[L, N]`` and ``[L, F]``; ties keep their order). It computes the
  same function (a permutation of heads and of neurons is exact up to float rounding)."""
  cfg = model.config
  hi, ni = np.asarray(head_importance), np.asarray(neuron_importance)
  want_h = (cfg.num_hidden_layers, cfg.num_attention_heads)
  want_n = (cfg.num_hidden_layers, cfg.intermediate_size)
  if hi.shape != want_h or ni.shape != want_n:
    raise ValueError(
      f"importance shapes {hi.shape} / {ni.shape} do not match the model: expected "
      f"[layers, heads] {want_h} and [layers, intermediate_size] {want_n}"
    )
  n, d = cfg.num_attention_heads, cfg.head_dim
  return _with_layers(
    model,
    cfg,
    lambda i, layer: _select(
      layer, n, d, np.argsort(-hi[i], kind="stable"), np.argsort(-ni[i], kind="stable")
    ),
  )


def extract(model: nnx.Module, width: float) -> nnx.Module:
  """The sub-network at ``width`` as a standalone smaller model: the first ``round(width *
  N)`` heads and ``round(width * F)`` FFN neurons of every layer (reorder first), with
  ``attention_head_size`` set to the head size when the kept heads no longer span
  ``hidden_size``. Its outputs equal ``model``'s with :func:`width_masks`."""
  cfg = model.config
  heads, neurons = kept_sizes(cfg, width)
  n, d = cfg.num_attention_heads, cfg.head_dim
  new_cfg = cfg.replace(
    num_attention_heads=heads,
    attention_head_size=None if heads * d == cfg.hidden_size else d,
    intermediate_size=neurons,
  )
  return _with_layers(
    model, new_cfg, lambda i, layer: _select(layer, n, d, np.arange(heads), np.arange(neurons))
  )


# ---------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m kdjax.compress.prune",
    description="Extract the narrower model of a width (module docstring).",
  )
  parser.add_argument("--model", required=True, help="prune workdir / kdjax / HF directory")
  parser.add_argument("--width", type=float, required=True, help="kept fraction, in (0, 1]")
  parser.add_argument("--output_dir", required=True, help="the kdjax model directory written")
  parser.add_argument("--hf_output_dir", default="", help="also a Hugging Face directory")
  parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  args = parser.parse_args(argv)
  from kdjax import models
  from kdjax.models import loading, native

  model = loading.load_model(args.model, checkpoint=args.checkpoint)
  small = extract(model, args.width)
  tok = loading.tokenizer_dir_of(args.model)
  native.save(small, args.output_dir, tokenizer=tok)
  if args.hf_output_dir:
    models.save_pretrained(small, args.hf_output_dir, tokenizer=tok)
  c = small.config
  print(
    f"width {args.width:g}: {c.num_attention_heads} heads of {c.head_dim}, intermediate "
    f"{c.intermediate_size}, {P.count_params(P.params_of(small))} parameters -> "
    f"{args.output_dir}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
