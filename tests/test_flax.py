"""Tests of rdescent.flax: linen and NNX models trained by Regression Descent."""

from __future__ import annotations

import subprocess
import sys

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen
from flax.training import train_state

import rdescent as rd
import rdescent.flax as rdf

NUM_STEPS = 30


def _regression_data(dtype=jnp.float32):
  """y = sin(2x) on 32 points of [-2, 2]: (32, 1) inputs and targets."""
  inputs = jnp.linspace(-2.0, 2.0, 32, dtype=dtype)[:, None]
  return inputs, jnp.sin(2.0 * inputs)


class LinenMLP(linen.Module):
  hidden: int = 16

  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(jnp.tanh(linen.Dense(self.hidden)(x)))


class LinenBatchNormDropout(linen.Module):
  train: bool = True

  @linen.compact
  def __call__(self, x):
    x = linen.Dense(8)(x)
    x = linen.BatchNorm(use_running_average=not self.train)(x)
    x = linen.Dropout(0.5, deterministic=not self.train)(x)
    return linen.Dense(1)(jnp.tanh(x))


class NNXMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, hidden: int = 16, dtype=jnp.float32):
    self.hidden = nnx.Linear(1, hidden, param_dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(hidden, 1, param_dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


class NNXBatchNormDropout(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(1, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.drop(self.norm(self.hidden(x)))))


def _lm_tx(apply_fn):
  return rd.regression_descent(apply_fn, damping=rd.damping.levenberg_marquardt())


def _sum_squares(outputs, targets):
  return 0.5 * float(jnp.sum(jnp.square(outputs - targets)))


# ------------------------------------------------------------------ linen


def test_linen_apply_fn_matches_model_apply():
  inputs, _ = _regression_data()
  model = LinenMLP()
  params = model.init(jax.random.PRNGKey(0), inputs)["params"]
  apply_fn = rdf.linen_apply_fn(model)
  np.testing.assert_array_equal(apply_fn(params, inputs), model.apply({"params": params}, inputs))


def test_linen_train_state_loss_falls_tenfold():
  inputs, targets = _regression_data()
  model = LinenMLP()
  params = model.init(jax.random.PRNGKey(0), inputs)["params"]
  tx = _lm_tx(rdf.linen_apply_fn(model))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  step = jax.jit(lambda state, batch: rdf.apply_gradients(state, batch=batch))

  initial = _sum_squares(model.apply({"params": state.params}, inputs), targets)
  for _ in range(NUM_STEPS):
    state = step(state, (inputs, targets))
  final = _sum_squares(model.apply({"params": state.params}, inputs), targets)

  assert int(state.step) == NUM_STEPS
  assert final <= initial / 10, (initial, final)


def test_apply_gradients_forwards_batch_and_grads():
  """apply_gradients = tx.update(grads, opt_state, params, batch=...) + apply_updates."""
  inputs, targets = _regression_data()
  model = LinenMLP(hidden=4)
  params = model.init(jax.random.PRNGKey(1), inputs)["params"]
  apply_fn = rdf.linen_apply_fn(model)
  tx = rd.regression_descent(apply_fn, learning_rate=0.5, damping=1e-2)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  new_state = rdf.apply_gradients(state, batch=(inputs, targets))
  updates, _ = tx.update(None, tx.init(params), params, batch=(inputs, targets))
  jax.tree_util.tree_map(
    np.testing.assert_allclose, new_state.params, optax.apply_updates(params, updates)
  )
  # With Adam chained after the RD direction, grads are ignored too.
  with pytest.raises(ValueError, match="batch"):
    rdf.apply_gradients(state, batch=None)


def test_linen_batch_stats_and_dropout_in_training_mode_raise():
  inputs, targets = _regression_data()
  model = LinenBatchNormDropout(train=True)
  variables = model.init(
    {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, inputs
  )
  tx = rd.regression_descent(rdf.linen_apply_fn(model, variables), damping=1e-2)
  with pytest.raises(rdf.MutableStateError, match="(?s)batch_stats.*deterministic"):
    tx.update(None, tx.init(variables["params"]), variables["params"], batch=(inputs, targets))
  # Without the batch statistics: the missing collection is reported too.
  tx = rd.regression_descent(rdf.linen_apply_fn(model), damping=1e-2)
  with pytest.raises(rdf.MutableStateError, match="batch_stats"):
    tx.update(None, tx.init(variables["params"]), variables["params"], batch=(inputs, targets))


def test_linen_batch_norm_in_eval_mode_trains():
  inputs, targets = _regression_data()
  variables = LinenBatchNormDropout(train=True).init(
    {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, inputs
  )
  model = LinenBatchNormDropout(train=False)
  apply_fn = rdf.linen_apply_fn(model, variables)
  tx = rd.regression_descent(apply_fn, damping=1.0)
  params = variables["params"]
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(None, state, params, batch=(inputs, targets))
  new_params = optax.apply_updates(params, updates)
  assert _sum_squares(apply_fn(new_params, inputs), targets) < _sum_squares(
    apply_fn(params, inputs), targets
  )


def test_linen_apply_fn_rejects_nnx_module():
  with pytest.raises(TypeError, match="nnx_apply_fn"):
    rdf.linen_apply_fn(NNXMLP(nnx.Rngs(0)))


# -------------------------------------------------------------------- NNX


def test_nnx_apply_fn_matches_model_call():
  inputs, _ = _regression_data()
  model = NNXMLP(nnx.Rngs(0))
  apply_fn = rdf.nnx_apply_fn(model)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  # Like with like, bit for bit: op by op, and compiled (XLA's fusion at the suite's
  # optimisation level may round a compiled program differently from the same ops run
  # one at a time, by an ulp).
  np.testing.assert_array_equal(apply_fn(params, inputs), model(inputs))
  np.testing.assert_array_equal(
    jax.jit(apply_fn)(params, inputs), jax.jit(lambda x: model(x))(inputs)
  )


def test_nnx_optimizer_loss_falls_tenfold():
  inputs, targets = _regression_data()
  model = NNXMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _lm_tx(rdf.nnx_apply_fn(model)), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, inputs, targets):
    optimizer.update(model, None, batch=(inputs, targets))

  initial = _sum_squares(model(inputs), targets)
  for _ in range(NUM_STEPS):
    train_step(model, optimizer, inputs, targets)
  final = _sum_squares(model(inputs), targets)

  assert int(optimizer.step[...]) == NUM_STEPS
  assert final <= initial / 10, (initial, final)


def test_nnx_step_equals_plain_function_step():
  """One NNX optimizer step moves the weights exactly as RD on a pure MLP does."""
  with jax.enable_x64(True):
    inputs, targets = _regression_data(jnp.float64)
    model = NNXMLP(nnx.Rngs(3), hidden=4, dtype=jnp.float64)
    weights = {
      "w1": model.hidden.kernel[...],
      "b1": model.hidden.bias[...],
      "w2": model.out.kernel[...],
      "b2": model.out.bias[...],
    }

    def plain_apply(p, x):
      return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    reference = rd.regression_descent(plain_apply, learning_rate=0.7, damping=1e-2)
    updates, _ = reference.update(None, reference.init(weights), weights, batch=(inputs, targets))
    expected = optax.apply_updates(weights, updates)

    tx = rd.regression_descent(rdf.nnx_apply_fn(model), learning_rate=0.7, damping=1e-2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, None, batch=(inputs, targets))

    assert np.abs(expected["w2"] - weights["w2"]).max() > 1e-3  # a real step
    for got, key in [
      (model.hidden.kernel, "w1"),
      (model.hidden.bias, "b1"),
      (model.out.kernel, "w2"),
      (model.out.bias, "b2"),
    ]:
      np.testing.assert_allclose(got[...], expected[key], rtol=1e-10, atol=1e-12)


def test_nnx_batch_stats_and_dropout_in_training_mode_raise():
  inputs, targets = _regression_data()
  model = NNXBatchNormDropout(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _lm_tx(rdf.nnx_apply_fn(model)), wrt=nnx.Param)
  with pytest.raises(rdf.MutableStateError, match=r"(?s)norm/mean.*model\.eval\(\)"):
    optimizer.update(model, None, batch=(inputs, targets))


def test_nnx_dropout_rng_counter_is_detected():
  inputs, _ = _regression_data()
  model = NNXBatchNormDropout(nnx.Rngs(0))
  model.norm.use_running_average = True  # only dropout still draws random numbers
  apply_fn = rdf.nnx_apply_fn(model)
  with pytest.raises(rdf.MutableStateError, match="drop/rngs"):
    apply_fn(nnx.as_pure(nnx.state(model, nnx.Param)), inputs)


def test_nnx_eval_mode_trains_with_constant_batch_stats():
  inputs, targets = _regression_data()
  model = NNXBatchNormDropout(nnx.Rngs(0))
  model.eval()
  stats = np.asarray(model.norm.mean[...])
  optimizer = nnx.Optimizer(
    model, rd.regression_descent(rdf.nnx_apply_fn(model), damping=1.0), wrt=nnx.Param
  )
  initial = _sum_squares(model(inputs), targets)
  nnx.jit(lambda m, o: o.update(m, None, batch=(inputs, targets)))(model, optimizer)
  assert _sum_squares(model(inputs), targets) < initial
  np.testing.assert_array_equal(model.norm.mean[...], stats)


def test_nnx_apply_fn_argument_checks():
  with pytest.raises(TypeError, match="linen_apply_fn"):
    rdf.nnx_apply_fn(LinenMLP())
  with pytest.raises(ValueError, match="no method 'predict'"):
    rdf.nnx_apply_fn(NNXMLP(nnx.Rngs(0)), method="predict")


# ------------------------------------------------------------------ import


def test_module_name_does_not_shadow_flax():
  code = (
    "import sys, rdescent\n"
    "assert 'flax' not in sys.modules, 'import rdescent must not import flax'\n"
    "import rdescent.flax, flax, flax.nnx\n"
    "assert flax.__file__ != rdescent.flax.__file__\n"
    "assert rdescent.flax.nnx is flax.nnx\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_flax_raises_import_error_naming_the_extra(monkeypatch):
  """Without Flax installed, `import rdescent.flax` says how to install it."""
  import importlib

  monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` now fails as if not installed
  monkeypatch.delitem(sys.modules, "rdescent.flax")
  with pytest.raises(ImportError, match=r'pip install "rdescent\[flax\]"'):
    importlib.import_module("rdescent.flax")
