"""The interface every damping controller works on: `LinearizedProblem`."""

from __future__ import annotations

from typing import Any, Protocol

import jax

from rdescent import losses as losses_lib
from rdescent import solvers as solvers_lib
from rdescent.problem._trial import Trial


class LinearizedProblem(Protocol):
  """The RD regression at one (params, batch), built inside a trace by `linearize`.

  Attributes:
    params: θ, the parameters the problem was linearised at.
    outputs: f(θ; X), shape (m, k).
    targets: Y as (m, k) (after the loss's target conversion).
    loss: the summed loss at θ, a scalar.
    factors: the loss's `GaussNewtonFactors` (u, L) at θ.
    loss_residual: the loss residual the system regresses, (m, q): u, or
      u − μ Lᵀ J d₀ for a `shifted` problem (u = `factors.rhs`).
    num_examples: m.
    num_outputs: k.
    system: `"dual"` or `"primal"`, the form actually solved.
    per_output: whether the k outputs are solved as k systems.
    examples_consistent: scalar bool. With `examples="independent"`: whether
      the outputs of each example evaluated alone match the batch call's (to
      √ε relative); False means the examples are coupled and the system
      built per example is wrong. Always True with `examples="coupled"`.
    matrix: the undamped system matrix, (n, n), or (k, n, n) per output.
    rhs: the system's right-hand side, (n,) or (k, n), made from
      `loss_residual` (not the loss residual itself).
    metric_state: with a metric (`rdescent.metric`), its state after this
      batch's statistic; None without one.
    metric_ok: scalar bool: the metric gave finite positive scales (True
      without a metric). When False the system is that of λI and the step
      must not be applied.
  """

  params: Any
  outputs: jax.Array
  targets: jax.Array
  loss: jax.Array
  factors: losses_lib.GaussNewtonFactors
  examples_consistent: jax.Array
  num_examples: int
  num_outputs: int
  system: str
  per_output: bool
  matrix: jax.Array
  rhs: jax.Array
  metric_state: Any
  metric_ok: jax.Array

  @property
  def loss_residual(self) -> jax.Array:
    """The loss residual the system regresses (u, or u − μ Lᵀ J d₀ when shifted)."""
    ...

  @property
  def residual_norm(self) -> jax.Array:
    """‖u‖ (‖r‖ for squared error)."""
    ...

  def solve(
    self,
    damping: jax.Array | float,
    step_size: jax.Array | float,
    *,
    solver: solvers_lib.Solver | None = None,
  ) -> Trial:
    """Solves the damped system for λ = `damping` (no new Jacobian)."""
    ...

  def shifted(self, prior: Any, weight: jax.Array | float) -> LinearizedProblem:
    """The same system solved around μ d₀ (μ = `weight`, d₀ = `prior`).

    A view (no new Jacobian or matrix) whose `solve(λ, η)` solves the system
    with the rhs of the shifted residual u − μ Lᵀ J d₀ and returns the trial
    of the full direction d = μ d₀ + (the solved part), its J d, predicted
    reduction and loss after θ − η d (see the module docstring).
    """
    ...

  def output_change_of(self, direction: Any) -> jax.Array:
    """J d of a params-shaped `direction`, shape (m, k) (one JVP or one matmul)."""
    ...

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    """The trial with its direction (and J d) multiplied by `factor`."""
    ...

  def null_trial(self, damping: jax.Array | float, step_size: jax.Array | float) -> Trial:
    """A zero step at λ = `damping` (what a controller returns for no step)."""
    ...

  def gradient_norm(self) -> jax.Array:
    """‖Jᵀ L u‖, the norm of the loss gradient (‖Jᵀ r‖ for squared error);
    with a metric, in its coordinates: ‖D⁻¹ Jᵀ L u‖."""
    ...

  def eigen(self) -> solvers_lib.EigenSystem:
    """The eigendecomposition of `matrix` (computed once per problem)."""
    ...

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    """GCV(λ) for every λ of `grid`, shape (g,) (`rdescent.solvers.gcv_scores`)."""
    ...

  def loss_at(self, params: Any) -> jax.Array:
    """The summed loss of the same batch at other parameters (one forward pass)."""
    ...
