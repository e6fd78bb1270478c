"""The accept/reject rule of the Regression Descent paper's code.

Each step compares the mean loss per example of the current batch at the
current parameters, ℓ_t = ℓ(θ_t; B_t)/m, with the previous batch's before
its step, ℓ_{t−1} = ℓ(θ_{t−1}; B_{t−1})/m (for squared error this is the
ratio of mean squared residuals):

    ratio = ℓ_t / ℓ_{t−1}
    coefficient = (ℓ_{t−1} − ℓ_t) / pred_{t−1}

where pred_{t−1} is the decrease per example that the Gauss-Newton model
predicted for the previous step on its own batch (`Trial.predicted_reduction`): the
*extrapolation coefficient* is the fraction of the predicted decrease that was
realised (1: the linear model extrapolated exactly; ≤ 0: the step made things
worse). The paper's code could not be consulted; this definition is ours.

    ratio > 1.1:                          reject the previous step, λ × 1.8
    ratio < 0.8 and coefficient > 0.9:    accept, λ ÷ 2.7
    ratio > 0.9 and coefficient < 0.5:    accept, λ × 1.8
    otherwise:                            accept, λ kept
    λ kept in [1e-8, 10].

Differences from the original forced by the Optax interface:

* A rejected step is undone by the *next* update: the controller remembers the
  last applied step s = η d and returns −s/η, which the chain turns into +s.
  This is exact only when the chain after `scale_by_regression_descent` is a
  plain learning rate η told to the transform as `step_size`
  (`regression_descent` does this); with clipping or other transforms in
  between, the undo is approximate.
* The update that undoes a step spends its batch: no new step is computed from
  it (its Jacobian belongs to the rejected parameters). The next step starts
  from the restored parameters, which were already judged, so it is not judged
  again.
* A numerical failure (non-finite loss, failed Cholesky, non-finite direction)
  skips the update and multiplies λ by 1.8; the pending step is judged on the
  next batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base

REJECT_ABOVE = 1.1
DECREASE = 2.7
INCREASE = 1.8
MIN_DAMPING = 1e-8
MAX_DAMPING = 10.0


class NextBatchRatioState(NamedTuple):
  """State of `next_batch_ratio`.

  Attributes:
    damping: λ of the next step.
    pending: whether the last update applied a step not yet judged.
    reference: ℓ_{t−1}, mean loss per example of the previous batch before its
      step.
    predicted: the model's predicted decrease per example for that step.
    last_step: s = η d, the step the last update applied (params-shaped).
  """

  damping: jax.Array
  pending: jax.Array
  reference: jax.Array
  predicted: jax.Array
  last_step: Any


def ratio_rule(damping, ratio, coefficient):
  """The paper's rule: returns (new λ, accept); see the module docstring."""
  reject = ~(ratio <= REJECT_ABOVE)  # NaN rejects
  decrease = (ratio < 0.8) & (coefficient > 0.9)
  increase = (ratio > 0.9) & (coefficient < 0.5)
  factor = jnp.where(reject | increase, INCREASE, jnp.where(decrease, 1.0 / DECREASE, 1.0))
  return _base.clamp(damping * factor, MIN_DAMPING, MAX_DAMPING), ~reject


def ratio_and_coefficient(reference, loss, predicted):
  """ratio = ℓ_t / ℓ_{t−1} and coefficient = (ℓ_{t−1} − ℓ_t) / pred_{t−1}.

  0/0 counts as ratio 1 (an exact fit stays put); a zero predicted decrease
  gives coefficient 1 (nothing to judge).
  """
  ratio = jnp.where(
    reference > 0,
    loss / jnp.where(reference > 0, reference, 1.0),
    jnp.where(loss > 0, jnp.inf, 1.0),
  )
  coefficient = jnp.where(
    predicted > 0, (reference - loss) / jnp.where(predicted > 0, predicted, 1.0), 1.0
  )
  return ratio, coefficient


def next_batch_ratio(initial: float = 1e-5) -> _base.DampingController:
  """The paper code's next-batch ratio rule for λ (see the module docstring)."""
  _validation.check_positive("initial", initial)

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    # Distinct buffers for every leaf, so that the state can be donated to jit.
    return NextBatchRatioState(
      damping=jnp.asarray(initial, dtype),
      pending=jnp.asarray(False),
      reference=jnp.zeros([], dtype),
      predicted=jnp.zeros([], dtype),
      last_step=jax.tree_util.tree_map(jnp.zeros_like, params),
    )

  def current(state, count):
    del count
    return state.damping

  def fail(state):
    return state._replace(damping=_base.clamp(state.damping * INCREASE, MIN_DAMPING, MAX_DAMPING))

  def step(problem, state, count, step_size):
    del count
    dtype = state.damping.dtype
    step_size = jnp.asarray(step_size, dtype)
    loss = (problem.loss / problem.num_examples).astype(dtype)
    ratio, coefficient = ratio_and_coefficient(state.reference, loss, state.predicted)
    judged_damping, accept = ratio_rule(state.damping, ratio, coefficient)
    damping = jnp.where(state.pending, judged_damping, state.damping)
    reject = state.pending & ~accept

    def undo(_):
      inverse = jnp.where(step_size > 0, -1.0 / jnp.where(step_size > 0, step_size, 1.0), 0.0)
      direction = _base.tree_scale(state.last_step, inverse)
      new_state = state._replace(
        damping=damping,
        pending=jnp.asarray(False),
        last_step=jax.tree_util.tree_map(jnp.zeros_like, state.last_step),
      )
      return direction, problem.null_trial(damping, step_size), new_state

    def descend(_):
      trial = problem.solve(damping, step_size)
      new_state = NextBatchRatioState(
        damping=damping,
        pending=jnp.asarray(True),
        reference=loss,
        predicted=(trial.predicted_reduction / problem.num_examples).astype(dtype),
        last_step=_base.tree_scale(trial.direction, step_size),
      )
      return trial.direction, trial, new_state

    direction, trial, new_state = lax.cond(reject, undo, descend, None)
    return _base.DampingStep(direction=direction, trial=trial, accepted=~reject, state=new_state)

  return _base.DampingController(
    init=init, current=current, step=step, fail=fail, undoes_steps=True
  )
