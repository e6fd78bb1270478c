"""The linearised regression that one Regression Descent step solves.

At parameters θ and a batch (X, Y) with m examples and k outputs, RD linearises
the model, f(θ + δ; X) ≈ f(θ; X) + J δ, and solves the damped regression of
the (loss-weighted) residual on the Jacobian. There are six forms of that
system:

    full, dual:    α = (Lᵀ K L + λI)⁻¹ u,   d = Jᵀ L α          (m q × m q system)
    full, primal:  d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u,  J̃ = Lᵀ J            (p × p system)
    per-output:    α_c = (K_c + λI)⁻¹ r_c,  d = (1/k) Σ_c J_cᵀ α_c  (k m × m systems)
                   or its primal form d = (1/k) Σ_c (J_cᵀJ_c + λI)⁻¹ J_cᵀ r_c
    sketched:      α = (Fᵀ K F + λI)⁻¹ Sᵀu,  d = Jᵀ F α,  F = L S      (m s × m s system)
                   or its primal form d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ Sᵀu, J̃ = Fᵀ J

with K = J Jᵀ and the loss factors g = L u, H = L Lᵀ of `rdescent.losses`
(L = I, u = r for squared error). Both forms give the same d (push-through
identity); the primal one is cheaper when p is smaller than the system size.

**Sketched outputs.** With many outputs per example (q large), the
sketched form regresses a random s-dimensional projection of each example's
residual: S (q × s) has orthonormal columns scaled by √(q/s), drawn per step
(`output_sketch`), so E[S Sᵀ] = I and the Gauss-Newton model
½‖Sᵀ(u + Lᵀ J δ)‖² is unbiased for ½‖u + Lᵀ J δ‖². The system has m s rows
instead of m q; for squared error (L = I) its matrix Sᵀ K S is the Gram of
the sketched model x ↦ Sᵀ f(θ; x), built with s instead of k backward
passes per example. s = q gives S Sᵀ = I, the full form. The loss, the
predicted reduction and the loss after a step are those of the true,
unsketched problem, so a judging controller compares the true loss with the
true model's prediction.
The direction d has the sign of a gradient: the descent step is θ − η d.

**A prior direction (SPRING, Goldshlager, Abrahamsen & Lin 2024).** Every
form also solves the regression of what a prior direction d₀ (with weight μ)
leaves of the residual, and adds it back (`LinearizedProblem.shifted`):

    full, dual:    d = μ d₀ + Jᵀ L (Lᵀ K L + λI)⁻¹ (u − μ Lᵀ J d₀)
    full, primal:  d = μ d₀ + (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ (u − μ J̃ d₀)
    per-output:    d = μ d₀ + (1/k) Σ_c J_cᵀ (K_c + λI)⁻¹ (r_c − μ (J d₀)_c)
                   (primal: μ d₀ + (1/k) Σ_c (J_cᵀJ_c + λI)⁻¹ J_cᵀ (r_c − μ (J d₀)_c))

With e = d − μ d₀ the full form is the ridge regression of the shifted
residual, so

    d = argmin_δ ‖Lᵀ J δ − u‖² + λ ‖δ − μ d₀‖²,

the RD regression with its ridge pulled towards μ d₀ instead of 0; the
per-output form is the mean over c of argmin_δ ‖J_c δ − r_c‖² + λ‖δ − μ d₀‖².
The system matrix is the same, only its right-hand side changes: the rhs of
every form is built from an output-space residual by one map (`u` flat or
`u.T` per output in the dual forms, J̃ᵀ u or J_cᵀ u_c in the primal ones),
applied to u or to u − μ Lᵀ J d₀. It costs one product J d₀ per step (a JVP
in the dual forms, a matmul with the materialised Jacobian in the primal
ones); μ d₀ = 0 gives plain RD.

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

from rdescent import _jacobian
from rdescent import _mesh
from rdescent import _validation
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import sharding as sharding_lib
from rdescent import solvers as solvers_lib

SYSTEMS = ("auto", "dual", "primal")
OUTPUT_MODES = ("full", "per_output", "sketched")

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
    loss_noise: ε_f, the scale of the rounding error in the realised decrease
      ℓ(θ) − ℓ(θ − η d) computed in the compute dtype, from first-order error
      propagation through the outputs: ε (Σ_i |g_i|·(|z_i| + |z′_i|) + |ℓ| +
      |ℓ′|), g = ∂ℓ/∂z, z and z′ the outputs before and after the step, ε the
      dtype's machine epsilon (rounding inside the model adds a factor of a
      few). Near a fit (|r| ≪ |z|) it is far above ε |ℓ|: the judges relax
      their tests by it (`rdescent.damping`).
    solve_iterations: iterations of an iterative solver (`rdescent.solvers.
      cg`; 0 for direct solvers), int32.
    solve_residual: its relative residual at the end (0 for direct solvers).
  """

  direction: Any
  damping: jax.Array
  solve_ok: jax.Array
  jitter: jax.Array
  output_change: jax.Array
  step_size: jax.Array
  predicted_reduction: jax.Array
  loss_after: jax.Array
  loss_noise: jax.Array
  solve_iterations: jax.Array
  solve_residual: jax.Array

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
    examples_consistent: scalar bool. With `examples="independent"`: whether
      the outputs of each example evaluated alone match the batch call's (to
      √ε relative); False means the examples are coupled and the system
      built per example is wrong. Always True with `examples="coupled"`.
    matrix: the undamped system matrix, (n, n), or (k, n, n) per output.
    rhs: its right-hand side, (n,) or (k, n).
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


