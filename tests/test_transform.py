"""The core Regression Descent transform against dense float64 references."""

from __future__ import annotations

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from tests import models


def _direction(apply_fn, params, x, y, **kwargs):
  tx = rd.scale_by_regression_descent(apply_fn, **kwargs)
  return models.first_update(tx, params, (x, y))


def test_overparameterised_linear_model_interpolates_in_one_step():
  with jax.enable_x64(True):
    key = jax.random.PRNGKey(0)
    kw, kx, ky = jax.random.split(key, 3)
    params = {"w": jax.random.normal(kw, (50, 3), jnp.float64), "b": jnp.zeros(3, jnp.float64)}
    apply_fn = lambda p, x: x @ p["w"] + p["b"]
    x = jax.random.normal(kx, (8, 50), jnp.float64)
    y = jax.random.normal(ky, (8, 3), jnp.float64)
    tx = rd.regression_descent(apply_fn, learning_rate=1.0, damping=1e-12)
    updates, _ = models.first_update(tx, params, (x, y))  # jitted: cheaper than op by op
    new_params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(apply_fn(new_params, x), y, atol=1e-8)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("system", ["dual", "primal"])
def test_full_mode_equals_dense_ridge_direction(activation, system):
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(1), [3, 6, 5, 2], m=7)
    apply_fn = lambda p, x: models.mlp_apply(p, x, activation)
    damping = 0.3
    direction, state = _direction(apply_fn, params, x, y, damping=damping, system=system)
    jacobian = models.dense_jacobian(apply_fn, params, x)
    residual = np.asarray(apply_fn(params, x) - y).reshape(-1)
    expected = models.dense_ridge_direction(jacobian, residual, damping)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)
    assert int(state.status) == 0
    np.testing.assert_allclose(state.loss, 0.5 * np.sum(residual**2), rtol=1e-12)


@pytest.mark.parametrize("system", ["dual", "primal"])
def test_per_output_mode_equals_its_formula(system):
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(2), [4, 5, 3], m=6)
    damping = 0.05
    direction, _ = _direction(
      models.mlp_apply, params, x, y, damping=damping, outputs="per_output", system=system
    )
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    expected = models.dense_per_output_direction(jacobian, residual, damping, 3)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)


def test_flax_linen_params_and_chunking():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.tanh(nn.Dense(8)(x)))

  with jax.enable_x64(True):
    model = Net()
    x = jax.random.normal(jax.random.PRNGKey(0), (9, 3), jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(1), (9, 2), jnp.float64)
    params = jax.tree_util.tree_map(
      lambda v: v.astype(jnp.float64), model.init(jax.random.PRNGKey(2), x)["params"]
    )
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    direction, _ = _direction(apply_fn, params, x, y, damping=0.2, system="dual", chunk_size=4)
    jacobian = models.dense_jacobian(apply_fn, params, x)
    residual = np.asarray(apply_fn(params, x) - y).reshape(-1)
    expected = models.dense_ridge_direction(jacobian, residual, 0.2)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)


def test_large_damping_tends_to_scaled_gradient():
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(4), [3, 4, 2], m=5)
    damping = 1e8
    direction, _ = _direction(models.mlp_apply, params, x, y, damping=damping)
    loss = lambda p: 0.5 * jnp.sum((models.mlp_apply(p, x) - y) ** 2)
    gradient = models.flat(jax.grad(loss)(params))
    np.testing.assert_allclose(models.flat(direction) * damping, gradient, rtol=1e-6)


def test_chain_with_clipping_under_jit_and_schedule():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(5), [3, 8, 2], m=16, dtype=jnp.float32)
  tx = optax.chain(
    rd.scale_by_regression_descent(models.mlp_apply, damping=1e-2),
    optax.clip_by_global_norm(0.1),
    optax.scale_by_learning_rate(optax.linear_schedule(1.0, 0.5, 10)),
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  updates, state = step(params, state)
  assert float(optax.tree.norm(updates)) <= 0.1 + 1e-6
  rd_state = state[0]
  assert int(rd_state.count) == 1 and bool(rd_state.accepted)


def test_inject_hyperparams_and_damping_schedule():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(6), [3, 8, 2], m=16, dtype=jnp.float32)
  tx = optax.inject_hyperparams(rd.regression_descent, static_args=("apply_fn",))(
    apply_fn=models.mlp_apply, learning_rate=0.5, damping=1e-2
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  updates, state = step(params, state)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.5)
  state.hyperparams["learning_rate"] = jnp.asarray(0.25)
  updates_half, _ = step(params, state)
  np.testing.assert_allclose(
    models.flat(updates_half), 0.5 * models.flat(updates), rtol=1e-5, atol=1e-7
  )

  schedule = optax.exponential_decay(1.0, 1, 0.5)
  tx = rd.scale_by_regression_descent(models.mlp_apply, damping=schedule)
  state = tx.init(params)
  update = jax.jit(lambda s: tx.update(None, s, params, batch=(x, y)))  # one compile, 3 calls
  for expected in (1.0, 0.5, 0.25):
    _, state = update(state)
    np.testing.assert_allclose(state.damping, expected, rtol=1e-6)


