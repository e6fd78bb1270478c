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

Both are pure and jit-able; a failure never raises inside compiled code but
shows in `SolveResult.ok`.
"""

from __future__ import annotations

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
  """

  solution: jax.Array
  ok: jax.Array
  jitter: jax.Array


class Solver(NamedTuple):
  """A linear-solve strategy (see the module docstring).

  Attributes:
    name: a short name, e.g. `"cholesky"`.
    prepare: `prepare(matrix) -> prepared`, a pytree of arrays; `matrix` has
      shape (..., n, n).
    solve: `solve(prepared, rhs, damping) -> SolveResult`; `rhs` has shape
      (..., n), `damping` is a scalar λ ≥ 0.
  """

  name: str
  prepare: Callable[[jax.Array], Any]
  solve: Callable[[Any, jax.Array, jax.Array], SolveResult]


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