def output_sketch(key: jax.Array, num_residuals: int, size: int, dtype: Any) -> jax.Array:
  """A random S of shape (q, s) with orthonormal columns scaled by √(q/s).

  The columns span a uniformly random s-dimensional subspace of R^q (QR of
  a Gaussian matrix), so E[S Sᵀ] = I; s = q gives S Sᵀ = I.

  Args:
    key: a PRNG key.
    num_residuals: q, the residual size per example.
    size: s, 1 ≤ s ≤ q.
    dtype: the dtype of S.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rdescent.problem import output_sketch
    >>> sketch = output_sketch(jax.random.key(0), 5, 2, jnp.float32)
    >>> sketch.shape, bool(jnp.allclose(sketch.T @ sketch, 2.5 * jnp.eye(2), atol=1e-5))
    ((5, 2), True)
  """
  gaussian = jax.random.normal(key, (num_residuals, size), dtype)
  basis, upper = jnp.linalg.qr(gaussian)
  # Signs from R's diagonal make the basis Haar-distributed (not QR's convention).
  signs = jnp.where(jnp.diagonal(upper) < 0, -1.0, 1.0).astype(dtype)
  return basis * signs * jnp.asarray(jnp.sqrt(num_residuals / size), dtype)


def _sketched_apply(apply_fn: ApplyFn, sketch: jax.Array) -> ApplyFn:
  """x ↦ f(θ; x) S, shape (n, s): the model whose Gram is Sᵀ K S (squared error)."""

  def sketched(params, inputs):
    outputs = apply_fn(params, inputs)
    return outputs.reshape(outputs.shape[0], -1) @ sketch.astype(outputs.dtype)

  return sketched


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
  examples_consistent: jax.Array


