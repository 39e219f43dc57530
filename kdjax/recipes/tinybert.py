"""TinyBERT task-specific distillation (Jiao et al. 2020), in two stages run one after the other.

Stage 1, ``stage="intermediate"`` (the loss has no logits)::

    L = MSE(P_0(E_s), E_t) + sum_i MSE(P_i(H_s^i), H_t^{g(i)}) + sum_i MSE(A_s^i, A_t^{g(i)})

  * ``E``: embedding outputs; ``H^i``: output of layer i; ``A^i``: pre-softmax attention
    scores ``q k^T / sqrt(d)`` of layer i, all heads (head counts must be equal).
  * ``P``: the learned projection to the teacher width, ``projection=``
      - ``"shared"`` (default, as the original ``task_distill.py``): ONE linear map
        ``W_h`` [student_hidden, teacher_hidden] (+ bias), TinyBERT's ``fit_dense``, applied to
        the embeddings and every layer, also when the widths are equal;
      - ``"per_layer"``: one map for the embeddings and one per student layer (PaddleNLP's
        v2 students);
      - ``"none"``: no projection (the widths must be equal).
    The projection is trained with the student (top-level params key ``"proj"``) and never
    exported.
  * ``g``: student layer i <- teacher layer ``(i+1)*k - 1`` (0-based, k = teacher / student
    depth: ``uniform_layer_map``) or the explicit list ``layer_map``. The teacher runs only
    up to ``max(g)``.
  * Padding is excluded: hidden/embedding MSEs average over real tokens, the attention MSE
    over (query, key) pairs of real tokens (the reference averages over every position, with
    masked scores zeroed, so its value depends on the batch's padding). Every example is
    weighted by its per-example weight (``kdjax.losses.tinybert``).

Stage 2, ``stage="prediction"``::

    L = soft_CE(z_s / T, z_t / T) + hard_label_weight * CE(z_s, y)

  Regression tasks (STS-B), as the original: ``MSE(z_s, y)`` against the labels
  (``regression_target="labels"``, default); ``regression_target="teacher"`` distils
  ``MSE(z_s, z_t) + hard_label_weight * MSE(z_s, y)`` instead. The student starts from stage
  1's export (``student.path=<stage-1 workdir>/export``); its classifier is trained here. The
  dev split(s) are scored every ``eval_steps`` and the trainer keeps the best params in
  ``workdir/best``.

Both stages train a classification model (stage 1 leaves the head untouched) and export it as
a Hugging Face ``BertForSequenceClassification`` directory in ``workdir/export``.

Data: a registry task (``task`` + ``data_dir``) or ``task="rotten_tomatoes"``; ``train_file``
replaces the train split with a file in the task's own format (e.g. the output of
``python -m kdjax.augment``). Unset hyper-parameters (-1) come from the seed's table
(``kdjax.data.hparams``, tables ``tinybert_intermediate`` / ``tinybert_prediction``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from kdjax.kernels import cpu_matmul
from kdjax.losses import (
  attention_mse,
  cross_entropy,
  embedding_mse,
  hidden_mse,
  mse_regression,
  soft_cross_entropy,
  uniform_layer_map,
)
from kdjax.models import loading
from kdjax.recipes import task_setup

STAGES = ("intermediate", "prediction")
PROJECTIONS = ("shared", "per_layer", "none")
REGRESSION_TARGETS = ("labels", "teacher")
PROJ = "proj"


def resolve_layer_map(layer_map, n_student: int, n_teacher: int) -> tuple[int, ...]:
  """Teacher layer (0-based) for each student layer: ``layer_map`` or the uniform map."""
  if not layer_map:
    try:
      return tuple(uniform_layer_map(n_student, n_teacher))
    except ValueError as e:
      raise ValueError(
        f"config key 'layer_map' is not set and the uniform map does not apply: {e}"
      ) from None
  layer_map = tuple(
    int(t) if isinstance(t, str) and t.strip().lstrip("-").isdigit() else t for t in layer_map
  )
  if len(layer_map) != n_student:
    raise ValueError(
      f"config key 'layer_map'={list(layer_map)} must have one teacher layer "
      f"per student layer ({n_student})"
    )
  for t in layer_map:
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_teacher:
      raise ValueError(
        f"config key 'layer_map'={list(layer_map)}: {t!r} is not a teacher "
        f"layer index (0-based: 0..{n_teacher - 1})"
      )
  return layer_map


def projection_params(kind: str, widths: tuple[int, int], num_layers: int, std: float):
  """``rng -> {"proj": ...}`` for ``projection=kind`` (None for "none"): a
  ``{"kernel" [Hs, Ht], "bias" [Ht]}`` dict, shared or one per name ("embeddings", "0", ...)."""
  if kind == "none":
    return None

  def dense(key):
    return {
      "kernel": std * jax.random.normal(key, widths, jnp.float32),
      "bias": jnp.zeros((widths[1],), jnp.float32),
    }

  def init(rng):
    if kind == "shared":
      return {PROJ: dense(rng)}
    names = ["embeddings"] + [str(i) for i in range(num_layers)]
    keys = jax.random.split(rng, len(names))
    return {PROJ: {n: dense(k) for n, k in zip(names, keys)}}

  return init


def project(proj, name: str, x_BxLxHs):
  """Apply the projection ``proj`` (a params entry; None = identity) for ``name``: float32
  ``x W + b``.

  The product runs in the student's compute dtype (``x``'s): a bfloat16 student multiplies
  bfloat16 ``x`` by the bfloat16-rounded ``W`` with float32 accumulation and a float32 result
  (on CPU through ``kdjax.kernels.cpu_matmul``), as a ``torch.nn.Linear`` under bf16 autocast
  does; the bias and the loss stay float32. A float32 student projects in float32 (with the bias
  in one oneDNN call where ``cpu_matmul.dense_enabled(float32)``)."""
  if proj is None:
    return x_BxLxHs
  p = proj if "kernel" in proj else proj[name]
  x, w = x_BxLxHs, p["kernel"]
  if x.dtype == jnp.float32:
    if cpu_matmul.dense_enabled(jnp.float32) and cpu_matmul.concrete(x):
      # one oneDNN call with the bias, and its gradients in oneDNN (XLA's dot and the
      # transposes of its gradient took ~300 ms of a BERT-base -> 4L/312H 32 x 128 step)
      return cpu_matmul.dense(x, w, p["bias"])
    y = jnp.einsum("blh,hk->blk", x, w)
  else:
    y = cpu_matmul.dot_general(
      x, w.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
  return y + p["bias"]


def _models(c, task, teacher_head: str):
  teacher = loading.build_teacher(
    c.teacher,
    head=teacher_head,
    num_labels=task.num_labels,
    labels=None if task.is_regression else task.labels,
    what="the fine-tuned teacher: a Hugging Face / kdjax model directory or finetune workdir",
  )
  student, _ = loading.build_student(
    c.student,
    base=teacher.config,
    head="classification",
    num_labels=task.num_labels,
    labels=None if task.is_regression else task.labels,
    tokenizer_dir=teacher.tokenizer_dir,
  )
  if student.config.vocab_size != teacher.config.vocab_size:
    raise ValueError(
      f"student vocab_size {student.config.vocab_size} != teacher vocab_size "
      f"{teacher.config.vocab_size}: both must read the same token ids"
    )
  return teacher, student


def intermediate_terms(s, t, proj, layer_map, mask, weights):
  """TinyBERT's intermediate-layer terms ``(embedding MSE, sum of hidden MSEs, sum of attention
  MSEs)`` between a student output ``s`` (all layers captured) and a teacher output ``t``
  (the mapped layers captured): student layer i against teacher layer ``layer_map[i]``, the
  student's embeddings and hidden states through the projection ``proj`` (None: identity),
  every mean over real tokens weighted per example by ``weights`` (``kdjax.losses.tinybert``)."""
  kw = {"attention_mask": mask, "weights": weights}
  emb = embedding_mse(
    project(proj, "embeddings", s.embedding_output), teacher_embeddings=t.embedding_output, **kw
  )
  hid = sum(
    hidden_mse(project(proj, str(i), s.layers[i].hidden), teacher_hidden=t.layers[j].hidden, **kw)
    for i, j in enumerate(layer_map)
  )
  att = sum(
    attention_mse(s.layers[i].scores, teacher_scores=t.layers[j].scores, **kw)
    for i, j in enumerate(layer_map)
  )
  return emb, hid, att


def build_intermediate(c, workdir):
  """Stage 1: embedding, hidden-state and attention-score MSEs (module docstring)."""
  task = task_setup.resolve_task(c, "tinybert_intermediate")
  teacher, student = _models(c, task, "none")
  tcfg, scfg = teacher.config, student.config
  if tcfg.num_attention_heads != scfg.num_attention_heads:
    raise ValueError(
      f"the attention-score MSE needs equal head counts: teacher has "
      f"{tcfg.num_attention_heads}, student {scfg.num_attention_heads} (set "
      f"student.num_attention_heads={tcfg.num_attention_heads})"
    )
  kind = c.get("projection", "shared")
  if kind not in PROJECTIONS:
    raise ValueError(f"config key 'projection'={kind!r} is not one of {PROJECTIONS}")
  widths = (scfg.hidden_size, tcfg.hidden_size)
  if kind == "none" and widths[0] != widths[1]:
    raise ValueError(
      f"config key 'projection'='none' needs equal widths; student {widths[0]}, teacher "
      f"{widths[1]} (use 'shared' or 'per_layer')"
    )
  layer_map = resolve_layer_map(c.get("layer_map"), scfg.num_hidden_layers, tcfg.num_hidden_layers)
  t_layers = tuple(sorted(set(layer_map)))
  extra = projection_params(kind, widths, scfg.num_hidden_layers, scfg.initializer_range)
  setup = task_setup.TaskSetup(
    c, task, student, teacher=teacher, evaluate=False, name="tinybert intermediate"
  )
  logging.info(
    "tinybert intermediate: student layer -> teacher layer %s; projection %s (%d -> %d)",
    dict(enumerate(layer_map)),
    kind,
    *widths,
  )

  def loss(params, frozen, batch, rng):
    mask, weights = batch["attention_mask"], batch["weights"]
    t = task_setup.forward(
      teacher, frozen, batch, capture_layers=t_layers, stop_at_layer=t_layers[-1]
    )
    t = jax.lax.stop_gradient(t)
    proj = params.get(PROJ)
    s = task_setup.forward(
      student, {k: v for k, v in params.items() if k != PROJ}, batch, rng, capture_layers="all"
    )
    emb, hid, att = intermediate_terms(s, t, proj, layer_map, mask, weights)
    return emb + hid + att, {"embedding_mse": emb, "hidden_mse": hid, "attention_mse": att}

  recipe = task_setup.TaskRecipe(
    setup,
    student,
    loss,
    workdir=workdir,
    teacher=teacher,
    teacher_layers=t_layers[-1] + 1,
    extra_params=extra,
    evaluate=False,
  )
  recipe.layer_map, recipe.teacher_layers = layer_map, t_layers
  return recipe


def build_prediction(c, workdir):
  """Stage 2: soft cross-entropy on the logits (+ optional hard labels); dev evaluation."""
  if c.temperature <= 0:
    raise ValueError(f"config key 'temperature'={c.temperature} must be positive")
  target = c.get("regression_target", "labels")
  if target not in REGRESSION_TARGETS:
    raise ValueError(
      f"config key 'regression_target'={target!r} is not one of {REGRESSION_TARGETS}"
    )
  task = task_setup.resolve_task(c, "tinybert_prediction")
  teacher, student = _models(c, task, "classification")
  setup = task_setup.TaskSetup(c, task, student, teacher=teacher, name="tinybert prediction")
  temperature, hard_weight = float(c.temperature), float(c.hard_label_weight)

  def loss(params, frozen, batch, rng):
    labels, weights = batch["labels"], batch["weights"]
    z_s = task_setup.forward(student, params, batch, rng).logits
    if task.is_regression and target == "labels":
      mse = mse_regression(z_s, labels, weights=weights)
      return mse, {"label_mse": mse}
    z_t = jax.lax.stop_gradient(task_setup.forward(teacher, frozen, batch).logits)
    if task.is_regression:
      soft = mse_regression(z_s, z_t[..., 0], weights=weights)
      hard = mse_regression(z_s, labels, weights=weights)
      metrics = {"logit_mse": soft}
    else:
      soft = soft_cross_entropy(z_s, teacher_logits=z_t, temperature=temperature, weights=weights)
      hard = cross_entropy(z_s, labels, weights=weights)
      agree = jnp.mean((jnp.argmax(z_s, -1) == jnp.argmax(z_t, -1)).astype(jnp.float32))
      metrics = {"soft_ce": soft, "teacher_agreement": agree}
    if hard_weight:
      metrics["hard_loss"] = hard
      return soft + hard_weight * hard, metrics
    return soft, metrics

  return task_setup.TaskRecipe(setup, student, loss, workdir=workdir, teacher=teacher)


def build(config, workdir):
  stage = config.get("stage")
  if stage == "intermediate":
    return build_intermediate(config, workdir)
  if stage == "prediction":
    return build_prediction(config, workdir)
  raise ValueError(f"config key 'stage'={stage!r} is not one of {STAGES}")
