"""Tests of `rdescent.solvers`: the damped solves against dense float64 NumPy."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rdescent as rd
from rdescent import solvers as solve_lib


@jax.jit
def _eigen_solve(matrix, rhs, damping):
  return solve_lib.eigen_solve(solve_lib.eigen_decomposition(matrix), rhs, damping)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(st.integers(1, 6), st.integers(1, 6), st.floats(1e-6, 10.0), st.booleans())
def test_eigen_solve_equals_dense_solve(n, rank, damping, batched):
  with jax.enable_x64(True):
    rng = np.random.default_rng(n * 10 + rank)
    batch = (3,) if batched else ()
    factor = rng.standard_normal(batch + (n, rank))
    matrix = factor @ np.swapaxes(factor, -1, -2)  # PSD of rank min(n, rank)
    rhs = rng.standard_normal(batch + (n,))
    result = _eigen_solve(matrix, rhs, damping)
    expected = np.linalg.solve(matrix + damping * np.eye(n), rhs[..., None])[..., 0]
    np.testing.assert_allclose(result.solution, expected, rtol=1e-8, atol=1e-10)
    assert bool(result.ok)
    assert not bool(_eigen_solve(matrix, rhs, -1e3).ok)  # λ + min s ≤ 0


def _dense_gcv(jacobian, residual, damping):
  """N ‖(I − S) r‖² / (N − tr S)², S = J (JᵀJ + λI)⁻¹ Jᵀ, in float64."""
  n, p = jacobian.shape
  influence = jacobian @ np.linalg.solve(jacobian.T @ jacobian + damping * np.eye(p), jacobian.T)
  left = residual - influence @ residual
  return n * (left @ left) / (n - np.trace(influence)) ** 2


def test_gcv_scores_equal_the_dense_formula_in_both_forms():
  with jax.enable_x64(True):
    kj, kr = jax.random.split(jax.random.PRNGKey(4))
    jacobian = np.asarray(jax.random.normal(kj, (9, 5), jnp.float64))  # N = 9, p = 5
    residual = np.asarray(jax.random.normal(kr, (9,), jnp.float64))
    grid = np.logspace(-4, 2, 13)
    expected = [_dense_gcv(jacobian, residual, lam) for lam in grid]

    @jax.jit
    def scores(jacobian, residual, grid):
      dual = solve_lib.eigen_decomposition(jacobian @ jacobian.T)
      primal = solve_lib.eigen_decomposition(jacobian.T @ jacobian)
      return (
        solve_lib.gcv_scores(dual, residual, grid, form="dual"),
        solve_lib.gcv_scores(
          primal,
          jacobian.T @ residual,
          grid,
          form="primal",
          residual_sq_norm=jnp.sum(jnp.square(residual)),
          num_residuals=9,
        ),
      )

    dual, primal = scores(jacobian, residual, grid)
    np.testing.assert_allclose(dual, expected, rtol=1e-9)
    np.testing.assert_allclose(primal, expected, rtol=1e-9)


def test_gcv_scores_of_blocks_equal_the_block_diagonal_regression():
  with jax.enable_x64(True):
    kj, kr = jax.random.split(jax.random.PRNGKey(5))
    blocks = np.asarray(jax.random.normal(kj, (3, 6, 4), jnp.float64))  # k = 3 outputs
    residual = np.asarray(jax.random.normal(kr, (3, 6), jnp.float64))
    dense = np.zeros((18, 12))
    for c in range(3):
      dense[6 * c : 6 * c + 6, 4 * c : 4 * c + 4] = blocks[c]
    grid = np.logspace(-3, 1, 7)
    scores = jax.jit(
      lambda a, b, g: solve_lib.gcv_scores(solve_lib.eigen_decomposition(a), b, g, form="dual")
    )(np.einsum("cip,cjp->cij", blocks, blocks), residual, grid)
    expected = [_dense_gcv(dense, residual.reshape(-1), lam) for lam in grid]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)


def test_cholesky_jitter_solves_a_singular_float32_system():
  v = jax.random.normal(jax.random.PRNGKey(2), (30, 2))
  matrix = v @ v.T  # rank 2, PSD, λ = 0 fails in float32
  rhs = matrix @ jnp.ones(30)
  plain = solve_lib.damped_cholesky_solve(matrix, rhs, 0.0, max_jitter_tries=0)
  result = solve_lib.damped_cholesky_solve(matrix, rhs, 0.0)
  assert bool(result.ok) and float(result.jitter) >= 0
  if not bool(plain.ok):
    assert float(result.jitter) > 0
  np.testing.assert_allclose(
    matrix @ result.solution, rhs, rtol=0, atol=1e-2 * float(jnp.max(jnp.abs(rhs)))
  )
  bad = solve_lib.damped_cholesky_solve(matrix.at[0, 0].set(jnp.nan), rhs, 0.0)
  assert not bool(bad.ok)


@pytest.mark.parametrize("several_devices", [False, True])
def test_batched_solves_loop_over_matrices_when_cpu_devices_share_the_pool(
  monkeypatch, several_devices
):
  # With several CPU devices in the process, batched LAPACK kernels can starve
  # the thread pool that runs the devices (rdescent._batch_linalg): the CPU
  # lowering then factorises one matrix at a time, with the same results.
  from rdescent import _batch_linalg

  monkeypatch.setattr(_batch_linalg, "several_cpu_devices", lambda: several_devices)
  v = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 12, 5))
  matrix = v @ jnp.swapaxes(v, -1, -2)  # (2, 3) batch of rank-5 12 × 12 PSD
  rhs = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 12))
  solve = jax.jit(lambda a, b: solve_lib.damped_cholesky_solve(a, b, 0.1))
  result = solve(matrix, rhs)
  assert bool(result.ok)
  expected = np.linalg.solve(
    np.asarray(matrix, np.float64) + 0.1 * np.eye(12), np.asarray(rhs, np.float64)[..., None]
  )[..., 0]
  np.testing.assert_allclose(result.solution, expected, rtol=2e-4, atol=1e-5)
  eig = jax.jit(solve_lib.eigen_decomposition)(matrix)
  np.testing.assert_allclose(
    eig.values, np.linalg.eigvalsh(np.asarray(matrix, np.float64)), rtol=1e-4, atol=1e-4
  )
  hlo = solve.lower(matrix, rhs).compile().as_text()
  factor_lines = [line for line in hlo.splitlines() if "potrf" in line and "custom-call(" in line]
  assert factor_lines
  batched = [line for line in factor_lines if "[6,12,12]" in line]
  assert bool(batched) != several_devices, factor_lines


@pytest.mark.parametrize("name", sorted(rd.solvers.SOLVERS))
def test_every_solver_solves_the_damped_system_like_numpy(name):
  with jax.enable_x64(True):
    rng = np.random.default_rng(7)
    factor = rng.standard_normal((2, 8, 3))
    matrix = factor @ np.swapaxes(factor, -1, -2)  # two rank-3 PSD blocks
    rhs = rng.standard_normal((2, 8))
    solver = rd.solvers.get(name)
    assert solver.name == name

    @jax.jit
    def solve(matrix, rhs, damping):
      if not solver.matrix_free:
        return solver.solve(solver.prepare(matrix), rhs, damping)
      # One system per operator: the two blocks in turn, from their products.
      results = [
        solver.solve(
          solver.prepare(rd.solvers.LinearOperator(lambda v, a=a: a @ v, 8, a.dtype)), b, damping
        )
        for a, b in zip(matrix, rhs)
      ]
      return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *results)

    # cg stops at its default tolerance, a relative residual of √ε.
    rtol = 1e-6 if solver.matrix_free else 1e-8
    for damping in (1e-3, 1.0, 10.0):
      result = solve(matrix, rhs, damping)
      expected = np.linalg.solve(matrix + damping * np.eye(8), rhs[..., None])[..., 0]
      np.testing.assert_allclose(result.solution, expected, rtol=rtol, atol=1e-10)
      assert bool(jnp.all(result.ok)) and float(jnp.max(result.jitter)) == 0.0


def test_cholesky_strategy_is_damped_cholesky_solve():
  v = jax.random.normal(jax.random.PRNGKey(3), (9, 4))
  matrix, rhs = v @ v.T, jnp.arange(9.0)
  solver = rd.solvers.cholesky(max_jitter_tries=2)
  got = solver.solve(solver.prepare(matrix), rhs, 0.5)
  expected = solve_lib.damped_cholesky_solve(matrix, rhs, 0.5, max_jitter_tries=2)
  np.testing.assert_array_equal(got.solution, expected.solution)
  assert bool(got.ok) == bool(expected.ok)


def test_get_names_the_choices():
  assert isinstance(rd.solvers.get("eigh"), rd.solvers.Solver)
  solver = rd.solvers.cholesky()
  assert rd.solvers.get(solver) is solver
  with pytest.raises(ValueError, match="solver must be one of"):
    rd.solvers.get("qr")
  with pytest.raises(ValueError, match="max_jitter_tries"):
    rd.solvers.cholesky(max_jitter_tries=-1)
  with pytest.raises(ValueError, match="products must be one of"):
    rd.solvers.cg(products="dense")
  assert rd.solvers.cg(products="jacobian").products == "jacobian"
  with pytest.raises(ValueError, match="solver must be one of"):
    rd.regression_descent(lambda p, x: x @ p, solver="lu")


def _ill_conditioned(n=40, p=120, seed=0):
  rng = np.random.default_rng(seed)
  jacobian = rng.standard_normal((n, p)) * np.logspace(0, -4, p)
  return jacobian @ jacobian.T, rng.standard_normal(n)


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
  rank=st.sampled_from([0, 5, 20, 40]),
  log_damping=st.floats(-6, 1),
  seed=st.integers(0, 5),
)
@hypothesis.example(rank=0, log_damping=0.5, seed=2)  # a CI draw: a 5e-6 component off by 9e-9
def test_preconditioned_cg_equals_the_dense_solve_in_float64(rank, log_damping, seed):
  with jax.enable_x64(True):
    matrix, rhs = _ill_conditioned(seed=seed)
    damping = 10.0**log_damping
    operator = rd.solvers.LinearOperator(lambda v: jnp.asarray(matrix) @ v, 40, jnp.float64)
    solver = rd.solvers.cg(rank=rank, maxiter=400, tol=1e-12)
    result = jax.jit(solver.solve)(solver.prepare(operator), jnp.asarray(rhs), damping)
    expected = np.linalg.solve(matrix + damping * np.eye(40), rhs)
    condition = np.linalg.cond(matrix + damping * np.eye(40))
    # CG stops on the residual, ||b - A x|| <= tol ||b||, which bounds the error
    # norm-wise: ||x - x*|| / ||x*|| <= cond(A) tol. Tiny components of x* carry
    # no element-wise guarantee.
    error = np.linalg.norm(np.asarray(result.solution) - expected) / np.linalg.norm(expected)
    assert error <= 1e-12 * condition + 1e-10, (error, condition)
    assert bool(result.ok) and float(result.residual) <= 1e-12
    assert 0 < int(result.iterations) <= 400


def test_nystrom_preconditioner_captures_a_low_rank_matrix_and_cuts_iterations():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    factor = rng.standard_normal((50, 8)) * np.logspace(0, -3, 8)
    matrix = jnp.asarray(factor @ factor.T)  # rank 8
    operator = rd.solvers.LinearOperator(lambda v: matrix @ v, 50, jnp.float64)
    pre = rd.solvers.nystrom(operator, 10, jax.random.key(0))
    approx = pre.basis @ jnp.diag(pre.eigenvalues) @ pre.basis.T
    np.testing.assert_allclose(approx, matrix, atol=1e-10 * float(jnp.max(jnp.abs(matrix))))
    rhs = jnp.asarray(rng.standard_normal(50))
    iterations = {}
    for rank in (0, 10):
      solver = rd.solvers.cg(rank=rank, maxiter=500, tol=1e-10)
      iterations[rank] = int(solver.solve(solver.prepare(operator), rhs, 1e-6).iterations)
    assert iterations[10] <= 3 < iterations[0], iterations


def test_cg_that_stops_early_says_how_far_it_got_and_checks_its_arguments():
  with jax.enable_x64(True):
    matrix, rhs = _ill_conditioned()
    operator = rd.solvers.LinearOperator(lambda v: jnp.asarray(matrix) @ v, 40, jnp.float64)
    solver = rd.solvers.cg(rank=0, maxiter=3, tol=1e-12)
    # Stopped at maxiter having halved the residual: a usable (inexact) solution.
    result = solver.solve(solver.prepare(operator), jnp.asarray(rhs), 10.0)
    assert int(result.iterations) == 3 and 1e-12 < float(result.residual) <= 0.5
    assert bool(result.ok)
    # Stopped with a residual above ‖b‖/2 (x = 0 has ‖b‖): a failed solve (issue 27).
    result = solver.solve(solver.prepare(operator), jnp.asarray(rhs), 1e-6)
    assert int(result.iterations) == 3 and float(result.residual) > 0.5
    assert not bool(result.ok)
  for kwargs, match in (
    (dict(rank=-1), "rank"),
    (dict(maxiter=0), "maxiter"),
    (dict(tol=2.0), "tol"),
    (dict(seed=1.5), "seed"),
  ):
    with pytest.raises(ValueError, match=match):
      rd.solvers.cg(**kwargs)
  with pytest.raises(TypeError, match="LinearOperator"):
    rd.solvers.cg().prepare(jnp.eye(3))


def _solve_with(solver, matrix, rhs, damping):
  if solver.matrix_free:
    size = matrix.shape[-1]
    prepared = solver.prepare(rd.solvers.LinearOperator(lambda v: matrix @ v, size, matrix.dtype))
  else:
    prepared = solver.prepare(matrix)
  return jax.jit(solver.solve)(prepared, rhs, damping)


@pytest.mark.parametrize(
  "name, solver",
  [
    ("cholesky", rd.solvers.cholesky()),
    ("cholesky_without_jitter", rd.solvers.cholesky(max_jitter_tries=0)),
    ("eigh", rd.solvers.eigh()),
    ("cg", rd.solvers.cg()),
  ],
)
def test_every_solver_reports_a_solve_that_round_off_wrecked(name, solver):
  """Issue 27: `ok` agrees with the float64 truth of the float32 solution, λ from 1e-12 to 1e2.

  A is rank 4 of size 16 with ‖A‖ ≈ 2e4 and b leans on its null space: below
  λ ≈ ε ‖A‖ the float32 solves are wrecked (relative residual against the
  float64 matrix up to 1e8). Whenever a solver says ok, its solution's true
  relative residual is below 1 and ‖x‖ ≤ 2‖b‖/λ (the shared rule allows ½, the
  rest is float32 round-off); a wrecked one (residual above 10) is never ok.
  """
  rng = np.random.default_rng(0)
  factor = rng.standard_normal((16, 4)) * 30
  matrix64, rhs64 = factor @ factor.T, rng.standard_normal(16)
  matrix, rhs = jnp.asarray(matrix64, jnp.float32), jnp.asarray(rhs64, jnp.float32)
  oks, wrecked = [], []
  for damping in 10.0 ** np.arange(-12.0, 3.0):
    result = _solve_with(solver, matrix, rhs, damping)
    used = damping + float(result.jitter)
    x = np.asarray(result.solution, np.float64)
    residual = np.linalg.norm(matrix64 @ x + used * x - rhs64) / np.linalg.norm(rhs64)
    if bool(result.ok):
      assert residual < 1.0 and used * np.linalg.norm(x) <= 2 * np.linalg.norm(rhs64), damping
    oks.append(bool(result.ok))
    wrecked.append(not np.isfinite(residual) or residual > 10.0)
  assert all(oks[-3:])  # λ ≥ 1: well posed in float32
  assert not any(ok and bad for ok, bad in zip(oks, wrecked))
  if name == "cholesky":
    assert all(oks)  # the jitter retries repair every small λ
  else:
    assert not any(oks[:6])  # λ ≤ 1e-7 ≈ ε ‖A‖ / 10⁴: refused


def test_the_shared_rule_bounds_the_solution_by_the_damping():
  """‖(A + λI)⁻¹ b‖ ≤ ‖b‖/λ for PSD A (float64), and the rule flags twice that."""
  from rdescent.solvers import _health

  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    factor = rng.standard_normal((10, 3))
    matrix, rhs = factor @ factor.T, rng.standard_normal(10)
    for damping in (1e-9, 1e-3, 1.0, 1e3):
      exact = np.linalg.solve(matrix + damping * np.eye(10), rhs)
      assert np.linalg.norm(exact) <= np.linalg.norm(rhs) / damping * (1 + 1e-12)
      zero = jnp.zeros(())
      assert bool(_health.healthy(jnp.asarray(exact), jnp.asarray(rhs), damping, zero))
      too_long = 2.5 * np.linalg.norm(rhs) / damping * exact / np.linalg.norm(exact)
      assert not bool(_health.healthy(jnp.asarray(too_long), jnp.asarray(rhs), damping, zero))
    assert not bool(_health.healthy(jnp.asarray(rhs), jnp.asarray(rhs), 0.0, jnp.asarray(0.6)))
    assert not bool(_health.healthy(jnp.asarray(rhs) * jnp.nan, jnp.asarray(rhs), 1.0, zero))
    assert bool(_health.healthy(jnp.zeros(10), jnp.zeros(10), 1.0, jnp.asarray(0.0)))


def test_jax_grad_differentiates_through_the_cholesky_retries():
  """The jitter retries are a fixed-count loop: reverse mode works through a failing solve."""
  factor = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
  matrix, rhs = factor @ factor.T, jnp.arange(6.0)

  def loss(scale):
    # λ = 0 on a rank-2 matrix: the first factorisation fails, a retry succeeds.
    result = solve_lib.damped_cholesky_solve(scale * matrix, rhs, 0.0)
    return jnp.sum(result.solution**2), result

  (value, result), grad = jax.value_and_grad(loss, has_aux=True)(1.0)
  assert bool(result.ok) and float(result.jitter) > 0
  assert np.isfinite(float(grad)) and np.isfinite(float(value))
  # The healthy path too, against a central difference in float64.
  with jax.enable_x64(True):
    m64, b64 = jnp.asarray(matrix, jnp.float64), jnp.asarray(rhs, jnp.float64)
    f = lambda s: jnp.sum(solve_lib.damped_cholesky_solve(s * m64, b64, 0.5).solution ** 2)
    numeric = (f(1.0 + 1e-6) - f(1.0 - 1e-6)) / 2e-6
    np.testing.assert_allclose(jax.grad(f)(1.0), numeric, rtol=1e-6)
