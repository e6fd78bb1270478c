"""A linearised problem: one batch, an output map and a side, solved by a solver.

`Form` implements `rdescent.problem.LinearizedProblem` for every combination
that `linearize` builds: it owns the right-hand side and the solver's
preparation, and turns solutions into scored `Trial`s. What differs between
forms lives in its parts (`_output_maps`, `_sides`, `_products`).

**A metric** (`rdescent.metric`, column scales w = D⁻¹): the side solves the
system of J̃ = J diag(w) for a direction d̃ in scaled coordinates; the step is
d = w ⊙ d̃, and J d = J̃ d̃. Directions given in parameter coordinates (a
prior, `output_change_of`) are mapped back by d̃ = d ⊘ w.

**Rows judged on the whole batch** (`row_sketch`): `judged_on(whole)` returns
the form with a second `Batch`, the whole one: the system stays that of the
drawn rows, but the problem's loss, outputs and residual norm, and every
trial's J d, loss after the step and predicted reduction, are the whole
batch's (one JVP and one forward pass per trial).

**A prior direction (SPRING).** `shifted(d₀, μ)` returns the same form with a
`Shift`: the offset o = μ d₀, its output change J o, and the right-hand side
of the shifted residual u − Lᵀ J o. Its solves return d = o + (the solved
part), so the system matrix and its preparation are shared.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _mesh
from rdescent import metric as metric_lib
from rdescent import solvers as solvers_lib
from rdescent.problem import _trial
from rdescent.problem._batch import Batch
from rdescent.problem._products import flat
from rdescent.problem._trial import Trial


class Shift(NamedTuple):
  """An offset o that every solve adds to its direction (SPRING's μ d₀).

  Attributes:
    offset: o, params-shaped.
    output_change: J o, shape (m, k).
    loss_residual: the shifted residual u − Lᵀ J o, shape (m, q).
  """

  offset: Any
  output_change: jax.Array
  loss_residual: jax.Array


class Form:
  """The RD system of one batch (see `rdescent.problem.LinearizedProblem`)."""

  def __init__(
    self,
    batch: Batch,
    outputs_map: Any,
    side: Any,
    solver: solvers_lib.Solver,
    *,
    shift: Shift | None = None,
    prepared: dict[Any, Any] | None = None,
    scales: Any = None,
    metric_state: Any = None,
    metric_ok: jax.Array | bool = True,
    judge: Batch | None = None,
  ):
    self._batch = batch
    self._outputs_map = outputs_map
    self._side = side
    self._solver = solver
    self._shift = shift
    # Shared with shifted views: the solver's preparation does not depend on the rhs.
    self._prepared = {} if prepared is None else prepared
    self._scales = scales
    self.metric_state = metric_state
    self.metric_ok = jnp.asarray(metric_ok)
    # The batch trials are judged on: the whole batch of a row sketch, else the system's.
    self._judge = batch if judge is None else judge
    self.params = batch.params
    self.outputs = self._judge.outputs
    self.targets = self._judge.targets
    self.loss = self._judge.loss
    self.factors = self._judge.factors
    self.examples_consistent = batch.examples_consistent
    self.num_examples, self.num_outputs = self._judge.outputs.shape
    self.system = side.name
    self.per_output = outputs_map.systems is not None
    self.matrix = side.matrix
    self.rhs = side.rhs(self.loss_residual)

  @property
  def loss_residual(self) -> jax.Array:
    """The loss residual the system regresses: u, or u − Lᵀ J o when shifted."""
    return self._batch.loss_residual if self._shift is None else self._shift.loss_residual

  @property
  def residual_norm(self) -> jax.Array:
    return jnp.linalg.norm(self._judge.loss_residual)

  def judged_on(self, whole: Batch) -> Form:
    """This form (the drawn rows' system) with its trials judged on the `whole` batch."""
    return Form(
      self._batch,
      self._outputs_map,
      self._side,
      self._solver,
      prepared=self._prepared,
      scales=self._scales,
      metric_state=self.metric_state,
      metric_ok=self.metric_ok,
      judge=whole,
    )

  def _operator(self) -> Any:
    """What the solver prepares: the dense matrix, or the side's operator."""
    return self.matrix if self.matrix is not None else self._side.operator(self.rhs)

  def _prepare(self, solver: solvers_lib.Solver) -> Any:
    # A dense system is prepared and solved replicated under a mesh: the
    # solve's retry loop then holds no collectives (a sharded retry loop hangs
    # XLA:CPU on repeated calls). Computed once per solver and problem; the
    # default solver's preparation is made when the problem is built, so that
    # solves inside a controller's loop reuse it.
    if solver not in self._prepared:
      operator = self._operator()
      solvers_lib.check_accepts(solver, operator)
      prepare = solver.prepare if self.matrix is None else _mesh.replicated_call(solver.prepare)
      self._prepared[solver] = prepare(operator)
    return self._prepared[solver]

  def solve(self, damping, step_size, *, solver=None) -> Trial:
    solver = self._solver if solver is None else solver
    prepared = self._prepare(solver)
    dtype = self.rhs.dtype
    solve = solver.solve if self.matrix is None else _mesh.replicated_call(solver.solve)
    result = solve(prepared, self.rhs, jnp.asarray(damping, dtype))
    scaled_direction = self._side.direction(result.solution)
    output_change = self._side.output_change(result.solution, scaled_direction)
    direction = (
      scaled_direction if self._scales is None else metric_lib.apply(self._scales, scaled_direction)
    )
    if self._shift is not None:
      offset = self._shift.offset
      direction = jax.tree_util.tree_map(lambda o, s: (o + s).astype(s.dtype), offset, direction)
      output_change = self._shift.output_change.astype(output_change.dtype) + output_change
    if self._judge is not self._batch:
      output_change = self._judge.jvp(direction).astype(output_change.dtype)
    return _trial.score(
      self._judge,
      direction,
      output_change,
      damping,
      result.ok,
      result.jitter,
      step_size,
      result.iterations,
      result.residual,
    )

  def shifted(self, prior: Any, weight: jax.Array | float) -> Form:
    if self._judge is not self._batch:
      raise ValueError(
        "row_sketch: a shifted problem (momentum=, SPRING) is not supported with row_sketch; "
        "use momentum=0."
      )
    dtype = self.outputs.dtype
    weight = jnp.asarray(weight, dtype)
    # Each leaf in its parameter's dtype (the JVP's tangents must match).
    offset = jax.tree_util.tree_map(
      lambda d, p: (weight * d).astype(jnp.asarray(p).dtype), prior, self.params
    )
    if self._shift is not None:
      offset = jax.tree_util.tree_map(lambda o, d: o + d, self._shift.offset, offset)
    output_change = self.output_change_of(offset).astype(dtype)
    loss_residual = self._batch.loss_residual - self._batch.factor_transpose_times(output_change)
    return Form(
      self._batch,
      self._outputs_map,
      self._side,
      self._solver,
      shift=Shift(offset, output_change, loss_residual),
      prepared=self._prepared,
      scales=self._scales,
      metric_state=self.metric_state,
      metric_ok=self.metric_ok,
    )

  def output_change_of(self, direction: Any) -> jax.Array:
    if self._judge is not self._batch:
      return self._judge.jvp(direction)
    if self._scales is not None:  # the side's products are J̃'s: J d = J̃ (d ⊘ w)
      direction = metric_lib.unapply(self._scales, direction)
    return self._side.products.jvp(direction)

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    return _trial.scaled(self._judge, trial, factor)

  def null_trial(self, damping, step_size) -> Trial:
    return _trial.null(self._judge, damping, step_size)

  def gradient_norm(self) -> jax.Array:
    if self._judge is not self._batch:  # the whole batch's ‖Jᵀ g‖, one VJP
      return jnp.linalg.norm(flat(self._judge.vjp_direction(self._judge.output_gradient())))
    return self._side.gradient_norm(self._batch.output_gradient())

  def eigen(self) -> solvers_lib.EigenSystem:
    if self.matrix is None:
      raise ValueError(
        "this system was built for a matrix-free solver (solver='cg'): it has no matrix to "
        "factorise or decompose; build it with a dense solver ('cholesky', 'eigh')."
      )
    return self._prepare(solvers_lib.eigh())

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    eig = self.eigen()
    if self.system == "dual":
      return solvers_lib.gcv_scores(eig, self.rhs, grid, form="dual")
    residual = self.loss_residual
    return solvers_lib.gcv_scores(
      eig,
      self.rhs,
      grid,
      form="primal",
      residual_sq_norm=jnp.sum(jnp.square(residual)),
      num_residuals=residual.size,
    )

  def loss_at(self, params: Any) -> jax.Array:
    return self._judge.loss_at(params)
