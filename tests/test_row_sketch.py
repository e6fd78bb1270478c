"""Row-sketched Gauss-Newton steps (`row_sketch=`): the system of s drawn examples, judged on all m.

Against a dense float64 reference: the direction is J_Sᵀ (J_S J_Sᵀ + λI)⁻¹ r_S on the drawn
rows S, and the trial's J d, predicted reduction and loss after the step are the whole batch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from tests import models

LAMBDA = 0.1


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


_mlp = models.two_layer_apply
_problem = models.two_layer_problem
_jacobian = models.two_layer_jacobian


@pytest.mark.parametrize("system", ["dual", "primal"])
def test_direction_is_the_drawn_rows_regression(system):
  params, x, y = _problem()
  s = 5
  rows = models.drawn_rows(0, 0, x.shape[0], s)
  jacobian = _jacobian(params, x[rows])
  residual = np.asarray(_mlp(params, x[rows]) - y[rows]).reshape(-1)
  expected = -jacobian.T @ np.linalg.solve(
    jacobian @ jacobian.T + LAMBDA * np.eye(len(residual)), residual
  )
  tx = rd.regression_descent(_mlp, 1.0, damping=LAMBDA, row_sketch=s, system=system)
  updates, (state, _) = tx.update(None, tx.init(params), params, batch=(x, y))
  assert int(state.status) == 0
  np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8, atol=1e-12)
  # the state's loss is the whole batch's (summed ½‖r‖²)
  whole = 0.5 * np.sum(np.square(np.asarray(_mlp(params, x) - y)))
  np.testing.assert_allclose(float(state.loss), whole, rtol=1e-12)


def test_trial_is_judged_on_the_whole_batch():
  params, x, y = _problem()
  key = jax.random.key(9)
  problem = rd.linearize(
    _mlp, params, x, y, loss=rd.losses.get("mse"), row_sketch=4, row_key=key, system="dual"
  )
  trial = problem.solve(LAMBDA, 1.0)
  flat, unravel = ravel_pytree(params)
  d = ravel_pytree(trial.direction)[0]
  change = _jacobian(params, x) @ np.asarray(d)
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  assert trial.output_change.shape == y.shape
  np.testing.assert_allclose(np.asarray(trial.output_change).reshape(-1), change, rtol=1e-10)
  predicted = 0.5 * residual @ residual - 0.5 * np.sum((residual - change) ** 2)
  np.testing.assert_allclose(float(trial.predicted_reduction), predicted, rtol=1e-10)
  after = 0.5 * np.sum(np.square(np.asarray(_mlp(unravel(flat - d), x) - y)))
  np.testing.assert_allclose(float(trial.loss_after), after, rtol=1e-10)
  np.testing.assert_allclose(float(problem.loss), 0.5 * residual @ residual, rtol=1e-12)
  assert problem.outputs.shape == y.shape
  # the system itself is the drawn rows' (4 examples × 2 outputs)
  assert problem.matrix.shape == (8, 8)


def test_lm_with_row_sketch_never_raises_the_whole_loss():
  """LM judges each trial on all m rows: every applied step lowers the whole batch's loss.

  m = 64 residuals against p = 21 parameters, 24 rows drawn per step: the drawn rows'
  regression is a good model of the whole one, and the fit makes progress.
  """
  params, x, _ = _problem(m=64, k=1)
  y = jnp.sin(x @ jnp.array([1.0, -0.5, 0.3]))[:, None]
  tx = rd.regression_descent(
    _mlp, 1.0, damping=rd.damping.levenberg_marquardt(), row_sketch=24, sketch_seed=2
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  loss = lambda p: float(0.5 * jnp.sum(jnp.square(_mlp(p, x) - y)))
  before = loss(params)
  start = before
  for _ in range(15):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    now = loss(params)
    assert now <= before * (1 + 1e-12)
    before = now
  assert before < 0.05 * start


def test_row_sketch_of_the_whole_batch_is_the_plain_step():
  params, x, y = _problem()
  plain = rd.regression_descent(_mlp, 1.0, damping=LAMBDA)
  whole = rd.regression_descent(_mlp, 1.0, damping=LAMBDA, row_sketch=x.shape[0])
  got = whole.update(None, whole.init(params), params, batch=(x, y))[0]
  expected = plain.update(None, plain.init(params), params, batch=(x, y))[0]
  np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(expected)[0], rtol=1e-12)


@pytest.mark.parametrize(
  ("options", "match"),
  [
    ({"row_sketch": 0}, "row_sketch must be None or a positive int"),
    ({"row_sketch": 2.5}, "row_sketch must be None or a positive int"),
    ({"row_sketch": True}, "row_sketch must be None or a positive int"),
    ({"row_sketch": 4, "examples": "coupled"}, "examples='coupled'"),
    ({"row_sketch": 4, "momentum": 0.5}, "momentum"),
    ({"row_sketch": 4, "data_axis": "data"}, "data_axis"),
  ],
)
def test_bad_row_sketch(options, match):
  with pytest.raises(ValueError, match=match):
    rd.regression_descent(_mlp, 1.0, **options)
