"""Width-adaptive distillation for width pruning (recipe "prune"): PP-MiniLM's pruning stage,
DynaBERT's width stage as PaddleSlim's OFA runs it (``run_ofa.py``).

1. Teacher: the model fine-tuned on the task (``teacher.path``), frozen, full width.
2. Student: the same weights (``student.path``, default ``teacher.path``) with heads and FFN
   neurons reordered by DynaBERT importance (``kdjax.compress.prune.importance``: ``sum_b
   |dL_b / d mask|`` of the task loss over the first dev split, ``prune.importance_batches``
   batches of ``eval_batch_size``, 0 = all), so the most important ones survive any width.
   The importance is written to ``workdir/importance.npz``.
3. Every step trains the sub-network of every width ``w`` in ``prune.widths`` (default
   ``(0.75,)``): the student with the masks of ``kdjax.compress.prune.width_masks`` (first
   ``round(w * N)`` heads and ``round(w * F)`` neurons of every layer; the sub-networks share
   the weights). Per width::

       L_w = lambda_logit * wmean_b soft_CE(z_s^w / T, z_t / T)
             + lambda_rep * sum_{i=0..L} MSE(H_s^{w,i}, H_t^i)

   ``H^0`` the embedding output, ``H^i`` the output of layer i. soft_CE is ``-sum_c
   softmax(t)_c log_softmax(s)_c`` with the per-example-weighted batch mean (as PaddleNLP's
   ``soft_cross_entropy``, a batch mean); the MSE is ``kdjax.losses.hidden_mse``: the mean over
   real tokens and the hidden size (PaddleNLP's ``mse_loss`` also averages over padding).
   The step's loss is ``sum_w L_w`` (run_ofa.py back-propagates each width and steps once:
   the same gradient). Defaults as run_ofa.py: ``lambda_logit = 1``, ``lambda_rep = 0.1``
   (its ``lambda_distill``), ``T = 1``. Regression tasks use ``MSE(z_s, z_t)`` for the
   logit term.
4. Dev evaluation every ``eval_steps`` at every width (``w0.75/score``, ``w0.75/dev/...``);
   ``score`` is the dev score at ``prune.export_width`` (default: the narrowest width), so
   ``workdir/best`` keeps the best checkpoint of the model that is extracted.
5. At the end ``workdir/export`` is the extracted narrow model at ``export_width`` from the
   best checkpoint (the last params when there is none): a kdjax model directory
   (``kdjax.evaluate`` / ``kdjax.export`` read it) with ``attention_head_size`` set, plus
   ``export/hf``, the Hugging Face form that stock transformers loads (pruned heads restored as
   zero weights, the FFN truly narrower) and ``export/prune.json`` (sizes, step). Any
   other width: ``python -m kdjax.compress.prune --model=WORKDIR --width=W --output_dir=...``.

The workdir's checkpoints hold the full-width reordered student; resuming recomputes the same
importance (same weights and dev data), so the order is unchanged. Hyper-parameters left at -1
come from the fine-tuning table (the seed reuses the fine-tuning learning rate and batch size).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kdjax import models
from kdjax.compress import prune
from kdjax.data.classification import eval_batches
from kdjax.losses import hidden_mse, mse_regression, soft_cross_entropy
from kdjax.models import loading, native
from kdjax.recipes import common, task_setup


def _width_name(w: float) -> str:
  return f"w{w:g}"


def resolve_widths(p, cfg) -> tuple[tuple[float, ...], float]:
  """(widths, export width) of the ``prune`` block, each checked against the model."""
  widths = tuple(float(w) for w in (p.get("widths") or ()))
  if not widths:
    raise ValueError("config key 'prune.widths' is empty: give at least one width, e.g. 0.75")
  if len(set(widths)) != len(widths):
    raise ValueError(f"config key 'prune.widths'={list(widths)} repeats a width")
  for w in widths:
    try:
      prune.kept_sizes(cfg, w)
    except ValueError as e:
      raise ValueError(f"config key 'prune.widths': {e}") from None
  export = float(p.get("export_width", -1.0))
  if export < 0:
    export = min(widths)
  elif export not in widths:
    raise ValueError(
      f"config key 'prune.export_width'={export:g} is not one of prune.widths={list(widths)} "
      "(the best checkpoint is chosen by its dev score, so it must be trained)"
    )
  return widths, export


class _WidthPredictor(task_setup.Predictor):
  """The dev-set forward of the student with one width's masks."""

  def __init__(self, handle, batch_size, masks):
    super().__init__(handle, batch_size)
    self.masks = masks

  def _fn(self, params):
    out = task_setup._replicated_like(params)
    key = None if out is None else id(out.mesh)
    if key not in self._fns:
      hm, fm = self.masks

      def forward(params, ids, mask, types):
        return self.handle.bind(params)(
          ids, attention_mask=mask, token_type_ids=types, head_mask=hm, ffn_mask=fm
        ).logits

      self._fns[key] = jax.jit(forward, out_shardings=out)
    return self._fns[key]


