"""Meta-KD meta-student for one target domain (recipe "metakd_student"; Pan et al. 2021,
EasyNLP ``MetaStudentForSequenceClassification`` + ``MetaDistillationTrainer``).

Two runs, as EasyNLP's ``distill_stage``; both train on the ``genre`` domain's rows of
``train_with_weights.tsv`` only, with the meta-teacher (``teacher.path``: a
``metakd_teacher`` export or workdir, see ``kdjax.recipes.metakd_teacher``) frozen.

Stage ``first`` (no logits; the student's classifier is untouched)::

    s_b   = (1 + w_b) * g_b           w = prototype score,  g = domain expertise
    g_b   = 1 / (1 + exp((1 - p_teacher(y_b | x_b))^2))      (kdjax.losses.metakd.domain_expertise)
    L     = MSE(W E_s, E_t) + sum_i MSE(W H_s^i, H_t^{g(i)}) + sum_i MSE(A_s^i, A_t^{g(i)})
            + domain_loss_weight * MSE(W r_s, r_t)
    r     = corrupt_dense(E_dom[d] + content)   (each model's own domain branch, no tanh)

  every term reduced with the per-example weights ``s_b`` (the TinyBERT losses of
  ``kdjax.losses.tinybert`` with ``weights=s``: each real token / (query, key) pair of
  example b weighted by ``s_b``; the domain MSE per example). ``W`` is ONE learned
  projection student width -> teacher width (EasyNLP's ``fit_dense``, TinyBERT's
  ``projection="shared"``), applied also to the domain representation. ``g``: student layer
  i <- teacher layer (i+1)*k - 1 (EasyNLP's ``teacher_atts[i*k + k - 1]`` and
  ``teacher_reps[i*k]``, embeddings included) or ``layer_map``. The student's domain branch
  (``domain_embedding``, ``corrupt_dense``) and ``W`` are extra params (``"domain_branch"``,
  ``"proj"``), checkpointed with the student and never exported.

Stage ``second`` (``student.path`` = stage first's ``workdir/export``)::

    L = mean_b soft_CE(softmax(z_t / T), log_softmax(z_s / T))        (T = 2, no T^2)

  Dev evaluation (every domain of ``dev_standard.tsv``): ``dev/accuracy`` overall and
  ``dev/<domain>/accuracy``; ``score`` = the genre's accuracy selects ``workdir/best``.

Differences from EasyNLP, on purpose:
  * per-example weighting. EasyNLP's MSEs are already batch scalars, so
    ``loss * final_sample_weights`` then ``.mean()`` only scales the batch loss by
    ``mean_b s_b``; kdjax weights each example by ``s_b`` inside the reductions as the paper
    describes (the loss scale is then independent of the absolute weight level).
  * the teacher's domain representation is ``corrupt_dense_t(E_t[d] + content_t)``. EasyNLP
    loads the teacher as a ``MetaStudentForSequenceClassification``, whose ``fit_dense`` is
    not in the meta-teacher checkpoint and so is a RANDOM matrix applied to the teacher's
    representation; kdjax leaves it out (identity).
  * padding is excluded from every mean (TinyBERT losses, ``content_mean``); EasyNLP averages
    over the max_length padding (attention scores below -100 zeroed).
  * EasyNLP's dev set is not filtered by genre (a ``genre=``/``enre=`` typo); kdjax scores
    every domain and selects checkpoints by the genre's accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from kdjax.data.metakd import LABELS
from kdjax.losses import soft_cross_entropy
from kdjax.losses.metakd import (
  content_mean,
  domain_expertise,
  domain_representation,
  domain_representation_mse,
)
from kdjax.models import loading, param_logical_axes
from kdjax.recipes import task_setup
from kdjax.recipes.metakd_teacher import (
  BRANCH,
  domain_branch_params,
  load_domain_branch,
  make_task,
  read_meta,
)
from kdjax.recipes.tinybert import (
  PROJ,
  intermediate_terms,
  project,
  projection_params,
  resolve_layer_map,
)

STAGES = ("first", "second")

__all__ = ["STAGES", "MetaStudentRecipe", "build"]


class MetaStudentRecipe(task_setup.TaskRecipe):
  """TaskRecipe whose frozen pytree is ``{"model": teacher params, "domain_branch": ...}``."""

  def __init__(self, *args, teacher_branch=None, **kw):
    super().__init__(*args, **kw)
    self.teacher_branch = teacher_branch

  def init_frozen(self):
    if self.teacher_branch is None:
      return self.teacher.frozen_params()
    return {"model": self.teacher.frozen_params(), BRANCH: self.teacher_branch}

  def frozen_logical_axes(self, frozen):
    if self.teacher_branch is None:
      return param_logical_axes(frozen)
    return {
      "model": param_logical_axes(frozen["model"]),
      BRANCH: jax.tree.map(lambda x: None, frozen[BRANCH]),
    }


def _models(c, task):
  teacher = loading.build_teacher(
    c.teacher,
    head="classification",
    num_labels=task.num_labels,
    labels=LABELS,
    what="the meta-teacher: a metakd_teacher export (<workdir>/export) or workdir",
  )
  student, _ = loading.build_student(
    c.student,
    base=teacher.config,
    head="classification",
    num_labels=task.num_labels,
    labels=LABELS,
    tokenizer_dir=teacher.tokenizer_dir,
  )
  if student.config.vocab_size != teacher.config.vocab_size:
    raise ValueError(
      f"student vocab_size {student.config.vocab_size} != teacher vocab_size "
      f"{teacher.config.vocab_size}: both must read the same token ids"
    )
  return teacher, student


def _task(c):
  if not c.genre:
    raise ValueError("config key 'genre' is not set: name the target domain (e.g. books)")
  meta = read_meta(c.teacher.path) if c.teacher.get("path") else None
  domains = tuple(c.domains) or (tuple(meta["domains"]) if meta else None)
  return make_task(c, c.genre, domains)


def build_first(c, workdir):
  task = _task(c)
  teacher, student = _models(c, task)
  branch_t = load_domain_branch(c.teacher.path)
  tcfg, scfg = teacher.config, student.config
  nd = branch_t["domain_embedding"].shape[0]
  if nd != task.num_domains:
    raise ValueError(
      f"the meta-teacher's domain branch has {nd} domains but the data has "
      f"{task.num_domains} ({list(task.domain_names)})"
    )
  if tcfg.num_attention_heads != scfg.num_attention_heads:
    raise ValueError(
      f"the attention-score MSE needs equal head counts: teacher has "
      f"{tcfg.num_attention_heads}, student {scfg.num_attention_heads} (set "
      f"student.num_attention_heads={tcfg.num_attention_heads})"
    )
  layer_map = resolve_layer_map(c.get("layer_map"), scfg.num_hidden_layers, tcfg.num_hidden_layers)
  widths = (scfg.hidden_size, tcfg.hidden_size)
  proj_init = projection_params("shared", widths, scfg.num_hidden_layers, scfg.initializer_range)
  branch_init = domain_branch_params(
    scfg.hidden_size, task.num_domains, scfg.initializer_range, classifier=False
  )

  def extra(rng):
    k1, k2 = jax.random.split(rng)
    return {**proj_init(k1), **branch_init(k2)}

  setup = task_setup.TaskSetup(
    c, task, student, teacher=teacher, evaluate=False, name="metakd_student first"
  )
  dlw = float(c.domain_loss_weight)
  logging.info(
    "metakd_student first: genre %s, student layer -> teacher layer %s, projection %d -> %d",
    task.genre,
    dict(enumerate(layer_map)),
    *widths,
  )

  def loss(params, frozen, batch, rng):
    mask, labels = batch["attention_mask"], batch["labels"]
    t = task_setup.forward(teacher, frozen["model"], batch, capture_layers=tuple(set(layer_map)))
    t = jax.lax.stop_gradient(t)
    rep_t = jax.lax.stop_gradient(
      domain_representation(
        frozen[BRANCH], content_mean(t.last_hidden_state, mask), batch["domain_ids"]
      )
    )
    expertise = jax.lax.stop_gradient(domain_expertise(t.logits, labels))
    w = (1.0 + batch["weights"]) * expertise
    proj = params[PROJ]
    sparams = {k: v for k, v in params.items() if k not in (PROJ, BRANCH)}
    s = task_setup.forward(student, sparams, batch, rng, capture_layers="all")
    emb, hid, att = intermediate_terms(s, t, proj, layer_map, mask, w)
    rep_s = domain_representation(
      params[BRANCH], content_mean(s.last_hidden_state, mask), batch["domain_ids"]
    )
    rep_s = project(proj, "domain", rep_s[:, None])[:, 0]
    dom = domain_representation_mse(rep_s, teacher_rep=rep_t, weights=w)
    total = emb + hid + att + dlw * dom
    return total, {
      "embedding_mse": emb,
      "hidden_mse": hid,
      "attention_mse": att,
      "domain_mse": dom,
      "sample_weight": jnp.mean(w),
      "domain_expertise": jnp.mean(expertise),
    }

  recipe = MetaStudentRecipe(
    setup,
    student,
    loss,
    workdir=workdir,
    teacher=teacher,
    extra_params=extra,
    evaluate=False,
    teacher_branch=branch_t,
  )
  recipe.layer_map = layer_map
  return recipe


def build_second(c, workdir):
  if c.temperature <= 0:
    raise ValueError(f"config key 'temperature'={c.temperature} must be positive")
  task = _task(c)
  loading.require_dir(
    c.student.get("path"),
    "student.path",
    "stage first's export (<first workdir>/export): stage second starts from it",
  )
  teacher, student = _models(c, task)
  setup = task_setup.TaskSetup(c, task, student, teacher=teacher, name="metakd_student second")
  temperature = float(c.temperature)

  def loss(params, frozen, batch, rng):
    z_s = task_setup.forward(student, params, batch, rng).logits
    z_t = jax.lax.stop_gradient(task_setup.forward(teacher, frozen, batch).logits)
    soft = soft_cross_entropy(z_s, teacher_logits=z_t, temperature=temperature)
    agree = jnp.mean((jnp.argmax(z_s, -1) == jnp.argmax(z_t, -1)).astype(jnp.float32))
    acc = jnp.mean((jnp.argmax(z_s, -1) == batch["labels"]).astype(jnp.float32))
    return soft, {"soft_ce": soft, "teacher_agreement": agree, "accuracy": acc}

  return task_setup.TaskRecipe(setup, student, loss, workdir=workdir, teacher=teacher)


def build(config, workdir):
  stage = config.get("stage")
  if stage == "first":
    return build_first(config, workdir)
  if stage == "second":
    return build_second(config, workdir)
  raise ValueError(f"config key 'stage'={stage!r} is not one of {STAGES}")
