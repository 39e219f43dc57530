"""Task-agnostic distillation: MiniLMv2 (Q-Q, K-K, V-V relations) and PP-MiniLM
(+ head-head relations weighted by ``alpha`` and sample-sample relations by ``beta``).

One teacher layer (``teacher_layer_index``) teaches one student layer
(``student_layer_index``), both 0-based. The teacher runs frozen, in
``teacher.dtype``, only up to its layer; the student runs only up to its layer too
(later student layers get no gradient from this loss, as in the reference).

``relation_reduction``: ``"kdjax"`` (default; padding excluded from the relation means) or
``"reference"`` (PaddleNLP's averaging over every row, padding included: the reference's loss
values); see ``kdjax.losses.minilm``.

The student (``kdjax.models.loading``, one meaning in every recipe): ``student.path`` starts
from those weights (the seed's ``--student_model_name_or_path X --init_from_student True``);
``student.config_path`` gives the architecture of a randomly initialised student (the seed's
``--student_model_name_or_path X`` with its default ``--init_from_student False``). Without
either, the student is the teacher's architecture with the ``student.*`` overrides
(``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``intermediate_size``,
``hidden_act``, ...), which also apply on top of ``config_path``.
"""

from __future__ import annotations

import jax

from kdjax import models
from kdjax.data import TextCorpus, Tokenizer
from kdjax.data.tokenizer import check_same_tokenizer
from kdjax.losses import minilm_relation_loss
from kdjax.losses.minilm import REDUCTIONS
from kdjax.models import loading, surgery
from kdjax.recipes import common