class _Form:
  """Shared machinery of the system forms; subclasses set the system and its maps.

  A subclass sets `matrix`, `system`, `per_output` in `__init__` (before
  calling `_set_rhs`) and implements `_rhs_from(u)`, `_direction(solution)`,
  `_output_change(solution, direction)`, `gradient_norm()` and `_gcv_form`.
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
    self.examples_consistent = batch.examples_consistent
    self.num_examples, self.num_outputs = batch.outputs.shape
    self._prepared: dict[str, Any] = {}

  # -- what a subclass provides

  def _rhs_from(self, residual: jax.Array) -> jax.Array:
    """The system's right-hand side for an output-space residual u of shape (m, q)."""
    raise NotImplementedError

  def _direction(self, solution: jax.Array) -> Any:
    raise NotImplementedError

  def _output_change(self, solution: jax.Array, direction: Any) -> jax.Array:
    raise NotImplementedError

  def gradient_norm(self) -> jax.Array:
    raise NotImplementedError

  # -- shared

  def _set_rhs(self) -> None:
    self.rhs = self._rhs_from(self.factors.rhs)

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
      if solver.matrix_free:
        self._prepared[solver.name] = solver.prepare(self._operator())
      else:
        self._prepared[solver.name] = _mesh.replicated_call(solver.prepare)(self._dense_matrix())
    return self._prepared[solver.name]

  def _dense_matrix(self) -> jax.Array:
    if self.matrix is None:
      raise ValueError(
        "this system was built for a matrix-free solver (solver='cg'): it has no matrix to "
        "factorise or decompose; build it with a dense solver ('cholesky', 'eigh')."
      )
    return self.matrix

  def _operator(self) -> solvers_lib.LinearOperator:
    """The system matrix as a product v ↦ A v (from the matrix where there is one)."""
    matrix = self._dense_matrix()
    if matrix.ndim != 2:
      raise ValueError(
        "a matrix-free solver solves one system per step; outputs='per_output' has k "
        "(use solver='cholesky', or outputs='full')."
      )
    return solvers_lib.LinearOperator(lambda v: matrix @ v, matrix.shape[-1], matrix.dtype)

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

  def output_change_of(self, direction: Any) -> jax.Array:
    return self._jvp_change(direction)

  def _lift(self, output_change: jax.Array) -> jax.Array:
    """Lᵀ J d from J d, shape (m, q) (J d itself for squared error)."""
    factor = self.factors.factor
    return output_change if factor is None else jnp.einsum("ikq,ik->iq", factor, output_change)

  def _predicted_reduction(self, output_change: jax.Array, step_size: jax.Array) -> jax.Array:
    """−(u·w + ½‖w‖²), w = −η Lᵀ J d: the Gauss-Newton model's decrease."""
    lifted = self._lift(output_change)
    w = -jnp.asarray(step_size, lifted.dtype) * lifted
    return -(jnp.sum(self.factors.rhs * w) + 0.5 * jnp.sum(jnp.square(w)))

  def _outputs_at(self, params: Any) -> jax.Array:
    batch = self._batch
    return batch.apply_fn(params, batch.inputs).reshape(self.num_examples, -1)

  def loss_at(self, params: Any) -> jax.Array:
    return self._batch.loss_fn.value(self._outputs_at(params), self.targets)

  def _loss_noise(self, outputs_after: jax.Array, loss_after: jax.Array) -> jax.Array:
    """ε (Σ_i |g_i|·(|z_i| + |z′_i|) + |ℓ| + |ℓ′|): see `Trial.loss_noise`."""
    gradient = jnp.abs(_output_gradient(self.factors))
    scale = jnp.abs(self.outputs) + jnp.abs(outputs_after.astype(self.outputs.dtype))
    eps = jnp.finfo(self.outputs.dtype).eps
    return eps * (jnp.sum(gradient * scale) + jnp.abs(self.loss) + jnp.abs(loss_after))

  def _trial(
    self, direction, output_change, damping, solve_ok, jitter, step_size, iterations=0, residual=0
  ) -> Trial:
    dtype = self.outputs.dtype
    step_size = jnp.asarray(step_size, dtype)
    outputs_after = self._outputs_at(step_params(self.params, direction, step_size))
    loss_after = self._batch.loss_fn.value(outputs_after, self.targets).astype(dtype)
    return Trial(
      direction=direction,
      damping=jnp.asarray(damping, dtype),
      solve_ok=jnp.asarray(solve_ok),
      jitter=jnp.asarray(jitter, dtype),
      output_change=output_change.astype(dtype),
      step_size=step_size,
      predicted_reduction=self._predicted_reduction(output_change, step_size).astype(dtype),
      loss_after=loss_after,
      loss_noise=self._loss_noise(outputs_after, loss_after).astype(dtype),
      solve_iterations=jnp.asarray(iterations, jnp.int32),
      solve_residual=jnp.asarray(residual, dtype),
    )

  def _solve_around(self, rhs, offset, offset_change, damping, step_size, solver) -> Trial:
    """The trial of d = offset + (the system solved with `rhs`); no offset when None."""
    solver = self._solver if solver is None else solver
    prepared = self._prepare(solver)
    dtype = self.rhs.dtype
    solve = solver.solve if solver.matrix_free else _mesh.replicated_call(solver.solve)
    result = solve(prepared, rhs, jnp.asarray(damping, dtype))
    direction = self._direction(result.solution)
    output_change = self._output_change(result.solution, direction)
    if offset is not None:
      direction = jax.tree_util.tree_map(lambda o, s: (o + s).astype(s.dtype), offset, direction)
      output_change = offset_change.astype(output_change.dtype) + output_change
    return self._trial(
      direction,
      output_change,
      damping,
      result.ok,
      result.jitter,
      step_size,
      result.iterations,
      result.residual,
    )

  def solve(self, damping, step_size, *, solver=None) -> Trial:
    return self._solve_around(self.rhs, None, None, damping, step_size, solver)

  def shifted(self, prior: Any, weight: jax.Array | float) -> LinearizedProblem:
    return _ShiftedProblem(self, prior, weight)

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
    )._replace(solve_iterations=trial.solve_iterations, solve_residual=trial.solve_residual)

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
      loss_noise=jnp.zeros([], dtype),
      solve_iterations=jnp.zeros([], jnp.int32),
      solve_residual=jnp.zeros([], dtype),
    )

  def eigen(self) -> solvers_lib.EigenSystem:
    self._dense_matrix()
    return self._prepare(solvers_lib.eigh())

  def _gcv_scores_of(self, rhs: jax.Array, residual: jax.Array, grid: jax.Array) -> jax.Array:
    eig = self.eigen()
    if self._gcv_form == "dual":
      return solvers_lib.gcv_scores(eig, rhs, grid, form="dual")
    return solvers_lib.gcv_scores(
      eig,
      rhs,
      grid,
      form="primal",
      residual_sq_norm=jnp.sum(jnp.square(residual)),
      num_residuals=residual.size,
    )

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    return self._gcv_scores_of(self.rhs, self.factors.rhs, grid)


