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

**Operator kinds.** The problem hands a solver its A as one of three kinds
(`OPERATOR_KINDS`), as lineax's operators carry theirs:

* `"matrix"`: a dense array (..., n, n), formed from K or J;
* `"function"`: a `LinearOperator`, the product v ↦ A v through the network
  (for RD, K v = J (Jᵀ v) by one VJP and one JVP); A is never formed;
* `"factored"`: a `LinearOperator` whose products come from a materialised
  factor (A = R Rᵀ or Rᵀ R with R = Fᵀ J held as an array).

Each solver declares the kinds it accepts (`Solver.accepts`); a kind it does
not accept is refused in one place, `check_accepts`, when the transform is
built (and again when a problem is prepared). A matrix-free solver
(`Solver.matrix_free`, e.g. `cg`) is one whose preferred kind is not a
matrix.

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
    kind: `"function"` (products through the network) or `"factored"`
      (products from a materialised factor), see `OPERATOR_KINDS`.
  """

  matvec: Callable[[jax.Array], jax.Array]
  size: int
  dtype: Any
  kind: str = "function"


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
      Jacobian), `"jacobian"` (J, m k × p, materialised once per step; each
      product two matrix-vector products) or `"auto"` (chosen per batch
      from a cost estimate, `rdescent.problem.choose_products`). None for
      dense solvers. The
      transform's `products=` option overrides it (this field is the
      solver's preference, used by `products="auto"`).
    operators: the operator kinds `prepare` accepts (`OPERATOR_KINDS`);
      None: `("matrix",)`, or `("function", "factored")` when `matrix_free`.
    products_per_step: for a matrix-free solver, about how many products
      with A one step's solve makes (cg: ℓ + `maxiter`); what
      `products="auto"` weighs a materialised J against
      (`rdescent.problem.choose_products`). 0 for dense solvers.
  """

  name: str
  prepare: Callable[[Any], Any]
  solve: Callable[[Any, jax.Array, jax.Array], SolveResult]
  matrix_free: bool = False
  products: str | None = None
  operators: tuple[str, ...] | None = None
  products_per_step: int = 0

  @property
  def accepts(self) -> tuple[str, ...]:
    """The operator kinds this solver's `prepare` takes."""
    if self.operators is not None:
      return self.operators
    return ("function", "factored") if self.matrix_free else ("matrix",)


# The kinds of operator a problem hands a solver (module docstring), and the kind
# each way of making products gives (`rdescent.problem.linearize`'s `products=`).
OPERATOR_KINDS = ("matrix", "function", "factored")
PRODUCT_KINDS = {"matrix": "matrix", "network": "function", "jacobian": "factored"}


def operator_kind(operator: Any) -> str:
  """The kind of an operator handed to `Solver.prepare`: a `LinearOperator`'s, or "matrix"."""
  return operator.kind if isinstance(operator, LinearOperator) else "matrix"


def check_accepts(solver: Solver, operator: Any, *, name: str = "solver") -> None:
  """Refuses an operator kind (or an operator) that `solver` does not accept.

  Raises:
    ValueError: naming the solver, the kind and what it accepts.
  """
  kind = operator if isinstance(operator, str) else operator_kind(operator)
  if kind not in solver.accepts:
    products = {v: k for k, v in PRODUCT_KINDS.items()}[kind]
    raise ValueError(
      f"{name}: solver={solver.name!r} accepts {' or '.join(solver.accepts)} operators; "
      f"products={products!r} hands it a {kind} operator. Use products='auto' (the "
      "solver's own choice), or a solver that accepts it ('cholesky' and 'eigh' take the "
      "matrix, 'cg' any kind)."
    )


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
