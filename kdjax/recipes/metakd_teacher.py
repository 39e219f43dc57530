"""Meta-KD meta-teacher (recipe "metakd_teacher"; Pan et al. 2021, EasyNLP
``MetaTeacherForSequenceClassification`` + ``MetaTeacherTrainer``).

One model fine-tuned on the training data of EVERY domain (``train_with_weights.tsv`` of
``python -m kdjax.metakd_prep``), each example weighted by its prototype score::

    z_b       = classifier(pooled_b)                                     (label logits)
    content_b = mean of the last hidden states over the real tokens after [CLS]
    dz_b      = domain_classifier(dropout(tanh(corrupt_dense(E[d_b] + content_b))))
    l_b       = CE(y_b, z_b) + domain_loss_weight * CE(perm(d)_b, dz_b)
    loss      = sum_b w_b l_b / sum_b w_b          (w = prototype score; use_sample_weights)

``perm(d)``: the batch's domain ids shuffled at random every step (EasyNLP's
``domain_ids[torch.randperm(B)]``): the domain branch is trained towards a random domain, so
the encoder cannot rely on domain-specific features (``use_domain_loss``). The domain branch
(``domain_embedding`` [D, H], ``corrupt_dense`` [H, H], ``domain_classifier`` [H, D]) is an
extra trainable params entry ``"domain_branch"``, checkpointed with the model.

Export (``workdir/export``): a standard Hugging Face ``BertForSequenceClassification``
directory (every kdjax tool reads it), plus, beside the weights in the same directory,
``metakd_domain_branch.npz`` (the domain branch: arrays ``domain_embedding``,
``corrupt_dense/kernel``, ``corrupt_dense/bias``, ``domain_classifier/kernel``,
``domain_classifier/bias``) and ``metakd.json`` (the domain names in id order, the labels).
``metakd_student`` reads both: its ``teacher.path`` is this export (or the workdir itself:
then the best dev checkpoint's params, domain branch included). The workdir also gets
``metakd.json`` when the run starts.

Dev evaluation (``dev_standard.tsv``): accuracy overall and per domain
(``dev/<domain>/accuracy``); ``score`` = overall accuracy selects ``workdir/best``.

Differences from EasyNLP, on purpose:
  * the label head is the standard BERT one, ``classifier(dropout(pooled))``; EasyNLP's
    ``classifier(relu(pooled))`` (no dropout) would make the teacher an architecture that
    Hugging Face / kdjax loaders and exporters do not know;
  * ``content`` averages over real tokens after [CLS] (EasyNLP: over every position after
    [CLS], padding to max_seq_length included; see ``kdjax.losses.metakd.content_mean``);
  * the reduction is the weighted mean (EasyNLP: ``mean_b(w_b l_b)``), see
    ``kdjax.losses.metakd.meta_teacher_loss``;
  * the domain branch starts from N(0, initializer_range) weights and zero biases
    (PyTorch's ``nn.Embedding`` default is N(0, 1)).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kdjax.data.metakd import LABELS, MetaKDTask
from kdjax.losses.metakd import content_mean, domain_branch, meta_teacher_loss, shuffle_domains
from kdjax.models import loading, native
from kdjax.recipes import task_setup

BRANCH = "domain_branch"
BRANCH_FILE = "metakd_domain_branch.npz"
META_FILE = "metakd.json"

__all__ = [
  "BRANCH",
  "BRANCH_FILE",
  "META_FILE",
  "MetaTeacherRecipe",
  "build",
  "domain_branch_params",
  "load_domain_branch",
  "read_meta",
]


def _dense(key, n_in, n_out, std):
  return {
    "kernel": std * jax.random.normal(key, (n_in, n_out), jnp.float32),
    "bias": jnp.zeros((n_out,), jnp.float32),
  }


def domain_branch_params(hidden: int, num_domains: int, std: float, *, classifier: bool = True):
  """``init(rng) -> {"domain_branch": {...}}`` (the recipe's ``extra_params``)."""

  def init(rng):
    k1, k2, k3 = jax.random.split(rng, 3)
    branch = {
      "domain_embedding": std * jax.random.normal(k1, (num_domains, hidden), jnp.float32),
      "corrupt_dense": _dense(k2, hidden, hidden, std),
    }
    if classifier:
      branch["domain_classifier"] = _dense(k3, hidden, num_domains, std)
    return {BRANCH: branch}

  return init


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v, np.float32)
  return out


def _unflat(flat):
  out = {}
  for k, v in flat.items():
    node = out
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.asarray(v)
  return out


