"""Flax NNX BERT / RoBERTa encoder that exposes its attention internals.

Layout and numerics follow Hugging Face ``BertModel`` / ``RobertaModel``
(post-LayerNorm, absolute positions, the feed-forward activation named by ``hidden_act``
with HF's meaning: ``ACTIVATIONS``, e.g. exact-erf "gelu", "gelu_new", "relu"; RoBERTa
numbers positions from ``pad_token_id + 1`` and has a single token type). A forward pass returns a
:class:`BertOutput` pytree. Callers choose which layers to *capture*
(Q/K/V before the head split, pre-softmax scores, probabilities, the layer's
hidden state) and the deepest layer to *run* (``stop_at_layer``), so a frozen
teacher only computes what a loss needs.

Dropout takes an explicit ``dropout_rng`` (no RNG state lives in the modules), so
the model is a pure function of (params, inputs, rng) once split with ``nnx.split``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.kernels import cpu_matmul
from kdjax.models.config import BertConfig

Array = jax.Array


# --------------------------------------------------------------------------- outputs
@flax.struct.dataclass
class LayerInternals:
  """What one captured layer exposes. Shapes: B batch, L length, N heads, A the attention
  width ``N * head_dim`` (``config.attention_width``; = hidden unless ``attention_head_size``
  is set, e.g. after width pruning)."""

  hidden: Array  # [B, L, hidden] output of the layer
  q: Array  # [B, L, A] query projection before the head split
  k: Array  # [B, L, A]
  v: Array  # [B, L, A]
  scores: Array  # [B, N, L, L] q k^T / sqrt(d_head) + additive mask (float32)
  probs: Array  # [B, N, L, L] softmax(scores) (float32, before dropout)


@flax.struct.dataclass
class BertOutput:
  """Structured forward result.

  ``hidden_states`` holds the embedding output followed by the output of every
  layer that ran; ``last_hidden_state`` is the output of the deepest layer that
  ran. ``pooler_output`` and ``logits`` are None when the model has no such head
  or stopped before the last layer.
  """

  last_hidden_state: Array
  embedding_output: Array
  hidden_states: tuple
  layers: dict
  pooler_output: Array | None = None
  logits: Array | None = None

  @property
  def attentions(self) -> tuple:
    return tuple(self.layers[i].probs for i in sorted(self.layers))


# --------------------------------------------------------------------------- helpers
def _compute_dtype(config: BertConfig):
  return jnp.dtype(config.dtype)


def _gelu_exact(x):
  """``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``, evaluated in float32, returned in x's dtype.

  The formula of HF's ``GELUActivation`` (torch's erf GELU). ``jax.nn.gelu(approximate=False)``
  computes the same function through ``erfc``, which XLA CPU expands into a slower polynomial
  with two branches (15.3 ms against 8.9 ms for a bf16 ``[4096, 3072]`` feed-forward activation
  on a 2-core Xeon; the step profile of ``benchmarks/peers`` TinyBERT rows). In float32 both
  are within 1.1e-6 (absolute) of a float64 reference over [-12, 12]; ``1 + erf`` loses
  relative precision only in the far negative tail, where GELU itself is < 3e-6.

  Exports (traced inside ``cpu_matmul.portable``) keep ``jax.nn.gelu``: jax serializes
  ``lax.erf`` as a StableHLO composite that TensorFlow's ``XlaCallModule`` cannot read."""
  if cpu_matmul.is_portable():
    return jax.nn.gelu(x, approximate=False)
  x32 = x.astype(jnp.float32)
  return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * (2.0**-0.5)))).astype(x.dtype)


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


