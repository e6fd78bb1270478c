"""What every linear solver of Regression Descent returns and how it is called.

A solver is a strategy for the damped symmetric positive semi-definite
systems of one RD step,

    (A + λI) x = b,      A = K (dual, n = m k) or JᵀJ (primal, n = p),

batched over leading axes of A (the per-output mode solves k systems). It is
split in two, so that a controller that re-solves with another λ on the same
batch (Levenberg-Marquardt, GCV) pays the λ-independent work once:

* `prepare(A) -> prepared`: once per step (symmetrisation, a factorisation
  that does not depend on λ, a preconditioner);
* `solve(prepared, b, λ) -> SolveResult`: once per trial λ.

A matrix-free solver (`Solver.matrix_free`, e.g. `cg`) never sees A as an
array: `prepare` receives a `LinearOperator`, the product v ↦ A v (for RD,
K v = J (Jᵀ v) by one VJP and one JVP), and A is never formed.

Both are pure and jit-able; a failure never raises inside compiled code but
shows in `SolveResult.ok`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class SolveResult(NamedTuple):
  """Solution of a damped system.

  Attributes:
    solution: x with (A + λI) x = b; same shape as b.
    ok: scalar bool, True when the solve is healthy (a finite factor and
      solution).
    jitter: extra damping added to λ to make the solve succeed (0 when the
      first attempt did), a scalar.
    iterations: iterations of an iterative solver (0 for direct solvers).
    residual: its relative residual ‖b − (A + λI) x‖ / ‖b‖ at the end (0
      where not computed, for direct solvers).
  """

  solution: jax.Array
  ok: jax.Array
  jitter: jax.Array
  iterations: jax.Array | int = 0
  residual: jax.Array | float = 0.0


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LinearOperator:
  """A symmetric positive semi-definite A (n × n) given by its product.

  A static pytree node (no array leaves), so that a prepared solve holding it
  passes through `jax.jit`.

  Attributes:
    matvec: `matvec(v) -> A v` for v of shape (n,); jit- and vmap-able.
    size: n.
    dtype: the dtype of A.
  """

  matvec: Callable[[jax.Array], jax.Array]
  size: int
  dtype: Any


class Solver(NamedTuple):
  """A linear-solve strategy (see the module docstring).

  Attributes:
    name: a short name, e.g. `"cholesky"`.
    prepare: `prepare(matrix) -> prepared`, a pytree of arrays; `matrix` has
      shape (..., n, n).
    solve: `solve(prepared, rhs, damping) -> SolveResult`; `rhs` has shape
      (..., n), `damping` is a scalar λ ≥ 0.
    matrix_free: True when `prepare` takes a `LinearOperator` instead of the
      matrix (the system is then never formed).
    products: for a matrix-free solver, where the operator's products come
      from: `"network"` (a JVP and a VJP through the model per product; no
      Jacobian) or `"jacobian"` (J, m k × p, materialised once per step; each
      product two matrix-vector products). None for dense solvers.
  """

  name: str
  prepare: Callable[[Any], Any]
  solve: Callable[[Any, jax.Array, jax.Array], SolveResult]
  matrix_free: bool = False
  products: str | None = None


def symmetrize(matrix: jax.Array) -> jax.Array:
  """(A + Aᵀ)/2 over the last two axes: removes round-off asymmetry.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.solvers import symmetrize
    >>> symmetrize(jnp.array([[1.0, 2.0], [0.0, 1.0]]))
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
  """
  return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