class _ShiftedProblem:
  """A form solved around an offset o = μ d₀: d = o + (the regression of u − Lᵀ J o).

  Shares the form's matrix, its prepared solves and everything that
  describes the batch (`loss`, `factors`, `residual_norm`, `gradient_norm`,
  `eigen`, `loss_at`): proportional controllers set λ from the batch's loss
  as before. What changes is the right-hand side, `rhs` = the form's rhs of
  the shifted residual `shifted_residual` = u − Lᵀ J o (built once, one J o
  product), so every `solve` returns the trial of the full direction and GCV
  scores the shifted regression. `null_trial` is still the zero step.
  `shifted` of a view adds its offset to this one's.
  """

  def __init__(self, form: _Form, prior: Any, weight: jax.Array | float):
    self._form = form
    dtype = form.outputs.dtype
    weight = jnp.asarray(weight, dtype)
    # Each leaf in its parameter's dtype (the JVP's tangents must match).
    self.offset = jax.tree_util.tree_map(
      lambda d, p: (weight * d).astype(jnp.asarray(p).dtype), prior, form.params
    )
    self.offset_change = form.output_change_of(self.offset).astype(dtype)
    self.shifted_residual = form.factors.rhs - form._lift(self.offset_change)
    self.rhs = form._rhs_from(self.shifted_residual)
    self.params = form.params
    self.outputs = form.outputs
    self.targets = form.targets
    self.loss = form.loss
    self.factors = form.factors
    self.examples_consistent = form.examples_consistent
    self.num_examples = form.num_examples
    self.num_outputs = form.num_outputs
    self.system = form.system
    self.per_output = form.per_output
    self.matrix = form.matrix

  @property
  def residual_norm(self) -> jax.Array:
    return self._form.residual_norm

  def solve(self, damping, step_size, *, solver=None) -> Trial:
    return self._form._solve_around(
      self.rhs, self.offset, self.offset_change, damping, step_size, solver
    )

  def shifted(self, prior: Any, weight: jax.Array | float) -> LinearizedProblem:
    dtype = self.outputs.dtype
    weight = jnp.asarray(weight, dtype)
    total = jax.tree_util.tree_map(
      lambda o, d: o + (weight * d).astype(o.dtype), self.offset, prior
    )
    return _ShiftedProblem(self._form, total, 1.0)

  def output_change_of(self, direction: Any) -> jax.Array:
    return self._form.output_change_of(direction)

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    return self._form.scale(trial, factor)

  def null_trial(self, damping, step_size) -> Trial:
    return self._form.null_trial(damping, step_size)

  def gradient_norm(self) -> jax.Array:
    return self._form.gradient_norm()

  def eigen(self) -> solvers_lib.EigenSystem:
    return self._form.eigen()

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    return self._form._gcv_scores_of(self.rhs, self.shifted_residual, grid)

  def loss_at(self, params: Any) -> jax.Array:
    return self._form.loss_at(params)


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
    self._set_rhs()

  def _rhs_from(self, residual):
    return residual.reshape(-1)

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
    self._set_rhs()

  def _rhs_from(self, residual):
    return residual.T

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


def _system_factor(factor: jax.Array | None, sketch: jax.Array, num_examples: int) -> jax.Array:
  """F = L S per example, shape (m, k, s) (S itself for every example when L = I)."""
  if factor is None:
    return jnp.broadcast_to(sketch, (num_examples, *sketch.shape))
  return jnp.einsum("ikq,qs->iks", factor, sketch.astype(factor.dtype))


def _output_gradient(factors: losses_lib.GaussNewtonFactors) -> jax.Array:
  """g = L u, the loss gradient with respect to the outputs, shape (m, k)."""
  rhs, factor = factors
  return rhs if factor is None else jnp.einsum("ikq,iq->ik", factor, rhs)


