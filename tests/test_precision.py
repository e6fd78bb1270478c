"""precision=rd.precision_switch(): float32 steps of the cast problem, then float64 steps.

Dense float64 checks: before the switch each update equals the float32 transform's update
of the problem cast to float32 (parameters, batch and state); after it, the float64
transform's update from the same state. Bad options are refused by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import _precision
from tests import models


def _problem():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(3), [3, 8, 2], m=12, dtype=jnp.float64)
  return params, x, y


def _transform(**options):
  return rd.scale_by_regression_descent(
    models.mlp_apply, damping=rd.damping.levenberg_marquardt(), **options
  )


def _assert_tree_close(a, b, rtol, atol=0.0):
  for left, right in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(left), np.asarray(right), rtol=rtol, atol=atol)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_before_the_switch_each_step_is_the_float32_step_of_the_cast_problem(solver):
  with jax.enable_x64(True):
    params, x, y = _problem()
    switching = _transform(solver=solver, precision=rd.precision_switch(patience=1000))
    plain32 = _transform(solver=solver)
    update = jax.jit(lambda p, s: switching.update(None, s, p, batch=(x, y)))
    reference = jax.jit(
      lambda p, s: plain32.update(None, s, p, batch=(_precision.lower(x), _precision.lower(y)))
    )
    state = switching.init(params)
    assert int(state.precision.bits) == 32
    for _ in range(6):
      direction, new_state = update(params, state)
      expected, expected_state = reference(_precision.lower(params), _precision.lower(state))
      assert jax.tree_util.tree_leaves(direction)[0].dtype == jnp.float64
      _assert_tree_close(direction, expected, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(new_state.loss, expected_state.loss, rtol=1e-6)
      np.testing.assert_allclose(new_state.damping, expected_state.damping, rtol=1e-6)
      assert int(new_state.status) == int(expected_state.status)
      assert int(new_state.precision.bits) == 32 and int(new_state.precision.switched_at) == -1
      params, state = (
        optax.apply_updates(params, jax.tree_util.tree_map(jnp.negative, direction)),
        new_state,
      )


def test_after_the_switch_each_step_is_the_float64_step():
  with jax.enable_x64(True):
    params, x, y = _problem()
    # rtol close to 1: the first measured step (update 1) counts as no progress.
    switching = _transform(precision=rd.precision_switch(rtol=0.999, patience=1))
    plain64 = _transform()
    update = jax.jit(lambda p, s: switching.update(None, s, p, batch=(x, y)))
    reference = jax.jit(lambda p, s: plain64.update(None, s, p, batch=(x, y)))
    state = switching.init(params)
    bits = []
    for step in range(5):
      direction, new_state = update(params, state)
      if step >= 2:
        expected, expected_state = reference(params, state)
        _assert_tree_close(direction, expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_state.damping, expected_state.damping, rtol=1e-12)
        np.testing.assert_allclose(new_state.loss, expected_state.loss, rtol=1e-12)
      params = optax.apply_updates(params, jax.tree_util.tree_map(jnp.negative, direction))
      state = new_state
      bits.append(int(state.precision.bits))
    assert bits == [32, 64, 64, 64, 64]
    assert int(state.precision.switched_at) == 2


def test_the_switch_fires_on_a_float32_stall_and_float64_goes_further():
  """A linear fit with a non-zero residual: float32 stalls near its rounding, float64 ends
  at the float64 least-squares loss."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(30, 4)))
    y = jnp.asarray(rng.normal(size=30))
    apply_fn = lambda w, x: x @ w + 0.1 * jnp.tanh(x @ w)
    tx = rd.regression_descent(
      apply_fn, damping=rd.damping.levenberg_marquardt(), precision=rd.precision_switch()
    )
    params = jnp.zeros(4)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
    for _ in range(60):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
    rd_state = state[0]
    assert int(rd_state.precision.bits) == 64
    assert 0 < int(rd_state.precision.switched_at) < 60
    gradient = jax.grad(lambda w: 0.5 * jnp.sum((apply_fn(w, x) - y) ** 2))(params)
    assert float(jnp.linalg.norm(gradient)) < 1e-9


def test_precision_options_are_checked_by_name():
  for bad in (0.0, 1.0, -1e-3, float("nan"), "small", True):
    with pytest.raises(ValueError, match="rtol"):
      rd.precision_switch(rtol=bad)
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="patience"):
      rd.precision_switch(patience=bad)
  with pytest.raises(ValueError, match="precision must be None"):
    rd.regression_descent(models.mlp_apply, precision="float32")
  params, x, _ = models.mlp_problem(jax.random.PRNGKey(0), [3, 4, 1], m=5, dtype=jnp.float32)
  tx = rd.regression_descent(models.mlp_apply, precision=rd.precision_switch())
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="precision=.*x64"):
      tx.init(params)
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="precision=.*float64 parameters.*float32"):
      tx.init(params)


def test_without_precision_the_state_records_the_compute_dtype():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), [3, 4, 1], m=5, dtype=jnp.float32)
  state = rd.scale_by_regression_descent(models.mlp_apply).init(params)
  assert int(state.precision.bits) == 32 and int(state.precision.switched_at) == -1


def test_a_vmapped_switching_update_equals_single_runs():
  """jax.vmap over problems that switch at different updates (the cond becomes a select;
  with rtol=0.2 the first target switches after update 0, the others after update 1)."""
  with jax.enable_x64(True):
    params, x, _ = _problem()
    targets = jax.random.normal(jax.random.PRNGKey(5), (3, *_problem()[2].shape), jnp.float64)
    tx = _transform(precision=rd.precision_switch(rtol=0.2, patience=1))

    def run(y):
      def body(carry, _):
        p, s = carry
        direction, s = tx.update(None, s, p, batch=(x, y))
        return (optax.apply_updates(p, jax.tree_util.tree_map(jnp.negative, direction)), s), None

      (p, s), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=4)
      return p, s.precision.bits

    batched = jax.jit(jax.vmap(run))(targets)
    for i in range(3):
      single = jax.jit(run)(targets[i])
      _assert_tree_close(jax.tree_util.tree_map(lambda a, i=i: a[i], batched), single, rtol=1e-10)