class GeneralDistill:
  def __init__(
    self,
    config,
    workdir: str | None,
    teacher: loading.ModelHandle | None = None,
    student: loading.ModelHandle | None = None,
    tokenizer: Tokenizer | None = None,
  ):
    """``teacher``/``student``/``tokenizer`` may be given in memory (benchmarks, tests);
    by default they come from ``teacher.path`` / ``student.*`` / the teacher's vocab."""
    self.config = c = config
    self.teacher = teacher or loading.build_teacher(c.teacher)
    tcfg = self.teacher.config
    from_checkpoint = False
    if student is None:
      student, from_checkpoint = loading.build_student(
        c.student,
        base=tcfg.replace(dtype="float32"),
        tokenizer_dir=self.teacher.tokenizer_dir,
      )
    self.student = student
    scfg = self.student.config
    self.t_layer = _check_layer(
      c.teacher_layer_index, tcfg.num_hidden_layers, "teacher_layer_index"
    )
    if self.t_layer < tcfg.num_hidden_layers - 1:
      # The layers above the distilled one are never run (stop_at_layer): drop their weights
      # too (a 24-layer teacher at index 19 holds 20 layers; the values of those are unchanged).
      self.teacher = loading.ModelHandle(
        surgery.keep_layers(self.teacher.model(), range(self.t_layer + 1))
      )
    self.s_layer = _check_layer(
      c.student_layer_index, scfg.num_hidden_layers, "student_layer_index"
    )
    if not isinstance(c.num_relation_heads, int) or c.num_relation_heads <= 0:
      raise ValueError(
        f"config key 'num_relation_heads'={c.num_relation_heads!r} must be a positive integer"
      )
    for who, h in (("teacher", tcfg.hidden_size), ("student", scfg.hidden_size)):
      if h % c.num_relation_heads:
        raise ValueError(
          f"config key 'num_relation_heads'={c.num_relation_heads} does not "
          f"divide the {who} hidden size {h}"
        )
    if not 0.0 <= c.alpha + c.beta <= 1.0 or c.alpha < 0 or c.beta < 0:
      raise ValueError(
        f"config keys 'alpha'={c.alpha}, 'beta'={c.beta}: need alpha, beta >= 0 "
        "and alpha + beta <= 1"
      )
    self.reduction = c.get("relation_reduction", "kdjax")
    if self.reduction not in REDUCTIONS:
      raise ValueError(
        f"config key 'relation_reduction'={self.reduction!r} must be one of {', '.join(REDUCTIONS)}"
      )
    chunk = c.get("relation_chunk_heads", -1)
    if not isinstance(chunk, int) or chunk < -1 or (chunk > 0 and c.num_relation_heads % chunk):
      raise ValueError(
        f"config key 'relation_chunk_heads'={chunk!r} must be -1 (by size), 0 (never) or a "
        f"divisor of num_relation_heads={c.num_relation_heads}"
      )
    self.chunk_heads = None if chunk == -1 else chunk
    if c.max_seq_length + tcfg.position_offset > tcfg.max_position_embeddings:
      raise ValueError(
        f"config key 'max_seq_length'={c.max_seq_length} exceeds the teacher's "
        f"max_position_embeddings={tcfg.max_position_embeddings}"
      )
    if tokenizer is None:
      tok_dir = loading.require_dir(
        c.get("tokenizer_path") or self.teacher.tokenizer_dir,
        "tokenizer_path",
        "a directory with vocab.txt or tokenizer.json",
      )
      check_same_tokenizer(
        {
          "data": tok_dir,
          "teacher": self.teacher.tokenizer_dir,
          "student": self.student.tokenizer_dir,
        }
      )
      tokenizer = Tokenizer.from_dir(tok_dir)
    self.tokenizer = tokenizer
    for who, cfg in (("teacher", tcfg), ("student", scfg)):
      if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
          f"the tokenizer has {tokenizer.vocab_size} tokens but the {who}'s vocab_size is "
          f"{cfg.vocab_size}: token ids would fall outside its embeddings"
        )
    self.init_params, self.initial_params = loading.init_fns(self.student, from_checkpoint)
    if workdir is not None:
      common.write_student_description(self.student, workdir)

  @property
  def sequence_keys(self):
    """Length buckets (trainer ``length_buckets``) only with the padding-free reduction: the
    reference reduction averages padding rows in, so trimming would change its values."""
    if self.reduction != "kdjax":
      return ()
    return ("input_ids", "attention_mask", "token_type_ids")

  # -- trainer interface ---------------------------------------------------------------------
  def train_data(self, process_index: int, process_count: int):
    """``data_sharding="files"``: hosts read disjoint files (scales to any corpus size).
    ``"global"``: every host reads the same global batch and keeps its rows, so a run gives
    the same batches, losses and checkpoints on any number of hosts (and resumes on another
    topology); each host then tokenizes the whole global batch."""
    c = self.config
    input_dir = loading.require_dir(c.input_dir, "input_dir", "a directory of text files")
    mode = c.get("data_sharding", "files")
    if mode == "files":
      return TextCorpus(
        input_dir,
        self.tokenizer,
        c.batch_size // process_count,
        c.max_seq_length,
        seed=c.seed,
        process_index=process_index,
        process_count=process_count,
      )
    if mode != "global":
      raise ValueError(f"config key 'data_sharding'={mode!r} must be 'files' or 'global'")
    corpus = TextCorpus(input_dir, self.tokenizer, c.batch_size, c.max_seq_length, seed=c.seed)
    return RowsOfGlobalBatch(corpus, process_index, process_count)

  def param_logical_axes(self, params):
    return models.param_logical_axes(params)

  def init_frozen(self):
    return self.teacher.frozen_params()

  def frozen_logical_axes(self, frozen):
    return models.param_logical_axes(frozen)

  def loss_fn(self, params, frozen, batch, rng):
    c = self.config
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    teacher = self.teacher.bind(frozen)
    t = teacher(ids, mask, types, capture_layers=[self.t_layer], stop_at_layer=self.t_layer)
    t_qkv = jax.lax.stop_gradient(_qkv(t.layers[self.t_layer]))
    student = self.student.bind(params)
    s = student(
      ids,
      mask,
      types,
      capture_layers=[self.s_layer],
      stop_at_layer=self.s_layer,
      deterministic=False,
      dropout_rng=rng,
    )
    loss, terms = minilm_relation_loss(
      _qkv(s.layers[self.s_layer]),
      teacher=t_qkv,
      attention_mask=mask,
      num_relation_heads=c.num_relation_heads,
      alpha=c.alpha,
      beta=c.beta,
      reduction=self.reduction,
      return_terms=True,
      chunk_heads=self.chunk_heads,
    )
    metrics = {
      f"{k}_relation": v
      for k, v in terms.items()
      if k == "token" or (k == "head" and c.alpha) or (k == "sample" and c.beta)
    }
    return loss, metrics

  def flops_per_example(self) -> float:
    L = self.config.max_seq_length
    return common.encoder_flops_per_example(
      self.teacher.config, L, self.t_layer + 1, False
    ) + common.encoder_flops_per_example(self.student.config, L, self.s_layer + 1, True)

  def tokens_per_example(self, batch) -> float:
    return common.tokens_per_example(batch)

  def export(self, params, directory: str) -> None:
    common.export_student(self.student, params, directory, tokenizer=self.tokenizer)


class RowsOfGlobalBatch:
  """This process's rows of every global batch of ``corpus`` (position = the corpus's)."""

  def __init__(self, corpus, process_index: int, process_count: int):
    self.corpus, self.index, self.count = corpus, process_index, process_count

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.corpus)
    rows = len(batch["input_ids"]) // self.count
    return {k: v[self.index * rows : (self.index + 1) * rows] for k, v in batch.items()}

  def get_state(self):
    return self.corpus.get_state()

  def set_state(self, state):
    self.corpus.set_state(state)


def _qkv(internals):
  return (internals.q, internals.k, internals.v)


def _check_layer(index: int, n: int, key: str) -> int:
  if not 0 <= index < n:
    raise ValueError(
      f"config key {key!r}={index} is out of range for a model with {n} layers "
      f"(0-based: 0..{n - 1})"
    )
  return index


def build(config, workdir):
  return GeneralDistill(config, workdir)