class _SketchedDual(_Form):
  """α = (Fᵀ K F + λI)⁻¹ Sᵀu, d = Jᵀ F α with F = L S (an m s × m s system).

  For squared error `gram` is already Sᵀ K S (the sketched model's Gram) and
  J d costs one JVP; otherwise `gram` is K and J d = K F α costs no pass.
  """

  system, per_output, _gcv_form = "dual", False, "dual"

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, gram: jax.Array, sketch: jax.Array):
    super().__init__(batch, solver)
    self._sketch = sketch
    m, k = batch.outputs.shape
    size = sketch.shape[1]
    if batch.factors.factor is None:
      self._factor, self._gram = None, None
      self.matrix = gram
    else:
      self._factor = _system_factor(batch.factors.factor, sketch, m)
      self._gram = gram
      sandwich = jnp.einsum(
        "iks,ikjl,jlr->isjr", self._factor, gram.reshape(m, k, m, k), self._factor
      )
      self.matrix = sandwich.reshape(m * size, m * size)
    self._set_rhs()

  def _rhs_from(self, residual):
    return (residual @ self._sketch.astype(residual.dtype)).reshape(-1)

  def _coefficients(self, solution: jax.Array) -> jax.Array:
    """F α, shape (m, k)."""
    alpha = solution.reshape(self.num_examples, -1)
    if self._factor is None:
      return alpha @ self._sketch.T.astype(alpha.dtype)
    return jnp.einsum("iks,is->ik", self._factor, alpha)

  def _direction(self, solution):
    return self._vjp_direction(self._coefficients(solution))

  def _output_change(self, solution, direction):
    if self._gram is None:
      return self._jvp_change(direction)
    return (self._gram @ self._coefficients(solution).reshape(-1)).reshape(self.num_examples, -1)

  def gradient_norm(self):
    gradient = _output_gradient(self.factors)
    if self._gram is not None:
      flat = gradient.reshape(-1)
      return jnp.sqrt(jnp.maximum(flat @ (self._gram @ flat), 0.0))
    leaves = jax.tree_util.tree_leaves(self._vjp_direction(gradient))
    return jnp.linalg.norm(jnp.concatenate([jnp.ravel(x) for x in leaves]))


class _OperatorForm(_Form):
  """The full system as products (matrix-free solvers): A is never formed.

  Every product with J is a JVP of the linearised batch function
  (`jax.linearize`, once per step) and every product with Jᵀ a VJP.
  """

  per_output = False

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jvp: Callable[[Any], Any]):
    super().__init__(batch, solver)
    self._jvp = jvp
    self._unravel = ravel_pytree(batch.params)[1]
    self.matrix = None  # type: ignore[assignment]
    self._set_rhs()

  def _jvp_change(self, direction: Any) -> jax.Array:
    return self._jvp(direction).reshape(self.num_examples, -1)

  def _output_change(self, solution, direction):
    del solution
    return self._jvp_change(direction)

  def _weigh(self, residual: jax.Array) -> jax.Array:
    """L w for w of shape (m, q): output-space coefficients (m, k)."""
    factor = self.factors.factor
    return residual if factor is None else jnp.einsum("ikq,iq->ik", factor, residual)

  def _flat_vjp(self, coefficients: jax.Array) -> jax.Array:
    return ravel_pytree(self._vjp_direction(coefficients))[0]


class _OperatorDual(_OperatorForm):
  """α = (Lᵀ K L + λI)⁻¹ u with K v = J (Jᵀ v), d = Jᵀ L α; m q unknowns."""

  system, _gcv_form = "dual", "dual"

  def _rhs_from(self, residual):
    return residual.reshape(-1)

  def _direction(self, solution):
    return self._vjp_direction(self._weigh(solution.reshape(self.num_examples, -1)))

  def _operator(self) -> solvers_lib.LinearOperator:
    def matvec(v):
      change = self._jvp_change(self._direction(v))
      return self._lift(change).reshape(-1).astype(v.dtype)

    return solvers_lib.LinearOperator(matvec, self.rhs.size, self.rhs.dtype)

  def gradient_norm(self):
    return jnp.linalg.norm(self._flat_vjp(self._weigh(self.factors.rhs)))


class _OperatorPrimal(_OperatorForm):
  """d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u with J̃ᵀ J̃ v = Jᵀ L Lᵀ (J v); p unknowns."""

  system, _gcv_form = "primal", "primal"

  def _rhs_from(self, residual):
    return self._flat_vjp(self._weigh(residual))

  def _direction(self, solution):
    return self._unravel(solution)

  def _operator(self) -> solvers_lib.LinearOperator:
    def matvec(v):
      lifted = self._lift(self._jvp_change(self._unravel(v)))
      return self._flat_vjp(self._weigh(lifted)).astype(v.dtype)

    return solvers_lib.LinearOperator(matvec, self.rhs.size, self.rhs.dtype)

  def gradient_norm(self):
    return jnp.linalg.norm(self.rhs)


