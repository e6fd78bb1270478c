"""Damped Cholesky solves with a bounded jitter retry (the default solver).

The solve is a Cholesky factorisation (`jax.scipy.linalg.cho_factor` /
`cho_solve`) of A + λI. A factorisation that fails (A + λI not numerically
positive definite, or non-finite input) produces NaN in the factor rather
than an exception; it is reported through `SolveResult.ok` so that callers
can reject the step inside compiled code. A factorisation that succeeds is
still judged by the rule every solver shares (`rdescent.solvers._health`):
its residual ‖(A + λI) x − b‖ / ‖b‖ (one product with A + λI) and
‖x‖ ≤ 2‖b‖/λ; with λ below A's resolution (λ ≲ ε ‖A‖) a factorisation can
succeed and still return a solution that round-off has wrecked.

Before giving up, `damped_cholesky_solve` retries a failed solve of a
finite matrix with a diagonal jitter, τ_j = 100^j ε · tr(A)/n for
j = 1, …, `max_jitter_tries` (ε the dtype's machine epsilon): a rank-deficient
K with λ = 0, or a float32 factorisation near convergence, is then solved with
the smallest extra damping that works, reported as `SolveResult.jitter`.

Cost: n³/3 flops per factorisation, n² memory, for every trial λ.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import linalg as jsp_linalg

from rdescent import _batch_linalg
from rdescent.solvers import _health
from rdescent.solvers._base import SolveResult
from rdescent.solvers._base import Solver

MAX_JITTER_TRIES = 3


def _factor_and_solve(damped: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(C, x): the Cholesky factor of one damped matrix and x = (A + λI)⁻¹ b."""
  factor = jsp_linalg.cho_factor(damped, lower=True)
  return factor[0], jsp_linalg.cho_solve(factor, rhs)