# Hugging Face ``hidden_act`` names (transformers.activations.ACT2FN) -> the same function.
ACTIVATIONS = {
  "gelu": _gelu_exact,  # exact (erf), as BERT
  "gelu_python": _gelu_exact,
  "gelu_new": _gelu_tanh,  # tanh approximation (GPT-2 / "gelu_new")
  "gelu_pytorch_tanh": _gelu_tanh,
  "gelu_python_tanh": _gelu_tanh,
  "gelu_fast": _gelu_tanh,
  "gelu_accurate": _gelu_tanh,
  "gelu_10": lambda x: jnp.clip(_gelu_exact(x), -10.0, 10.0),
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "relu": jax.nn.relu,  # PP-MiniLM
  "relu6": jax.nn.relu6,
  "relu2": lambda x: jnp.square(jax.nn.relu(x)),
  "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),  # torch.nn.LeakyReLU()
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
  "hardswish": jax.nn.hard_swish,
  "sigmoid": jax.nn.sigmoid,
  "tanh": jnp.tanh,
  "linear": lambda x: x,
}


def _activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
      f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}"
    ) from None


def _fmix32(x: Array) -> Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def keep_mask(rng: Array, keep_prob: float, shape: tuple[int, ...]) -> tuple[Array, float]:
  """``(keep, p)``: a bool mask of ``shape`` whose entries are independently True with
  probability ``p``, the keep probability rounded to a multiple of 2^-32 (``|p - keep_prob|
  <= 2^-33``).

  The bits are a keyed counter hash: two 32-bit words ``k0, k1`` drawn from ``rng`` (Threefry,
  as every kdjax key), then for the flat index ``i`` of each entry
  ``h = fmix32(fmix32(i * 0x9E3779B9 + k0) ^ k1)`` (MurmurHash3's finaliser, a bijection with
  full avalanche) and ``keep = h < round(p * 2^32)``. It is computed from an iota inside the
  consumer's elementwise fusion, so no random-bits tensor is ever stored: a ``[32, 12, 128,
  128]`` attention dropout takes 2.1 ms on 2 cores against 39 ms with Threefry bits (the random
  bits were ~200 ms of a 4 s TinyBERT step). This is not a cryptographic generator and need not
  be: dropout needs uniform, independent-looking decisions that are a deterministic function of
  the key (exact resume), and the tests check the kept fraction, neighbours, and different keys
  against independent Bernoulli draws. torch draws its own masks (Philox), so no peer's masks
  were matched before either."""
  t = round(keep_prob * 2**32)
  n = math.prod(shape)
  if n > 2**32:
    raise ValueError(f"dropout over {n} entries: at most 2^32 per call (the counter is 32-bit)")
  if t >= 2**32:
    return jnp.ones(shape, jnp.bool_), 1.0
  k = jax.random.bits(rng, (2,), jnp.uint32)
  strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
  i = jnp.zeros(shape, jnp.uint32)
  for d, st in enumerate(strides):
    i = i + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(st % 2**32)
  h = _fmix32(_fmix32(i * jnp.uint32(0x9E3779B9) + k[0]) ^ k[1])
  return h < jnp.uint32(t), t / 2**32


def dropout(x: Array, rate: float, rng: Array | None, deterministic: bool) -> Array:
  """Inverted dropout with an explicit key; identity when deterministic or rate 0.

  Kept entries are scaled by ``1 / p`` for the exact keep probability ``p`` of
  :func:`keep_mask`, so ``E[dropout(x)] = x``."""
  if deterministic or rate == 0.0:
    return x
  if rng is None:
    raise ValueError("dropout_rng is required when deterministic=False")
  keep, p = keep_mask(rng, 1.0 - rate, x.shape)
  if p == 0.0:
    return jnp.zeros_like(x)
  scaled = (x.astype(jnp.float32) * (1.0 / p)).astype(x.dtype)  # the scale not rounded to bf16
  return jnp.where(keep, scaled, jnp.zeros_like(x))


def _fold(rng: Array | None, i: int) -> Array | None:
  return None if rng is None else jax.random.fold_in(rng, i)


def _linear(cfg: BertConfig, n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    n_in,
    n_out,
    dtype=_compute_dtype(cfg),
    param_dtype=jnp.float32,
    kernel_init=jax.nn.initializers.normal(cfg.initializer_range),
    bias_init=jax.nn.initializers.zeros,
    # bfloat16 on CPU: oneDNN (AMX / AVX512-BF16) where XLA has no bf16 kernels (see there).
    dot_general=cpu_matmul.dot_general,
    rngs=rngs,
  )


