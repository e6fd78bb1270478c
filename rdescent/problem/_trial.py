"""One candidate step of a linearised problem, and how it is scored.

A `Trial` is what a damping controller judges: the direction d of one solve
at one λ, the solve's health, J d, and the step θ − η d scored on the batch
(the Gauss-Newton model's predicted reduction, the loss after the step, and
the rounding noise of the realised decrease).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent.problem._batch import Batch


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


def step_params(params: Any, direction: Any, step_size: jax.Array | float) -> Any:
  """θ − η d, each leaf in its own dtype."""
  return jax.tree_util.tree_map(
    lambda p, d: (p - step_size * d).astype(jnp.asarray(p).dtype), params, direction
  )


def predicted_reduction(batch: Batch, output_change: jax.Array, step_size: jax.Array) -> jax.Array:
  """−(u·w + ½‖w‖²), w = −η Lᵀ J d: the Gauss-Newton model's decrease."""
  lifted = batch.factor_transpose_times(output_change)
  w = -jnp.asarray(step_size, lifted.dtype) * lifted
  return -(jnp.sum(batch.loss_residual * w) + 0.5 * jnp.sum(jnp.square(w)))


def loss_noise(batch: Batch, outputs_after: jax.Array, loss_after: jax.Array) -> jax.Array:
  """ε (Σ_i |g_i|·(|z_i| + |z′_i|) + |ℓ| + |ℓ′|): see `Trial.loss_noise`."""
  gradient = jnp.abs(batch.output_gradient())
  scale = jnp.abs(batch.outputs) + jnp.abs(outputs_after.astype(batch.outputs.dtype))
  eps = jnp.finfo(batch.outputs.dtype).eps
  return eps * (jnp.sum(gradient * scale) + jnp.abs(batch.loss) + jnp.abs(loss_after))


def score(
  batch: Batch,
  direction: Any,
  output_change: jax.Array,
  damping: jax.Array | float,
  solve_ok: jax.Array | bool,
  jitter: jax.Array | float,
  step_size: jax.Array | float,
  iterations: jax.Array | int = 0,
  residual: jax.Array | float = 0,
) -> Trial:
  """The `Trial` of the step θ − η d: one forward pass at θ − η d scores it."""
  dtype = batch.outputs.dtype
  step_size = jnp.asarray(step_size, dtype)
  outputs_after = batch.outputs_at(step_params(batch.params, direction, step_size))
  loss_after = batch.loss_fn.value(outputs_after, batch.targets).astype(dtype)
  return Trial(
    direction=direction,
    damping=jnp.asarray(damping, dtype),
    solve_ok=jnp.asarray(solve_ok),
    jitter=jnp.asarray(jitter, dtype),
    output_change=output_change.astype(dtype),
    step_size=step_size,
    predicted_reduction=predicted_reduction(batch, output_change, step_size).astype(dtype),
    loss_after=loss_after,
    loss_noise=loss_noise(batch, outputs_after, loss_after).astype(dtype),
    solve_iterations=jnp.asarray(iterations, jnp.int32),
    solve_residual=jnp.asarray(residual, dtype),
  )


def scaled(batch: Batch, trial: Trial, factor: jax.Array) -> Trial:
  """The trial with its direction (and J d) multiplied by `factor`, scored anew."""
  factor = jnp.asarray(factor, batch.outputs.dtype)
  direction = jax.tree_util.tree_map(lambda d: (factor * d).astype(d.dtype), trial.direction)
  return score(
    batch,
    direction,
    factor * trial.output_change,
    trial.damping,
    trial.solve_ok,
    trial.jitter,
    trial.step_size,
  )._replace(solve_iterations=trial.solve_iterations, solve_residual=trial.solve_residual)


def null(batch: Batch, damping: jax.Array | float, step_size: jax.Array | float) -> Trial:
  """A zero step at λ = `damping` (what a controller returns for no step)."""
  dtype = batch.outputs.dtype
  return Trial(
    direction=jax.tree_util.tree_map(jnp.zeros_like, batch.params),
    damping=jnp.asarray(damping, dtype),
    solve_ok=jnp.asarray(True),
    jitter=jnp.zeros([], dtype),
    output_change=jnp.zeros_like(batch.outputs),
    step_size=jnp.asarray(step_size, dtype),
    predicted_reduction=jnp.zeros([], dtype),
    loss_after=jnp.asarray(batch.loss, dtype),
    loss_noise=jnp.zeros([], dtype),
    solve_iterations=jnp.zeros([], jnp.int32),
    solve_residual=jnp.zeros([], dtype),
  )
