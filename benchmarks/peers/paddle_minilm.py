"""Peer: MiniLMv2 (+ PP-MiniLM's sample relation) with PaddleNLP's own distillation utilities.

  python benchmarks/peers/paddle_minilm.py --shape=minilm-tiny [--dtype=bfloat16] [--sample_relation]

Written as PaddleNLP's ``examples/model_compression/minilmv2/general_distill.py`` and
``pp-minilm/general_distill/general_distill.py`` use its public API
(``paddlenlp.transformers.distill_utils``): ``to_distill(model, return_qkv=True,
layer_index=...)`` makes the encoder expose the distilled layer's Q/K/V (``model.outputs.q``...,
``[B, heads, L, d]``), the loss is ``calc_minilm_loss`` (token relation) or
``calc_multi_relation_loss(alpha=0, beta=0.5)`` (+ sample relation) with ``KLDivLoss("sum")``
summed over Q/K/V and divided by ``R * L * B``, and the additive mask is ``-1e9`` on padding keys
(MiniLMv2's): PaddleNLP's reduction, which averages padding rows in (kdjax's default excludes
them: same cost, slightly different value). Teacher under ``no_grad``, student in train mode,
AdamW (weight decay 0.01) with ``ClipGradByGlobalNorm(1.0)``.

The teacher's encoder is cut after ``teacher_layer`` (``encoder.layers`` sliced), as the PyTorch
peer and kdjax stop early; PaddleNLP's scripts run the whole teacher, which for the 24-layer
teacher at index 19 costs 4 more layers. ``--dtype=bfloat16``: ``paddle.amp.auto_cast(
dtype="bfloat16")`` (O1) around the forward passes and the loss; paddle 3.3.1's dygraph AMP
does nothing on the CPU place (a Linear's output stays float32), so then the result line says
``unavailable`` rather than timing float32 under a bf16 label. Prints one ``PEER_RESULT {json}`` line.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def main(argv=None):
  args = common.child_args(argv)
  import paddle
  import paddlenlp
  from paddlenlp.transformers import BertConfig, BertModel
  from paddlenlp.transformers.distill_utils import (
    calc_minilm_loss,
    calc_multi_relation_loss,
    to_distill,
  )

  paddle.set_device("cpu")
  paddle.seed(0)
  s = common.shape(args.shape)

  def bert(dims):
    layers, hidden, heads, ffn = dims
    return BertModel(
      BertConfig(
        vocab_size=s["vocab"],
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
      )
    )

  teacher = bert(s["teacher"])
  teacher.encoder.layers = teacher.encoder.layers[: s["teacher_layer"] + 1]  # stop early
  teacher.eval()
  student = bert(s["student"])
  student.train()
  teacher = to_distill(teacher, return_qkv=True, layer_index=s["teacher_layer"])
  student = to_distill(student, return_qkv=True, layer_index=s["student_layer"])
  opt = paddle.optimizer.AdamW(
    learning_rate=common.LEARNING_RATE,
    parameters=student.parameters(),
    weight_decay=0.01,
    grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
  )
  kl = paddle.nn.KLDivLoss(reduction="sum")
  b = {k: paddle.to_tensor(v.astype("int64")) for k, v in common.batch(s).items()}
  # MiniLMv2 general_distill.py: padding keys -1e9, shape [B, 1, 1, L]
  attn_mask = ((1.0 - b["attention_mask"].astype("float32")) * -1e9).unsqueeze([1, 2])
  r, norm = s["relation_heads"], s["relation_heads"] * s["seq"] * s["batch"]
  beta = common.SAMPLE_BETA if args.sample_relation else 0.0
  bf16 = args.dtype == "bfloat16"

  def relation(q_s, q_t):
    if beta:
      return calc_multi_relation_loss(kl, q_s, q_t, attn_mask, r, alpha=0.0, beta=beta)
    return calc_minilm_loss(kl, q_s, q_t, attn_mask, r)

  def forward():
    with paddle.no_grad():
      teacher(b["input_ids"], b["token_type_ids"], attention_mask=b["attention_mask"])
    t_qkv = [teacher.outputs.q, teacher.outputs.k, teacher.outputs.v]
    student(b["input_ids"], b["token_type_ids"], attention_mask=b["attention_mask"])
    s_qkv = [student.outputs.q, student.outputs.k, student.outputs.v]
    return sum(relation(x_s, x_t) for x_s, x_t in zip(s_qkv, t_qkv)) / norm

  def step():
    if bf16:
      with paddle.amp.auto_cast(dtype="bfloat16", level="O1"):
        loss = forward()
    else:
      loss = forward()
    loss.backward()
    opt.step()
    opt.clear_grad()
    return float(loss.astype("float32"))

  record = dict(
    impl="paddle",
    threads=common.threads_from_env(),
    paddle=paddle.__version__,
    paddlenlp=paddlenlp.__version__,
    api="paddlenlp.transformers.distill_utils",
  )
  if bf16:
    with paddle.amp.auto_cast(dtype="bfloat16", level="O1"):
      probe = paddle.nn.Linear(8, 8)(paddle.ones([2, 8])).dtype
    if probe != paddle.bfloat16:  # dygraph AMP skips the CPU place: nothing would run in bf16
      common.emit(
        dict(
          record,
          unavailable=f"paddle.amp.auto_cast(bfloat16) leaves a Linear's "
          f"output {probe} on CPU (paddle {paddle.__version__})",
        )
      )
      return
  try:
    warmup_s, times, loss = common.time_steps(step, args.steps, args.warmup)
  except Exception as e:
    if not bf16:
      raise
    common.emit(
      dict(record, unavailable=f"bfloat16 auto_cast failed: {type(e).__name__}: {e}"[:300])
    )
    return
  common.emit(dict(record, step_times_s=times, warmup_s=warmup_s, loss=loss))


if __name__ == "__main__":
  main()