class _JacobianProducts(_OperatorForm):
  """Products from a materialised J instead of the network (a mixin of the
  operator forms: `_JacobianDual`, `_JacobianPrimal`).

  J is held as column blocks, J = [J_1 … J_L] with J_l (m k × p_l): one per
  parameter leaf (the per-example Jacobians, never concatenated: on XLA:CPU
  the concatenation of a large J costs more than computing it), or a single
  block (the batch Jacobian of coupled examples, flat in `ravel_pytree`
  order). J d = Σ_l J_l d_l, and Jᵀ c is the row of blocks cᵀ J_l, which
  XLA:CPU runs as fast as J d (a transposed product Jᵀ c is several times
  slower).
  """

  _blocks: list[jax.Array]
  _split: Callable[[Any], list[jax.Array]]
  _join: Callable[[list[jax.Array]], Any]

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: Any):
    self._set_jacobian(jacobian, batch.params)
    super().__init__(batch, solver, self._jvp_change)

  def _set_jacobian(self, jacobian: Any, params: Any) -> None:
    if isinstance(jacobian, jax.Array):  # one flat (m, k, p) block
      unravel = ravel_pytree(params)[1]
      self._blocks = [jacobian.reshape(-1, jacobian.shape[-1])]
      self._split = lambda tree: [ravel_pytree(tree)[0]]
      self._join = lambda vectors: unravel(vectors[0])
      return
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = [leaf.shape for leaf in leaves]
    blocks = jax.tree_util.tree_leaves(jacobian)
    self._blocks = [block.reshape(-1, leaf.size) for block, leaf in zip(blocks, leaves)]
    self._split = lambda tree: [leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)]
    self._join = lambda vectors: jax.tree_util.tree_unflatten(
      treedef, [v.reshape(shape) for v, shape in zip(vectors, shapes)]
    )

  def _jvp_change(self, direction: Any) -> jax.Array:
    pieces = self._split(direction)
    change = sum(block @ piece.astype(block.dtype) for block, piece in zip(self._blocks, pieces))
    return jnp.asarray(change).reshape(self.num_examples, -1)

  def _vjp_direction(self, coefficients: jax.Array) -> Any:
    flat = coefficients.reshape(-1)
    return self._join([flat.astype(block.dtype) @ block for block in self._blocks])


class _JacobianDual(_JacobianProducts, _OperatorDual):
  """`_OperatorDual` with its products from J: K v = J (vᵀ J)ᵀ."""


class _JacobianPrimal(_JacobianProducts, _OperatorPrimal):
  """`_OperatorPrimal` with its products from J: JᵀJ v = ((J v)ᵀ J)ᵀ."""


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

  def _jacobian_times(self, flat_direction: jax.Array) -> jax.Array:
    """J d from the materialised Jacobian, shape (m, k)."""
    return jnp.einsum("ikp,p->ik", self._jacobian, flat_direction)

  def _output_change(self, solution, direction):
    del direction
    return self._jacobian_times(self._flat_direction(solution))

  def output_change_of(self, direction):
    return self._jacobian_times(ravel_pytree(direction)[0].astype(self._jacobian.dtype))


class _FullPrimal(_Primal):
  """d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u with J̃ = Lᵀ J."""

  per_output = False

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array):
    super().__init__(batch, solver, jacobian)
    self._lifted = self._lift_jacobian(jacobian)
    self.matrix = jnp.einsum("iqp,iqs->ps", self._lifted, self._lifted)
    self._set_rhs()

  def _lift_jacobian(self, jacobian: jax.Array) -> jax.Array:
    """J̃ = Lᵀ J, shape (m, q, p)."""
    factor = self.factors.factor
    return jacobian if factor is None else jnp.einsum("ikq,ikp->iqp", factor, jacobian)

  def _project(self, residual: jax.Array) -> jax.Array:
    """The residual the system regresses, from u (m, q): u itself here."""
    return residual

  def _rhs_from(self, residual):
    return jnp.einsum("iqp,iq->p", self._lifted, self._project(residual))

  def _flat_direction(self, solution):
    return solution

  def gradient_norm(self):
    return jnp.linalg.norm(self.rhs)


class _SketchedPrimal(_FullPrimal):
  """d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ Sᵀu with J̃ = Fᵀ J, F = L S (a p × p system)."""

  def __init__(
    self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array, sketch: jax.Array
  ):
    self._sketch = sketch
    super().__init__(batch, solver, jacobian)

  def _lift_jacobian(self, jacobian):
    return jnp.einsum(
      "iks,ikp->isp", _system_factor(self.factors.factor, self._sketch, jacobian.shape[0]), jacobian
    )

  def _project(self, residual):
    return residual @ self._sketch.astype(residual.dtype)

  def gradient_norm(self):
    gradient = jnp.einsum("ikp,ik->p", self._jacobian, _output_gradient(self.factors))
    return jnp.linalg.norm(gradient)


