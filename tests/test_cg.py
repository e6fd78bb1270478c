"""`solver="cg"`: the RD step without K or JᵀJ, against the dense step in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import transform as transform_lib
from tests import models

SIZES = [3, 8, 4]  # p = 68
M = 12  # the dual system: m k = 48 unknowns


def _tight_cg(**kwargs):
  return rd.solvers.cg(rank=kwargs.pop("rank", 8), maxiter=400, tol=1e-12, **kwargs)


@pytest.mark.parametrize(
  "system,loss_name,examples,products",
  [
    ("dual", "mse", "independent", "network"),
    ("primal", "softmax_cross_entropy", "independent", "network"),
    ("dual", "softmax_cross_entropy", "coupled", "network"),
    ("primal", "mse", "coupled", "network"),
    ("dual", "softmax_cross_entropy", "independent", "jacobian"),
    ("primal", "mse", "independent", "jacobian"),
    ("dual", "mse", "coupled", "jacobian"),
  ],
)
def test_cg_step_is_the_dense_step(system, loss_name, examples, products):
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=jnp.float64)
    targets = y if loss_name == "mse" else jnp.arange(M) % SIZES[-1]
    options = dict(damping=1e-2, loss=loss_name, system=system, examples=examples)
    dense, dense_state = models.first_update(
      rd.scale_by_regression_descent(models.mlp_apply, **options), params, (x, targets)
    )
    cg, state = models.first_update(
      rd.scale_by_regression_descent(
        models.mlp_apply, solver=_tight_cg(products=products), **options
      ),
      params,
      (x, targets),
    )
    assert int(state.status) == int(dense_state.status) == transform_lib.STATUS_OK
    np.testing.assert_allclose(models.flat(cg), models.flat(dense), rtol=1e-9, atol=1e-12)
    assert 0 < int(state.solve_iterations) <= 400 and float(state.solve_residual) <= 1e-12
    assert int(dense_state.solve_iterations) == 0 and float(dense_state.solve_residual) == 0


def test_cg_with_levenberg_marquardt_trains_like_the_dense_solver():
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(1), SIZES, m=M, dtype=jnp.float64)
    finals = {}
    for name, solver in (
      ("cholesky", "cholesky"),
      ("cg", _tight_cg()),
      ("cg-jacobian", _tight_cg(products="jacobian")),
    ):
      tx = rd.regression_descent(
        models.mlp_apply, 1.0, damping=rd.damping.levenberg_marquardt(), solver=solver
      )

      @jax.jit
      def run(params, tx=tx):
        def body(carry, _):
          params, state = carry
          updates, state = tx.update(None, state, params, batch=(x, y))
          return (optax.apply_updates(params, updates), state), state[0].loss

        return jax.lax.scan(body, (params, tx.init(params)), None, length=10)

      (_, _), losses = run(params)
      finals[name] = np.asarray(losses)
    np.testing.assert_allclose(finals["cg"], finals["cholesky"], rtol=1e-6)
    np.testing.assert_allclose(finals["cg-jacobian"], finals["cholesky"], rtol=1e-6)
    assert finals["cg"][-1] < 0.1 * finals["cg"][0]


def _intermediate_sizes(fn, *args) -> set[int]:
  """The element counts of the values in the jaxpr of fn(*args), sub-jaxprs included."""
  sizes: set[int] = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        shape = getattr(var.aval, "shape", ())
        sizes.add(int(np.prod(shape)) if shape else 1)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            visit(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return sizes


@pytest.mark.parametrize("system", ["dual", "primal"])
def test_the_cg_step_holds_no_system_sized_matrix(system):
  # m k = 128 and p = 214: K (16,384 numbers) and JᵀJ (45,796) must not appear.
  # (With products="jacobian" J, 27,392 numbers, does.)
  params, x, y = models.mlp_problem(jax.random.PRNGKey(2), [2, 30, 4], m=32, dtype=jnp.float32)
  n = 32 * 4 if system == "dual" else 214
  cases = (
    (rd.solvers.cg(rank=10, products="network"), False),
    # J itself (m k p = 29,184 numbers) is allowed, its square is not.
    (rd.solvers.cg(rank=10, products="jacobian"), False),
    ("cholesky", True),
  )
  for solver, expect_matrix in cases:
    tx = rd.regression_descent(
      models.mlp_apply,
      1.0,
      damping=rd.damping.levenberg_marquardt(),
      solver=solver,
      system=system,
    )
    sizes = _intermediate_sizes(
      lambda p, s, tx=tx: tx.update(None, s, p, batch=(x, y)), params, tx.init(params)
    )
    assert (n * n in sizes) == expect_matrix, (solver, sorted(sizes)[-5:], n * n)
    if not isinstance(solver, str) and solver.products == "network":
      assert max(sizes) < n * n  # not even J


def test_cg_refuses_what_needs_a_matrix_or_several_systems():
  apply_fn = models.mlp_apply
  for damping in (rd.damping.gcv(), rd.damping.backtracking(rd.damping.gcv())):
    with pytest.raises(ValueError, match="gcv"):
      rd.regression_descent(apply_fn, damping=damping, solver="cg")
  with pytest.raises(ValueError, match="outputs='full'"):
    rd.regression_descent(apply_fn, solver="cg", outputs="per_output")
  with pytest.raises(ValueError, match="outputs='full'"):
    rd.regression_descent(apply_fn, solver="cg", outputs="sketched", sketch_size=1)
  # A linearised problem built for cg has no matrix to decompose.
  params, x, y = models.mlp_problem(jax.random.PRNGKey(3), [2, 4, 2], m=5, dtype=jnp.float32)
  problem = rd.linearize(apply_fn, params, x, y, loss=rd.losses.get("mse"), solver="cg")
  assert problem.matrix is None
  with pytest.raises(ValueError, match="matrix-free"):
    problem.eigen()


def test_cg_that_stops_at_maxiter_is_reported_and_still_judged():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(4), SIZES, m=M, dtype=jnp.float32)
  tx = rd.regression_descent(
    models.mlp_apply,
    1.0,
    damping=rd.damping.levenberg_marquardt(initial=1e-6),
    solver=rd.solvers.cg(rank=0, maxiter=2, tol=1e-10),
  )
  _, state = models.first_update(tx, params, (x, y))
  rd_state = state[0]
  assert int(rd_state.solve_iterations) == 2 and float(rd_state.solve_residual) > 1e-10
  assert int(rd_state.status) in (transform_lib.STATUS_OK, transform_lib.STATUS_REJECTED)
  assert bool(rd_state.solve_ok)
