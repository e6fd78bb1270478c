"""The linearised regression that one Regression Descent step solves.

At parameters θ and a batch (X, Y) with m examples and k outputs, RD linearises
the model, f(θ + δ; X) ≈ f(θ; X) + J δ, and solves the damped regression of
the (loss-weighted) residual on the Jacobian:

    full, dual:    α = (Lᵀ K L + λI)⁻¹ u,   d = Jᵀ L α          (m q × m q system)
    full, primal:  d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u,  J̃ = Lᵀ J            (p × p system)
    per-output:    α_c = (K_c + λI)⁻¹ r_c,  d = (1/k) Σ_c J_cᵀ α_c  (k m × m systems)
                   or its primal form d = (1/k) Σ_c (J_cᵀJ_c + λI)⁻¹ J_cᵀ r_c

with K = J Jᵀ and the loss factors g = L u, H = L Lᵀ of `rdescent.losses`
(L = I, u = r for squared error). Both forms give the same d (push-through
identity); the primal one is cheaper when p is smaller than the system size.
The direction d has the sign of a gradient: the descent step is θ − η d.
In the dual form d is one vector-Jacobian product; J is never multiplied.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rdescent import _mesh
from rdescent import _validation
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import sharding as sharding_lib
from rdescent import solve as solve_lib

SYSTEMS = ("auto", "dual", "primal")


def _gram(apply_fn, params, inputs, method, outputs, chunk_size, data_axis) -> jax.Array:
  """K under a mesh: every device builds all of it (`data_axis=None`) or its block row."""
  if data_axis is None:
    return _mesh.replicated_call(gram_lib.gram_matrix)(
        apply_fn, params, inputs, method=method, outputs=outputs, chunk_size=chunk_size
    )
  return sharding_lib.row_block_gram(
      apply_fn, params, inputs, axis=data_axis, method=method, outputs=outputs,
      chunk_size=chunk_size,
  )


class LinearizedProblem:
  """The RD regression at one (params, batch); built inside a trace.

  Attributes:
    outputs: f(θ; X), shape (m, k).
    targets: Y as (m, k) (after the loss's target conversion).
    loss: the summed loss at θ, a scalar.
    factors: the loss's `GaussNewtonFactors` (u, L) at θ.
    system: `"dual"` or `"primal"`, the form actually solved.
    matrix: the undamped system matrix, (n, n), or (k, n, n) per output.
    rhs: its right-hand side, (n,) or (k, n).
    num_examples: m.
    params: θ, the parameters the problem was linearised at.
  """

  def __init__(
      self,
      apply_fn: Callable[[Any, Any], jax.Array],
      params: Any,
      inputs: Any,
      targets: jax.Array,
      *,
      loss: losses_lib.Loss,
      outputs: str,
      gram: str,
      system: str,
      chunk_size: int | None,
      data_axis: str | None = None,
      name: str = "scale_by_regression_descent",
  ):
    self._apply_fn = apply_fn
    self._params = params
    self.params = params
    self._inputs = inputs
    self.per_output = outputs == "per_output"

    raw_outputs, self._vjp = jax.vjp(lambda p: apply_fn(p, inputs), params)
    num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    _validation.check_outputs(raw_outputs, num_examples, name)
    self._output_shape = raw_outputs.shape
    self._output_dtype = raw_outputs.dtype
    self.num_examples = num_examples
    self.outputs = raw_outputs.reshape(num_examples, -1)
    num_outputs = self.outputs.shape[1]
    self.num_outputs = num_outputs

    self.targets = loss.prepare_targets(targets, self.outputs)
    self.loss = loss.value(self.outputs, self.targets)
    self.factors = loss.factors(self.outputs, self.targets)
    self._loss_fn = loss

    rhs_u, factor = self.factors
    num_rhs = rhs_u.shape[1]
    flat_params, self._unravel = ravel_pytree(params)
    num_params = flat_params.size
    dual_size = num_examples if self.per_output else num_examples * num_rhs
    if system == "auto":
      system = "primal" if num_params < dual_size else "dual"
    self.system = system

    if system == "dual":
      if self.per_output:
        self.matrix = _gram(apply_fn, params, inputs, gram, "per_output", chunk_size,
                            data_axis)
        self.rhs = rhs_u.T
      else:
        gram_full = _gram(apply_fn, params, inputs, gram, "full", chunk_size, data_axis)
        if factor is not None:
          gram4 = gram_full.reshape(num_examples, num_outputs, num_examples, num_outputs)
          gram4 = jnp.einsum("ikq,ikjl,jlr->iqjr", factor, gram4, factor)
          gram_full = gram4.reshape(num_examples * num_rhs, num_examples * num_rhs)
        self.matrix = gram_full
        self.rhs = rhs_u.reshape(-1)
    else:
      jacobian = gram_lib.flat_jacobian(
          _mesh.replicated_call(gram_lib.per_example_jacobian)(
              apply_fn, params, inputs, num_outputs=num_outputs,
              chunk_size=chunk_size,
          ),
          num_examples,
          num_outputs,
      )
      if self.per_output:
        self.matrix = jnp.einsum("icp,ics->cps", jacobian, jacobian)
        self.rhs = jnp.einsum("icp,ic->cp", jacobian, rhs_u)
      else:
        if factor is not None:
          jacobian = jnp.einsum("ikq,ikp->iqp", factor, jacobian)
        self.matrix = jnp.einsum("iqp,iqs->ps", jacobian, jacobian)
        self.rhs = jnp.einsum("iqp,iq->p", jacobian, rhs_u)

  def solve(self, damping: jax.Array | float) -> solve_lib.SolveResult:
    """Solves the damped system for λ = `damping` (no new Jacobian)."""
    # Replicated under a mesh: the retry loop of the solve then holds no
    # collectives (a sharded retry loop hangs XLA:CPU on repeated calls).
    return _mesh.replicated_call(solve_lib.damped_cholesky_solve)(
        self.matrix, self.rhs, damping
    )

  def direction(self, solution: jax.Array) -> Any:
    """The RD direction d (a params-shaped pytree) from a solution of `solve`."""
    if self.system == "primal":
      flat = jnp.mean(solution, axis=0) if self.per_output else solution
      return self._unravel(flat)
    if self.per_output:
      coefficients = solution.T / self.num_outputs
    else:
      factor = self.factors.factor
      alpha = solution.reshape(self.num_examples, -1)
      coefficients = alpha if factor is None else jnp.einsum("ikq,iq->ik", factor, alpha)
    cotangent = coefficients.reshape(self._output_shape).astype(self._output_dtype)
    (direction,) = self._vjp(cotangent)
    return direction

  def output_change(self, direction: Any) -> jax.Array:
    """J d, the first-order change of the outputs along `direction`, (m, k)."""
    _, tangent = jax.jvp(
        lambda p: self._apply_fn(p, self._inputs), (self._params,), (direction,)
    )
    return tangent.reshape(self.num_examples, -1)

  def loss_at(self, params: Any) -> jax.Array:
    """The summed loss of the same batch at other parameters (one forward pass)."""
    outputs = self._apply_fn(params, self._inputs).reshape(self.num_examples, -1)
    return self._loss_fn.value(outputs, self.targets)


def output_change_spread(change: jax.Array) -> jax.Array:
  """max_i (max_c Δz_ic − min_c Δz_ic): the largest per-example spread of an
  output change Δz of shape (m, k) (0 for k = 1)."""
  return jnp.max(jnp.max(change, axis=1) - jnp.min(change, axis=1))


def cap_logit_change(
    problem: LinearizedProblem, direction: Any, step_size: Any, max_change: Any
) -> tuple[Any, jax.Array, jax.Array]:
  """Shortens d so that the step θ − η d moves no logit spread past a bound.

  With the first-order logit change of the step, Δz = −η J d (one JVP),

      s = min(1, B / (η σ)),     σ = max_i (max_c (J d)_ic − min_c (J d)_ic),

  and the direction becomes s d, so that the predicted spread η s σ ≤ B.
  Softmax is invariant to shifting all logits of an example, so the spread
  (not the size) of Δz is what changes the probabilities; B = π is the bound
  suggested by the "ghosts of softmax" analysis, within which the second-order
  model of cross-entropy stays trustworthy.

  Args:
    problem: the `LinearizedProblem` of the step.
    direction: d, params-shaped.
    step_size: η ≥ 0, a scalar.
    max_change: B > 0.

  Returns:
    `(s d, s, η s σ)`: the capped direction, the scale s ∈ (0, 1] (1 when
    the spread is already within B or not finite) and the predicted spread
    of the capped step.
  """
  spread = output_change_spread(problem.output_change(direction))
  dtype = spread.dtype
  predicted = jnp.abs(jnp.asarray(step_size, dtype)) * spread
  bound = jnp.asarray(max_change, dtype)
  over = jnp.isfinite(predicted) & (predicted > bound)
  scale = jnp.where(over, bound / jnp.where(over, predicted, 1.0), 1.0).astype(dtype)
  capped = jax.tree_util.tree_map(lambda d: (scale * d).astype(d.dtype), direction)
  return capped, scale, scale * predicted
