"""Losses through the generalized Gauss-Newton form, output scaling, safe step.

Every direction is compared with the dense float64 (Jᵀ H J + λI)⁻¹ Jᵀ g, with
g and H of the summed loss taken by autodiff with respect to the outputs.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

import rdescent as rd
from tests import models

SIZES = [3, 5, 4]  # k = 4 outputs, p = 44 parameters
M = 6  # m k = 24 < p: "auto" would pick the dual system


def _setup(seed, sizes=SIZES, m=M, dtype=jnp.float64, logit_scale=1.0):
  kp, kx, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = models.mlp_init(kp, sizes, dtype)
  params[-1]["w"] = params[-1]["w"] * logit_scale
  x = jax.random.normal(kx, (m, sizes[0]), dtype)
  labels = jax.random.randint(ky, (m,), 0, sizes[-1])
  return params, x, labels


def _direction(apply_fn, params, x, y, **kwargs):
  tx = rd.scale_by_regression_descent(apply_fn, **kwargs)
  return models.first_update(tx, params, (x, y))


def _dense_ggn_direction(apply_fn, params, x, targets, loss, damping, hessian=None):
  """(Jᵀ H J + λI)⁻¹ Jᵀ g in float64; g, H by autodiff of the summed loss."""
  jacobian = models.dense_jacobian(apply_fn, params, x)
  outputs = apply_fn(params, x)
  value = lambda z: loss.value(z.reshape(outputs.shape), targets)
  flat_outputs = outputs.reshape(-1)
  g = np.asarray(jax.grad(value)(flat_outputs), np.float64)
  if hessian is None:
    hessian = np.asarray(jax.hessian(value)(flat_outputs), np.float64)
  p = jacobian.shape[1]
  return np.linalg.solve(jacobian.T @ hessian @ jacobian + damping * np.eye(p), jacobian.T @ g)


def _per_example_hessian(outputs, onehot):
  """Block diagonal of h_i ĝ_i ĝ_iᵀ, ĝ = g/‖g‖, h = ĝᵀ H ĝ, in float64."""
  z = np.asarray(outputs, np.float64)
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  g = p - onehot
  m, k = z.shape
  blocks = np.zeros((m * k, m * k))
  for i in range(m):
    direction = g[i] / np.linalg.norm(g[i])
    hessian = np.diag(p[i]) - np.outer(p[i], p[i])
    blocks[i * k : (i + 1) * k, i * k : (i + 1) * k] = (direction @ hessian @ direction) * np.outer(
      direction, direction
    )
  return blocks


def _huber_weights(outputs, targets, delta):
  r = np.abs(np.asarray(outputs - targets)).reshape(-1)
  return np.diag(np.minimum(1.0, delta / np.maximum(r, 1e-300)))


# ------------------------------------------------------------ dense references


@pytest.mark.parametrize("system", ["dual", "primal"])
@pytest.mark.parametrize("labels_as", ["one_hot", "integer"])
def test_softmax_cross_entropy_equals_dense_ggn(system, labels_as):
  with jax.enable_x64(True):
    params, x, labels = _setup(0, logit_scale=3.0)
    targets = labels if labels_as == "integer" else jax.nn.one_hot(labels, 4, dtype=jnp.float64)
    direction, state = _direction(
      models.mlp_apply, params, x, targets, damping=0.1, loss="softmax_cross_entropy", system=system
    )
    one_hot = jax.nn.one_hot(labels, 4, dtype=jnp.float64)
    loss = rd.losses.softmax_cross_entropy()
    expected = _dense_ggn_direction(models.mlp_apply, params, x, one_hot, loss, 0.1)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)
    assert int(state.status) == 0
    log_p = jax.nn.log_softmax(models.mlp_apply(params, x))
    np.testing.assert_allclose(state.loss, -np.sum(one_hot * log_p), rtol=1e-12)


@pytest.mark.parametrize("system", ["dual", "primal"])
@pytest.mark.parametrize("loss_name", ["sigmoid_binary_cross_entropy", "huber"])
def test_binary_cross_entropy_and_huber_equal_dense_ggn(system, loss_name):
  with jax.enable_x64(True):
    params, x, _ = _setup(1, logit_scale=2.0)
    outputs = models.mlp_apply(params, x)
    key = jax.random.PRNGKey(2)
    if loss_name == "huber":
      # Half the residuals in each zone of δ = 0.5.
      targets = outputs + jax.random.normal(key, outputs.shape, jnp.float64)
      loss, kwargs = rd.losses.huber(0.5), {"loss": rd.losses.huber(0.5)}
      hessian = _huber_weights(outputs, targets, 0.5)
      r = np.abs(np.asarray(outputs - targets))
      assert 0.2 < np.mean(r > 0.5) < 0.8
    else:
      targets = jax.random.uniform(key, outputs.shape, jnp.float64)
      loss, kwargs, hessian = rd.losses.get(loss_name), {"loss": loss_name}, None
    direction, state = _direction(
      models.mlp_apply, params, x, targets, damping=0.2, system=system, **kwargs
    )
    expected = _dense_ggn_direction(models.mlp_apply, params, x, targets, loss, 0.2, hessian)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)
    assert int(state.status) == 0


def test_huber_in_its_quadratic_zone_is_mse():
  with jax.enable_x64(True):
    params, x, _ = _setup(3)
    outputs = models.mlp_apply(params, x)
    targets = outputs + 0.1 * jax.random.normal(jax.random.PRNGKey(4), outputs.shape, jnp.float64)
    huber, _ = _direction(models.mlp_apply, params, x, targets, damping=0.1, loss="huber")
    mse, _ = _direction(models.mlp_apply, params, x, targets, damping=0.1, loss="mse")
    np.testing.assert_allclose(models.flat(huber), models.flat(mse), rtol=1e-12)


def test_output_scale_matches_dense_reference():
  with jax.enable_x64(True):
    params, x, _ = _setup(5)
    y = jax.random.normal(jax.random.PRNGKey(6), (M, 4), jnp.float64)
    alpha = 7.5
    direction, state = _direction(models.mlp_apply, params, x, y, damping=0.3, output_scale=alpha)
    scaled = lambda p, x: alpha * models.mlp_apply(p, x)
    jacobian = models.dense_jacobian(scaled, params, x)
    residual = np.asarray(scaled(params, x) - y).reshape(-1)
    expected = models.dense_ridge_direction(jacobian, residual, 0.3)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.loss, 0.5 * np.sum(residual**2), rtol=1e-12)


# ------------------------------------------------------------- custom losses


def test_custom_loss_from_gradient_and_factor():
  with jax.enable_x64(True):
    params, x, labels = _setup(7, logit_scale=2.0)
    one_hot = jax.nn.one_hot(labels, 4, dtype=jnp.float64)
    # Cross-entropy from its per-example value only: autodiff g and H.
    custom_ce = rd.losses.from_gradient_and_factor(
      "my_ce", lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z))
    )
    built_in, _ = _direction(
      models.mlp_apply, params, x, one_hot, damping=0.1, loss="softmax_cross_entropy"
    )
    custom, _ = _direction(models.mlp_apply, params, x, one_hot, damping=0.1, loss=custom_ce)
    np.testing.assert_allclose(models.flat(custom), models.flat(built_in), rtol=1e-8, atol=1e-12)

    # A weighted squared error with an explicit gradient and (k, q = 2k) factor.
    weights = jnp.array([1.0, 4.0, 0.25, 9.0], jnp.float64)
    root = jnp.diag(jnp.sqrt(weights / 2))
    weighted = rd.losses.from_gradient_and_factor(
      "weighted_mse",
      lambda z, y: 0.5 * jnp.sum(weights * (z - y) ** 2),
      gradient_fn=lambda z, y: weights * (z - y),
      factor_fn=lambda z, y: jnp.concatenate([root, root], axis=1),
    )
    y = jax.random.normal(jax.random.PRNGKey(8), (M, 4), jnp.float64)
    direction, _ = _direction(
      models.mlp_apply, params, x, y, damping=0.1, loss=weighted, system="dual"
    )
    hessian = np.kron(np.eye(M), np.diag(np.asarray(weights)))
    expected = _dense_ggn_direction(models.mlp_apply, params, x, y, weighted, 0.1, hessian)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)


def test_loss_built_directly_and_registered():
  def factors(outputs, targets):
    return rd.losses.GaussNewtonFactors(rhs=2.0 * (outputs - targets), factor=None)

  double_mse = rd.losses.Loss(
    name="double_mse",
    value=lambda z, y: jnp.sum((z - y) ** 2),  # g = 2r = I (2r); H = 2I replaced by I
    factors=factors,
    prepare_targets=lambda y, z: jnp.asarray(y, z.dtype).reshape(z.shape),
  )
  rd.losses.register("double_mse_test", lambda: double_mse)
  assert rd.losses.get("double_mse_test") is double_mse
  with jax.enable_x64(True):
    params, x, _ = _setup(9)
    y = jax.random.normal(jax.random.PRNGKey(10), (M, 4), jnp.float64)
    direction, _ = _direction(models.mlp_apply, params, x, y, damping=0.4, loss="double_mse_test")
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    expected = models.dense_ridge_direction(jacobian, 2.0 * residual, 0.4)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-9, atol=1e-12)
  rd.losses._BUILTIN.pop("double_mse_test")


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  m=st.integers(1, 4),
  k=st.integers(2, 5),
  spread=st.sampled_from([0.1, 3.0, 30.0]),
  loss_name=st.sampled_from(["softmax_cross_entropy", "sigmoid_binary_cross_entropy", "huber"]),
  seed=st.integers(0, 1000),
)
def test_factors_reproduce_gradient_and_hessian(m, k, spread, loss_name, seed):
  """L u = g and L Lᵀ = H per example, against NumPy formulas of g and H.

  (The direction tests above use autodiff g and H instead.)
  """
  rng = np.random.default_rng(seed)
  z = spread * rng.standard_normal((m, k))
  if loss_name == "softmax_cross_entropy":
    y = special.softmax(rng.standard_normal((m, k)), axis=1)  # soft labels
    p = special.softmax(z, axis=1)
    g = p - y
    hessian = np.stack([np.diag(q) - np.outer(q, q) for q in p])
  elif loss_name == "sigmoid_binary_cross_entropy":
    y = rng.uniform(size=(m, k))
    s = special.expit(z)
    g = s - y
    hessian = np.stack([np.diag(h) for h in s * (1 - s)])
  else:
    y = rng.standard_normal((m, k))
    g = np.clip(z - y, -1.0, 1.0)
    hessian = np.stack([np.diag(np.minimum(1.0, 1.0 / np.abs(r))) for r in z - y])
  with jax.enable_x64(True):
    rhs, factor = rd.losses.get(loss_name).factors(jnp.asarray(z), jnp.asarray(y))
  np.testing.assert_allclose(np.einsum("ikq,iq->ik", factor, rhs), g, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(
    np.einsum("ikq,ilq->ikl", factor, factor), hessian, rtol=1e-8, atol=1e-12
  )


def test_extreme_logits_keep_float32_factors_finite():
  z = jnp.array([[0.0, 300.0, -300.0], [1e4, 0.0, 0.0]], jnp.float32)
  y = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)
  for name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy"):
    loss = rd.losses.get(name)
    rhs, factor = loss.factors(z, y)
    assert np.all(np.isfinite(rhs)) and np.all(np.isfinite(factor)), name
    assert np.isfinite(loss.value(z, y)), name


# --------------------------------------------------------------- safe step


def test_max_logit_change_caps_the_predicted_spread():
  with jax.enable_x64(True):
    params, x, labels = _setup(11, logit_scale=3.0)
    eta = 0.8
    common = dict(damping=1e-4, loss="softmax_cross_entropy", system="dual", step_size=eta)
    free, free_state = _direction(models.mlp_apply, params, x, labels, **common)
    capped, state = _direction(
      models.mlp_apply, params, x, labels, max_logit_change=np.pi, **common
    )
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)

    def spread(direction):
      change = eta * (jacobian @ models.flat(direction)).reshape(M, 4)
      return np.max(change.max(axis=1) - change.min(axis=1))

    assert spread(free) > 2 * np.pi  # the uncapped step would move far
    scale = float(state.damping_state.step_scale)
    assert 0 < scale < 1
    np.testing.assert_allclose(models.flat(capped), scale * models.flat(free), rtol=1e-12)
    np.testing.assert_allclose(scale, np.pi / spread(free), rtol=1e-9)
    assert spread(capped) <= np.pi * (1 + 1e-9)
    np.testing.assert_allclose(state.damping_state.logit_change_spread, spread(capped), rtol=1e-9)
    assert free_state.damping_state == ()  # no cap: no wrapper and no cap state

    # A step already within the bound is left alone (and its spread reported).
    small, small_state = _direction(
      models.mlp_apply, params, x, labels, max_logit_change=1e6, **common
    )
    assert float(small_state.damping_state.step_scale) == 1.0
    np.testing.assert_allclose(models.flat(small), models.flat(free), rtol=1e-12)
    np.testing.assert_allclose(
      small_state.damping_state.logit_change_spread, spread(free), rtol=1e-9
    )


def test_max_logit_change_refuses_next_batch_ratio_and_bad_values():
  params, x, labels = _setup(12, dtype=jnp.float32)
  del params  # refused where the wrapper is built, before any state exists
  with pytest.raises(ValueError, match="next_batch_ratio"):
    rd.scale_by_regression_descent(
      models.mlp_apply,
      loss="softmax_cross_entropy",
      max_logit_change=np.pi,
      damping=rd.damping.next_batch_ratio(),
    )
  for bad in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError, match="max_logit_change"):
      rd.regression_descent(models.mlp_apply, max_logit_change=bad)
    with pytest.raises(ValueError, match="output_scale"):
      rd.regression_descent(models.mlp_apply, output_scale=bad)


def test_cross_entropy_training_lowers_the_loss_under_jit():
  # Three Gaussian blobs in 2D, labels as integers, float32.
  key = jax.random.PRNGKey(13)
  kx, kl, kp = jax.random.split(key, 3)
  labels = jax.random.randint(kl, (96,), 0, 3)
  centres = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
  x = centres[labels] + 0.6 * jax.random.normal(kx, (96, 2))
  params = models.mlp_init(kp, [2, 8, 3])
  tx = rd.regression_descent(
    models.mlp_apply, 1.0, damping=1e-2, loss="softmax_cross_entropy", max_logit_change=np.pi
  )
  loss = rd.losses.softmax_cross_entropy()

  @jax.jit
  def train_step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  full_loss = jax.jit(lambda p: loss.value(models.mlp_apply(p, x), jax.nn.one_hot(labels, 3)))
  start = float(full_loss(params))
  state = tx.init(params)
  for t in range(24):
    i = (t * 32) % 96
    params, state = train_step(params, state, x[i : i + 32], labels[i : i + 32])
    assert float(state[0].damping_state.logit_change_spread) <= np.pi * (1 + 1e-5)
  assert float(full_loss(params)) < 0.25 * start
  accuracy = np.mean(np.argmax(models.mlp_apply(params, x), axis=1) == labels)
  assert accuracy > 0.9


# ------------------------------------------------------------------ errors


class TestErrors:
  def setup_method(self):
    self.params, self.x, self.labels = _setup(14, dtype=jnp.float32)
    self.tx = rd.scale_by_regression_descent(models.mlp_apply, loss="softmax_cross_entropy")
    self.state = self.tx.init(self.params)

  def _update(self, targets):
    return self.tx.update(None, self.state, self.params, batch=(self.x, targets))

  def test_per_output_with_cross_entropy_names_the_loss(self):
    for name in ("softmax_cross_entropy", "huber"):
      with pytest.raises(ValueError, match=f"per_output.*{name}"):
        rd.scale_by_regression_descent(models.mlp_apply, loss=name, outputs="per_output")

  def test_out_of_range_labels(self):
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[4\]"):
      self._update(np.array([0, 1, 2, 3, 4, 0]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[-1\]"):
      self._update(jnp.array([0, 1, -1, 3, 2, 0]))

  def test_out_of_range_labels_under_jit_skip_the_step(self):
    step = jax.jit(lambda p, s, y: self.tx.update(None, s, p, batch=(self.x, y)))
    direction, state = step(self.params, self.state, jnp.array([0, 1, 9, 3, 2, 0]))
    # Issue 27: the status names the labels (it was 1, "non-finite outputs").
    assert int(state.status) == rd.transform.STATUS_LABELS_OUT_OF_RANGE
    assert "label" in rd.STATUS_MESSAGES[int(state.status)]
    assert not bool(state.accepted)
    assert np.all(models.flat(direction) == 0)

  def test_label_shape_and_dtype(self):
    with pytest.raises(ValueError, match=r"integer labels must have shape \(6,\)"):
      self._update(jnp.zeros((6, 2), jnp.int32))
    with pytest.raises(ValueError, match="Integer labels need an integer dtype"):
      self._update(jnp.zeros((6,), jnp.float32))
    with pytest.raises(TypeError, match="dtype bool"):
      self._update(jnp.zeros((6, 4), jnp.bool_))

  def test_single_logit_cross_entropy(self):
    tx = rd.scale_by_regression_descent(
      lambda p, x: models.mlp_apply(p, x)[:, :1], loss="softmax_cross_entropy"
    )
    with pytest.raises(ValueError, match="k >= 2.*sigmoid_binary_cross_entropy"):
      tx.update(None, tx.init(self.params), self.params, batch=(self.x, self.labels))

  def test_bad_huber_delta_and_custom_factor_shape(self):
    with pytest.raises(ValueError, match="delta"):
      rd.losses.huber(0.0)
    loss = rd.losses.from_gradient_and_factor(
      "bad", lambda z, y: jnp.sum(z * y), factor_fn=lambda z, y: jnp.ones((2, 2))
    )
    with pytest.raises(ValueError, match=r"factor_fn.*k = 4"):
      loss.factors(jnp.zeros((3, 4)), jnp.zeros((3, 4)))


# ------------------------------------------- cross-entropy, one row per example


@pytest.mark.parametrize("system", ["dual", "primal"])
def test_per_example_cross_entropy_equals_its_dense_reduced_model(system):
  with jax.enable_x64(True):
    params, x, labels = _setup(21, logit_scale=2.0)
    loss = rd.losses.softmax_cross_entropy(rows="per_example")
    onehot = np.eye(SIZES[-1])[np.asarray(labels)]
    damping = 1e-2
    direction, state = _direction(
      models.mlp_apply, params, x, labels, damping=damping, loss=loss, system=system
    )
    hessian = _per_example_hessian(models.mlp_apply(params, x), onehot)
    expected = _dense_ggn_direction(
      models.mlp_apply, params, x, jnp.asarray(onehot), loss, damping, hessian=hessian
    )
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-8, atol=1e-11)
    assert int(state.status) == 0


def test_per_example_cross_entropy_has_one_row_per_example_and_trains():
  params, x, labels = _setup(22, dtype=jnp.float32)
  loss = rd.losses.get("softmax_cross_entropy_per_example")
  problem = jax.jit(
    lambda p: rd.linearize(models.mlp_apply, p, x, labels, loss=loss, system="dual").matrix
  )(params)
  assert problem.shape == (M, M)  # m rows, not m k
  full = rd.losses.softmax_cross_entropy()
  assert loss.value(models.mlp_apply(params, x), jax.nn.one_hot(labels, SIZES[-1])) == (
    full.value(models.mlp_apply(params, x), jax.nn.one_hot(labels, SIZES[-1]))
  )
  tx = rd.regression_descent(
    models.mlp_apply, 1.0, damping=rd.damping.levenberg_marquardt(), loss=loss
  )
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(None, state, params, batch=(x, labels))
    return optax.apply_updates(params, updates), state

  start = float(full.value(models.mlp_apply(params, x), jax.nn.one_hot(labels, SIZES[-1])))
  for _ in range(20):
    params, state = step(params, state)
  end = float(full.value(models.mlp_apply(params, x), jax.nn.one_hot(labels, SIZES[-1])))
  assert np.isfinite(end) and end < 0.5 * start


def test_per_example_cross_entropy_factors_are_finite_when_fitted():
  loss = rd.losses.softmax_cross_entropy(rows="per_example")
  z = jnp.array([[80.0, 0.0, -80.0], [0.0, 0.0, 0.0]])
  y = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  rhs, factor = loss.factors(z, y)
  assert bool(jnp.all(jnp.isfinite(rhs))) and bool(jnp.all(jnp.isfinite(factor)))
  g = jax.nn.softmax(z) - y
  np.testing.assert_allclose(jnp.einsum("ikq,iq->ik", factor, rhs), g, atol=1e-6)
  with pytest.raises(ValueError, match="rows"):
    rd.losses.softmax_cross_entropy(rows="per_output")
