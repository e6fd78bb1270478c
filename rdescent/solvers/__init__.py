"""How a Regression Descent system is solved: linear-solver strategies.

A `Solver` solves the damped systems (A + λI) x = b of one step, with A = K
(dual) or JᵀJ (primal), batched over the per-output systems. It is a pair of
pure functions: `prepare(A)` once per step, `solve(prepared, b, λ)` once per
trial λ (see `rdescent.solvers._base`). Pass one as `solver=` to
`rdescent.scale_by_regression_descent` (a string names a built-in one).

* `cholesky(max_jitter_tries=3)` (`"cholesky"`, the default): a Cholesky
  factorisation of A + λI per trial λ, retried with a bounded diagonal jitter
  when it fails; n³/3 flops per λ.
* `eigh()` (`"eigh"`): one eigendecomposition per step, then O(n²) per λ;
  the GCV damping controller uses it to score a grid of λ.
* `cg(rank=20, maxiter=100, tol=None)` (`"cg"`): matrix-free conjugate
  gradients from products v ↦ A v (one VJP and one JVP for K v), with a
  randomized Nyström preconditioner of rank ℓ built once per step; A is never
  formed (O(n ℓ) memory beyond one product). `cg(products="jacobian")` takes
  its products from J materialised once per step (m k p numbers): for models
  whose passes are expensive, such as PINN residuals; the default,
  `products="auto"`, chooses per batch from a cost estimate
  (`rdescent.problem.choose_products`).

Each solver declares the operator kinds it accepts (`Solver.accepts`: a
dense matrix, a function of the network's products, or a factored operator
from a materialised J; `OPERATOR_KINDS`); `check_accepts` refuses the others.

A new solver is one module in this package that returns a `Solver`, plus its
entry in `SOLVERS` below and in the common test list
(`tests/test_common.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rdescent.solvers._base import LinearOperator
from rdescent.solvers._base import OPERATOR_KINDS
from rdescent.solvers._base import PRODUCT_KINDS
from rdescent.solvers._base import SolveResult
from rdescent.solvers._base import Solver
from rdescent.solvers._base import check_accepts
from rdescent.solvers._base import operator_kind
from rdescent.solvers._base import symmetrize
from rdescent.solvers._cg import NystromPreconditioner
from rdescent.solvers._cg import cg
from rdescent.solvers._cg import nystrom
from rdescent.solvers._cholesky import MAX_JITTER_TRIES
from rdescent.solvers._cholesky import cholesky
from rdescent.solvers._cholesky import damped_cholesky_solve
from rdescent.solvers._eigen import EigenSystem
from rdescent.solvers._eigen import eigen_decomposition
from rdescent.solvers._eigen import eigen_solve
from rdescent.solvers._eigen import eigh
from rdescent.solvers._eigen import gcv_scores

# Built-in solvers by name, for `solver="..."`.
SOLVERS: dict[str, Callable[[], Solver]] = {"cholesky": cholesky, "eigh": eigh, "cg": cg}


def get(solver: Any) -> Solver:
  """A `Solver` from a name of `SOLVERS` or a `Solver` (returned as is).

  Examples:
    >>> import rdescent as rd
    >>> rd.solvers.get("cholesky").name
    'cholesky'
  """
  if isinstance(solver, Solver):
    return solver
  if isinstance(solver, str) and solver in SOLVERS:
    return SOLVERS[solver]()
  raise ValueError(
    f"solver must be one of {sorted(SOLVERS)} or an rdescent.solvers.Solver; got {solver!r}."
  )


__all__ = (
  "MAX_JITTER_TRIES",
  "OPERATOR_KINDS",
  "PRODUCT_KINDS",
  "SOLVERS",
  "EigenSystem",
  "LinearOperator",
  "NystromPreconditioner",
  "SolveResult",
  "Solver",
  "cg",
  "check_accepts",
  "cholesky",
  "damped_cholesky_solve",
  "eigen_decomposition",
  "eigen_solve",
  "eigh",
  "gcv_scores",
  "get",
  "nystrom",
  "operator_kind",
  "symmetrize",
)
