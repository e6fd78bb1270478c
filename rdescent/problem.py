"""The linearised regression that one Regression Descent step solves.

At parameters θ and a batch (X, Y) with m examples and k outputs, RD linearises
the model, f(θ + δ; X) ≈ f(θ; X) + J δ, and solves the damped regression of
the (loss-weighted) residual on the Jacobian. There are four forms of that
system:

    full, dual:    α = (Lᵀ K L + λI)⁻¹ u,   d = Jᵀ L α          (m q × m q system)
    full, primal:  d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u,  J̃ = Lᵀ J            (p × p system)
    per-output:    α_c = (K_c + λI)⁻¹ r_c,  d = (1/k) Σ_c J_cᵀ α_c  (k m × m systems)
                   or its primal form d = (1/k) Σ_c (J_cᵀJ_c + λI)⁻¹ J_cᵀ r_c

with K = J Jᵀ and the loss factors g = L u, H = L Lᵀ of `rdescent.losses`
(L = I, u = r for squared error). Both forms give the same d (push-through
identity); the primal one is cheaper when p is smaller than the system size.
The direction d has the sign of a gradient: the descent step is θ − η d.

`linearize` is the only code that knows which form is solved. It returns a
`LinearizedProblem`, on which a damping controller calls `solve(λ, η)` for
as many λ as it likes (the system matrix is built once) and receives
`Trial`s: the direction, the solve's health, the first-order output change
J d, and the predicted reduction and the loss after the step θ − η d.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rdescent import _mesh
from rdescent import _validation
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import sharding as sharding_lib
from rdescent import solvers as solvers_lib

SYSTEMS = ("auto", "dual", "primal")

ApplyFn = Callable[[Any, Any], jax.Array]


class Trial(NamedTuple):
  """One candidate step θ − η d of a `LinearizedProblem`, at one damping λ.

  Attributes:
    direction: d, params-shaped, with the sign of a gradient.
    damping: λ the direction was solved with, a scalar.
    solve_ok: scalar bool, the health of the linear solve.
    jitter: the extra damping the solver added (0 when none), a scalar.
    output_change: J d, the first-order change of the outputs per unit step,
      shape (m, k) (the step θ − η d changes the outputs by −η J d).
    step_size: η, a scalar.
    predicted_reduction: the decrease of the batch loss that the
      Gauss-Newton model predicts for θ − η d, −(u·w + ½‖w‖²) with
      w = −η Lᵀ J d (½‖r‖² − ½‖r − η J d‖² for squared error).
    loss_after: the summed batch loss at θ − η d (one forward pass).
  """

  direction: Any
  damping: jax.Array
  solve_ok: jax.Array
  jitter: jax.Array
  output_change: jax.Array
  step_size: jax.Array
  predicted_reduction: jax.Array
  loss_after: jax.Array

  @property
  def healthy(self) -> jax.Array:
    """A healthy solve, a finite direction and a finite loss after the step."""
    return self.solve_ok & _validation.all_finite(self.direction) & jnp.isfinite(self.loss_after)


class LinearizedProblem(Protocol):
  """The RD regression at one (params, batch), built inside a trace by `linearize`.

  Attributes:
    params: θ, the parameters the problem was linearised at.
    outputs: f(θ; X), shape (m, k).
    targets: Y as (m, k) (after the loss's target conversion).
    loss: the summed loss at θ, a scalar.
    factors: the loss's `GaussNewtonFactors` (u, L) at θ.
    num_examples: m.
    num_outputs: k.
    system: `"dual"` or `"primal"`, the form actually solved.
    per_output: whether the k outputs are solved as k systems.
    matrix: the undamped system matrix, (n, n), or (k, n, n) per output.
    rhs: its right-hand side, (n,) or (k, n).
  """

  params: Any
  outputs: jax.Array
  targets: jax.Array
  loss: jax.Array
  factors: losses_lib.GaussNewtonFactors
  num_examples: int
  num_outputs: int
  system: str
  per_output: bool
  matrix: jax.Array
  rhs: jax.Array

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

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    """The trial with its direction (and J d) multiplied by `factor`."""
    ...

  def null_trial(self, damping: jax.Array | float, step_size: jax.Array | float) -> Trial:
    """A zero step at λ = `damping` (what a controller returns for no step)."""
    ...

  def gradient_norm(self) -> jax.Array:
    """‖Jᵀ L u‖, the norm of the loss gradient (‖Jᵀ r‖ for squared error)."""
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


def step_params(params: Any, direction: Any, step_size: jax.Array | float) -> Any:
  """θ − η d, each leaf in its own dtype."""
  return jax.tree_util.tree_map(
    lambda p, d: (p - step_size * d).astype(jnp.asarray(p).dtype), params, direction
  )


class _Batch(NamedTuple):
  """What every form shares: the model at θ on the batch, and the loss there."""

  apply_fn: ApplyFn
  params: Any
  inputs: Any
  vjp: Callable[[jax.Array], tuple[Any]]
  output_shape: tuple[int, ...]
  output_dtype: Any
  outputs: jax.Array
  targets: jax.Array
  loss_fn: losses_lib.Loss
  loss: jax.Array
  factors: losses_lib.GaussNewtonFactors


class _Form:
  """Shared machinery of the four forms; subclasses set the system and its maps.

  A subclass sets `matrix`, `rhs`, `system`, `per_output` in `__init__` and
  implements `_direction(solution)`, `_output_change(solution, direction)`,
  `gradient_norm()` and `_gcv_form`.
  """

  system: str
  per_output: bool
  matrix: jax.Array
  rhs: jax.Array
  _gcv_form: str

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver):
    self._batch = batch
    self._solver = solver
    self.params = batch.params
    self.outputs = batch.outputs
    self.targets = batch.targets
    self.loss = batch.loss
    self.factors = batch.factors
    self.num_examples, self.num_outputs = batch.outputs.shape
    self._prepared: dict[str, Any] = {}

  # -- what a subclass provides

  def _direction(self, solution: jax.Array) -> Any:
    raise NotImplementedError

  def _output_change(self, solution: jax.Array, direction: Any) -> jax.Array:
    raise NotImplementedError

  def gradient_norm(self) -> jax.Array:
    raise NotImplementedError

  # -- shared

  @property
  def residual_norm(self) -> jax.Array:
    return jnp.linalg.norm(self.factors.rhs)

  def _prepare(self, solver: solvers_lib.Solver) -> Any:
    # Replicated under a mesh, like the solve: the solve's retry loop then
    # holds no collectives (a sharded retry loop hangs XLA:CPU on repeated
    # calls). Computed once per solver and problem, at the first solve; the
    # default solver's preparation is made when the problem is built, so
    # that solves inside a controller's loop reuse it.
    if solver.name not in self._prepared:
      self._prepared[solver.name] = _mesh.replicated_call(solver.prepare)(self.matrix)
    return self._prepared[solver.name]

  def _vjp_direction(self, coefficients: jax.Array) -> Any:
    """Jᵀ c for output-space coefficients c of shape (m, k): one VJP."""
    cotangent = coefficients.reshape(self._batch.output_shape).astype(self._batch.output_dtype)
    (direction,) = self._batch.vjp(cotangent)
    return direction

  def _jvp_change(self, direction: Any) -> jax.Array:
    """J d by one JVP, shape (m, k)."""
    batch = self._batch
    _, tangent = jax.jvp(lambda p: batch.apply_fn(p, batch.inputs), (batch.params,), (direction,))
    return tangent.reshape(self.num_examples, -1)

  def _predicted_reduction(self, output_change: jax.Array, step_size: jax.Array) -> jax.Array:
    """−(u·w + ½‖w‖²), w = −η Lᵀ J d: the Gauss-Newton model's decrease."""
    rhs_u, factor = self.factors
    lifted = output_change if factor is None else jnp.einsum("ikq,ik->iq", factor, output_change)
    w = -jnp.asarray(step_size, lifted.dtype) * lifted
    return -(jnp.sum(rhs_u * w) + 0.5 * jnp.sum(jnp.square(w)))

  def loss_at(self, params: Any) -> jax.Array:
    batch = self._batch
    outputs = batch.apply_fn(params, batch.inputs).reshape(self.num_examples, -1)
    return batch.loss_fn.value(outputs, self.targets)

  def _trial(self, direction, output_change, damping, solve_ok, jitter, step_size) -> Trial:
    dtype = self.outputs.dtype
    step_size = jnp.asarray(step_size, dtype)
    return Trial(
      direction=direction,
      damping=jnp.asarray(damping, dtype),
      solve_ok=jnp.asarray(solve_ok),
      jitter=jnp.asarray(jitter, dtype),
      output_change=output_change.astype(dtype),
      step_size=step_size,
      predicted_reduction=self._predicted_reduction(output_change, step_size).astype(dtype),
      loss_after=self.loss_at(step_params(self.params, direction, step_size)).astype(dtype),
    )

  def solve(self, damping, step_size, *, solver=None) -> Trial:
    solver = self._solver if solver is None else solver
    prepared = self._prepare(solver)
    dtype = self.matrix.dtype
    result = _mesh.replicated_call(solver.solve)(prepared, self.rhs, jnp.asarray(damping, dtype))
    direction = self._direction(result.solution)
    return self._trial(
      direction,
      self._output_change(result.solution, direction),
      damping,
      result.ok,
      result.jitter,
      step_size,
    )

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    factor = jnp.asarray(factor, self.outputs.dtype)
    direction = jax.tree_util.tree_map(lambda d: (factor * d).astype(d.dtype), trial.direction)
    return self._trial(
      direction,
      factor * trial.output_change,
      trial.damping,
      trial.solve_ok,
      trial.jitter,
      trial.step_size,
    )

  def null_trial(self, damping, step_size) -> Trial:
    dtype = self.outputs.dtype
    zeros = jax.tree_util.tree_map(jnp.zeros_like, self.params)
    return Trial(
      direction=zeros,
      damping=jnp.asarray(damping, dtype),
      solve_ok=jnp.asarray(True),
      jitter=jnp.zeros([], dtype),
      output_change=jnp.zeros_like(self.outputs),
      step_size=jnp.asarray(step_size, dtype),
      predicted_reduction=jnp.zeros([], dtype),
      loss_after=jnp.asarray(self.loss, dtype),
    )

  def eigen(self) -> solvers_lib.EigenSystem:
    return self._prepare(solvers_lib.eigh())

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    eig = self.eigen()
    if self._gcv_form == "dual":
      return solvers_lib.gcv_scores(eig, self.rhs, grid, form="dual")
    rhs_u = self.factors.rhs
    return solvers_lib.gcv_scores(
      eig,
      self.rhs,
      grid,
      form="primal",
      residual_sq_norm=jnp.sum(jnp.square(rhs_u)),
      num_residuals=rhs_u.size,
    )


class _FullDual(_Form):
  """α = (Lᵀ K L + λI)⁻¹ u, d = Jᵀ L α; J d = K L α costs no pass."""

  system, per_output, _gcv_form = "dual", False, "dual"

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, gram: jax.Array):
    super().__init__(batch, solver)
    rhs_u, factor = batch.factors
    m, k = batch.outputs.shape
    self._gram = gram
    if factor is None:
      self.matrix = gram
    else:
      q = rhs_u.shape[1]
      gram4 = jnp.einsum("ikq,ikjl,jlr->iqjr", factor, gram.reshape(m, k, m, k), factor)
      self.matrix = gram4.reshape(m * q, m * q)
    self.rhs = rhs_u.reshape(-1)

  def _coefficients(self, solution: jax.Array) -> jax.Array:
    factor = self.factors.factor
    alpha = solution.reshape(self.num_examples, -1)
    return alpha if factor is None else jnp.einsum("ikq,iq->ik", factor, alpha)

  def _direction(self, solution):
    return self._vjp_direction(self._coefficients(solution))

  def _output_change(self, solution, direction):
    del direction
    return (self._gram @ self._coefficients(solution).reshape(-1)).reshape(self.num_examples, -1)

  def gradient_norm(self):
    return jnp.sqrt(jnp.maximum(self.rhs @ (self.matrix @ self.rhs), 0.0))