# activations oneDNN can apply inside a bfloat16 dense call on CPU (kdjax.kernels.cpu_matmul)
_FUSED = {_gelu_exact: "gelu_erf", _gelu_tanh: "gelu_tanh", jax.nn.relu: "relu"}


def _dense(layer: nnx.Linear, x: Array, act=None) -> Array:
  """``act(layer(x))`` (``act`` None: ``layer(x)``). On CPU with the oneDNN kernel
  (``cpu_matmul.dense_enabled``: bfloat16, and float32 on AVX-512) one call computes the
  product, the bias (float32) and, where oneDNN has it, the activation; elsewhere the
  ``nnx.Linear`` and ``act`` as written."""
  if not isinstance(layer, nnx.Linear):  # a wrapper (e.g. kdjax.compress's observers, quantizers)
    y = layer(x)
    return y if act is None else act(y)
  dt = jnp.dtype(layer.dtype or jnp.float32)
  if (
    dt in (jnp.bfloat16, jnp.float32)
    and layer.bias is not None
    and cpu_matmul.concrete(x)
    and cpu_matmul.dense_enabled(dt)
  ):
    kernel = layer.kernel[...].astype(dt)
    # oneDNN's activations are approximations that are fine in bfloat16; float32 keeps XLA's
    fused = _FUSED.get(act) if dt == jnp.bfloat16 else None
    return cpu_matmul.dense(x.astype(dt), kernel, layer.bias[...], activation=fused, act_fn=act)
  y = layer(x)
  return y if act is None else act(y)


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 (output cast back to the compute dtype)."""

  def __init__(self, n: int, eps: float, out_dtype, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(
      n, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs
    )
    self.out_dtype = out_dtype

  def __call__(self, x: Array) -> Array:
    return self.norm(x.astype(jnp.float32)).astype(self.out_dtype)


# --------------------------------------------------------------------------- modules
class Embeddings(nnx.Module):
  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.normal(cfg.initializer_range)
    dt = _compute_dtype(cfg)
    # Lookups stay float32 (the LayerNorm casts to the compute dtype): a bfloat16 lookup
    # makes the embedding gradient a bfloat16 scatter-add, which XLA:GPU runs with
    # compare-and-swap loops (a 20x slower backward pass on H100).
    f32 = jnp.float32
    self.word_embeddings = nnx.Embed(
      cfg.vocab_size, cfg.hidden_size, dtype=f32, embedding_init=init, rngs=rngs
    )
    self.position_embeddings = nnx.Embed(
      cfg.max_position_embeddings, cfg.hidden_size, dtype=f32, embedding_init=init, rngs=rngs
    )
    self.token_type_embeddings = nnx.Embed(
      max(cfg.type_vocab_size, 1), cfg.hidden_size, dtype=f32, embedding_init=init, rngs=rngs
    )
    self.layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt, rngs=rngs)
    self.cfg = cfg

  def position_ids(self, input_ids: Array) -> Array:
    cfg = self.cfg
    if cfg.model_type == "roberta":
      not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
      return jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)

  def __call__(self, input_ids, token_type_ids, position_ids, rng, deterministic):
    if position_ids is None:
      position_ids = self.position_ids(input_ids)
    if input_ids.shape[1] + self.cfg.position_offset > self.cfg.max_position_embeddings:
      raise ValueError(
        f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
        f"{self.cfg.max_position_embeddings}"
      )
    x = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(position_ids)
      + self.token_type_embeddings(token_type_ids)
    )
    x = self.layer_norm(x)
    return dropout(x, self.cfg.hidden_dropout_prob, rng, deterministic)


class TransformerLayer(nnx.Module):
  """One post-LN encoder layer (HF ``BertLayer``)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    h, a, dt = cfg.hidden_size, cfg.attention_width, _compute_dtype(cfg)
    self.query = _linear(cfg, h, a, rngs)
    self.key = _linear(cfg, h, a, rngs)
    self.value = _linear(cfg, h, a, rngs)
    self.attention_output = _linear(cfg, a, h, rngs)
    self.attention_layer_norm = LayerNorm(h, cfg.layer_norm_eps, dt, rngs=rngs)
    self.intermediate = _linear(cfg, h, cfg.intermediate_size, rngs)
    self.output = _linear(cfg, cfg.intermediate_size, h, rngs)
    self.output_layer_norm = LayerNorm(h, cfg.layer_norm_eps, dt, rngs=rngs)
    self.cfg = cfg

  def __call__(
    self, x_BxLxH, mask_bias_Bx1x1xL, rng, deterministic, head_mask_N=None, ffn_mask_F=None
  ) -> LayerInternals:
    """``head_mask_N`` [N] multiplies each head's context before the output projection and
    ``ffn_mask_F`` [intermediate] the activations of the feed-forward neurons (DynaBERT's
    masks: 0 removes a head / neuron exactly; None, the default, costs nothing)."""
    cfg = self.cfg
    b, l, _ = x_BxLxH.shape
    n, d = cfg.num_attention_heads, cfg.head_dim
    q, k, v = (_dense(f, x_BxLxH) for f in (self.query, self.key, self.value))
    split = lambda t: t.reshape(b, l, n, d)
    # cpu_matmul.einsum: jnp.einsum, with bfloat16 on CPU through oneDNN (reads the heads in
    # place; XLA CPU runs these batched bf16 dots at ~30 GFLOP/s).
    scores = cpu_matmul.einsum(
      "bqnd,bknd->bnqk", split(q), split(k), preferred_element_type=jnp.float32
    ) * (d**-0.5)
    scores_BxNxLxL = scores.astype(jnp.float32) + mask_bias_Bx1x1xL
    probs = jax.nn.softmax(scores_BxNxLxL, axis=-1)
    p = dropout(probs, cfg.attention_probs_dropout_prob, _fold(rng, 0), deterministic)
    ctx = cpu_matmul.einsum("bnqk,bknd->bqnd", p.astype(v.dtype), split(v))
    if head_mask_N is not None:
      ctx = ctx * jnp.asarray(head_mask_N).astype(ctx.dtype)[:, None]
    ctx = ctx.reshape(b, l, n * d)
    a = _dense(self.attention_output, ctx)
    a = dropout(a, cfg.hidden_dropout_prob, _fold(rng, 1), deterministic)
    a = self.attention_layer_norm(a + x_BxLxH)
    act = _dense(self.intermediate, a, _activation(cfg.hidden_act))
    if ffn_mask_F is not None:
      act = act * jnp.asarray(ffn_mask_F).astype(act.dtype)
    f = _dense(self.output, act)
    f = dropout(f, cfg.hidden_dropout_prob, _fold(rng, 2), deterministic)
    out = self.output_layer_norm(f + a)
    return LayerInternals(hidden=out, q=q, k=k, v=v, scores=scores_BxNxLxL, probs=probs)


