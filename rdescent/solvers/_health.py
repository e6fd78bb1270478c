"""The one rule by which every solver judges its own solve.

For a symmetric positive semi-definite A and λ > 0 the exact solution of
(A + λI) x = b obeys

    ‖x‖ ≤ ‖b‖ / λ,

since every eigenvalue of A + λI is at least λ. A solve is *healthy* when

* x and its residual are finite;
* ‖x‖ ≤ 2 ‖b‖ / λ: a larger x is further from the exact solution than the
  exact solution is long, i.e. its error exceeds 100 %;
* its relative residual ρ = ‖(A + λI) x − b‖ / ‖b‖ is at most
  `MAX_RELATIVE_RESIDUAL` (½): x = 0 has ρ = 1, so a solution at or above
  that has learned nothing of b. The residual is measured with the solver's
  own operator (the matrix for Cholesky, the product for CG) or, for the
  eigendecomposition, bounded by its backward error (`eigen_residual_bound`).

Each condition holds per system over the leading (batch) axes. λ is the
damping the solver actually used (λ plus any jitter). Round-off makes a
solve fail this rule when λ is below A's resolution, λ ≲ ε ‖A‖ (ε the dtype's
machine epsilon) and b has weight along A's (near) null space: the solution
is then of size ‖b‖/λ along directions that A's rounding errors, of size
ε ‖A‖, blur, and its residual is of size ε ‖A‖ / λ ≫ 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ‖x‖ may exceed the exact bound ‖b‖/λ by this factor before the solve fails.
NORM_BOUND_FACTOR = 2.0
# The largest relative residual ‖(A + λI) x − b‖ / ‖b‖ of a healthy solve.
MAX_RELATIVE_RESIDUAL = 0.5


def relative_residual(residual: jax.Array, rhs: jax.Array) -> jax.Array:
  """ρ = ‖(A + λI) x − b‖ / ‖b‖ per system, shape (...); 0 where b = 0 and the residual is 0."""
  tiny = jnp.finfo(rhs.dtype).tiny
  return jnp.linalg.norm(residual, axis=-1) / jnp.maximum(jnp.linalg.norm(rhs, axis=-1), tiny)


def eigen_residual_bound(values: jax.Array, solution: jax.Array, rhs: jax.Array) -> jax.Array:
  """An upper estimate of ρ for x = V diag(1/(s + λ)) Vᵀ b from an eigendecomposition.

  A symmetric eigensolver is backward stable: V diag(s) Vᵀ = A + E with
  ‖E‖ a small multiple of ε max|s| (n ε max|s| in the worst case; clipping
  round-off negatives of s at 0 adds less than that), so ‖(A + λI) x − b‖ =
  ‖E x‖ ≈ ε max s ‖x‖ up to the solve's own rounding. The estimate is large
  exactly when x leans on eigenvalues below λ's resolution
  (s + λ ≲ ε max s).

  Args:
    values: s, shape (..., n).
    solution: x, shape (..., n).
    rhs: b, shape (..., n).

  Returns:
    The estimate of ρ per system, shape (...).
  """
  resolution = jnp.finfo(values.dtype).eps * jnp.max(values, axis=-1)
  tiny = jnp.finfo(rhs.dtype).tiny
  norm_rhs = jnp.maximum(jnp.linalg.norm(rhs, axis=-1), tiny)
  return resolution * jnp.linalg.norm(solution, axis=-1) / norm_rhs


def healthy(
  solution: jax.Array,
  rhs: jax.Array,
  damping: jax.Array,
  relative_residual: jax.Array,
) -> jax.Array:
  """Scalar bool: the solve of (A + λI) x = b passes the module's rule, in every system.

  Args:
    solution: x, shape (..., n).
    rhs: b, shape (..., n).
    damping: the λ the solve used (with any jitter), a scalar or shape (...).
    relative_residual: ρ per system, shape (...) (measured, or bounded).

  Returns:
    A scalar bool array; jit-able, no host round trip.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.solvers._health import healthy
    >>> b = jnp.array([1.0, 0.0])
    >>> bool(healthy(jnp.array([0.5, 0.0]), b, 1.0, jnp.array(0.0)))
    True
    >>> bool(healthy(jnp.array([1e6, 0.0]), b, 1.0, jnp.array(0.0)))  # ‖x‖ > 2‖b‖/λ
    False
  """
  dtype = rhs.dtype
  damping = jnp.asarray(damping, dtype)
  norm_solution = jnp.linalg.norm(solution, axis=-1)
  norm_rhs = jnp.linalg.norm(rhs, axis=-1)
  finite = jnp.all(jnp.isfinite(solution)) & jnp.all(jnp.isfinite(relative_residual))
  # λ ‖x‖ ≤ 2 ‖b‖, written without a division: vacuous for λ = 0, and an
  # overflowing product fails.
  bounded = jnp.all(damping * norm_solution <= NORM_BOUND_FACTOR * norm_rhs)
  small_residual = jnp.all(relative_residual <= MAX_RELATIVE_RESIDUAL)
  return finite & bounded & small_residual
