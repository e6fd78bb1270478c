"""The safe cross-entropy step: a cap on the per-example logit-change spread.

`cap_logit_change(controller, bound=π)` runs the wrapped controller's step,
then shortens the chosen direction d so that the step θ − η d moves no
example's logits apart by more than B to first order. With the output change
of the chosen trial, Δz = −η J d (`Trial.output_change`, no extra pass in
the full dual and primal forms),

    σ = max_i (max_c (J d)_ic − min_c (J d)_ic),     s = min(1, B / (η σ)),

and the direction becomes s d, so that the predicted spread η s σ ≤ B.
Softmax is invariant to shifting all logits of an example, so the spread
(not the size) of Δz is what changes the probabilities; B = π is the bound
suggested by the "ghosts of softmax" analysis, within which the second-order
model of cross-entropy stays trustworthy. With k = 1 the spread is 0 and
nothing is capped.

Composition order says which judge sees the cap: in
`cap_logit_change(levenberg_marquardt())` LM judges the uncapped step and the
cap shortens what LM accepted; in `backtracking(cap_logit_change(c))` the
line search judges the capped step. A step the wrapped controller rejected
(its correction) passes unchanged. `next_batch_ratio` is refused: it undoes a
rejected step by the amount it remembers, which would not be the capped one.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base


class CapLogitChangeState(NamedTuple):
  """State of `cap_logit_change`.

  Attributes:
    inner: the wrapped controller's state.
    step_scale: s ∈ (0, 1], the factor applied to the last direction (1 when
      nothing was applied or nothing needed capping).
    logit_change_spread: η s σ, the first-order logit-change spread of the
      last applied step; 0 when nothing was applied.
  """

  inner: Any
  step_scale: jax.Array
  logit_change_spread: jax.Array


def output_change_spread(change: jax.Array) -> jax.Array:
  """max_i (max_c Δz_ic − min_c Δz_ic): the largest per-example spread of an
  output change Δz of shape (m, k) (0 for k = 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.damping import output_change_spread
    >>> float(output_change_spread(jnp.array([[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])))
    3.0
  """
  return jnp.max(jnp.max(change, axis=1) - jnp.min(change, axis=1))


def cap_logit_change(controller: Any, bound: float = math.pi) -> _base.DampingController:
  """Wraps `controller` so that every step's logit-change spread is at most `bound`.

  Args:
    controller: a damping controller, float or schedule (see `as_controller`);
      not `next_batch_ratio` (or a wrapper of it).
    bound: B > 0, the largest first-order per-example spread
      max_c Δz_ic − min_c Δz_ic of a step (see the module docstring).

  Returns:
    A `DampingController` whose state is a `CapLogitChangeState`.

  Raises:
    ValueError: for a controller that undoes steps, or a bad `bound`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.cap_logit_change(rd.damping.levenberg_marquardt())
    >>> float(controller.init(jnp.zeros(2)).step_scale)
    1.0
  """
  inner = _base.as_controller(controller)
  _validation.check_positive("bound", bound)
  if inner.undoes_steps:
    raise ValueError(
      "cap_logit_change (max_logit_change=) cannot wrap damping="
      "rdescent.damping.next_batch_ratio(): that controller undoes a rejected step "
      "by the uncapped amount. Use another controller, or no logit cap "
      "(max_logit_change=None)."
    )

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return CapLogitChangeState(
      inner=inner.init(params),
      step_scale=jnp.ones([], dtype),
      logit_change_spread=jnp.zeros([], dtype),
    )

  def current(state, count):
    return inner.current(state.inner, count)

  def fail(state):
    return CapLogitChangeState(
      inner=inner.fail(state.inner),
      step_scale=jnp.ones_like(state.step_scale),
      logit_change_spread=jnp.zeros_like(state.logit_change_spread),
    )

  def step(problem, state, count, step_size):
    inner_step = inner.step(problem, state.inner, count, step_size)
    trial = inner_step.trial
    spread = output_change_spread(trial.output_change)
    predicted = jnp.abs(trial.step_size) * spread
    limit = jnp.asarray(bound, predicted.dtype)
    over = jnp.isfinite(predicted) & (predicted > limit)
    scale = jnp.where(over, limit / jnp.where(over, predicted, 1.0), 1.0)
    capped = problem.scale(trial, scale)
    accepted = inner_step.accepted
    dtype = state.step_scale.dtype
    new_state = CapLogitChangeState(
      inner=inner_step.state,
      step_scale=jnp.where(accepted, scale, 1.0).astype(dtype),
      logit_change_spread=jnp.where(accepted, scale * predicted, 0.0).astype(dtype),
    )
    return _base.DampingStep(
      direction=_base.tree_select(accepted, capped.direction, inner_step.direction),
      trial=_base.tree_select(accepted, capped, trial),
      accepted=accepted,
      state=new_state,
    )

  # The cap refuses controllers that undo steps (above), so it never undoes one itself.
  return _base.wrapper(inner, init=init, current=current, step=step, fail=fail, undoes_steps=False)
