"""Peer: TinyBERT-style task distillation with TextBrewer's ``GeneralDistiller``.

  python benchmarks/peers/textbrewer_tinybert.py --shape=tinybert-tiny [--dtype=bfloat16]

As TextBrewer's TinyBERT recipe (its ``examples`` and the ``L4t`` presets): HF
``BertForSequenceClassification`` teacher and student, ``intermediate_matches`` = attention MSE
for student layer i <- teacher layer (i+1)*k - 1 and hidden MSE for the embeddings and every
student layer, each through its own ``linear`` projection student-width -> teacher-width
(TextBrewer adds the projections to the optimizer), logits soft cross-entropy (``kd_loss_type
="ce"``, T = 1, weight 1); AdamW, ``max_grad_norm=1.0``, driven by the public
``distiller.train(optimizer, dataloader, num_steps=...)``. Attention features are HF's
``output_attentions`` (post-softmax probabilities: what TextBrewer gets from a HF model; this
needs the eager attention implementation). ``--dtype=bfloat16`` wraps ``train`` in CPU bf16
autocast (TextBrewer's own ``fp16`` flag is apex-only).

Step times: the dataloader records when each batch is fetched; ``train`` fetches batch n+1 only
after step n (forward, loss, backward, clip, AdamW step) is done, so consecutive fetch times
bracket one step. Prints one ``PEER_RESULT {json}`` line.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def classifier(dims, vocab, num_labels):
  import transformers

  layers, hidden, heads, ffn = dims
  cfg = transformers.BertConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=ffn,
    num_labels=num_labels,
    attn_implementation="eager",
  )
  return transformers.BertForSequenceClassification(cfg)


def matches(n_teacher, n_student, w_student, w_teacher):
  """TinyBERT's uniform map: attention of student layer i <- teacher layer (i+1)k-1 (0-based),
  hidden_states[i] <- hidden_states[i*k] (index 0 = embeddings), one projection each."""
  k = n_teacher // n_student
  att = [
    dict(layer_T=(i + 1) * k - 1, layer_S=i, feature="attention", loss="attention_mse", weight=1)
    for i in range(n_student)
  ]
  hid = [
    dict(
      layer_T=i * k,
      layer_S=i,
      feature="hidden",
      loss="hidden_mse",
      weight=1,
      proj=["linear", w_student, w_teacher, {}],
    )
    for i in range(n_student + 1)
  ]
  return att + hid


def main(argv=None):
  args = common.child_args(argv)
  import textbrewer
  from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

  threads = common.threads_from_env()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  s = common.shape(args.shape)
  teacher = classifier(s["teacher"], s["vocab"], s["num_labels"]).eval()
  student = classifier(s["student"], s["vocab"], s["num_labels"]).train()
  b = {k: torch.from_numpy(v).long() for k, v in common.batch(s).items()}
  model_batch = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

  def adaptor(batch, out):
    return {
      "logits": out.logits,
      "hidden": out.hidden_states,
      "attention": out.attentions,
      "inputs_mask": batch["attention_mask"],
    }

  if args.teacher_only:
    # What GeneralDistiller runs for the teacher each step: the model under no_grad with
    # hidden states and attentions, in bf16 autocast for --dtype=bfloat16.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def forward():
      with torch.no_grad(), autocast:
        return teacher(**model_batch, output_hidden_states=True, output_attentions=True)

    warmup_s, times, out = common.time_steps(forward, args.steps, args.warmup)
    common.emit(
      dict(
        impl="textbrewer",
        threads=torch.get_num_threads(),
        step_times_s=times,
        warmup_s=warmup_s,
        loss=float(out.hidden_states[-1].float().abs().mean()),
        textbrewer=textbrewer.__version__,
      )
    )
    return
  fetched: list[float] = []

  class Batches:
    def __iter__(self):
      while True:
        fetched.append(time.perf_counter())
        yield dict(model_batch)

  total = args.warmup + args.steps + 1  # the last step only closes the previous one's timing
  with tempfile.TemporaryDirectory() as tmp:
    train_config = TrainingConfig(device="cpu", ckpt_steps=10**9, output_dir=tmp, log_dir=None)
    distill_config = DistillationConfig(
      temperature=1.0,
      kd_loss_type="ce",
      kd_loss_weight=1.0,
      hard_label_weight=0.0,
      intermediate_matches=matches(
        s["teacher"][0], s["student"][0], s["student"][1], s["teacher"][1]
      ),
    )
    distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
    losses = []
    train_on_batch = distiller.train_on_batch

    def recording(*a, **kw):  # keeps the last loss for the result line; no extra work
      out = train_on_batch(*a, **kw)
      losses.append(out[0])
      return out

    distiller.train_on_batch = recording
    opt = torch.optim.AdamW(student.parameters(), lr=common.LEARNING_RATE, weight_decay=0.01)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    t0 = time.perf_counter()
    with distiller, autocast:
      distiller.train(
        opt,
        Batches(),
        num_steps=total,
        max_grad_norm=1.0,
        output_hidden_states=True,
        output_attentions=True,
      )
  per_step = [b - a for a, b in itertools.pairwise(fetched)][: total - 1]
  common.emit(
    dict(
      impl="textbrewer",
      threads=torch.get_num_threads(),
      step_times_s=per_step[args.warmup :],
      warmup_s=fetched[args.warmup] - t0 if len(fetched) > args.warmup else None,
      loss=float(losses[-1].detach()),
      textbrewer=textbrewer.__version__,
    )
  )


if __name__ == "__main__":
  main()