def _cholesky_solve(
  damped: jax.Array, rhs: jax.Array, damping: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """x = (A + λI)⁻¹ b for an already damped, symmetric A; batched; (x, ok).

  A failed factorisation fills the whole factor with NaN (`jax.lax.linalg.
  cholesky`), and a non-finite input reaches the factor's diagonal, so the
  diagonal (n numbers) tells the factor's health without a pass over the n²
  factor (which would also cost a layout copy of it on CPU). A factorisation
  that succeeds is then judged by the shared rule (`rdescent.solvers.
  _health`): its residual ‖(A + λI) x − b‖, one product with the damped
  matrix, and ‖x‖ ≤ 2‖b‖/λ, where `damping` is the λ inside `damped`.
  """
  factor, solution = _batch_linalg.map_over_batch(_factor_and_solve, damped, rhs, core_ndims=(2, 1))
  diagonal = jnp.diagonal(factor, axis1=-2, axis2=-1)
  residual = jnp.einsum("...ij,...j->...i", damped, solution) - rhs
  ok = jnp.all(jnp.isfinite(diagonal)) & _health.healthy(
    solution, rhs, damping, _health.relative_residual(residual, rhs)
  )
  return solution, ok


def _solve_lower(
  matrix: jax.Array,
  rhs: jax.Array,
  damping: jax.Array | float,
  max_jitter_tries: int,
) -> SolveResult:
  """`damped_cholesky_solve`: the factorisation reads the lower triangle of A only."""
  damping = jnp.asarray(damping, matrix.dtype)
  solution, ok, jitter = _differentiable_solve(matrix, rhs, damping, max_jitter_tries)
  return SolveResult(solution=solution, ok=ok, jitter=jitter)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _differentiable_solve(
  matrix: jax.Array, rhs: jax.Array, damping: jax.Array, max_jitter_tries: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x, ok, jitter) of `_retried_solve`, differentiated by its own rule (below).

  Reverse mode cannot go through the retries' `lax.while_loop`, and through
  a failed first factorisation it would multiply zero cotangents by NaN.
  """
  result = _retried_solve(matrix, rhs, damping, max_jitter_tries)
  return result.solution, result.ok, result.jitter


@_differentiable_solve.defjvp
def _differentiable_solve_jvp(max_jitter_tries, primals, tangents):
  """Implicit differentiation of (A + μI) x = b, μ = λ + jitter (the jitter held fixed).

      dx = (A + μI)⁻¹ (db − dA x − dλ x),

  one more factorisation of the matrix that solved (only when differentiating).
  The tangent is zero where the solve failed (the step is not applied there).
  """
  matrix, rhs, damping = primals
  matrix_dot, rhs_dot, damping_dot = tangents
  solution, ok, jitter = _differentiable_solve(matrix, rhs, damping, max_jitter_tries)
  size, dtype = matrix.shape[-1], matrix.dtype
  eye = jnp.eye(size, dtype=dtype)
  safe_solution = jnp.where(ok, solution, 0.0)
  safe_matrix = jnp.where(ok, matrix + (damping + jitter) * eye, eye)
  change = (
    rhs_dot
    - jnp.einsum("...ij,...j->...i", matrix_dot, safe_solution)
    - damping_dot * safe_solution
  )
  _, solution_dot = _batch_linalg.map_over_batch(
    _factor_and_solve, safe_matrix, change, core_ndims=(2, 1)
  )
  solution_dot = jnp.where(ok, solution_dot, 0.0)
  ok_dot = np.zeros(np.shape(ok), dtype=jax.dtypes.float0)
  return (solution, ok, jitter), (solution_dot, ok_dot, jnp.zeros_like(jitter))


def _retried_solve(
  matrix: jax.Array, rhs: jax.Array, damping: jax.Array, max_jitter_tries: int
) -> SolveResult:
  """The first factorisation, then the jitter retries if it failed."""
  size = matrix.shape[-1]
  dtype = matrix.dtype
  damped = matrix + damping * jnp.eye(size, dtype=dtype)
  solution, ok = _cholesky_solve(damped, rhs, damping)
  no_jitter = jnp.zeros([], dtype)
  if max_jitter_tries < 1:
    return SolveResult(solution=solution, ok=ok, jitter=no_jitter)

  def retries(operands):
    # Only reached when the first solve failed. Everything the retries need
    # is derived here from the damped matrix, the one n² buffer that crosses
    # into the branch (XLA copies it once, before the in-place
    # factorisation): passing A instead would make XLA recompute A, for K a
    # fused sum of one product per layer, for the branch's operand, and a
    # closed-over identity would be materialised.
    damped, rhs, solution = operands
    eye = jnp.eye(size, dtype=dtype)
    diagonal = jnp.diagonal(damped, axis1=-2, axis2=-1) - damping
    scale = jnp.maximum(jnp.max(jnp.mean(jnp.abs(diagonal), axis=-1)), jnp.finfo(dtype).tiny)
    base = jnp.finfo(dtype).eps * scale
    finite_matrix = jnp.all(jnp.isfinite(damped)) & jnp.all(jnp.isfinite(rhs))

    def cond(carry):
      tries, _, solved, _ = carry
      return (~solved) & finite_matrix & (tries < max_jitter_tries)

    def body(carry):
      tries, _, _, _ = carry
      jitter = base * jnp.asarray(100.0, dtype) ** (tries + 1).astype(dtype)
      retry, retry_ok = _cholesky_solve(damped + jitter * eye, rhs, damping + jitter)
      return tries + 1, retry, retry_ok, jitter

    start = (jnp.asarray(0), solution, jnp.asarray(False), no_jitter)
    _, solution, solved, jitter = lax.while_loop(cond, body, start)
    return solution, solved, jitter

  def first_attempt(operands):
    return operands[2], jnp.asarray(True), no_jitter

  # A cond, not a while loop whose body never runs: XLA:CPU copies a while
  # loop's loop-invariant operands (here n² matrices, in LAPACK's column-major
  # layout) into the loop even when it exits at once; at n = 1280 that cost
  # as much as the factorisation itself.
  solution, ok, jitter = lax.cond(ok, first_attempt, retries, (damped, rhs, solution))
  return SolveResult(solution=solution, ok=ok, jitter=jitter)


def damped_cholesky_solve(
  matrix: jax.Array,
  rhs: jax.Array,
  damping: jax.Array | float,
  *,
  max_jitter_tries: int = MAX_JITTER_TRIES,
) -> SolveResult:
  """Solves (A + λI) x = b by Cholesky; batched over leading axes of A.

  A failed solve of a finite A (a failed factorisation, or a solution that
  fails the shared health rule, `rdescent.solvers._health`) is retried
  (inside compiled code, in a bounded `lax.while_loop` reached only on
  failure) with λ + τ_j,
  τ_j = 100^j ε tr(A)/n, for j = 1, …, `max_jitter_tries`; see the module
  docstring. The factorisation reads the lower triangle of A only (the
  health check's residual reads all of it).

  Differentiable (`jax.grad`, `jax.jvp`) by implicit differentiation of the
  system that solved, dx = (A + μI)⁻¹ (db − dA x − dλ x) with μ = λ + τ (the
  jitter held fixed); the tangent is zero where the solve failed.

  Args:
    matrix: A, shape (..., n, n), symmetric positive semi-definite.
    rhs: b, shape (..., n).
    damping: λ ≥ 0, a scalar.
    max_jitter_tries: retries with a growing jitter (0: none).

  Returns:
    `SolveResult(solution (..., n), ok, jitter)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.solvers import damped_cholesky_solve
    >>> result = damped_cholesky_solve(3 * jnp.eye(2), jnp.array([4.0, 8.0]), 1.0)
    >>> result.solution, bool(result.ok)
    (Array([1., 2.], dtype=float32), True)
  """
  return _solve_lower(matrix, rhs, damping, max_jitter_tries)


def _nothing_to_prepare(matrix: jax.Array) -> jax.Array:
  """The Cholesky solver's `prepare`: A is used as it is.

  The factorisation reads only the lower triangle of A + λI, so round-off
  asymmetry in A needs no symmetrisation pass.
  """
  return matrix


def cholesky(*, max_jitter_tries: int = MAX_JITTER_TRIES) -> Solver:
  """The damped Cholesky solver with jitter retries (RD's default).

  `prepare` has nothing to do; `solve` factorises A + λI for each trial λ
  (`damped_cholesky_solve`, which reads the lower triangle of A).

  Args:
    max_jitter_tries: retries of a failed factorisation with a growing
      diagonal jitter (0: none).

  Returns:
    A `Solver` named `"cholesky"`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> solver = rd.solvers.cholesky()
    >>> prepared = solver.prepare(3 * jnp.eye(2))
    >>> solver.solve(prepared, jnp.array([4.0, 8.0]), 1.0).solution
    Array([1., 2.], dtype=float32)
  """
  if not isinstance(max_jitter_tries, int) or max_jitter_tries < 0:
    raise ValueError(f"max_jitter_tries must be a non-negative int; got {max_jitter_tries!r}.")

  def solve(matrix, rhs, damping):
    return _solve_lower(matrix, rhs, damping, max_jitter_tries)

  return Solver(name="cholesky", prepare=_nothing_to_prepare, solve=solve)
