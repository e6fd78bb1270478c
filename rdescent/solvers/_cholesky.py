"""Damped Cholesky solves with a bounded jitter retry (the default solver).

The solve is a Cholesky factorisation (`jax.scipy.linalg.cho_factor` /
`cho_solve`) of A + λI. A factorisation that fails (A + λI not numerically
positive definite, or non-finite input) produces NaN in the factor rather
than an exception; it is reported through `SolveResult.ok` so that callers
can reject the step inside compiled code.

Before giving up, `damped_cholesky_solve` retries a failed factorisation of a
finite matrix with a diagonal jitter, τ_j = 100^j ε · tr(A)/n for
j = 1, …, `max_jitter_tries` (ε the dtype's machine epsilon): a rank-deficient
K with λ = 0, or a float32 factorisation near convergence, is then solved with
the smallest extra damping that works, reported as `SolveResult.jitter`.

Cost: n³/3 flops per factorisation, n² memory, for every trial λ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy import linalg as jsp_linalg

from rdescent import _batch_linalg
from rdescent.solvers._base import SolveResult
from rdescent.solvers._base import Solver
from rdescent.solvers._base import symmetrize

MAX_JITTER_TRIES = 3


def _factor_and_solve(damped: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(C, x): the Cholesky factor of one damped matrix and x = (A + λI)⁻¹ b."""
  factor = jsp_linalg.cho_factor(damped, lower=True)
  return factor[0], jsp_linalg.cho_solve(factor, rhs)


def _cholesky_solve(damped: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x = (A + λI)⁻¹ b for an already damped, symmetric A; batched; (x, ok)."""
  factor, solution = _batch_linalg.map_over_batch(_factor_and_solve, damped, rhs, core_ndims=(2, 1))
  ok = jnp.all(jnp.isfinite(factor)) & jnp.all(jnp.isfinite(solution))
  return solution, ok


def _solve_symmetric(
  symmetric: jax.Array,
  rhs: jax.Array,
  damping: jax.Array | float,
  max_jitter_tries: int,
) -> SolveResult:
  """`damped_cholesky_solve` for an A that is already symmetric."""
  size = symmetric.shape[-1]
  dtype = symmetric.dtype
  eye = jnp.eye(size, dtype=dtype)
  damping = jnp.asarray(damping, dtype)
  solution, ok = _cholesky_solve(symmetric + damping * eye, rhs)
  if max_jitter_tries < 1:
    return SolveResult(solution=solution, ok=ok, jitter=jnp.zeros([], dtype))
  diagonal = jnp.diagonal(symmetric, axis1=-2, axis2=-1)
  scale = jnp.maximum(jnp.max(jnp.mean(jnp.abs(diagonal), axis=-1)), jnp.finfo(dtype).tiny)
  base = jnp.finfo(dtype).eps * scale
  finite_matrix = jnp.all(jnp.isfinite(symmetric)) & jnp.all(jnp.isfinite(rhs))

  def cond(carry):
    tries, _, solved, _ = carry
    return (~solved) & finite_matrix & (tries < max_jitter_tries)

  def body(carry):
    tries, _, _, _ = carry
    jitter = base * jnp.asarray(100.0, dtype) ** (tries + 1).astype(dtype)
    retry, retry_ok = _cholesky_solve(symmetric + (damping + jitter) * eye, rhs)
    return tries + 1, retry, retry_ok, jitter

  start = (jnp.asarray(0), solution, ok, jnp.zeros([], dtype))
  _, solution, ok, jitter = lax.while_loop(cond, body, start)
  return SolveResult(solution=solution, ok=ok, jitter=jitter)


def damped_cholesky_solve(
  matrix: jax.Array,
  rhs: jax.Array,
  damping: jax.Array | float,
  *,
  max_jitter_tries: int = MAX_JITTER_TRIES,
) -> SolveResult:
  """Solves (A + λI) x = b by Cholesky; batched over leading axes of A.

  A failed factorisation of a finite A is retried (inside compiled code, in a
  bounded `lax.while_loop`) with λ + τ_j, τ_j = 100^j ε tr(A)/n, for
  j = 1, …, `max_jitter_tries`; see the module docstring.

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
  return _solve_symmetric(symmetrize(matrix), rhs, damping, max_jitter_tries)


def cholesky(*, max_jitter_tries: int = MAX_JITTER_TRIES) -> Solver:
  """The damped Cholesky solver with jitter retries (RD's default).

  `prepare` symmetrises A once per step; `solve` factorises A + λI for each
  trial λ (`damped_cholesky_solve`).

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

  def solve(symmetric, rhs, damping):
    return _solve_symmetric(symmetric, rhs, damping, max_jitter_tries)

  return Solver(name="cholesky", prepare=symmetrize, solve=solve)
