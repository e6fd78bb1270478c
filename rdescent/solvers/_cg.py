"""Matrix-free conjugate gradients with a randomized Nyström preconditioner.

`cg()` solves (A + λI) x = b from products v ↦ A v alone (a
`LinearOperator`; for RD's dual system A v = Lᵀ J Jᵀ L v, one VJP and one
JVP), so neither K (n = m q) nor JᵀJ (n = p) is ever formed.

**Preconditioner** (Frangella, Tropp & Udell, "Randomized Nyström
preconditioning", SIAM J. Matrix Anal. Appl. 2023). Once per step, from ℓ
products with a random orthonormal Ω (n × ℓ):

    Y = A Ω,  ν = ε ‖Y‖_F,  Y_ν = Y + ν Ω,  C = chol(Ωᵀ Y_ν),
    B = Y_ν C⁻ᵀ = U Σ Vᵀ (thin SVD),  Λ̂ = max(Σ² − ν, 0),

the rank-ℓ Nyström approximation Â = U Λ̂ Uᵀ of A. For A + λI it gives

    P⁻¹ = (λ̂_ℓ + λ) U (Λ̂ + λI)⁻¹ Uᵀ + (I − U Uᵀ),

which maps the ℓ largest eigenvalues of A + λI near λ̂_ℓ + λ. λ only shifts
the diagonal, so re-solves at another λ (Levenberg-Marquardt) reuse U and Λ̂:
the preparation costs ℓ products once per step, each solve its iterations.

**Iterations.** Preconditioned CG from x₀ = 0 inside a `lax.while_loop`,
until ‖r‖ ≤ tol ‖b‖ or `maxiter` iterations. A solve that stops at
`maxiter` is still returned: `SolveResult.iterations` and `residual` say how
far it got. `ok` follows the rule every solver shares (`rdescent.solvers.
_health`): False when the result is not finite, when ‖x‖ > 2‖b‖/λ, or when
its true relative residual ‖(A + λI) x − b‖ / ‖b‖ (one more product) is
above ½. A solve stopped at `maxiter` that has at least halved the residual
is used (inexact, and judged by the controller as usual); one that has not
(x = 0 has residual 1; with λ far below A's scale CG can end above it) fails.

**Memory**: the Nyström basis U and Ω (n × ℓ each), the Y of the ℓ products
(n × ℓ), and the CG vectors (a few n): O(n ℓ) numbers beyond what one product
needs; no n × n array.

**Products** (`products=`). `"auto"` (the default): chosen per batch, when
the step is traced, from a cost estimate (`rdescent.problem.choose_products`):
J materialised when its m k p numbers fit in 1 GiB and its estimated flops
(materialising J, then 4 m k p per product) are at most the network's (a JVP
and a VJP per product), the network's products otherwise; as `gram="auto"`
chooses its engine. `"network"`: every product is a
JVP and a VJP through the model, from one `jax.linearize` per step; no
Jacobian is formed, and one product costs about three forward passes.
`"jacobian"`: J (m k × p) is materialised once per step (the per-example
Jacobians, or the batch Jacobian with `examples="coupled"`), and every
product is two matrix-vector products with it, J (vᵀJ)ᵀ; the ℓ products of the
preconditioner become two matrix-matrix products. That costs m k p numbers
of memory (still no (m k)² or p² array) and pays where a pass through the
model is expensive against a pass over J: residuals that hold input
derivatives (PINNs), or many CG iterations per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy import linalg as jsp_linalg

from rdescent.solvers import _health
from rdescent.solvers._base import LinearOperator
from rdescent.solvers._base import SolveResult
from rdescent.solvers._base import Solver

DEFAULT_RANK = 20
DEFAULT_MAXITER = 100
PRODUCTS = ("auto", "network", "jacobian")


class NystromPreconditioner(NamedTuple):
  """The rank-ℓ Nyström approximation Â = U Λ̂ Uᵀ of A, and the operator itself.

  Attributes:
    operator: the `LinearOperator` A.
    basis: U, shape (n, ℓ).
    eigenvalues: Λ̂, shape (ℓ,), descending.
  """

  operator: LinearOperator
  basis: jax.Array
  eigenvalues: jax.Array


def nystrom(operator: LinearOperator, rank: int, key: jax.Array) -> NystromPreconditioner:
  """The randomized Nyström approximation of A from `rank` products (module docstring).

  Args:
    operator: A as a `LinearOperator`.
    rank: ℓ, 1 ≤ ℓ (clipped to n).
    key: PRNG key of the test matrix Ω.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rdescent.solvers import LinearOperator, nystrom
    >>> a = jnp.diag(jnp.array([4.0, 2.0, 0.0]))  # rank 2: captured exactly
    >>> pre = nystrom(LinearOperator(lambda v: a @ v, 3, a.dtype), 2, jax.random.key(0))
    >>> jnp.round(pre.eigenvalues, 3)
    Array([4., 2.], dtype=float32)
  """
  size, dtype = operator.size, operator.dtype
  rank = min(rank, size)
  test = jax.random.normal(key, (size, rank), dtype)
  test, _ = jnp.linalg.qr(test)
  sketch = jax.vmap(operator.matvec, in_axes=1, out_axes=1)(test)
  shift = jnp.finfo(dtype).eps * jnp.linalg.norm(sketch)
  shifted = sketch + shift * test
  core = test.T @ shifted
  lower = jnp.linalg.cholesky(0.5 * (core + core.T))
  factor = jsp_linalg.solve_triangular(lower, shifted.T, lower=True).T  # Y_ν C⁻ᵀ
  basis, singular, _ = jnp.linalg.svd(factor, full_matrices=False)
  eigenvalues = jnp.maximum(singular**2 - shift, 0.0)
  # A failed Cholesky (A numerically zero on the test space): no preconditioning.
  usable = jnp.all(jnp.isfinite(basis)) & jnp.all(jnp.isfinite(eigenvalues))
  basis = jnp.where(usable, basis, 0.0)
  eigenvalues = jnp.where(usable, eigenvalues, 0.0)
  return NystromPreconditioner(operator=operator, basis=basis, eigenvalues=eigenvalues)


def _apply_inverse(pre: NystromPreconditioner, damping: jax.Array, v: jax.Array) -> jax.Array:
  """P⁻¹ v = (λ̂_ℓ + λ) U (Λ̂ + λ)⁻¹ Uᵀ v + v − U Uᵀ v (v itself for rank 0)."""
  if pre.basis.shape[-1] == 0:
    return v
  coefficients = pre.basis.T @ v
  smallest = pre.eigenvalues[-1] + damping
  scaled = smallest / (pre.eigenvalues + damping) * coefficients
  return pre.basis @ scaled + v - pre.basis @ coefficients


def pcg(
  pre: NystromPreconditioner,
  rhs: jax.Array,
  damping: jax.Array,
  *,
  tol: jax.Array | float,
  maxiter: int,
) -> SolveResult:
  """x ≈ (A + λI)⁻¹ b by Nyström-preconditioned CG (module docstring)."""
  matvec = pre.operator.matvec
  dtype = rhs.dtype

  def damped(v):
    return matvec(v) + damping * v

  rhs_norm = jnp.linalg.norm(rhs)
  threshold = jnp.asarray(tol, dtype) * rhs_norm
  x = jnp.zeros_like(rhs)
  residual = rhs
  z = _apply_inverse(pre, damping, residual)
  direction = z
  rz = residual @ z

  def cond(carry):
    i, _, residual, _, _ = carry
    norm = jnp.linalg.norm(residual)
    return (i < maxiter) & (norm > threshold) & jnp.isfinite(norm)

  def body(carry):
    i, x, residual, direction, rz = carry
    product = damped(direction)
    curvature = direction @ product
    alpha = rz / curvature
    x = x + alpha * direction
    residual = residual - alpha * product
    z = _apply_inverse(pre, damping, residual)
    rz_next = residual @ z
    direction = z + (rz_next / rz) * direction
    return i + 1, x, residual, direction, rz_next

  start = (jnp.asarray(0, jnp.int32), x, residual, direction, rz)
  iterations, x, residual, _, _ = lax.while_loop(cond, body, start)
  relative = jnp.linalg.norm(residual) / jnp.maximum(rhs_norm, jnp.finfo(dtype).tiny)
  # Health by the shared rule, on the true residual (one more product; the
  # recurrence's drifts from it in round-off).
  true_relative = _health.relative_residual(damped(x) - rhs, rhs)
  ok = _health.healthy(x, rhs, damping, true_relative)
  return SolveResult(
    solution=x,
    ok=ok,
    jitter=jnp.zeros([], dtype),
    iterations=iterations,
    residual=relative.astype(dtype),
  )


def cg(
  *,
  rank: int = DEFAULT_RANK,
  maxiter: int = DEFAULT_MAXITER,
  tol: float | None = None,
  seed: int = 0,
  products: str = "auto",
) -> Solver:
  """Matrix-free Nyström-preconditioned conjugate gradients (module docstring).

  Args:
    rank: ℓ ≥ 0, the Nyström preconditioner's rank: ℓ products of A once
      per step (0: plain CG).
    maxiter: most CG iterations per solve (≥ 1), each one product with A.
    tol: relative residual ‖b − (A + λI) x‖ / ‖b‖ to stop at; None: √ε of
      the system's dtype (3.5e-4 in float32, 1.5e-8 in float64).
    seed: seed of the preconditioner's random test matrix.
    products: `"auto"` (the default: chosen per batch from a cost
      estimate, J's size against 1 GiB and the products' flops;
      `rdescent.problem.choose_products`), `"network"` (JVP and VJP through
      the model per product; no Jacobian) or `"jacobian"` (J materialised
      once per step, m k × p numbers; products are matrix-vector products).
      See the module docstring for which pays.

  Returns:
    A matrix-free `Solver` named `"cg"`: `prepare` takes a
    `LinearOperator`; the RD step then never forms K or JᵀJ (with
    `products="jacobian"` it forms J).

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> solver = rd.solvers.cg(rank=1)
    >>> prepared = solver.prepare(rd.solvers.LinearOperator(lambda v: a @ v, 2, a.dtype))
    >>> result = solver.solve(prepared, jnp.array([1.0, 2.0]), 0.0)
    >>> jnp.round(result.solution, 4), int(result.iterations) <= 2
    (Array([0.0909, 0.6364], dtype=float32), True)
  """
  for name, value, low in (("rank", rank, 0), ("maxiter", maxiter, 1), ("seed", seed, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"cg: {name} must be an int >= {low}; got {value!r}.")
  if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
    raise ValueError(f"cg: tol must be None or a float in (0, 1); got {tol!r}.")
  if products not in PRODUCTS:
    raise ValueError(f"cg: products must be one of {PRODUCTS}; got {products!r}.")

  def prepare(operator: Any) -> NystromPreconditioner:
    if not isinstance(operator, LinearOperator):
      raise TypeError(
        "cg is matrix-free: prepare takes an rdescent.solvers.LinearOperator, not a matrix."
      )
    if rank == 0:
      empty = jnp.zeros((operator.size, 0), operator.dtype)
      return NystromPreconditioner(operator, empty, jnp.zeros((0,), operator.dtype))
    return nystrom(operator, rank, jax.random.key(seed))

  def solve(prepared: NystromPreconditioner, rhs: jax.Array, damping: jax.Array) -> SolveResult:
    dtype = rhs.dtype
    stop = jnp.sqrt(jnp.finfo(dtype).eps) if tol is None else tol
    return pcg(prepared, rhs, jnp.asarray(damping, dtype), tol=stop, maxiter=maxiter)

  return Solver(
    name="cg",
    prepare=prepare,
    solve=solve,
    matrix_free=True,
    products=products,
    products_per_step=rank + maxiter,
  )