LayerSpec = None | str | int | Iterable[int]


def _resolve_layers(spec: LayerSpec, n_layers: int, what: str) -> tuple[int, ...]:
  if spec is None:
    return ()
  if isinstance(spec, str):
    if spec != "all":
      raise ValueError(f"{what} must be 'all', an int or a list of ints, got {spec!r}")
    return tuple(range(n_layers))
  idx = (spec,) if isinstance(spec, int) else tuple(spec)
  for i in idx:
    if not -n_layers <= i < n_layers:
      raise ValueError(
        f"{what}: layer index {i} out of range for a model with "
        f"{n_layers} layers (valid: 0..{n_layers - 1}, or negative from the end)"
      )
  return tuple(sorted({i % n_layers for i in idx}))


class BertModel(nnx.Module):
  """Embeddings + encoder layers (+ pooler). HF ``BertModel`` / ``RobertaModel``."""

  def __init__(
    self, config: BertConfig, *, add_pooling_layer: bool = True, rngs: nnx.Rngs | None = None
  ):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layer = nnx.List(
      [TransformerLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
    )
    self.pooler = (
      _linear(config, config.hidden_size, config.hidden_size, rngs) if add_pooling_layer else None
    )

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    capture_layers: LayerSpec = None,
    stop_at_layer: int | None = None,
    deterministic: bool = True,
    dropout_rng: Array | None = None,
    head_mask=None,
    ffn_mask=None,
  ) -> BertOutput:
    """Runs the encoder.

    Args:
      input_ids: int [B, L].
      attention_mask: [B, L], 1 for real tokens (default all ones).
      token_type_ids: int [B, L] (default zeros).
      position_ids: optional int [B, L] (default: BERT 0..L-1, RoBERTa from the pad index).
      capture_layers: 'all', an index or indices (0-based, negative from the end) whose
        internals go to ``out.layers``.
      stop_at_layer: deepest layer to run (0-based); layers after it are not computed.
      deterministic: disables dropout.
      dropout_rng: key for dropout when ``deterministic=False``.
      head_mask: optional [num_layers, num_heads]: multiplies each head's context before the
        attention output projection (DynaBERT / ``kdjax.compress.prune``; 0 drops a head).
      ffn_mask: optional [num_layers, intermediate_size]: multiplies the feed-forward
        activations (0 drops a neuron). Both default to None: the plain forward.
    """
    cfg = self.config
    n_layers = cfg.num_hidden_layers
    last = n_layers - 1
    if stop_at_layer is not None:
      (last,) = _resolve_layers(stop_at_layer, n_layers, "stop_at_layer")
    capture = _resolve_layers(capture_layers, n_layers, "capture_layers")
    if capture and max(capture) > last:
      raise ValueError(f"capture_layers {capture} asks for a layer after stop_at_layer={last}")
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if token_type_ids is None:
      token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
    mask_bias = jnp.where(
      jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
    ).astype(jnp.float32)

    x = self.embeddings(
      input_ids, token_type_ids, position_ids, _fold(dropout_rng, 0), deterministic
    )
    hidden_states, layers = [x], {}
    for i in range(last + 1):
      internals = self.layer[i](
        x,
        mask_bias,
        _fold(dropout_rng, i + 1),
        deterministic,
        None if head_mask is None else head_mask[i],
        None if ffn_mask is None else ffn_mask[i],
      )
      x = internals.hidden
      hidden_states.append(x)
      if i in capture:
        layers[i] = internals
    pooled = None
    if self.pooler is not None and last == n_layers - 1:
      pooled = jnp.tanh(self.pooler(x[:, 0]))
    return BertOutput(
      last_hidden_state=x,
      embedding_output=hidden_states[0],
      hidden_states=tuple(hidden_states),
      layers=layers,
      pooler_output=pooled,
    )