@pytest.mark.parametrize("outputs", ["full", "per_output"])
def test_training_lowers_the_loss(outputs):
  data = rd.datasets.lorenz96_dataset(256, num_variables=8, seed=1)
  params = models.mlp_init(jax.random.PRNGKey(7), [8, 32, 8])
  tx = rd.regression_descent(models.mlp_apply, 1.0, damping=1.0, outputs=outputs)
  state = tx.init(params)
  loss = jax.jit(lambda p: jnp.mean((models.mlp_apply(p, data.inputs) - data.targets) ** 2))

  @jax.jit
  def train_step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  start = float(loss(params))
  for t in range(30):
    i = (t * 32) % 256
    params, state = train_step(params, state, data.inputs[i : i + 32], data.targets[i : i + 32])
  assert float(loss(params)) < 0.2 * start


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  m=st.integers(1, 6),
  k=st.integers(1, 3),
  width=st.integers(1, 5),
  vector_output=st.booleans(),
  outputs=st.sampled_from(["full", "per_output"]),
)
def test_direction_solves_ridge_for_random_shapes(m, k, width, vector_output, outputs):
  if vector_output:
    k = 1
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(
      jax.random.PRNGKey(m * 100 + k * 10 + width), [2, width, k], m=m
    )
    apply_fn = models.mlp_apply
    if vector_output:
      apply_fn = lambda p, x: models.mlp_apply(p, x)[:, 0]
      y = y[:, 0]
    direction, state = _direction(apply_fn, params, x, y, damping=0.5, outputs=outputs)
    jacobian = models.dense_jacobian(apply_fn, params, x)
    residual = np.asarray(apply_fn(params, x) - y).reshape(-1)
    if outputs == "full":
      expected = models.dense_ridge_direction(jacobian, residual, 0.5)
    else:
      expected = models.dense_per_output_direction(jacobian, residual, 0.5, k)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-8, atol=1e-12)
    assert np.all(np.isfinite(models.flat(direction)))


class TestErrors:
  def setup_method(self):
    self.params, self.x, self.y = models.mlp_problem(
      jax.random.PRNGKey(8), [3, 4, 2], m=5, dtype=jnp.float32
    )
    self.tx = rd.scale_by_regression_descent(models.mlp_apply)
    self.state = self.tx.init(self.params)

  def test_missing_batch(self):
    with pytest.raises(ValueError, match="batch"):
      self.tx.update(None, self.state, self.params)

  def test_missing_params(self):
    with pytest.raises(ValueError, match="params"):
      self.tx.update(None, self.state, None, batch=(self.x, self.y))

  def test_batch_not_a_pair(self):
    with pytest.raises(ValueError, match="pair"):
      self.tx.update(None, self.state, self.params, batch=(self.x, self.y, self.y))

  def test_target_shape_mismatch_names_both_shapes(self):
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 2\)"):
      self.tx.update(None, self.state, self.params, batch=(self.x, jnp.zeros((5, 3))))

  def test_targets_with_wrong_number_of_examples(self):
    with pytest.raises(ValueError, match="5 examples"):
      self.tx.update(None, self.state, self.params, batch=(self.x, self.y[:4]))

  @pytest.mark.parametrize(
    "option,value", [("outputs", "diag"), ("gram", "magic"), ("loss", "hinge"), ("system", "both")]
  )
  def test_unknown_options_list_valid_ones(self, option, value):
    with pytest.raises(ValueError, match=f"{option}={value!r}.*expected one of"):
      rd.scale_by_regression_descent(models.mlp_apply, **{option: value})

  def test_negative_damping_and_learning_rate(self):
    with pytest.raises(ValueError, match="damping"):
      rd.regression_descent(models.mlp_apply, damping=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
      rd.regression_descent(models.mlp_apply, learning_rate=float("nan"))

  def test_errors_fire_at_trace_time_under_jit(self):
    step = jax.jit(lambda p, s, y: self.tx.update(None, s, p, batch=(self.x, y)))
    with pytest.raises(ValueError, match="same shape"):
      step(self.params, self.state, jnp.zeros((5, 3)))
