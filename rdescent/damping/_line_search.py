"""Bounded backtracking line search on the same batch, as a controller wrapper.

`backtracking(controller)` runs the wrapped controller's step, which gives the
direction d (and its λ), then shortens the step θ − η t d by t ← `shrink` · t,
starting from t = 1, until the batch loss satisfies the Armijo-type condition

    ℓ(θ) − ℓ(θ − η t d) + r ε_f ≥ c · pred(t),
    pred(t) = −(u·w + ½‖w‖²),   w = −η t Lᵀ J d      (`Trial.predicted_reduction`)

(for squared error pred(t) = ½‖r‖² − ½‖r − η t J d‖², the decrease the
Gauss-Newton model predicts for the shortened step; r ε_f, r = 2, is the
rounding error of the realised decrease, `Trial.loss_noise`, as in the
noise-tolerant tests of `levenberg_marquardt`). Each trial costs one
forward pass; J d comes with the wrapped controller's `Trial` (free in the
full dual and the primal forms, one JVP in the per-output dual form). At most
`max_steps` values of t are tried (t = 1, shrink, …, shrink^(max_steps−1))
inside a `lax.while_loop`.

* A step whose predicted decrease is negligible (≤ 10 ε ℓ, e.g. at an exact
  solution) is taken with t = 1.
* When no t passes, the step is rejected (zero direction, status
  "rejected") and the wrapped controller's state becomes `fail(state)` of
  its state before the step (adaptive controllers grow λ).
* When the wrapped controller itself rejects the step, its correction is
  passed through unchanged (t = 1).

Use it with controllers that judge nothing themselves (`constant`,
schedules, `residual_proportional`, `gradient_proportional`, `gcv`);
`levenberg_marquardt` already guarantees a decrease with t = 1. It is not
meant for `next_batch_ratio`, whose undo remembers the unshortened step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base


class BacktrackingState(NamedTuple):
  """State of `backtracking`.

  Attributes:
    inner: the wrapped controller's state.
    step_fraction: t of the last step (1 before any step; 1 when it was
      rejected by the wrapped controller; the last tried t when no t passed).
    num_trials: loss evaluations of the last step's search (0 when skipped).
  """

  inner: Any
  step_fraction: jax.Array
  num_trials: jax.Array


def backtracking(
  controller: Any,
  *,
  shrink: float = 0.5,
  max_steps: int = 8,
  armijo: float = 1e-4,
) -> _base.DampingController:
  """Wraps `controller` with a bounded backtracking line search.

  Args:
    controller: a damping controller, float or schedule (see `as_controller`).
    shrink: factor of t per rejected trial, in (0, 1).
    max_steps: most values of t tried per step (≥ 1).
    armijo: c ≥ 0 of the sufficient-decrease condition (see the module
      docstring).

  Returns:
    A `DampingController` whose state is a `BacktrackingState`.
  """
  inner = _base.as_controller(controller)
  _validation.check_positive("shrink", shrink)
  if not shrink < 1:
    raise ValueError(f"shrink must be in (0, 1); got {shrink!r}.")
  if not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"max_steps must be a positive int; got {max_steps!r}.")
  if not armijo >= 0:
    raise ValueError(f"armijo must be >= 0; got {armijo!r}.")

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return BacktrackingState(
      inner=inner.init(params),
      step_fraction=jnp.ones([], dtype),
      num_trials=jnp.zeros([], jnp.int32),
    )

  def current(state, count):
    return inner.current(state.inner, count)

  def fail(state):
    return state._replace(inner=inner.fail(state.inner))

  def step(problem, state, count, step_size):
    inner_step = inner.step(problem, state.inner, count, step_size)
    trial = inner_step.trial
    dtype = problem.outputs.dtype

    def passes(t):
      shortened = problem.scale(trial, t)
      actual, negligible = _base.decrease(problem.loss, shortened)
      # Armijo up to the rounding of the decrease (r ε_f, `_base.NOISE_RELAXATION`).
      slack = _base.NOISE_RELAXATION * shortened.loss_noise
      return jnp.isfinite(actual) & (
        negligible | (actual + slack >= armijo * shortened.predicted_reduction)
      )

    def cond(carry):
      i, _, done = carry
      return (i < max_steps) & ~done

    def body(carry):
      i, t, _ = carry
      t = jnp.where(i > 0, t * shrink, t)
      return i + 1, t, passes(t)

    search = inner_step.accepted & trial.solve_ok
    start = (jnp.zeros([], jnp.int32), jnp.ones([], dtype), ~search)
    trials, fraction, found = lax.while_loop(cond, body, start)
    ok = found | ~search
    fraction = jnp.where(search, fraction, 1.0)
    taken = problem.scale(trial, jnp.where(ok, fraction, 0.0))
    # A rejection by the wrapped controller passes its correction unchanged.
    direction = _base.tree_select(inner_step.accepted, taken.direction, inner_step.direction)
    inner_state = _base.tree_select(ok, inner_step.state, inner.fail(state.inner))
    new_state = BacktrackingState(
      inner=inner_state,
      step_fraction=fraction.astype(state.step_fraction.dtype),
      num_trials=trials,
    )
    return _base.DampingStep(
      direction=direction,
      trial=_base.tree_select(inner_step.accepted, taken, trial),
      accepted=inner_step.accepted & ok,
      state=new_state,
    )

  return _base.wrapper(inner, init=init, current=current, step=step, fail=fail)
