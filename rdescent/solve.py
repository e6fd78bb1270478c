"""Damped symmetric positive semi-definite solves with health checks.

Regression Descent solves (A + λI) x = b with A = K (dual, m k × m k) or
A = JᵀJ (primal, p × p), both symmetric positive semi-definite. The solve is a
Cholesky factorisation (`jax.scipy.linalg.cho_factor` / `cho_solve`). A
factorisation that fails (A + λI not numerically positive definite, or
non-finite input) produces NaN in the factor rather than an exception; it is
reported through the returned `ok` flag so that callers can reject the step
inside compiled code.

Before giving up, `damped_cholesky_solve` retries a failed factorisation of a
finite matrix with a diagonal jitter, τ_j = 100^j ε · tr(A)/n for
j = 1, …, `max_jitter_tries` (ε the dtype's machine epsilon): a rank-deficient
K with λ = 0, or a float32 factorisation near convergence, is then solved with
the smallest extra damping that works, reported as `SolveResult.jitter`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy import linalg as jsp_linalg

from rdescent import _batch_linalg

MAX_JITTER_TRIES = 3


class SolveResult(NamedTuple):
  """Solution of a damped system.

  Attributes:
    solution: x with (A + λI) x = b; same shape as b.
    ok: scalar bool, True when the factor and the solution are finite.
    jitter: extra damping added to λ to make the factorisation succeed (0
      when the first attempt did).
  """

  solution: jax.Array
  ok: jax.Array
  jitter: jax.Array | float = 0.0


def symmetrize(matrix: jax.Array) -> jax.Array:
  """(A + Aᵀ)/2 over the last two axes: removes round-off asymmetry."""
  return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def _factor_and_solve(damped: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(C, x): the Cholesky factor of one damped matrix and x = (A + λI)⁻¹ b."""
  factor = jsp_linalg.cho_factor(damped, lower=True)
  return factor[0], jsp_linalg.cho_solve(factor, rhs)


def _cholesky_solve(damped: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x = (A + λI)⁻¹ b for an already damped, symmetric A; batched; (x, ok)."""
  factor, solution = _batch_linalg.map_over_batch(
      _factor_and_solve, damped, rhs, core_ndims=(2, 1)
  )
  ok = jnp.all(jnp.isfinite(factor)) & jnp.all(jnp.isfinite(solution))
  return solution, ok


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
  """
  size = matrix.shape[-1]
  dtype = matrix.dtype
  symmetric = symmetrize(matrix)
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


class EigenSystem(NamedTuple):
  """Eigendecomposition A = V diag(s) Vᵀ of a symmetric PSD system matrix.

  Attributes:
    values: s, shape (..., n), clipped at 0 (round-off can make them slightly
      negative).
    vectors: V, shape (..., n, n), orthonormal columns.
  """

  values: jax.Array
  vectors: jax.Array


def eigen_decomposition(matrix: jax.Array) -> EigenSystem:
  """A = V diag(s) Vᵀ by `jnp.linalg.eigh`; batched over leading axes of A."""
  values, vectors = _batch_linalg.map_over_batch(
      jnp.linalg.eigh, symmetrize(matrix), core_ndims=(2,)
  )
  return EigenSystem(values=jnp.maximum(values, 0.0), vectors=vectors)


def _project(system: EigenSystem, rhs: jax.Array) -> jax.Array:
  """z = Vᵀ b, shape (..., n)."""
  return jnp.einsum("...ji,...j->...i", system.vectors, rhs)


def eigen_solve(
    system: EigenSystem, rhs: jax.Array, damping: jax.Array | float
) -> SolveResult:
  """Solves (A + λI) x = b as x = V diag(1 / (s + λ)) Vᵀ b, O(n²) per λ.

  Args:
    system: the `EigenSystem` of A, values (..., n), vectors (..., n, n).
    rhs: b, shape (..., n).
    damping: λ ≥ 0, a scalar.

  Returns:
    `SolveResult(solution (..., n), ok)`; ok is False when λ + min s ≤ 0 or
    anything is non-finite.
  """
  damping = jnp.asarray(damping, system.values.dtype)
  shifted = system.values + damping
  coefficients = _project(system, rhs) / shifted
  solution = jnp.einsum("...ij,...j->...i", system.vectors, coefficients)
  ok = (
      jnp.all(shifted > 0)
      & jnp.all(jnp.isfinite(system.vectors))
      & jnp.all(jnp.isfinite(solution))
  )
  return SolveResult(solution=solution, ok=ok)


def gcv_scores(
    system: EigenSystem,
    rhs: jax.Array,
    grid: jax.Array,
    *,
    form: str,
    residual_sq_norm: jax.Array | None = None,
    num_residuals: int | None = None,
) -> jax.Array:
  """Generalized cross-validation GCV(λ) for every λ of `grid`, O(n) per λ.

  For the ridge regression of residuals r (N numbers) on the Jacobian J, with
  influence matrix S(λ) = J (JᵀJ + λI)⁻¹ Jᵀ = K (K + λI)⁻¹,

      GCV(λ) = N ‖(I − S) r‖² / (N − tr S)².

  With the eigenvalues s of the system matrix:

  * `form="dual"`: A = K, b = r, z = Vᵀ r:
      ‖(I − S) r‖² = Σ_i (λ / (s_i + λ))² z_i²,   tr S = Σ_i s_i / (s_i + λ).
  * `form="primal"`: A = JᵀJ, b = Jᵀ r, w = Vᵀ b (needs ‖r‖² and N):
      ‖(I − S) r‖² = ‖r‖² − Σ_i (s_i + 2λ) / (s_i + λ)² w_i²  (same tr S).

  Leading (batch) axes of the system are independent blocks of one
  block-diagonal regression (the per-output mode); their sums enter one score.

  Args:
    system: `EigenSystem` of A, values (..., n).
    rhs: b, shape (..., n).
    grid: candidate λ > 0, shape (g,).
    form: `"dual"` or `"primal"`.
    residual_sq_norm: ‖r‖² over all blocks (primal form only).
    num_residuals: N over all blocks (primal form only; the dual form uses
      the total system size).

  Returns:
    GCV(λ) for each λ of the grid, shape (g,).
  """
  values = system.values.reshape(-1)
  projected_sq = jnp.square(_project(system, rhs)).reshape(-1)
  lam = jnp.asarray(grid, values.dtype)[:, None]
  trace = jnp.sum(values / (values + lam), axis=1)
  if form == "dual":
    count = values.size
    residual = jnp.sum(jnp.square(lam / (values + lam)) * projected_sq, axis=1)
  elif form == "primal":
    if residual_sq_norm is None or num_residuals is None:
      raise ValueError(
          "gcv_scores(form='primal') needs residual_sq_norm and num_residuals."
      )
    count = num_residuals
    explained = jnp.sum((values + 2 * lam) / jnp.square(values + lam) * projected_sq, axis=1)
    residual = jnp.maximum(residual_sq_norm - explained, 0.0)
  else:
    raise ValueError(f"form={form!r} is not a valid option; expected 'dual' or 'primal'.")
  return count * residual / jnp.square(count - trace)
