"""Damped symmetric positive semi-definite solves with health checks.

Regression Descent solves (A + λI) x = b with A = K (dual, m k × m k) or
A = JᵀJ (primal, p × p), both symmetric positive semi-definite. The solve is a
Cholesky factorisation (`jax.scipy.linalg.cho_factor` / `cho_solve`). A
factorisation that fails (A + λI not numerically positive definite, or
non-finite input) produces NaN in the factor rather than an exception; it is
reported through the returned `ok` flag so that callers can reject the step
inside compiled code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import linalg as jsp_linalg


class SolveResult(NamedTuple):
  """Solution of a damped system.

  Attributes:
    solution: x with (A + λI) x = b; same shape as b.
    ok: scalar bool, True when the factor and the solution are finite.
  """

  solution: jax.Array
  ok: jax.Array


def symmetrize(matrix: jax.Array) -> jax.Array:
  """(A + Aᵀ)/2 over the last two axes: removes round-off asymmetry."""
  return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def damped_cholesky_solve(
    matrix: jax.Array, rhs: jax.Array, damping: jax.Array | float
) -> SolveResult:
  """Solves (A + λI) x = b by Cholesky; batched over leading axes of A.

  Args:
    matrix: A, shape (..., n, n), symmetric positive semi-definite.
    rhs: b, shape (..., n).
    damping: λ ≥ 0, a scalar.

  Returns:
    `SolveResult(solution (..., n), ok)`.
  """
  size = matrix.shape[-1]
  damped = symmetrize(matrix) + jnp.asarray(damping, matrix.dtype) * jnp.eye(
      size, dtype=matrix.dtype
  )
  factor = jsp_linalg.cho_factor(damped, lower=True)
  if matrix.ndim == 2:
    solution = jsp_linalg.cho_solve(factor, rhs)
  else:
    solution = jax.vmap(
        lambda c, b: jsp_linalg.cho_solve((c, True), b),
    )(factor[0].reshape(-1, size, size), rhs.reshape(-1, size)).reshape(rhs.shape)
  ok = jnp.all(jnp.isfinite(factor[0])) & jnp.all(jnp.isfinite(solution))
  return SolveResult(solution=solution, ok=ok)
