"""Peer: MiniLMv2 (+ PP-MiniLM's sample relation) in plain PyTorch + transformers.

  python benchmarks/peers/torch_minilm.py --shape=minilm-tiny [--dtype=bfloat16] [--sample_relation]

One training step as a PyTorch user writes it: HF ``BertModel`` teacher (cut after
``teacher_layer``) under ``no_grad``, student in train mode, Q/K/V taken by forward hooks on the
``query``/``key``/``value`` Linear modules of the distilled layers' self-attention, relation KL
over relation heads, ``clip_grad_norm_(1.0)`` and AdamW. ``--dtype=bfloat16`` runs the forward
passes and the loss under ``torch.autocast("cpu", bfloat16)`` (parameters stay float32); the
softmax/KL math is float32 either way, as kdjax's. Prints one ``PEER_RESULT {json}`` line.

The loss is kdjax's default (``kdjax.losses.minilm``, ``reduction="kdjax"``): padding keys get
probability 0, token-relation rows are averaged over real tokens, and the sample relation at
position i relates only the samples that are real at i (tests/test_peers_harness.py checks it
against kdjax to 1e-5).
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

_NEG = torch.finfo(torch.float32).min


def _row_kl(t_scores, s_scores, key_mask):
  """Per-row KL(softmax(t) || softmax(s)) in float32; masked keys have probability 0."""
  t_scores, s_scores = t_scores.float(), s_scores.float()
  if key_mask is not None:
    t_scores = t_scores.masked_fill(~key_mask, _NEG)
    s_scores = s_scores.masked_fill(~key_mask, _NEG)
  logp_t = torch.log_softmax(t_scores, -1)
  logp_s = torch.log_softmax(s_scores, -1)
  terms = logp_t.exp() * (logp_t - logp_s)
  if key_mask is not None:
    terms = terms.masked_fill(~key_mask, 0.0)
  return terms.sum(-1)


def _masked_mean(values, weights):
  weights = weights.float().expand_as(values)
  return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _split(x, r):
  b, length, h = x.shape
  return x.view(b, length, r, h // r)  # [B, L, R, d_R]


def token_relation_kl(s, t, mask):
  """x: [B, L, R, d]; A[b, r, i, j] over keys j (padding keys excluded); mean over real i."""

  def scores(x):
    x = x.permute(0, 2, 1, 3)  # [B, R, L, d]
    return (x @ x.transpose(-1, -2)).float() / math.sqrt(x.shape[-1])

  kl = _row_kl(scores(t), scores(s), mask[:, None, None, :])  # [B, R, L]
  return _masked_mean(kl, mask[:, None, :])


def sample_relation_kl(s, t, mask):
  """S[i, r, b, c] over samples c real at position i; mean over (i, r, b) with b real at i."""

  def scores(x):
    x = x.permute(1, 2, 0, 3)  # [L, R, B, d]
    return (x @ x.transpose(-1, -2)).float() / math.sqrt(x.shape[-1])

  mask_t = mask.T  # [L, B]
  kl = _row_kl(scores(t), scores(s), mask_t[:, None, None, :])  # [L, R, B]
  return _masked_mean(kl, mask_t[:, None, :])


def relation_loss(student_qkv, teacher_qkv, attention_mask, num_relation_heads, beta=0.0):
  """``(1 - beta) * sum_{Q,K,V} token KL + beta * sum_{Q,K,V} sample KL`` (kdjax reduction)."""
  mask = attention_mask.bool()
  token = sample = 0.0
  for s, t in zip(student_qkv, teacher_qkv):
    s, t = _split(s, num_relation_heads), _split(t, num_relation_heads)
    if beta != 1.0:
      token = token + token_relation_kl(s, t, mask)
    if beta != 0.0:
      sample = sample + sample_relation_kl(s, t, mask)
  return (1.0 - beta) * token + beta * sample


def bert(dims, vocab, pooler=False):
  import transformers

  layers, hidden, heads, ffn = dims
  cfg = transformers.BertConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=ffn,
  )
  return transformers.BertModel(cfg, add_pooling_layer=pooler)


def grab_qkv(model, layer, store, tag):
  att = model.encoder.layer[layer].attention.self
  for n in ("query", "key", "value"):
    getattr(att, n).register_forward_hook(lambda _m, _i, out, n=n: store.__setitem__((tag, n), out))


def main(argv=None):
  args = common.child_args(argv)
  threads = common.threads_from_env()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  s = common.shape(args.shape)
  teacher = bert(s["teacher"], s["vocab"]).eval()
  teacher.encoder.layer = teacher.encoder.layer[: s["teacher_layer"] + 1]  # stop early
  for p in teacher.parameters():
    p.requires_grad_(False)
  student = bert(s["student"], s["vocab"]).train()
  opt = torch.optim.AdamW(student.parameters(), lr=common.LEARNING_RATE, weight_decay=0.01)
  qkv = {}
  grab_qkv(teacher, s["teacher_layer"], qkv, "t")
  grab_qkv(student, s["student_layer"], qkv, "s")
  b = {k: torch.from_numpy(v).long() for k, v in common.batch(s).items()}
  beta = common.SAMPLE_BETA if args.sample_relation else 0.0
  names = ("query", "key", "value")
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

  def step():
    with autocast:
      with torch.no_grad():
        teacher(b["input_ids"], attention_mask=b["attention_mask"])
      student(b["input_ids"], attention_mask=b["attention_mask"])
      loss = relation_loss(
        [qkv[("s", n)] for n in names],
        [qkv[("t", n)] for n in names],
        b["attention_mask"],
        s["relation_heads"],
        beta,
      )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return float(loss.detach())

  warmup_s, times, loss = common.time_steps(step, args.steps, args.warmup)
  common.emit(
    dict(
      impl="torch",
      threads=torch.get_num_threads(),
      attn_implementation=student.config._attn_implementation,
      step_times_s=times,
      warmup_s=warmup_s,
      loss=loss,
    )
  )


if __name__ == "__main__":
  main()
