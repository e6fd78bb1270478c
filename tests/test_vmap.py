"""Many independent problems at once: `jax.vmap` of `init` / `update` equals single runs.

A batch of small least-squares problems (different starts and targets) runs
as one vmapped `lax.scan` of 20 updates, and as the same scan on each problem
alone (`lax.map`, unbatched); iterates, losses, λ and statuses agree, for
every damping controller and wrapper, every solver (Cholesky with its jitter
retries, eigh, cg), with termination tests, and for a model with independent
examples (the structured Gram engine). The while loops inside a step
(`levenberg_marquardt`, `backtracking`, Cholesky's retries, cg) run until
every problem of the batch is done; the problems that finish early keep
their result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from tests import models

STEPS = 20
PROBLEMS = 6


def _residuals(x, inputs):
  """A Rosenbrock-type residual with a third, conflicting row: the minimum has r ≠ 0."""
  del inputs
  return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0], 0.3 * (x[0] + x[1])])


def _starts_and_targets():
  rng = np.random.default_rng(0)
  starts = rng.uniform(-2.0, 2.0, size=(PROBLEMS, 2))
  targets = np.zeros((PROBLEMS, 3))
  targets[:, 2] = rng.uniform(-1.0, 1.0, size=PROBLEMS)
  return jnp.asarray(starts), jnp.asarray(targets)


def _trajectory(tx, inputs):
  """One problem: (params, inputs, targets) ↦ the trace of STEPS updates."""

  def run(params, problem_inputs, targets):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(None, state, params, batch=(problem_inputs, targets))
      rd_state = state[0]
      trace = (rd_state.loss, rd_state.damping, rd_state.status, rd_state.solve_iterations)
      return (optax.apply_updates(params, updates), state), trace

    (params, _), trace = jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)
    return params, trace

  del inputs
  return run


def _compare(tx, params, inputs, targets, *, rtol=1e-9, damping_rtol=None):
  """Vmapped against one problem at a time, in one compiled function."""
  run = _trajectory(tx, inputs)
  in_axes = (0, None if inputs is None else 0, 0)

  @jax.jit
  def both(params, inputs, targets):
    batched = jax.vmap(run, in_axes=in_axes)(params, inputs, targets)
    if inputs is None:
      single = jax.lax.map(lambda a: run(a[0], None, a[1]), (params, targets))
    else:
      single = jax.lax.map(lambda a: run(*a), (params, inputs, targets))
    return batched, single

  (batched_params, batched_trace), (single_params, single_trace) = both(params, inputs, targets)
  for batched_leaf, single_leaf in zip(
    jax.tree_util.tree_leaves(batched_params), jax.tree_util.tree_leaves(single_params)
  ):
    np.testing.assert_allclose(batched_leaf, single_leaf, rtol=rtol, atol=1e-12)
  loss, damping, status, iterations = batched_trace
  single_loss, single_damping, single_status, single_iterations = single_trace
  np.testing.assert_array_equal(status, single_status)
  np.testing.assert_array_equal(iterations, single_iterations)
  np.testing.assert_allclose(loss, single_loss, rtol=rtol, atol=1e-12)
  # λ to 1e-6 of its largest value: near a minimum the gradient-proportional rule's
  # λ = μ ‖Jᵀr‖^½ is made of a gradient at rounding level (any summation order changes it).
  damping_scale = float(np.max(np.abs(single_damping)))
  np.testing.assert_allclose(
    damping, single_damping, rtol=damping_rtol or rtol, atol=1e-6 * damping_scale
  )
  return np.asarray(status), np.asarray(loss)


CONTROLLERS = {
  "constant": lambda: 1e-3,
  "schedule": lambda: optax.exponential_decay(1e-1, 10, 0.5),
  "next_batch_ratio": lambda: rd.damping.next_batch_ratio(initial=1e-3),
  "levenberg_marquardt": lambda: rd.damping.levenberg_marquardt(),
  "residual_proportional": lambda: rd.damping.residual_proportional(),
  "gradient_proportional": lambda: rd.damping.gradient_proportional(),
  "gcv": lambda: rd.damping.gcv(),
  "backtracking": lambda: rd.damping.backtracking(rd.damping.constant(1e-3)),
  "cap_logit_change": lambda: rd.damping.cap_logit_change(
    rd.damping.levenberg_marquardt(), bound=0.5
  ),
  "spring": lambda: rd.damping.spring(rd.damping.levenberg_marquardt(), 0.5),
}


# In the default suite: backtracking's while loop here, levenberg_marquardt's in the
# termination test below; the others (one compile each, 3-8 s on a busy 2-core
# machine) with --run-slow.
FAST_CONTROLLERS = ("backtracking",)


def _cases(names, fast):
  return [
    pytest.param(name, marks=() if name in fast else pytest.mark.slow) for name in sorted(names)
  ]


@pytest.mark.parametrize("name", _cases(CONTROLLERS, FAST_CONTROLLERS))
def test_every_controller_vmapped_equals_single_runs(name):
  with jax.enable_x64(True):
    starts, targets = _starts_and_targets()
    tx = rd.regression_descent(_residuals, damping=CONTROLLERS[name](), examples="coupled")
    status, _ = _compare(tx, starts, None, targets)
    assert np.all(np.isin(status, [0, 4, 6]))


# Cholesky (the default) is the controllers' test above.
SOLVERS = {
  "eigh": lambda: dict(solver="eigh"),
  "cg": lambda: dict(solver=rd.solvers.cg(rank=2, maxiter=20, products="network")),
  "cg/jacobian": lambda: dict(solver=rd.solvers.cg(rank=2, maxiter=20, products="jacobian")),
}


@pytest.mark.parametrize("name", _cases(SOLVERS, ("cg",)))
def test_every_solver_with_levenberg_marquardt_vmapped_equals_single_runs(name):
  with jax.enable_x64(True):
    starts, targets = _starts_and_targets()
    tx = rd.regression_descent(
      _residuals,
      damping=rd.damping.levenberg_marquardt(),
      examples="coupled",
      **SOLVERS[name](),
    )
    if name.startswith("cg"):
      # An inexact solve: at the minimum LM's ρ is a ratio of rounding-level decreases,
      # and Nielsen's λ update follows it (the iterates agree to 1e-7).
      _compare(tx, starts, None, targets, rtol=1e-7, damping_rtol=1e-2)
    else:
      _compare(tx, starts, None, targets)


def _residuals_with_a_zero_row(x, inputs):
  del inputs
  return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0], 0.0 * x[0]])


def test_cholesky_jitter_retries_vmapped_equal_single_runs():
  # λ = 0 on a dual system with an exactly zero row (K is 3 × 3 of rank 2): every
  # factorisation fails and is retried with jitter inside the step's while loop. (A
  # K that is singular only to rounding would amplify any difference of summation
  # order by 1 / jitter ≈ 1 / (100 ε): no fair comparison.)
  with jax.enable_x64(True):
    starts, _ = _starts_and_targets()
    targets = jnp.zeros((PROBLEMS, 3))
    tx = rd.regression_descent(
      _residuals_with_a_zero_row, damping=0.0, examples="coupled", system="dual"
    )
    status, _ = _compare(tx, starts, None, targets)
    assert np.any(status == 0)


def test_termination_vmapped_equals_single_runs():
  with jax.enable_x64(True):
    starts, targets = _starts_and_targets()
    tx = rd.regression_descent(
      _residuals,
      damping=rd.damping.levenberg_marquardt(),
      examples="coupled",
      termination=rd.termination(),
    )
    status, _ = _compare(tx, starts, None, targets)
    assert np.any(status == rd.STATUS_CONVERGED)


def test_a_model_with_independent_examples_vmapped_equals_single_runs():
  # Multi-start: an MLP 2-4-2 (structured Gram), 3 initialisations and data sets.
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    problems = [models.mlp_problem(key, (2, 4, 2), m=6, dtype=jnp.float64) for key in keys]
    params = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[p[0] for p in problems])
    inputs = jnp.stack([p[1] for p in problems])
    targets = jnp.stack([p[2] for p in problems])
    tx = rd.regression_descent(models.mlp_apply, damping=rd.damping.levenberg_marquardt())
    _compare(tx, params, inputs, targets)