class PruneRecipe(task_setup.TaskRecipe):
  """TaskRecipe with per-width evaluation, width-aware FLOPs and the extracted export."""

  def __init__(self, setup, student, loss, *, workdir, teacher, widths, export_width):
    super().__init__(setup, student, loss, workdir=workdir, teacher=teacher)
    self.workdir, self.widths, self.export_width = workdir, widths, export_width
    bs = setup.config.get("eval_batch_size", 64)
    self.predictors = {
      w: _WidthPredictor(student, bs, prune.width_masks(student.config, w)) for w in widths
    }
    if not setup.eval_sets:
      self.evaluate = None

  def evaluate(self, params, frozen, step):
    del frozen, step
    s = self.setup
    out = {}
    for w, predictor in self.predictors.items():
      res = task_setup.evaluate_splits(s.task, predictor, params, s.eval_sets)
      out.update({f"{_width_name(w)}/{k}": v for k, v in res.items()})
    out["score"] = out[f"{_width_name(self.export_width)}/score"]
    return out

  def flops_per_example(self) -> float:
    length = self.setup.config.max_seq_length
    s = self.student.config
    flops = 0.0
    for w in self.widths:
      heads, neurons = prune.kept_sizes(s, w)
      sub = s.replace(num_attention_heads=heads, attention_head_size=s.head_dim)
      sub = sub.replace(intermediate_size=neurons)
      flops += common.encoder_flops_per_example(sub, length, s.num_hidden_layers, True)
    t = self.teacher.config
    return flops + common.encoder_flops_per_example(t, length, t.num_hidden_layers, False)

  def export(self, params, directory: str) -> None:
    # The trainer builds recipes without a workdir and exports to ``workdir/export``.
    workdir = self.workdir or os.path.dirname(os.path.abspath(directory))
    step = native.best_step(workdir)
    if step is not None:
      params = native._restore_tree(os.path.join(workdir, "best", str(step), "params"))
    full = self.student.model(jax.tree.map(jnp.asarray, params))
    small = prune.extract(full, self.export_width)
    tok = self.setup.tokenizer
    native.save(small, directory, tokenizer=tok)
    models.save_pretrained(small, os.path.join(directory, "hf"), tokenizer=tok)
    c = small.config
    info = {
      "width": self.export_width,
      "checkpoint": "best" if step is not None else "last",
      "step": step,
      "num_attention_heads": c.num_attention_heads,
      "attention_head_size": c.head_dim,
      "intermediate_size": c.intermediate_size,
      "params": models.count_params(models.params_of(small)),
      "params_full_width": models.count_params(models.params_of(full)),
    }
    with open(os.path.join(directory, "prune.json"), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=2)
      f.write("\n")
    head_imp, neuron_imp = self.importance
    np.savez(os.path.join(directory, "importance.npz"), head=head_imp, neuron=neuron_imp)
    logging.info("prune: extracted width %g -> %s (%s)", self.export_width, directory, info)


