"""Eigendecomposition solves, and generalized cross-validation scores.

One symmetric eigendecomposition A = V diag(s) Vᵀ (n³ flops, once per step)
solves (A + λI) x = V diag(1/(s + λ)) Vᵀ b for every λ in O(n²), and scores
every λ of a grid by generalized cross-validation in O(n) each
(`gcv_scores`). The `rdescent.damping.gcv` controller uses it through the
`eigh()` solver.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _batch_linalg
from rdescent.solvers import _health
from rdescent.solvers._base import SolveResult
from rdescent.solvers._base import Solver
from rdescent.solvers._base import symmetrize


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


def eigen_solve(system: EigenSystem, rhs: jax.Array, damping: jax.Array | float) -> SolveResult:
  """Solves (A + λI) x = b as x = V diag(1 / (s + λ)) Vᵀ b, O(n²) per λ.

  Args:
    system: the `EigenSystem` of A, values (..., n), vectors (..., n, n).
    rhs: b, shape (..., n).
    damping: λ ≥ 0, a scalar.

  Returns:
    `SolveResult(solution (..., n), ok)`; ok is False when
    λ + min s ≤ 0, anything is non-finite, or the solve fails the rule every
    solver shares (`rdescent.solvers._health`): here the residual against A
    is estimated from the decomposition's backward error, ε max s ‖x‖ / ‖b‖,
    which exceeds ½ when x leans on eigenvalues below λ's resolution
    (s + λ ≲ ε max s).
  """
  damping = jnp.asarray(damping, system.values.dtype)
  shifted = system.values + damping
  coefficients = _project(system, rhs) / shifted
  solution = jnp.einsum("...ij,...j->...i", system.vectors, coefficients)
  residual = _health.eigen_residual_bound(system.values, solution, rhs)
  ok = (
    jnp.all(shifted > 0)
    & jnp.all(jnp.isfinite(system.vectors))
    & _health.healthy(solution, rhs, damping, residual)
  )
  return SolveResult(solution=solution, ok=ok, jitter=jnp.zeros([], solution.dtype))


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
      raise ValueError("gcv_scores(form='primal') needs residual_sq_norm and num_residuals.")
    count = num_residuals
    explained = jnp.sum((values + 2 * lam) / jnp.square(values + lam) * projected_sq, axis=1)
    residual = jnp.maximum(residual_sq_norm - explained, 0.0)
  else:
    raise ValueError(f"form={form!r} is not a valid option; expected 'dual' or 'primal'.")
  return count * residual / jnp.square(count - trace)


def eigh() -> Solver:
  """The eigendecomposition solver: `prepare` = `eigen_decomposition`, `solve` = `eigen_solve`.

  Pays n³ once per step, then O(n²) per λ; what `rdescent.damping.gcv` uses.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> solver = rd.solvers.eigh()
    >>> system = solver.prepare(jnp.diag(jnp.array([1.0, 3.0])))
    >>> solver.solve(system, jnp.array([2.0, 4.0]), 1.0).solution
    Array([1., 1.], dtype=float32)
  """
  return Solver(name="eigh", prepare=eigen_decomposition, solve=eigen_solve)