class _PerOutputPrimal(_Primal):
  """d = (1/k) Σ_c (J_cᵀ J_c + λI)⁻¹ J_cᵀ r_c."""

  per_output = True

  def __init__(self, batch: _Batch, solver: solvers_lib.Solver, jacobian: jax.Array):
    super().__init__(batch, solver, jacobian)
    self.matrix = jnp.einsum("icp,ics->cps", jacobian, jacobian)
    self._set_rhs()

  def _rhs_from(self, residual):
    return jnp.einsum("icp,ic->cp", self._jacobian, residual)

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
  sketch_size: int | None = None,
  sketch_key: jax.Array | None = None,
  examples: str = "independent",
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
    outputs: `"full"`, `"per_output"` or `"sketched"` (needs `sketch_size`
      and `sketch_key`).
    gram: the Gram engine, `"auto"`, `"structured"` or `"jacobian"`.
    system: `"dual"`, `"primal"` or `"auto"` (the smaller: primal when
      p < m q, or p < m per output).
    chunk_size: examples differentiated at once where Jacobians are
      materialised (None: all).
    data_axis: None, or the mesh axis the examples are split over (K built
      in block rows, `rdescent.sharding.row_block_gram`).
    solver: an `rdescent.solvers.Solver` or its name.
    sketch_size: s, 1 ≤ s ≤ q, the sketch's size (`outputs="sketched"`).
    sketch_key: the PRNG key of the sketch S (`output_sketch`).
    examples: `"independent"`: `apply_fn` maps each example on its own; the
      Gram engines rely on it, and `examples_consistent` checks it (one
      extra forward pass, each example alone). `"coupled"`: J is the
      Jacobian of the whole-batch function (`rdescent._jacobian.
      batch_jacobian`); `inputs` may be None, m is then the outputs'
      leading axis; `gram`, `chunk_size` and `data_axis` do not apply.
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
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  _validation.check_option("examples", examples, gram_lib.EXAMPLES)
  coupled = examples == "coupled"
  per_output = outputs == "per_output"
  raw_outputs, vjp = jax.vjp(lambda p: apply_fn(p, inputs), params)
  if coupled:
    num_examples = raw_outputs.shape[0] if raw_outputs.ndim else 0
  else:
    num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  _validation.check_outputs(raw_outputs, num_examples, name)
  flat_outputs = raw_outputs.reshape(num_examples, -1)
  if coupled and jnp.shape(targets)[0] != num_examples:
    raise ValueError(
      f"{name}: targets must have the outputs' {num_examples} rows on their leading axis "
      f"(examples='coupled'); got targets of shape {jnp.shape(targets)}."
    )
  if coupled:
    consistent = jnp.asarray(True)
  else:
    _check_single_example(apply_fn, params, inputs, raw_outputs.shape, name)
    consistent = examples_consistent(apply_fn, params, inputs, flat_outputs, chunk_size)
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
    examples_consistent=consistent,
  )
  num_outputs = flat_outputs.shape[1]
  num_params = ravel_pytree(params)[0].size
  sketch = None
  if outputs == "sketched":
    sketch = _sketch(sketch_size, sketch_key, factors.rhs.shape[1], flat_outputs.dtype, name)
    dual_size = num_examples * sketch.shape[1]
  else:
    dual_size = num_examples if per_output else num_examples * factors.rhs.shape[1]
  if system == "auto":
    system = "primal" if num_params < dual_size else "dual"

  form: _Form
  if solver.matrix_free:
    # Products only: one linearisation of the batch function (any examples).
    if outputs != "full":
      raise ValueError(
        f"{name}: solver={solver.name!r} is matrix-free and solves the full system only; "
        f"got outputs={outputs!r} (use outputs='full', or a dense solver such as 'cholesky')."
      )
    if solver.products == "jacobian":
      # Per-leaf blocks (independent examples) or the flat batch Jacobian (coupled).
      jacobian = (
        _batch_jacobian(apply_fn, params, inputs)
        if coupled
        else _per_example_jacobian(apply_fn, params, inputs, num_outputs, chunk_size)
      )
      form = (_JacobianPrimal if system == "primal" else _JacobianDual)(batch, solver, jacobian)
    else:
      _, jvp = jax.linearize(lambda p: apply_fn(p, inputs), params)
      form = (_OperatorPrimal if system == "primal" else _OperatorDual)(batch, solver, jvp)
    form._prepare(solver)
    return form
  # examples="coupled": J of the batch function, once; every form is built from it.
  coupled_jacobian = _batch_jacobian(apply_fn, params, inputs) if coupled else None
  if system == "dual" and sketch is not None:
    # Squared error: the Gram of the sketched model, Sᵀ K S (s backward passes, not k).
    squared = factors.factor is None
    if coupled_jacobian is not None:
      rows = jnp.einsum("ikp,ks->isp", coupled_jacobian, sketch) if squared else coupled_jacobian
      k_matrix = gram_lib.gram_from_jacobian(rows)
    else:
      gram_fn = _sketched_apply(apply_fn, sketch) if squared else apply_fn
      k_matrix = _gram(gram_fn, params, inputs, gram, "full", chunk_size, data_axis)
    form = _SketchedDual(batch, solver, k_matrix, sketch)
  elif system == "dual":
    if coupled_jacobian is not None:
      k_matrix = gram_lib.gram_from_jacobian(coupled_jacobian, outputs=outputs)
    else:
      k_matrix = _gram(apply_fn, params, inputs, gram, outputs, chunk_size, data_axis)
    form = (_PerOutputDual if per_output else _FullDual)(batch, solver, k_matrix)
  else:
    if coupled_jacobian is not None:
      jacobian = coupled_jacobian
    else:
      jacobian = gram_lib.flat_jacobian(
        _per_example_jacobian(apply_fn, params, inputs, num_outputs, chunk_size),
        num_examples,
        num_outputs,
      )
    if sketch is not None:
      form = _SketchedPrimal(batch, solver, jacobian, sketch)
    else:
      form = (_PerOutputPrimal if per_output else _FullPrimal)(batch, solver, jacobian)
  form._prepare(solver)
  return form