def _importance_batches(setup, limit: int):
  feats = next(iter(setup.eval_sets.values()))
  bs = int(setup.config.get("eval_batch_size", 64))
  for i, b in enumerate(eval_batches(feats, bs)):
    if limit > 0 and i >= limit:
      return
    yield b


def build(config, workdir):
  c = config
  p = c.prune
  if not float(p.temperature) > 0:
    raise ValueError(f"config key 'prune.temperature'={p.temperature} must be > 0")
  task = task_setup.resolve_task(c, "finetune")
  labels = None if task.is_regression else task.labels
  teacher = loading.build_teacher(
    c.teacher,
    head="classification",
    num_labels=task.num_labels,
    labels=labels,
    what="the fine-tuned full-width model: a Hugging Face / kdjax model directory or workdir",
  )
  scfg = c.student
  if not scfg.get("path"):
    scfg.path = c.teacher.path  # the student starts as the teacher (recorded in config.json)
  student, _ = loading.build_student(
    scfg,
    head="classification",
    num_labels=task.num_labels,
    labels=labels,
    tokenizer_dir=teacher.tokenizer_dir,
  )
  t, s = teacher.config, student.config
  for key in ("num_hidden_layers", "hidden_size", "vocab_size"):
    if getattr(t, key) != getattr(s, key):
      raise ValueError(
        f"student.path: {key} {getattr(s, key)} differs from the teacher's {getattr(t, key)} "
        "(width pruning distils every hidden state of the same-shape teacher)"
      )
  widths, export_width = resolve_widths(p, s)
  setup = task_setup.TaskSetup(c, task, student, teacher=teacher, name="prune")
  if not setup.eval_sets:
    raise ValueError(f"{task.name} has no dev split: importance needs dev batches")

  # Importance on dev, then the reordered student (same function, important heads first).
  model = student.model()
  head_imp, neuron_imp = prune.importance(
    model, _importance_batches(setup, int(p.get("importance_batches", 0)))
  )
  student = loading.ModelHandle(prune.reorder(model, head_imp, neuron_imp))
  setup.predictor = task_setup.Predictor(student, c.get("eval_batch_size", 64))
  logging.info(
    "prune: widths %s (export %g): %s heads / %s neurons per layer; head importance %s",
    list(widths),
    export_width,
    [prune.kept_sizes(s, w)[0] for w in widths],
    [prune.kept_sizes(s, w)[1] for w in widths],
    np.round(head_imp, 4).tolist(),
  )

  masks = [prune.width_masks(s, w) for w in widths]
  lam_logit, lam_rep = float(p.lambda_logit), float(p.lambda_rep)
  temperature = float(p.temperature)

  def loss(params, frozen, batch, rng):
    mask, weights = batch["attention_mask"], batch["weights"]
    tout = jax.lax.stop_gradient(task_setup.forward(teacher, frozen, batch))
    total, metrics = 0.0, {}
    for i, (w, (hm, fm)) in enumerate(zip(widths, masks, strict=True)):
      key = None if rng is None else jax.random.fold_in(rng, i)
      sout = task_setup.forward(student, params, batch, key, head_mask=hm, ffn_mask=fm)
      if task.is_regression:
        logit = mse_regression(sout.logits, tout.logits[..., 0], weights=weights)
      else:
        logit = soft_cross_entropy(
          sout.logits, teacher_logits=tout.logits, temperature=temperature, weights=weights
        )
      rep = sum(
        hidden_mse(hs, teacher_hidden=ht, attention_mask=mask, weights=weights)
        for hs, ht in zip(sout.hidden_states, tout.hidden_states, strict=True)
      )
      total = total + lam_logit * logit + lam_rep * rep
      name = _width_name(w)
      metrics[f"{name}/logit_loss"] = logit
      metrics[f"{name}/rep_loss"] = rep
    return total, metrics

  recipe = PruneRecipe(
    setup,
    student,
    loss,
    workdir=workdir,
    teacher=teacher,
    widths=widths,
    export_width=export_width,
  )
  recipe.importance = (head_imp, neuron_imp)
  return recipe
