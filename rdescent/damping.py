"""Damping controllers: how Regression Descent chooses λ at each step.

A controller is a triple of pure functions, jit-able, whose state lives in the
optimizer state:

* `init(params) -> state`
* `current(state, count) -> λ`: the damping the next step would start from.
* `step(problem, state, count) -> DampingStep`: chooses λ for the
  `rdescent.problem.LinearizedProblem` of this step, solves it (possibly
  several times, reusing the same system matrix), and returns the direction.

A plain float means `constant(value)`; a callable means an optax schedule of
the step count.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation


class DampingStep(NamedTuple):
  """What a controller decided for one step.

  Attributes:
    direction: the RD direction (params-shaped, gradient sign).
    damping: λ used for the direction, a scalar.
    accepted: scalar bool, False when the controller rejects the step (the
      transform then applies no change).
    solve_ok: scalar bool, the health of the last Cholesky solve.
    state: the controller's new state.
  """

  direction: Any
  damping: jax.Array
  accepted: jax.Array
  solve_ok: jax.Array
  state: Any


class DampingController(NamedTuple):
  """A damping rule; see the module docstring."""

  init: Callable[[Any], Any]
  current: Callable[[Any, jax.Array], jax.Array]
  step: Callable[[Any, Any, jax.Array], DampingStep]


def _solve_and_step(problem, damping, state) -> DampingStep:
  result = problem.solve(damping)
  return DampingStep(
      direction=problem.direction(result.solution),
      damping=jnp.asarray(damping, problem.outputs.dtype),
      accepted=jnp.asarray(True),
      solve_ok=result.ok,
      state=state,
  )


def constant(value: float | jax.Array) -> DampingController:
  """λ fixed at `value` (≥ 0) for every step."""
  _validation.check_nonnegative_finite("damping", value)

  def init(params):
    del params
    return ()

  def current(state, count):
    del state, count
    return jnp.asarray(value)

  def step(problem, state, count):
    del count
    return _solve_and_step(problem, value, state)

  return DampingController(init=init, current=current, step=step)


def schedule(schedule_fn: Callable[[jax.Array], jax.Array]) -> DampingController:
  """λ = `schedule_fn(count)`, any optax schedule of the step count."""

  def init(params):
    del params
    return ()

  def current(state, count):
    del state
    return jnp.asarray(schedule_fn(count))

  def step(problem, state, count):
    return _solve_and_step(problem, schedule_fn(count), state)

  return DampingController(init=init, current=current, step=step)


def as_controller(damping: Any) -> DampingController:
  """A controller from a float, an optax schedule or a controller."""
  if isinstance(damping, DampingController):
    return damping
  if callable(damping):
    return schedule(damping)
  if isinstance(damping, (int, float)) or hasattr(damping, "dtype"):
    return constant(damping)
  raise TypeError(
      "damping must be a float, an optax schedule or an rdescent.damping "
      f"controller; got {type(damping).__name__}."
  )
