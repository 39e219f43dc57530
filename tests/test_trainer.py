"""In-process trainer tests on one CPU device with the toy MLP recipe (tests/helpers_trainer)."""

from __future__ import annotations

import glob
import os
import shutil

import jax
import numpy as np
import pytest
from helpers_trainer import ToyRecipe, load_params, read_metrics, toy_config
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from kdjax.trainer import (
  Trainer,
  decay_mask,
  default_trainer_config,
  logical_to_mesh,
  make_schedule,
  peak_flops_per_device,
)
from kdjax.trainer.sharding import DEFAULT_RULES, mesh_shape


def _train(workdir, **overrides):
  recipe_kw = overrides.pop("recipe", {})
  config = toy_config(**overrides)
  recipe = ToyRecipe(batch_size=config.batch_size, **recipe_kw)
  trainer = Trainer(config, recipe, workdir)
  return trainer, recipe, trainer.train()


def _losses(workdir):
  by_step = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
  return [by_step[s] for s in sorted(by_step)]


def test_loss_decreases(tmp_path):
  _, _, state = _train(
    tmp_path, max_steps=30, logging_steps=1, warmup_steps=2, recipe={"dropout": 0.0}
  )
  losses = _losses(tmp_path)
  assert len(losses) == 30 and int(state["step"]) == 30
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def _one_update(accum, batch_size=8, steps=2):
  config = toy_config(batch_size=batch_size, grad_accum_steps=accum, warmup_steps=0)
  recipe = ToyRecipe(batch_size=batch_size, dropout=0.0)
  trainer = Trainer(config, recipe, "/nonexistent-unused")
  state, frozen = trainer.init_state(), trainer.init_frozen()
  data = recipe.train_data(0, 1)
  for _ in range(steps):
    state, metrics = trainer.step_fn(state, frozen, trainer.global_batch(next(data)))
  return jax.device_get(state["params"]), jax.device_get(metrics)


def test_grad_accumulation_matches_full_batch():
  with jax.default_matmul_precision("highest"):  # no TF32 when this runs on a GPU
    p1, m1 = _one_update(1)
    p2, m2 = _one_update(2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), p1, p2)
  for key in ("loss", "mse", "grad_norm", "learning_rate"):
    np.testing.assert_allclose(m1[key], m2[key], rtol=1e-6)
  assert set(m1) >= {"loss", "mse", "pred_abs", "grad_norm", "learning_rate"}


def test_indivisible_accumulation_is_a_clear_error():
  with pytest.raises(ValueError, match=r"batch_size=8.*grad_accum_steps=3"):
    Trainer(toy_config(grad_accum_steps=3), ToyRecipe(batch_size=8), "/nonexistent-unused")


def test_dropout_key_depends_on_step_only():
  """Same step -> same key, whatever happened before; the key changes with the step."""
  config = toy_config(warmup_steps=0)
  recipe = ToyRecipe(batch_size=8, dropout=0.5)
  trainer = Trainer(config, recipe, "/nonexistent-unused")
  frozen = trainer.init_frozen()
  batch = trainer.global_batch(next(recipe.train_data(0, 1)))
  _, m_a = trainer.step_fn(trainer.init_state(), frozen, batch)
  _, m_b = trainer.step_fn(trainer.init_state(), frozen, batch)
  assert float(m_a["loss"]) == float(m_b["loss"])
  s = trainer.init_state()
  s["step"] = jax.device_put(np.int32(5), s["step"].sharding)
  _, m_c = trainer.step_fn(s, frozen, batch)
  assert float(m_c["loss"]) != float(m_a["loss"])


def test_resume_in_process_and_tmp_checkpoint_ignored(tmp_path):
  kw = dict(max_steps=8, save_steps=2, keep_checkpoints=5, recipe={"dropout": 0.2})
  full = tmp_path / "full"
  _train(full, **kw)
  ckpts = full / "checkpoints"
  assert sorted(os.listdir(ckpts)) == ["2", "4", "6", "8"]

  # The same run, "killed" while saving step 6: only 2 and 4 are committed and step 6 is
  # an orbax tmp dir with part of its files.
  part = tmp_path / "part"
  os.makedirs(part / "checkpoints")
  for step in ("2", "4"):
    shutil.copytree(ckpts / step, part / "checkpoints" / step)
  fake = part / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
  shutil.copytree(ckpts / "6", fake)
  for f in glob.glob(str(fake / "state" / "*")):
    if os.path.isfile(f):
      os.remove(f)
  _, _, state = _train(part, **kw)
  assert int(state["step"]) == 8
  assert [r["step"] for r in read_metrics(part) if "loss" in r] == [5, 6, 7, 8]
  assert not fake.exists()  # cleaned up (cleanup_tmp_directories)
  a, b = load_params(full), load_params(part)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  np.testing.assert_array_equal(_losses(full)[4:], _losses(part))

  # Nothing left to do: returns the restored state and exports again.
  _, recipe, state = _train(part, **kw)
  assert int(state["step"]) == 8 and recipe.exported


