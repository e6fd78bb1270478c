"""`rd.damping.per_example`: λ = m λ̄, against the dense float64 Gauss-Newton direction.

The reference is (Jᵀ H J + m λ̄ I)⁻¹ Jᵀ g of the summed loss (g, H by autodiff with respect
to the outputs), which is also the ridge step of the mean loss with ridge λ̄.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from tests import models


def _dense_ggn_direction(params, x, targets, loss, damping):
  jacobian = models.dense_jacobian(models.mlp_apply, params, x)
  outputs = models.mlp_apply(params, x)
  value = lambda z: loss.value(z.reshape(outputs.shape), targets)
  flat = outputs.reshape(-1)
  g = np.asarray(jax.grad(value)(flat), np.float64)
  hessian = np.asarray(jax.hessian(value)(flat), np.float64)
  p = jacobian.shape[1]
  return np.linalg.solve(jacobian.T @ hessian @ jacobian + damping * np.eye(p), jacobian.T @ g)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
  m=st.integers(1, 9),
  mean_damping=st.floats(1e-3, 10.0),
  system=st.sampled_from(["dual", "primal"]),
  seed=st.integers(0, 2**16),
)
def test_per_example_is_the_dense_direction_at_m_times_the_damping(m, mean_damping, system, seed):
  with jax.enable_x64(True):
    params, x, _ = models.mlp_problem(jax.random.PRNGKey(seed), [3, 4, 3], m=m)
    labels = jax.random.randint(jax.random.PRNGKey(seed + 1), (m,), 0, 3)
    one_hot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    tx = rd.scale_by_regression_descent(
      models.mlp_apply,
      loss="softmax_cross_entropy",
      damping=rd.damping.per_example(mean_damping),
      system=system,
    )
    direction, state = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, labels)))(
      params, tx.init(params)
    )
    loss = rd.losses.softmax_cross_entropy()
    expected = _dense_ggn_direction(params, x, one_hot, loss, m * mean_damping)
    np.testing.assert_allclose(models.flat(direction), expected, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(state.damping, m * mean_damping, rtol=1e-12)
    np.testing.assert_allclose(state.damping_state.damping, m * mean_damping, rtol=1e-12)
    # The same direction is the ridge step of the mean loss with ridge λ̄: (G/m + λ̄ I)⁻¹ ∇(ℓ/m).
    mean_loss = loss._replace(value=lambda z, y: loss.value(z, y) / m)
    mean = _dense_ggn_direction(params, x, one_hot, mean_loss, mean_damping)
    np.testing.assert_allclose(models.flat(direction), mean, rtol=1e-8, atol=1e-11)


def test_per_example_equals_constant_at_m_times_the_damping_and_follows_a_schedule():
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(3), [2, 5, 2], m=7)
    schedule = optax.exponential_decay(2.0, 1, 0.5)  # λ̄ = 2, 1, 0.5, ...
    runs = {}
    for name, damping in {
      "per_example": rd.damping.per_example(schedule),
      "constant": rd.damping.schedule(lambda count: 7 * schedule(count)),
    }.items():
      tx = rd.regression_descent(models.mlp_apply, learning_rate=0.5, damping=damping)
      update = jax.jit(lambda p, s, tx=tx: tx.update(None, s, p, batch=(x, y)))
      state, theta, lams = tx.init(params), params, []
      for _ in range(3):
        updates, state = update(theta, state)
        theta = optax.apply_updates(theta, updates)
        lams.append(float(state[0].damping))
      runs[name] = (models.flat(theta), lams)
    np.testing.assert_allclose(runs["per_example"][0], runs["constant"][0], rtol=1e-12)
    np.testing.assert_allclose(runs["per_example"][1], [14.0, 7.0, 3.5], rtol=1e-12)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_per_example_refuses_bad_damping_when_built(bad):
  with pytest.raises(ValueError, match="damping"):
    rd.damping.per_example(bad)
  with pytest.raises(ValueError, match="damping"):
    rd.regression_descent(lambda p, x: x @ p, damping=rd.damping.per_example(bad))


def test_per_example_state_before_the_first_step_is_the_mean_damping():
  controller = rd.damping.per_example(0.25)
  assert float(controller.current(controller.init(jnp.zeros(3)), 0)) == 0.25