def _batch_jacobian(apply_fn, params, inputs) -> jax.Array:
  """J of the batch function (coupled examples), an (m, k, p) array, replicated."""
  return _mesh.replicated_call(_jacobian.batch_jacobian)(apply_fn, params, inputs)


def _per_example_jacobian(apply_fn, params, inputs, num_outputs, chunk_size) -> Any:
  """The per-example Jacobians, a pytree like `params` of (m, k, *leaf) arrays, replicated."""
  return _mesh.replicated_call(gram_lib.per_example_jacobian)(
    apply_fn, params, inputs, num_outputs=num_outputs, chunk_size=chunk_size
  )


def _check_single_example(
  apply_fn: ApplyFn, params: Any, inputs: Any, batch_shape: tuple[int, ...], name: str
) -> None:
  """Trace time: `apply_fn` on a batch of one example returns one example's outputs."""
  one = jax.tree_util.tree_map(lambda leaf: leaf[:1], inputs)
  hint = (
    "With examples='independent' (the default) apply_fn must map each example on its own; "
    "for a residual function of the whole batch (batch statistics, residuals that mix "
    "examples, a plain residual vector) pass examples='coupled'."
  )
  try:
    shape = jax.eval_shape(apply_fn, params, one).shape
  except Exception as error:  # the user's function, on a batch of one
    raise ValueError(f"{name}: apply_fn fails on a batch of one example ({error}). {hint}") from (
      error
    )
  if tuple(shape) != (1, *batch_shape[1:]):
    raise ValueError(
      f"{name}: apply_fn(params, inputs) returns {tuple(batch_shape)} for the batch but "
      f"{tuple(shape)} for a batch of one example, expected {(1, *batch_shape[1:])}. {hint}"
    )


def examples_consistent(
  apply_fn: ApplyFn, params: Any, inputs: Any, outputs: jax.Array, chunk_size: int | None = None
) -> jax.Array:
  """Whether each example evaluated alone gives the batch call's outputs (one forward pass).

  The check of `examples="independent"`; `outputs` is the batch call's,
  shape (m, k).

  Equal to √ε·(1 + max |f|) per entry: rounding differs between a batch and
  its examples, a coupling (batch statistics) changes outputs at O(1).
  Non-finite outputs of single examples count as a mismatch.
  """

  def one(example):
    return apply_fn(params, _jacobian.batch_of_one(example)).reshape(-1)

  alone = _jacobian.map_examples(one, inputs, chunk_size).astype(outputs.dtype)
  tolerance = jnp.sqrt(jnp.finfo(outputs.dtype).eps) * (1.0 + jnp.max(jnp.abs(outputs)))
  return jnp.all(jnp.abs(alone - outputs) <= tolerance)


def _sketch(size: Any, key: Any, num_residuals: int, dtype: Any, name: str) -> jax.Array:
  """S for `outputs="sketched"`, after checking its size against q at trace time."""
  if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= num_residuals:
    raise ValueError(
      f"{name}: outputs='sketched' needs sketch_size, an int with 1 <= sketch_size <= q = "
      f"{num_residuals} (the loss's residual size per example); got sketch_size={size!r}."
    )
  if key is None:
    raise ValueError(f"{name}: outputs='sketched' needs sketch_key, a PRNG key; got None.")
  return output_sketch(key, num_residuals, size, dtype)