class ClassificationHead(nnx.Module):
  """BERT: dropout(pooled) -> classifier. RoBERTa: dropout -> dense -> tanh -> dropout -> out_proj."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    if cfg.model_type == "roberta":
      self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    else:
      self.dense = None
    self.out_proj = _linear(cfg, cfg.hidden_size, cfg.num_labels, rngs)

  def __call__(self, out: BertOutput, rng, deterministic) -> Array:
    cfg = self.cfg
    rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
    if self.dense is None:
      x = dropout(out.pooler_output, rate, _fold(rng, 0), deterministic)
    else:
      x = dropout(out.last_hidden_state[:, 0], rate, _fold(rng, 0), deterministic)
      x = jnp.tanh(self.dense(x))
      x = dropout(x, rate, _fold(rng, 1), deterministic)
    return self.out_proj(x).astype(jnp.float32)


class MLMHead(nnx.Module):
  """transform (dense -> act -> LayerNorm) then the decoder tied to the word embeddings."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, _compute_dtype(cfg), rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

  def __call__(self, x, word_embeddings_VxH) -> Array:
    act = "gelu" if self.cfg.model_type == "roberta" else self.cfg.hidden_act
    x = self.layer_norm(_activation(act)(self.dense(x)))
    logits = jnp.einsum(
      "blh,vh->blv", x, word_embeddings_VxH.astype(x.dtype), preferred_element_type=jnp.float32
    )
    return logits + self.bias[...]


def _head_forward(model, input_ids, attention_mask, token_type_ids, position_ids, kw):
  """Shared by head models: run the encoder, report whether the last layer ran."""
  out = model.bert(input_ids, attention_mask, token_type_ids, position_ids, **kw)
  ran_all = len(out.hidden_states) == model.config.num_hidden_layers + 1
  return out, ran_all


