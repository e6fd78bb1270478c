"""λ by generalized cross-validation (GCV), from one eigendecomposition.

Each step decomposes the system matrix once, A = V diag(s) Vᵀ, scores every λ
of a log grid by

    GCV(λ) = N ‖(I − S) r‖² / (N − tr S)²,      S(λ) = K (K + λI)⁻¹,

in O(n) per λ (`rdescent.solvers.gcv_scores`), and solves with the best λ by
the same decomposition, x = V diag(1/(s + λ)) Vᵀ b. N is the number of
residuals (m k, or m q for a loss with q factors); in the per-output mode the k
systems are the blocks of one block-diagonal regression and share one λ.

The grid is `relative` to the mean eigenvalue tr(A)/n by default (so it
follows the scale of K, which is not normalised by m). A failed solve
multiplies the smallest grid value used by `failure_growth` for later steps
(a floor that decays back by the same factor per healthy step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent import solvers as solvers_lib
from rdescent.damping import _base

MAX_FLOOR = 1e6


class GCVState(NamedTuple):
  """λ of the last step and the failure floor (in grid units, ≥ the grid min)."""

  damping: jax.Array
  floor: jax.Array


def gcv_grid(eig: solvers_lib.EigenSystem, grid: np.ndarray, relative: bool) -> jax.Array:
  """The absolute λ grid: `grid` × mean eigenvalue when relative."""
  values = jnp.asarray(grid, eig.values.dtype)
  if not relative:
    return values
  scale = jnp.mean(eig.values)
  tiny = jnp.finfo(eig.values.dtype).tiny
  return values * jnp.maximum(scale, tiny)


def gcv(
  grid_min: float = 1e-8,
  grid_max: float = 1e2,
  num: int = 41,
  *,
  relative: bool = True,
  failure_growth: float = 10.0,
) -> _base.DampingController:
  """λ minimising GCV over `num` log-spaced values in [grid_min, grid_max].

  Args:
    grid_min: the grid's smallest value (× tr(A)/n when `relative`).
    grid_max: the grid's largest value (× tr(A)/n when `relative`).
    num: number of grid values.
    relative: scale the grid by the mean eigenvalue of the system matrix.
    failure_growth: factor of the failure floor (see the module docstring).

  Returns:
    A `DampingController` whose state is a `GCVState`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.gcv(grid_min=1e-6, grid_max=1.0, num=13)
    >>> float(controller.fail(controller.init(jnp.zeros(2))).floor)
    10.0
  """
  _base.check_range(grid_min, grid_max)
  _validation.check_positive("failure_growth", failure_growth)
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"num must be a positive int; got {num!r}.")
  base_grid = np.logspace(np.log10(grid_min), np.log10(grid_max), num)
  solver = solvers_lib.eigh()

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return GCVState(damping=jnp.asarray(grid_min, dtype), floor=jnp.ones([], dtype))

  def current(state, count):
    del count
    return state.damping

  def fail(state):
    floor = jnp.minimum(state.floor * failure_growth, MAX_FLOOR)
    return GCVState(damping=state.damping * failure_growth, floor=floor)

  def step(problem, state, count, step_size):
    del count
    grid = gcv_grid(problem.eigen(), base_grid, relative)
    grid = jnp.maximum(grid, grid[0] * state.floor.astype(grid.dtype))
    scores = problem.gcv_scores(grid)
    scores = jnp.where(jnp.isnan(scores), jnp.inf, scores)  # NaN scores never win
    damping = grid[jnp.argmin(scores)]
    trial = problem.solve(damping, step_size, solver=solver)
    new_state = GCVState(
      damping=damping.astype(state.damping.dtype),
      floor=jnp.maximum(state.floor / failure_growth, 1.0),
    )
    return _base.accept(trial, new_state)

  return _base.DampingController(
    init=init, current=current, step=step, fail=fail, needs_matrix=True
  )