class _PerOutputDual(_Form):
  """α_c = (K_c + λI)⁻¹ r_c, d = (1/k) Σ_c J_cᵀ α_c; J d costs one JVP."""

  system, per_output, _gcv_form = "dual", True, "dual"

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, gram: jax.Array):
    super().__init__(batch, solver)
    self.matrix = gram
    self.rhs = batch.factors.rhs.T

  def _direction(self, solution):
    return self._vjp_direction(solution.T / self.num_outputs)

  def _output_change(self, solution, direction):
    del solution
    return self._jvp_change(direction)

  def gradient_norm(self):
    # ‖Σ_c J_cᵀ r_c‖ = k ‖(1/k) Σ_c J_cᵀ r_c‖: one VJP.
    gradient = self._direction(self.rhs)
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(gradient)])
    return self.num_outputs * jnp.linalg.norm(flat)


class _Primal(_Form):
  """The primal forms share J (m, k, p), materialised: J d is one matmul."""

  system, _gcv_form = "primal", "primal"

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array):
    super().__init__(batch, solver)
    self._jacobian = jacobian
    _, self._unravel = ravel_pytree(batch.params)

  def _flat_direction(self, solution: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _direction(self, solution):
    return self._unravel(self._flat_direction(solution))

  def _output_change(self, solution, direction):
    del direction
    return jnp.einsum("ikp,p->ik", self._jacobian, self._flat_direction(solution))


class _FullPrimal(_Primal):
  """d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u with J̃ = Lᵀ J."""

  per_output = False

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array):
    super().__init__(batch, solver, jacobian)
    rhs_u, factor = batch.factors
    lifted = jacobian if factor is None else jnp.einsum("ikq,ikp->iqp", factor, jacobian)
    self.matrix = jnp.einsum("iqp,iqs->ps", lifted, lifted)
    self.rhs = jnp.einsum("iqp,iq->p", lifted, rhs_u)

  def _flat_direction(self, solution):
    return solution

  def gradient_norm(self):
    return jnp.linalg.norm(self.rhs)