def write_meta(directory: str, task: MetaKDTask, hidden: int) -> None:
  os.makedirs(directory, exist_ok=True)
  meta = {
    "domains": list(task.domain_names),
    "labels": list(LABELS),
    "hidden_size": hidden,
    "domain_branch_file": BRANCH_FILE,
  }
  with open(os.path.join(directory, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)


def read_meta(path: str) -> dict | None:
  """``metakd.json`` of a meta-teacher export or workdir (None when absent)."""
  f = os.path.join(path, META_FILE)
  if not os.path.exists(f):
    return None
  with open(f) as fh:
    return json.load(fh)


def load_domain_branch(path: str) -> dict:
  """The meta-teacher's domain branch: ``path/metakd_domain_branch.npz`` (an export) or, for
  a trainer workdir, the ``"domain_branch"`` entry of the checkpoint ``kdjax.models.loading``
  uses for the model (the best dev checkpoint when there is one, else the latest)."""
  f = os.path.join(path, BRANCH_FILE)
  if os.path.exists(f):
    with np.load(f) as z:
      return _unflat({k: z[k] for k in z.files})
  if os.path.isdir(path) and native.kind(path) == "workdir":
    best = native.best_step(path)
    if best is not None:
      tree = native._restore_tree(os.path.join(path, "best", str(best), "params"))
    else:
      ckpt = os.path.join(path, "checkpoints")
      tree = native._restore_tree(os.path.join(ckpt, str(native.latest_step(ckpt)), "state"))
      tree = tree["params"]
    if BRANCH in tree:
      return jax.tree.map(np.asarray, dict(tree[BRANCH]))
  raise ValueError(
    f"teacher.path={path} has no Meta-KD domain branch ({BRANCH_FILE}): the teacher of "
    "metakd_student must be a metakd_teacher export (<workdir>/export) or workdir"
  )


def make_task(c, genre: str = "", domains=None) -> MetaKDTask:
  return MetaKDTask(
    c.data_dir,
    tuple(domains if domains is not None else c.domains),
    genre,
    use_weights=bool(c.get("use_sample_weights", True)),
  )


class MetaTeacherRecipe(task_setup.TaskRecipe):
  """TaskRecipe whose export also writes the domain branch and ``metakd.json``."""

  def export(self, params, directory: str) -> None:
    super().export(params, directory)
    np.savez(os.path.join(directory, BRANCH_FILE), **_flat(params[BRANCH]))
    write_meta(directory, self.setup.task, self.student.config.hidden_size)


def build(config, workdir):
  c = config
  if c.domain_loss_weight < 0:
    raise ValueError(f"config key 'domain_loss_weight'={c.domain_loss_weight} must be >= 0")
  task = make_task(c)
  loading.require_dir(
    c.model.path,
    "model.path",
    "the encoder the meta-teacher starts from: a Hugging Face / kdjax model directory",
  )
  model, _ = loading.build_student(
    c.model, head="classification", num_labels=task.num_labels, labels=task.labels, key="model"
  )
  setup = task_setup.TaskSetup(c, task, model, name="metakd_teacher")
  cfg = model.config
  extra = domain_branch_params(cfg.hidden_size, task.num_domains, cfg.initializer_range)
  use_domain, dlw = bool(c.use_domain_loss), float(c.domain_loss_weight)
  rate = float(cfg.hidden_dropout_prob)
  if workdir is not None and jax.process_index() == 0:
    write_meta(workdir, task, cfg.hidden_size)
  logging.info(
    "metakd_teacher: domains %s, use_sample_weights=%s, use_domain_loss=%s, domain_loss_weight=%g",
    list(task.domain_names),
    task.use_weights,
    use_domain,
    dlw,
  )

  def loss(params, frozen, batch, rng):
    del frozen
    branch = params[BRANCH]
    mparams = {k: v for k, v in params.items() if k != BRANCH}
    out = task_setup.forward(model, mparams, batch, rng)
    labels, weights = batch["labels"], batch["weights"]
    acc = jnp.mean((jnp.argmax(out.logits, -1) == labels).astype(jnp.float32))
    if not use_domain:
      total, m = meta_teacher_loss(out.logits, labels, weights=weights)
      return total, {**m, "accuracy": acc}
    key = jax.random.key(0) if rng is None else jax.random.fold_in(rng, 0x4D4B44)
    k_shuffle, k_drop = jax.random.split(key)
    content = content_mean(out.last_hidden_state, batch["attention_mask"])
    dlogits = domain_branch(
      branch,
      content,
      batch["domain_ids"],
      dropout_rate=rate,
      rng=None if rng is None else k_drop,
    )
    total, m = meta_teacher_loss(
      out.logits,
      labels,
      domain_logits=dlogits,
      domain_targets=shuffle_domains(batch["domain_ids"], k_shuffle),
      domain_loss_weight=dlw,
      weights=weights,
    )
    return total, {**m, "accuracy": acc}

  return MetaTeacherRecipe(setup, model, loss, workdir=workdir, extra_params=extra)
