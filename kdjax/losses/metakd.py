"""Meta-KD losses (Pan et al., ACL-IJCNLP 2021; EasyNLP ``distill_metakd_application.py`` and
``core/distiller.py``). All math is float32; conventions of ``kdjax.losses``: the student's
array first and positional, the teacher's keyword-only, ``weights`` (``[B]``, >= 0)
keyword-only and reduced by the weighted batch mean ``sum_b w_b l_b / sum_b w_b``.

  * :func:`content_mean`: the "content" vector of an example, the mean of the last hidden
    states over the tokens after ``[CLS]`` (used by the prototype scores and the domain branch).
  * :func:`prototype_scores`: the per-example prototype (transferability) weight.
  * :func:`domain_branch`: the meta-teacher's domain classifier
    ``domain_classifier(tanh(corrupt_dense(E[d] + content)))``.
  * :func:`meta_teacher_loss`: CE(label) + domain_loss_weight x CE(domain branch, shuffled ids).
  * :func:`domain_expertise`: ``1 / (1 + exp((1 - p_teacher[y])^2))``.
  * :func:`domain_representation_mse`: MSE between the domain representations.

The stage-1 attention / hidden MSEs of the meta-student are TinyBERT's
(``kdjax.losses.tinybert``) with ``weights = (1 + prototype weight) x domain expertise``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._common import weighted_mean
from kdjax.losses.kd import cross_entropy

__all__ = [
  "content_mean",
  "domain_branch",
  "domain_expertise",
  "domain_representation",
  "domain_representation_mse",
  "meta_teacher_loss",
  "prototype_scores",
  "shuffle_domains",
]


def content_mean(last_hidden_BxLxH, attention_mask_BxL=None):
  """``[B, H]``: mean of ``last_hidden[:, 1:]`` (every token after ``[CLS]``).

  With ``attention_mask`` the mean runs over the REAL tokens after ``[CLS]`` (the last
  ``[SEP]`` included), so the value does not depend on how far a batch is padded. EasyNLP
  (``torch.mean(last_hidden_state[:, 1:, :], dim=1)`` on inputs padded to max_length)
  averages over the padding positions too; pass ``attention_mask=None`` to get exactly that
  (the mean over all ``L - 1`` positions).
  """
  x = last_hidden_BxLxH[:, 1:].astype(jnp.float32)
  if attention_mask_BxL is None:
    return jnp.mean(x, axis=1)
  m = attention_mask_BxL[:, 1:].astype(jnp.float32)[..., None]
  return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def _cos(a, b):
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return num / jnp.where(den > 0, den, 1.0)


def prototype_scores(embeddings_NxH, domain_ids_N, num_domains: int):
  """Per-example prototype score ``[N]`` (EasyNLP ``generate_meta_weights.py``)::

      c_d      = mean of the embeddings of domain d               (the domain's centroid)
      o_d      = mean_{d' != d} c_{d'}                            (the other centroids' mean)
      score_n  = (cos(x_n, c_{d_n}) + cos(x_n, o_{d_n})) / 2

  ``embeddings`` ``[N, H]`` (float64 math when given float64 NumPy arrays under x64, else
  float32), integer ``domain_ids`` in ``[0, num_domains)``. Every domain needs at least one
  example and there must be >= 2 domains (the caller checks, with names); an all-zero vector
  has cosine 0.
  """
  x = jnp.asarray(embeddings_NxH)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  d = jnp.asarray(domain_ids_N, jnp.int32)
  onehot = jax.nn.one_hot(d, num_domains, dtype=x.dtype)  # [N, D]
  counts = jnp.sum(onehot, axis=0)  # [D]
  centroids = (onehot.T @ x) / jnp.maximum(counts, 1)[:, None]  # [D, H]
  others = (jnp.sum(centroids, axis=0, keepdims=True) - centroids) / max(num_domains - 1, 1)
  return (_cos(x, centroids[d]) + _cos(x, others[d])) / 2


def _dense(p, x):
  return x @ p["kernel"].astype(jnp.float32) + p["bias"].astype(jnp.float32)


def domain_representation(branch, content_BxH, domain_ids_B, *, activation=None):
  """``corrupt_dense(E[d] + content)`` ``[B, H]`` of a domain branch (params with
  ``domain_embedding`` ``[D, H]`` and ``corrupt_dense`` ``{kernel [H, H], bias [H]}``);
  ``activation`` (e.g. ``jnp.tanh``) applied when given."""
  e = branch["domain_embedding"].astype(jnp.float32)[domain_ids_B]
  h = _dense(branch["corrupt_dense"], e + content_BxH.astype(jnp.float32))
  return h if activation is None else activation(h)


def domain_branch(branch, content_BxH, domain_ids_B, *, dropout_rate=0.0, rng=None):
  """The meta-teacher's domain logits ``[B, D]`` (EasyNLP ``MetaTeacherForSequenceClassification``)::

      domain_logits = domain_classifier(dropout(tanh(corrupt_dense(E[d] + content))))

  ``branch`` holds ``domain_embedding``, ``corrupt_dense`` and ``domain_classifier``
  (``{kernel [H, D], bias [D]}``); dropout (inverted, rate ``dropout_rate``) only with ``rng``.
  """
  h = domain_representation(branch, content_BxH, domain_ids_B, activation=jnp.tanh)
  if rng is not None and dropout_rate > 0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, h.shape)
    h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
  return _dense(branch["domain_classifier"], h)


def shuffle_domains(domain_ids_B, rng):
  """The batch's domain ids in a random order (``domain_ids[torch.randperm(B)]``)."""
  return jax.random.permutation(rng, domain_ids_B)


def meta_teacher_loss(
  logits_BxC,
  labels_B,
  *,
  domain_logits=None,
  domain_targets=None,
  domain_loss_weight: float = 0.5,
  weights=None,
):
  """Meta-teacher loss; returns ``(loss, {"ce": ..., "domain_ce": ...})``::

      l_b  = CE(y_b, z_b) + domain_loss_weight * CE(t_b, domain_logits_b)
      loss = sum_b w_b l_b / sum_b w_b

  ``t`` = ``domain_targets``: the batch's domain ids shuffled (:func:`shuffle_domains`), so
  the branch cannot learn the domain and the encoder is pushed towards domain-invariant
  content (EasyNLP ``compute_loss`` with ``use_domain_loss``). ``weights``: the prototype
  scores (``use_sample_weights``; None = unweighted). EasyNLP reduces with
  ``mean_b(w_b l_b)`` (divided by B, not by ``sum_b w_b``); kdjax uses the weighted mean of
  all its losses, which differs from EasyNLP's by the batch scale ``mean_b w_b`` (a
  learning-rate rescaling for prototype scores, which lie close to each other).
  """
  ce = cross_entropy(logits_BxC, labels_B, weights=weights)
  if domain_logits is None:
    return ce, {"ce": ce}
  dce = cross_entropy(domain_logits, domain_targets, weights=weights)
  return ce + domain_loss_weight * dce, {"ce": ce, "domain_ce": dce}


def domain_expertise(teacher_logits_BxC, labels_B):
  """Domain-expertise weight ``[B]`` of the meta-teacher (EasyNLP ``grt_sample_weights``)::

      p    = softmax(teacher_logits)
      g_b  = 1 / (1 + exp((1 - p_b[y_b])^2))

  in (1/(1+e), 1/2]: 1/2 when the teacher is certain of the right label. Not differentiated
  (a weight): the caller stops gradients through the teacher anyway.
  """
  p = jax.nn.softmax(teacher_logits_BxC.astype(jnp.float32), axis=-1)
  p_y = jnp.take_along_axis(p, labels_B.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  return 1.0 / (1.0 + jnp.exp(jnp.square(1.0 - p_y)))


def domain_representation_mse(student_rep_BxH, *, teacher_rep, weights=None):
  """``l_b = mean_h (s_bh - t_bh)^2`` between domain representations ``[B, H]`` (the
  student's projected to the teacher width by the caller), weighted batch mean."""
  if student_rep_BxH.shape != teacher_rep.shape:
    raise ValueError(
      f"domain representation shapes differ: student {student_rep_BxH.shape}, teacher "
      f"{teacher_rep.shape} (project the student's to the teacher width first)"
    )
  sq = jnp.square(student_rep_BxH.astype(jnp.float32) - teacher_rep.astype(jnp.float32))
  return weighted_mean(jnp.mean(sq, axis=-1), weights)