def test_logging_eval_and_best(tmp_path):
  _trainer, recipe, _ = _train(
    tmp_path, max_steps=6, logging_steps=2, eval_steps=3, tensorboard=True, save_steps=3
  )
  records = read_metrics(tmp_path)
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval/score" in r]
  assert [r["step"] for r in train] == [2, 4, 6]
  for r in train:
    assert {"loss", "mse", "pred_abs", "grad_norm", "learning_rate"} <= set(r)
  for r in train[1:]:  # the first window only holds the compile step
    assert {"examples_per_sec", "steps_per_sec", "tokens_per_sec"} <= set(r)
    # MFU needs a known peak (not CPU) and the recipe's flops_per_example.
    assert ("mfu" in r) == (jax.devices()[0].platform != "cpu")
  assert [r["step"] for r in evals] == [3, 6] and recipe.evaluated == [3, 6]
  events = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  assert len(events) == 1
  blob = open(events[0], "rb").read()
  for tag in (b"train/loss", b"train/mse", b"train/learning_rate", b"eval/score"):
    assert tag in blob
  best_step = max(evals, key=lambda r: r["eval/score"])["step"]
  assert os.listdir(tmp_path / "best") == [str(best_step)]
  assert os.path.exists(tmp_path / "export" / "params.npz")


class _MinimalRecipe:
  """Only the required methods: no teacher, no hooks, no logical axes."""

  def __init__(self):
    self._toy = ToyRecipe(batch_size=8, dropout=0.0)

  def init_params(self, rng):
    return self._toy.init_params(rng)

  def param_logical_axes(self, params):
    return None

  def loss_fn(self, params, frozen, batch, rng):
    assert frozen is None
    from helpers_trainer import mlp_apply

    loss = jax.numpy.mean(mlp_apply(params, batch["x"]) ** 2)
    return loss, {}

  def train_data(self, process_index, process_count):
    return self._toy.train_data(process_index, process_count)


def test_minimal_recipe(tmp_path):
  trainer = Trainer(toy_config(max_steps=3, save_steps=2), _MinimalRecipe(), tmp_path)
  state = trainer.train()
  assert int(state["step"]) == 3 and trainer.num_params == 8 * 16 + 16 + 16 * 8 + 8
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  assert all(set(r) >= {"loss", "grad_norm"} for r in read_metrics(tmp_path))


def test_schedule_and_decay_mask():
  c = default_trainer_config()
  c.learning_rate, c.max_steps, c.warmup_steps = 1.0, 10, 2
  sched = make_schedule(c)
  np.testing.assert_allclose(
    [float(sched(s)) for s in (0, 1, 2, 6, 10)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6
  )
  c.warmup_steps, c.warmup_proportion = -1, 0.5
  np.testing.assert_allclose(float(make_schedule(c)(5)), 1.0)
  mask = decay_mask({"w": np.zeros((2, 3)), "b": np.zeros(3), "ln": {"scale": np.zeros(3)}})
  assert mask == {"w": True, "b": False, "ln": {"scale": False}}


def test_logical_to_mesh_rules():
  mesh = AbstractMesh((2, 4, 2), ("data", "fsdp", "tensor"))
  rules = DEFAULT_RULES
  assert logical_to_mesh(("embed", "mlp"), rules, (16, 32), mesh) == P("fsdp", "tensor")
  assert logical_to_mesh(("batch", "length"), rules, (16, 5), mesh) == P(("data", "fsdp"))
  assert logical_to_mesh(("embed", "mlp"), rules, (6, 32), mesh) == P(None, "tensor")  # 6 % 4
  assert logical_to_mesh(("batch",), rules, (6,), mesh) == P("data")  # keeps what divides
  assert logical_to_mesh(("embed", "embed"), rules, (8, 8), mesh) == P("fsdp")  # no reuse
  assert logical_to_mesh(None, rules, (8, 8), mesh) == P()
  assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError):
    mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
  assert peak_flops_per_device("TPU v5 lite") == 197e12
  assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert peak_flops_per_device("cpu") is None


def test_tensorboard_purges_steps_past_the_resume_point(tmp_path):
  """A run resumed from step 3 after writing to step 6 tells TensorBoard to drop its old
  events from step 4 on (SessionLog START with that step), so no step appears twice."""
  tf = pytest.importorskip("tensorflow")
  kw = dict(max_steps=6, logging_steps=1, save_steps=3, tensorboard=True)
  _train(tmp_path, **kw)
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  _train(tmp_path, **kw)
  # Both runs' events, in order (two runs in the same second may share one file).
  events = [
    e
    for path in sorted(glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*")))
    for e in tf.compat.v1.train.summary_iterator(path)
  ]
  starts = [
    i
    for i, e in enumerate(events)
    if e.HasField("session_log") and e.session_log.status == e.session_log.START
  ]
  assert [events[i].step for i in starts] == [4]
  steps = [
    e.step
    for e in events[starts[0] :]
    if e.HasField("summary") and any(v.tag == "train/loss" for v in e.summary.value)
  ]
  assert steps == [4, 5, 6]
