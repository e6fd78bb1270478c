"""Column-sketched Gauss-Newton steps (`column_sketch=`): the system of c drawn coordinates.

Against a dense float64 reference: the direction is S (J_Sᵀ J_S + λI)⁻¹ J_Sᵀ r with J_S the c
drawn columns of J (zero off them), and the trial's J d, predicted reduction and loss after
the step are the true problem's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent.problem import _columns as _columns_lib
from tests import models

LAMBDA = 0.1


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


_mlp = models.two_layer_apply
_problem = models.two_layer_problem
_jacobian = models.two_layer_jacobian


def _columns(seed, count, params, c):
  """The step's drawn coordinates in `ravel_pytree` order (the library's per-leaf draw)."""
  stream = jax.random.fold_in(jax.random.key(seed), 0xC01)
  per_leaf = _columns_lib.draw_columns(jax.random.fold_in(stream, count), params, c)
  return np.asarray(_columns_lib.flat_columns(params, per_leaf))


def _reference(jacobian, residual, columns, p):
  drawn = jacobian[:, columns]
  solved = np.linalg.solve(drawn.T @ drawn + LAMBDA * np.eye(len(columns)), drawn.T @ residual)
  full = np.zeros(p)
  full[columns] = solved
  return full


@pytest.mark.parametrize("system", ["dual", "primal"])
@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_direction_is_the_drawn_columns_regression(system, solver):
  params, x, y = _problem()
  p = ravel_pytree(params)[0].size  # 3*6 + 6 + 6*2 + 2 = 38
  c = 9
  columns = _columns(0, 0, params, c)
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  expected = -_reference(_jacobian(params, x), residual, columns, p)
  if solver == "cg":
    solver = rd.solvers.cg(tol=1e-12, maxiter=200)
  tx = rd.regression_descent(
    _mlp, 1.0, damping=LAMBDA, column_sketch=c, system=system, solver=solver
  )
  updates, (state, _) = tx.update(None, tx.init(params), params, batch=(x, y))
  assert int(state.status) == 0
  got = np.asarray(ravel_pytree(updates)[0])
  np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-11)
  # only the drawn coordinates move
  off = np.setdiff1d(np.arange(p), columns)
  assert np.all(got[off] == 0.0)


def test_trial_is_the_true_problems():
  params, x, y = _problem()
  problem = rd.linearize(
    _mlp,
    params,
    x,
    y,
    loss=rd.losses.get("mse"),
    column_sketch=7,
    column_key=jax.random.key(3),
    system="primal",
  )
  assert problem.matrix.shape == (7, 7)  # the drawn columns' normal matrix
  trial = problem.solve(LAMBDA, 0.5)
  flat, unravel = ravel_pytree(params)
  d = np.asarray(ravel_pytree(trial.direction)[0])
  jacobian = _jacobian(params, x)
  change = jacobian @ d
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  np.testing.assert_allclose(np.asarray(trial.output_change).reshape(-1), change, rtol=1e-10)
  predicted = 0.5 * residual @ residual - 0.5 * np.sum((residual - 0.5 * change) ** 2)
  np.testing.assert_allclose(float(trial.predicted_reduction), predicted, rtol=1e-10)
  after = 0.5 * np.sum(np.square(np.asarray(_mlp(unravel(flat - 0.5 * d), x) - y)))
  np.testing.assert_allclose(float(trial.loss_after), after, rtol=1e-10)
  # the rest of the problem answers in θ's coordinates, over all p columns
  np.testing.assert_allclose(
    float(problem.gradient_norm()), np.linalg.norm(jacobian.T @ residual), rtol=1e-10
  )
  any_direction = unravel(jnp.arange(flat.size, dtype=jnp.float64) / flat.size)
  np.testing.assert_allclose(
    np.asarray(problem.output_change_of(any_direction)).reshape(-1),
    jacobian @ np.asarray(ravel_pytree(any_direction)[0]),
    rtol=1e-10,
  )
  halved = problem.scale(trial, jnp.asarray(0.5))
  np.testing.assert_allclose(ravel_pytree(halved.direction)[0], 0.5 * d, rtol=1e-12)
  assert float(problem.null_trial(LAMBDA, 1.0).loss_after) == float(problem.loss)


def test_rows_and_columns_together():
  """A doubly sketched step: the drawn rows' regression on the drawn columns, judged on all."""
  params, x, y = _problem()
  p = ravel_pytree(params)[0].size
  s, c = 5, 9
  tx = rd.regression_descent(_mlp, 1.0, damping=LAMBDA, row_sketch=s, column_sketch=c)
  updates, (state, _) = tx.update(None, tx.init(params), params, batch=(x, y))
  rows = models.drawn_rows(0, 0, x.shape[0], s)
  columns = _columns(0, 0, params, c)
  residual = np.asarray(_mlp(params, x[rows]) - y[rows]).reshape(-1)
  expected = -_reference(_jacobian(params, x[rows]), residual, columns, p)
  np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8, atol=1e-12)
  whole = 0.5 * np.sum(np.square(np.asarray(_mlp(params, x) - y)))
  np.testing.assert_allclose(float(state.loss), whole, rtol=1e-12)