class _PerOutputPrimal(_Primal):
  """d = (1/k) Σ_c (J_cᵀ J_c + λI)⁻¹ J_cᵀ r_c."""

  per_output = True

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array):
    super().__init__(batch, solver, jacobian)
    self.matrix = jnp.einsum("icp,ics->cps", jacobian, jacobian)
    self.rhs = jnp.einsum("icp,ic->cp", jacobian, batch.factors.rhs)

  def _flat_direction(self, solution):
    return jnp.mean(solution, axis=0)

  def gradient_norm(self):
    return jnp.linalg.norm(jnp.sum(self.rhs, axis=0))


def _gram(apply_fn, params, inputs, method, outputs, chunk_size, data_axis) -> jax.Array:
  """K under a mesh: every device builds all of it (`data_axis=None`) or its block row."""
  if data_axis is None:
    return _mesh.replicated_call(gram_lib.gram_matrix)(
      apply_fn, params, inputs, method=method, outputs=outputs, chunk_size=chunk_size
    )
  return sharding_lib.row_block_gram(
    apply_fn,
    params,
    inputs,
    axis=data_axis,
    method=method,
    outputs=outputs,
    chunk_size=chunk_size,
  )


def linearize(
  apply_fn: ApplyFn,
  params: Any,
  inputs: Any,
  targets: jax.Array,
  *,
  loss: losses_lib.Loss,
  outputs: str = "full",
  gram: str = "auto",
  system: str = "auto",
  chunk_size: int | None = None,
  data_axis: str | None = None,
  solver: solvers_lib.Solver | str = "cholesky",
  name: str = "scale_by_regression_descent",
) -> LinearizedProblem:
  """Builds the RD system of one batch in the form the options ask for.

  Evaluates the model and its VJP once, the loss and its Gauss-Newton
  factors, and either K (dual; `rdescent.gram`) or the per-example Jacobian
  (primal), then the system matrix of the chosen form.

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs`, (m,) or (m, k).
    params: θ.
    inputs: X, a pytree with a leading example axis of size m.
    targets: Y.
    loss: an `rdescent.losses.Loss`.
    outputs: `"full"` or `"per_output"`.
    gram: the Gram engine, `"auto"`, `"structured"` or `"jacobian"`.
    system: `"dual"`, `"primal"` or `"auto"` (the smaller: primal when
      p < m q, or p < m per output).
    chunk_size: examples differentiated at once where Jacobians are
      materialised (None: all).
    data_axis: None, or the mesh axis the examples are split over (K built
      in block rows, `rdescent.sharding.row_block_gram`).
    solver: an `rdescent.solvers.Solver` or its name.
    name: the transform's name, for error messages.

  Returns:
    A `LinearizedProblem`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> from rdescent.problem import linearize
    >>> apply_fn = lambda w, x: x @ w
    >>> x, y = jnp.eye(3)[:2], jnp.array([1.0, 2.0])
    >>> problem = linearize(apply_fn, jnp.zeros(3), x, y, loss=rd.losses.get("mse"),
    ...                     system="dual")
    >>> problem.system, problem.matrix.shape
    ('dual', (2, 2))
    >>> trial = problem.solve(0.0, 1.0)
    >>> trial.direction, trial.loss_after
    (Array([-1., -2.,  0.], dtype=float32), Array(0., dtype=float32))
  """
  solver = solvers_lib.get(solver)
  per_output = outputs == "per_output"
  raw_outputs, vjp = jax.vjp(lambda p: apply_fn(p, inputs), params)
  num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  _validation.check_outputs(raw_outputs, num_examples, name)
  flat_outputs = raw_outputs.reshape(num_examples, -1)
  prepared_targets = loss.prepare_targets(targets, flat_outputs)
  factors = loss.factors(flat_outputs, prepared_targets)
  batch = _Batch(
    apply_fn=apply_fn,
    params=params,
    inputs=inputs,
    vjp=vjp,
    output_shape=raw_outputs.shape,
    output_dtype=raw_outputs.dtype,
    outputs=flat_outputs,
    targets=prepared_targets,
    loss_fn=loss,
    loss=loss.value(flat_outputs, prepared_targets),
    factors=factors,
  )
  num_outputs = flat_outputs.shape[1]
  num_params = ravel_pytree(params)[0].size
  dual_size = num_examples if per_output else num_examples * factors.rhs.shape[1]
  if system == "auto":
    system = "primal" if num_params < dual_size else "dual"

  form: _Form
  if system == "dual":
    k_matrix = _gram(apply_fn, params, inputs, gram, outputs, chunk_size, data_axis)
    form = (_PerOutputDual if per_output else _FullDual)(batch, solver, k_matrix)
  else:
    jacobian = gram_lib.flat_jacobian(
      _mesh.replicated_call(gram_lib.per_example_jacobian)(
        apply_fn,
        params,
        inputs,
        num_outputs=num_outputs,
        chunk_size=chunk_size,
      ),
      num_examples,
      num_outputs,
    )
    form = (_PerOutputPrimal if per_output else _FullPrimal)(batch, solver, jacobian)
  form._prepare(solver)
  return form