class BertForSequenceClassification(nnx.Module):
  """Encoder + classification head. ``out.logits``: [B, num_labels] float32."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.bert = BertModel(config, add_pooling_layer=config.model_type == "bert", rngs=rngs)
    self.classifier = ClassificationHead(config, rngs=rngs)

  def __call__(
    self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kw
  ) -> BertOutput:
    out, ran_all = _head_forward(self, input_ids, attention_mask, token_type_ids, position_ids, kw)
    if not ran_all:
      return out
    rng = _fold(kw.get("dropout_rng"), 10_000)
    return out.replace(logits=self.classifier(out, rng, kw.get("deterministic", True)))


class BertForMaskedLM(nnx.Module):
  """Encoder (no pooler) + MLM head. ``out.logits``: [B, L, vocab] float32."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.bert = BertModel(config, add_pooling_layer=False, rngs=rngs)
    self.mlm = MLMHead(config, rngs=rngs)

  def __call__(
    self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kw
  ) -> BertOutput:
    out, ran_all = _head_forward(self, input_ids, attention_mask, token_type_ids, position_ids, kw)
    if not ran_all:
      return out
    word = self.bert.embeddings.word_embeddings.embedding[...]
    return out.replace(logits=self.mlm(out.last_hidden_state, word))


HEADS = {
  "none": BertModel,
  "classification": BertForSequenceClassification,
  "mlm": BertForMaskedLM,
}


def create_model(
  config: BertConfig, head: str = "none", seed: int = 0, add_pooling_layer: bool = True
) -> nnx.Module:
  """A randomly initialised model (HF initialisation: N(0, initializer_range))."""
  if head not in HEADS:
    raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
  rngs = nnx.Rngs(seed)
  if head == "none":
    return BertModel(config, add_pooling_layer=add_pooling_layer, rngs=rngs)
  return HEADS[head](config, rngs=rngs)


def head_of(model: nnx.Module) -> str:
  for name, cls in HEADS.items():
    if type(model) is cls:
      return name
  raise TypeError(f"not a kdjax BERT model: {type(model).__name__}")


def encoder_of(model: nnx.Module) -> BertModel:
  return model if isinstance(model, BertModel) else model.bert


def layer_flops_per_token(cfg: BertConfig, seq_len: int) -> float:
  """Forward FLOPs per token of one encoder layer (2 * MACs; matmuls only)."""
  h, a, f = cfg.hidden_size, cfg.attention_width, cfg.intermediate_size
  return 2.0 * (4 * h * a + 2 * h * f) + 2.0 * 2 * seq_len * a


# Logical axes of each parameter kind (T5X-style vocabulary: batch, length, embed,
# heads, mlp, vocab); kdjax/trainer/sharding.py maps them to mesh axes from the config.
_KERNEL_AXES = {
  "query": ("embed", "heads"),
  "key": ("embed", "heads"),
  "value": ("embed", "heads"),
  "attention_output": ("heads", "embed"),
  "intermediate": ("embed", "mlp"),
  "output": ("mlp", "embed"),
}
_BIAS_AXES = {"query": ("heads",), "key": ("heads",), "value": ("heads",), "intermediate": ("mlp",)}


def param_logical_axes(params: dict) -> dict:
  """Logical axis names for every leaf of a kdjax params dict (same structure)."""

  def axes(path, leaf):
    names = [getattr(p, "key", str(p)) for p in path]
    owner, kind = (names[-2] if len(names) > 1 else ""), names[-1]
    if names[-3:-1] == ["embeddings", "word_embeddings"] or kind == "embedding":
      return ("vocab", "embed") if owner == "word_embeddings" else (None, "embed")
    if kind == "kernel":
      return _KERNEL_AXES.get(owner, ("embed", None))
    if kind == "bias" and owner in _BIAS_AXES:
      return _BIAS_AXES[owner]
    if owner == "mlm" and kind == "bias":
      return ("vocab",)
    return (None,) * leaf.ndim

  return jax.tree_util.tree_map_with_path(axes, params)