def test_lm_with_column_sketch_never_raises_the_loss():
  """LM on half the coordinates per step: every applied step lowers the loss, and it fits."""
  params, x, _ = _problem(m=64, k=1)
  y = jnp.sin(x @ jnp.array([1.0, -0.5, 0.3]))[:, None]
  tx = rd.regression_descent(
    _mlp, 1.0, damping=rd.damping.levenberg_marquardt(), column_sketch=10, sketch_seed=2
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  loss = lambda p: float(0.5 * jnp.sum(jnp.square(_mlp(p, x) - y)))
  before = start = loss(params)
  for _ in range(25):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    now = loss(params)
    assert now <= before * (1 + 1e-12)
    before = now
  assert before < 0.05 * start


def test_marquardt_metric_updates_the_drawn_coordinates_only():
  params, x, y = _problem()
  p = ravel_pytree(params)[0].size
  c = 9
  tx = rd.regression_descent(
    _mlp, 1.0, damping=LAMBDA, column_sketch=c, metric="marquardt", system="primal"
  )
  state = tx.init(params)
  updates, (new_state, _) = tx.update(None, state, params, batch=(x, y))
  assert int(new_state.status) == 0
  columns = _columns(0, 0, params, c)
  jacobian = _jacobian(params, x)
  moment = np.asarray(ravel_pytree(new_state.metric_state.moment)[0])
  norms = np.sum(jacobian**2, axis=0)
  np.testing.assert_allclose(moment[columns], norms[columns], rtol=1e-10)
  off = np.setdiff1d(np.arange(p), columns)
  assert np.all(moment[off] == 0.0)
  # the direction: (J_Sᵀ J_S + λ D_S²)⁻¹ J_Sᵀ r with D_S² the drawn columns' norms (floored)
  drawn = jacobian[:, columns]
  d2 = np.maximum(norms[columns], 1e-8 * norms[columns].mean())
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  solved = np.linalg.solve(drawn.T @ drawn + LAMBDA * np.diag(d2), drawn.T @ residual)
  expected = np.zeros(p)
  expected[columns] = -solved
  np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-7, atol=1e-11)


def test_column_sketch_of_all_parameters_is_the_plain_step():
  params, x, y = _problem()
  p = ravel_pytree(params)[0].size
  plain = rd.regression_descent(_mlp, 1.0, damping=LAMBDA)
  whole = rd.regression_descent(_mlp, 1.0, damping=LAMBDA, column_sketch=p)
  got = whole.update(None, whole.init(params), params, batch=(x, y))[0]
  expected = plain.update(None, plain.init(params), params, batch=(x, y))[0]
  np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(expected)[0], rtol=1e-12)


@pytest.mark.parametrize(
  ("options", "match"),
  [
    ({"column_sketch": 0}, "column_sketch must be None or a positive int"),
    ({"column_sketch": 2.5}, "column_sketch must be None or a positive int"),
    ({"column_sketch": True}, "column_sketch must be None or a positive int"),
    ({"column_sketch": 4, "momentum": 0.5}, "momentum"),
    ({"column_sketch": 4, "data_axis": "data"}, "data_axis"),
    ({"column_sketch": 4, "metric": "layerwise"}, "per-leaf metric"),
  ],
)
def test_bad_column_sketch(options, match):
  with pytest.raises(ValueError, match=match):
    rd.regression_descent(_mlp, 1.0, **options)


@pytest.mark.parametrize("c", [4, 9, 20, 37])
def test_draw_shares_the_columns_among_the_leaves(c):
  """c_ℓ ≈ c p_ℓ / p with at least one per leaf, distinct, in range, summing to c."""
  params, _, _ = _problem()
  leaves = jax.tree_util.tree_leaves(params)
  drawn = _columns_lib.draw_columns(jax.random.key(c), params, c)
  assert sum(int(index.size) for index in drawn) == c
  p = sum(leaf.size for leaf in leaves)
  for leaf, index in zip(leaves, drawn):
    index = np.asarray(index)
    assert 1 <= index.size <= leaf.size
    assert len(set(index.tolist())) == index.size
    assert index.min() >= 0 and index.max() < leaf.size
    assert abs(index.size - c * leaf.size / p) <= 2
  with pytest.raises(ValueError, match="number of parameter leaves"):
    _columns_lib.draw_columns(jax.random.key(0), params, len(leaves) - 1)
  with pytest.raises(ValueError, match="exceeds the 38 parameters"):
    _columns_lib.draw_columns(jax.random.key(0), params, p + 1)


def test_coupled_examples_and_vmap():
  """examples='coupled' (J of the batch function) and `jax.vmap` over problems both hold."""
  params, x, y = _problem()
  p = ravel_pytree(params)[0].size
  c = 9
  columns = _columns(0, 0, params, c)
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  expected = -_reference(_jacobian(params, x), residual, columns, p)
  batch_fn = lambda q, _: _mlp(q, x) - y
  tx = rd.regression_descent(
    batch_fn, 1.0, damping=LAMBDA, column_sketch=c, examples="coupled", system="primal"
  )
  updates, (state, _) = tx.update(None, tx.init(params), params, batch=(None, jnp.zeros_like(y)))
  assert int(state.status) == 0
  np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8, atol=1e-12)

  tx = rd.regression_descent(
    _mlp, 1.0, damping=rd.damping.levenberg_marquardt(), column_sketch=c, sketch_seed=4
  )
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.1 * a, 0.9 * a]), params)
  batched, _ = jax.vmap(lambda q, s: tx.update(None, s, q, batch=(x, y)))(
    stacked, jax.vmap(tx.init)(stacked)
  )
  for i in range(3):
    one = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    single = tx.update(None, tx.init(one), one, batch=(x, y))[0]
    np.testing.assert_allclose(
      ravel_pytree(jax.tree_util.tree_map(lambda a, i=i: a[i], batched))[0],
      ravel_pytree(single)[0],
      rtol=1e-12,
      atol=1e-15,
    )
