"""`examples="coupled"` and the detection of coupled examples under the default.

The coupled model is an MLP with batch normalisation in training mode
(`models.batch_norm_mlp_apply`): each output depends on every example of the
batch. The Moré-Garbow-Hillstrom problems as plain residual vectors are in
tests/test_mgh.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import transform as transform_lib
from tests import models

SIZES = [3, 6, 2]
M = 12


def _coupled_problem(dtype=jnp.float32):
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=dtype)
  return params, x, y


def _run(tx, params, batch, steps):
  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(None, state, params, batch=batch)
      return (optax.apply_updates(params, updates), state), (state[0].loss, state[0].status)

    (params, state), trace = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params, state, trace

  return run(params)


def test_coupled_gram_matrix_is_the_dense_gram_of_the_batch_function():
  with jax.enable_x64(True):
    params, x, _ = _coupled_problem(jnp.float64)
    jacobian = models.dense_jacobian(models.batch_norm_mlp_apply, params, x)
    k = SIZES[-1]
    full = rd.gram_matrix(models.batch_norm_mlp_apply, params, x, examples="coupled")
    np.testing.assert_allclose(full, jacobian @ jacobian.T, rtol=1e-12, atol=1e-12)
    per_output = rd.gram_matrix(
      models.batch_norm_mlp_apply, params, x, outputs="per_output", examples="coupled"
    )
    for c in range(k):
      rows = jacobian[c::k]
      np.testing.assert_allclose(per_output[c], rows @ rows.T, rtol=1e-12, atol=1e-12)
    # An independent model: the coupled K is the engines' K.
    np.testing.assert_allclose(
      rd.gram_matrix(models.mlp_apply, params, x, examples="coupled"),
      rd.gram_matrix(models.mlp_apply, params, x),
      rtol=1e-12,
      atol=1e-12,
    )
  with pytest.raises(ValueError, match="examples"):
    rd.gram_matrix(models.mlp_apply, params, x, examples="batch")


def test_default_skips_a_coupled_batch_with_its_own_status():
  params, x, y = _coupled_problem()
  tx = rd.regression_descent(
    models.batch_norm_mlp_apply, 1.0, damping=rd.damping.levenberg_marquardt()
  )
  final, state, (_, statuses) = _run(tx, params, (x, y), steps=3)
  assert set(np.asarray(statuses).tolist()) == {transform_lib.STATUS_COUPLED_EXAMPLES}
  np.testing.assert_array_equal(models.flat(final), models.flat(params))
  rd_state = state[0]
  assert not bool(rd_state.accepted) and int(rd_state.num_rejected) == 3
  # The controller learns nothing from a coupled batch: λ is where it started.
  np.testing.assert_allclose(rd_state.damping_state.damping, 1e-3)
  assert "examples='coupled'" in rd.STATUS_MESSAGES[int(rd_state.status)]
  assert np.all(np.isfinite(models.flat(final)))


def test_coupled_trains_the_batch_norm_model():
  params, x, y = _coupled_problem()
  tx = rd.regression_descent(
    models.batch_norm_mlp_apply,
    1.0,
    damping=rd.damping.levenberg_marquardt(),
    examples="coupled",
  )
  _, _, (losses, statuses) = _run(tx, params, (x, y), steps=30)
  losses = np.asarray(losses)
  assert losses[-1] < losses[0] / 10, losses
  assert set(np.asarray(statuses).tolist()) <= {
    transform_lib.STATUS_OK,
    transform_lib.STATUS_REJECTED,
  }


@pytest.mark.parametrize(
  "options",
  [
    dict(system="dual"),
    dict(system="primal"),
    dict(outputs="per_output", system="dual"),
    dict(outputs="sketched", sketch_size=1, system="dual"),
    dict(loss="softmax_cross_entropy", system="primal"),
    dict(damping=rd.damping.gcv(), solver="eigh"),
  ],
  ids=lambda options: "/".join(
    f"{k}={v if isinstance(v, (str, int, float)) else type(v).__name__}" for k, v in options.items()
  ),
)
def test_coupled_step_of_an_independent_model_is_the_default_step(options):
  with jax.enable_x64(True):
    params, x, y = _coupled_problem(jnp.float64)
    targets = jnp.arange(M) % SIZES[-1] if options.get("loss") else y
    options = dict(options)
    options.setdefault("damping", 1e-2)
    default, state = models.first_update(
      rd.scale_by_regression_descent(models.mlp_apply, **options), params, (x, targets)
    )
    coupled, coupled_state = models.first_update(
      rd.scale_by_regression_descent(models.mlp_apply, examples="coupled", **options),
      params,
      (x, targets),
    )
    assert int(state.status) == int(coupled_state.status) == transform_lib.STATUS_OK
    np.testing.assert_allclose(models.flat(coupled), models.flat(default), rtol=1e-8, atol=1e-12)


def test_plain_residual_vector_with_none_inputs():
  with jax.enable_x64(True):

    def residuals(x, inputs):
      assert inputs is None
      return jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    tx = rd.regression_descent(
      residuals, 1.0, damping=rd.damping.levenberg_marquardt(), examples="coupled"
    )
    final, state, (losses, statuses) = _run(
      tx, jnp.array([-1.2, 1.0]), (None, jnp.zeros(2)), steps=40
    )
    np.testing.assert_allclose(final, [1.0, 1.0], rtol=1e-10)
    assert float(losses[-1]) < 1e-20
    # At the exact solution the direction is zero: the status says nothing was applied.
    assert int(state[0].status) == transform_lib.STATUS_ZERO_STEP
    assert not bool(state[0].accepted)


def test_mistakes_of_the_default_are_caught_at_trace_time():
  residuals = lambda x: jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
  x0 = jnp.array([-1.2, 1.0])
  tx = rd.regression_descent(lambda x, inputs: residuals(x)[:, None], 1.0)
  # A plain residual vector behind dummy inputs: one example's outputs are the whole vector.
  with pytest.raises(ValueError, match="examples='coupled'"):
    tx.update(None, tx.init(x0), x0, batch=(jnp.zeros((2, 1)), jnp.zeros(2)))
  # No inputs at all.
  with pytest.raises(ValueError, match="examples='coupled'"):
    tx.update(None, tx.init(x0), x0, batch=(None, jnp.zeros(2)))
  with pytest.raises(ValueError, match="examples"):
    rd.regression_descent(models.mlp_apply, examples="batch")
  with pytest.raises(ValueError, match="data_axis"):
    rd.regression_descent(models.mlp_apply, examples="coupled", data_axis="data")
  coupled = rd.regression_descent(lambda x, inputs: residuals(x), 1.0, examples="coupled")
  with pytest.raises(ValueError, match="targets"):
    coupled.update(None, coupled.init(x0), x0, batch=(None, jnp.zeros(3)))


def test_an_exact_fit_reports_a_zero_step_not_ok():
  params, x, _ = _coupled_problem()
  y = jax.jit(models.mlp_apply)(params, x)  # r = 0
  for damping in (1e-3, rd.damping.levenberg_marquardt()):
    tx = rd.regression_descent(models.mlp_apply, 1.0, damping=damping)
    _, state = models.first_update(tx, params, (x, y))
    assert int(state[0].status) == transform_lib.STATUS_ZERO_STEP, damping
    assert rd.STATUS_MESSAGES[transform_lib.STATUS_ZERO_STEP].startswith("zero direction")


# Moré–Garbow–Hillstrom problems (benchmarks/mgh.py) as plain residual vectors, standard
# starts: 12 of the 35 here (the `least_squares` benchmark runs all of them), covering
# zero and non-zero optima, badly scaled and exponential-fitting problems.
MGH_PROBLEMS = (
  "rosenbrock",
  "freudenstein_roth",
  "brown_badly_scaled",
  "beale",
  "jennrich_sampson",
  "helical_valley",
  "bard",
  "gaussian",
  "meyer",
  "box_3d",
  "wood",
  "kowalik_osborne",
)


@pytest.mark.parametrize("name", MGH_PROBLEMS)
def test_plain_residual_vectors_reach_minpack_cost(name):
  scipy = pytest.importorskip("scipy")
  del scipy
  from benchmarks import mgh

  problem = mgh.PROBLEMS[name]
  with jax.enable_x64(True):
    reference_cost, _, _, _ = mgh.scipy_reference(problem)
    tx = rd.regression_descent(
      lambda x, inputs: problem.residuals(x),
      1.0,
      damping=rd.damping.levenberg_marquardt(),
      examples="coupled",
    )
    batch = (None, jnp.zeros(problem.num_residuals))

    @jax.jit
    def solve(x):
      def body(_, carry):
        x, state = carry
        updates, state = tx.update(None, state, x, batch=batch)
        return optax.apply_updates(x, updates), state

      return jax.lax.fori_loop(0, 1000, body, (x, tx.init(x)))

    x, state = solve(jnp.asarray(problem.start, jnp.float64))
    cost = 0.5 * float(jnp.sum(problem.residuals(x) ** 2))
    assert np.all(np.isfinite(np.asarray(x)))
    assert cost <= reference_cost * (1 + 1e-8) + 1e-20, (cost, reference_cost)
    assert int(state[0].status) in (
      transform_lib.STATUS_OK,
      transform_lib.STATUS_REJECTED,
      transform_lib.STATUS_ZERO_STEP,
    )
