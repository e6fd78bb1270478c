"""The damping-controller protocol, fixed λ, schedules, and shared helpers.

A controller is a tuple of pure, jit-able functions whose state lives in the
optimizer state:

* `init(params) -> state`
* `current(state, count) -> λ`: the damping the next step would start from.
* `step(problem, state, count, step_size) -> DampingStep`: chooses λ for the
  `rdescent.problem.LinearizedProblem` of this step. It calls
  `problem.solve(λ, step_size)` as often as it likes (the system matrix is
  built once) and judges the `rdescent.problem.Trial`s it gets back: their
  direction, solve health, output change J d, predicted reduction and loss
  after the step θ − η d. It never needs to know the system's form.
  `step_size` is the η that the chain applies after the transform.
* `fail(state) -> state`: the state after a step that was not applied for a
  numerical reason (non-finite loss or outputs, failed solve, non-finite
  direction), given the state from *before* that step. Adaptive controllers
  grow λ here; fixed ones return the state unchanged.
* `undoes_steps`: True for controllers whose later updates undo an earlier
  step by the amount they applied (`next_batch_ratio`); wrappers that change
  a step after the controller chose it refuse them.
* `needs_matrix`: True for controllers that read the system matrix itself
  (`gcv`: its eigendecomposition); matrix-free solvers (`solver="cg"`) refuse
  them. Wrappers inherit both flags from the controller they wrap.

A plain float means `constant(value)`; a callable means an optax schedule of
the step count. Wrappers (`backtracking`, `cap_logit_change`) are
controllers built around another controller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import problem as problem_lib


class DampingStep(NamedTuple):
  """What a controller decided for one step.

  Attributes:
    direction: params-shaped, gradient sign, what the transform applies. When
      `accepted`, the chosen trial's direction d (the chain applies −η d).
      When not accepted, the controller's correction, applied as is: zeros,
      or the undo of the previous step (`next_batch_ratio`).
    trial: the `Trial` the controller chose (its last one when it rejected
      the step, or a zero trial when it solved nothing).
    accepted: scalar bool, False when the controller rejects the step.
    state: the controller's new state.
  """

  direction: Any
  trial: problem_lib.Trial
  accepted: jax.Array
  state: Any

  @property
  def damping(self) -> jax.Array:
    """λ used for the direction."""
    return self.trial.damping

  @property
  def solve_ok(self) -> jax.Array:
    """The health of the last linear solve."""
    return self.trial.solve_ok


def _unchanged(state: Any) -> Any:
  return state


class DampingController(NamedTuple):
  """A damping rule; see the module docstring."""

  init: Callable[[Any], Any]
  current: Callable[[Any, jax.Array], jax.Array]
  step: Callable[[Any, Any, jax.Array, jax.Array], DampingStep]
  fail: Callable[[Any], Any] = _unchanged
  undoes_steps: bool = False
  needs_matrix: bool = False


def wrapper(
  inner: DampingController,
  *,
  init: Callable[[Any], Any],
  current: Callable[[Any, jax.Array], jax.Array],
  step: Callable[[Any, Any, jax.Array, jax.Array], DampingStep],
  fail: Callable[[Any], Any] = _unchanged,
  undoes_steps: bool | None = None,
) -> DampingController:
  """A controller that wraps `inner`: it inherits `inner`'s flags (`undoes_steps`,
  `needs_matrix`), unless `undoes_steps` is given (a wrapper that refuses such an inner
  controller says False)."""
  return DampingController(
    init=init,
    current=current,
    step=step,
    fail=fail,
    undoes_steps=inner.undoes_steps if undoes_steps is None else undoes_steps,
    needs_matrix=inner.needs_matrix,
  )


def accept(trial: problem_lib.Trial, state: Any) -> DampingStep:
  """The step of a controller that takes its trial as it is."""
  return DampingStep(
    direction=trial.direction, trial=trial, accepted=jnp.asarray(True), state=state
  )


def constant(value: float | jax.Array) -> DampingController:
  """λ fixed at `value` (≥ 0) for every step.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.constant(1e-3)
    >>> float(controller.current(controller.init(jnp.zeros(2)), 0))
    0.001
  """
  _validation.check_nonnegative_finite("damping", value)

  def init(params):
    del params
    return ()

  def current(state, count):
    del state, count
    return jnp.asarray(value)

  def step(problem, state, count, step_size):
    del count
    return accept(problem.solve(value, step_size), state)

  return DampingController(init=init, current=current, step=step)


def schedule(schedule_fn: Callable[[jax.Array], jax.Array]) -> DampingController:
  """λ = `schedule_fn(count)`, any optax schedule of the step count.

  Examples:
    >>> import optax, rdescent as rd
    >>> controller = rd.damping.schedule(optax.exponential_decay(1.0, 10, 0.1))
    >>> round(float(controller.current(controller.init(None), 10)), 6)
    0.1
  """

  def init(params):
    del params
    return ()

  def current(state, count):
    del state
    return jnp.asarray(schedule_fn(count))

  def step(problem, state, count, step_size):
    return accept(problem.solve(schedule_fn(count), step_size), state)

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


# ---------------------------------------------------------------- helpers


def check_range(min_damping: float, max_damping: float) -> None:
  """Trace-time check of a controller's clamp range 0 < min ≤ max < ∞."""
  _validation.check_nonnegative_finite("min_damping", min_damping)
  _validation.check_nonnegative_finite("max_damping", max_damping)
  if not 0 < min_damping <= max_damping:
    raise ValueError(
      "need 0 < min_damping <= max_damping; got "
      f"min_damping={min_damping!r}, max_damping={max_damping!r}."
    )


def clamp(damping: jax.Array, min_damping: float, max_damping: float) -> jax.Array:
  """λ clipped to [min, max]; NaN becomes max (the safe side)."""
  damping = jnp.where(jnp.isnan(damping), max_damping, damping)
  return jnp.clip(damping, min_damping, max_damping)


def tree_scale(tree: Any, scale: jax.Array) -> Any:
  return jax.tree_util.tree_map(lambda x: (scale * x).astype(x.dtype), tree)


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


# r of the noise-tolerant tests (Sun & Nocedal, "A trust region method for noisy
# unconstrained optimization", Math. Program. 2023): decreases are compared up to
# r ε_f, ε_f = `Trial.loss_noise`; r = 1, 2 and 3 gave the same 1D-fit descent.
NOISE_RELAXATION = 2.0


def decrease(loss: jax.Array, trial: problem_lib.Trial) -> tuple[jax.Array, jax.Array]:
  """(actual, negligible): the realised decrease ℓ(θ) − ℓ(θ − η d) of a trial,
  and whether its predicted decrease is negligible.

  A predicted decrease ≤ 10 ε |ℓ| (ε the dtype's machine epsilon, e.g. at an
  exact solution) is negligible: there is nothing left to judge, and the
  judges (`levenberg_marquardt`, `backtracking`) take such a step as it is.
  A predicted *increase* beyond that and beyond the loss's rounding noise
  (`trial.loss_noise`) is not negligible: a direction that does not descend
  the model it is judged on (a row-sketched step judged on the whole batch)
  is judged, and rejected (`noise_tolerant_ratio` is then 0).
  """
  predicted = trial.predicted_reduction
  eps = jnp.finfo(predicted.dtype).eps
  tolerance = 10 * eps * jnp.abs(loss)
  negligible = (predicted <= tolerance) & (
    predicted >= -(tolerance + NOISE_RELAXATION * trial.loss_noise)
  )
  return loss - trial.loss_after, negligible


def noise_tolerant_ratio(actual: jax.Array, trial: problem_lib.Trial) -> jax.Array:
  """ρ = (actual + r ε_f) / (predicted + r ε_f), r = `NOISE_RELAXATION`.

  The trust ratio of Sun & Nocedal's noise-tolerant trust region: ε_f =
  `trial.loss_noise` is the scale of the rounding error of the realised decrease, so
  a step whose decrease agrees with the prediction to within that error is
  not rejected for it. Far from the noise level (predicted ≫ ε_f) it is the
  plain ratio actual / predicted; near a fit in float32, where the loss's
  own rounding (ε Σ |r_i| |z_i|) is as large as a good step's decrease, the
  plain ratio is noise and drives λ up until the steps stall.
  """
  relax = NOISE_RELAXATION * trial.loss_noise
  denominator = trial.predicted_reduction + relax
  # A predicted increase (the model does not descend): no trust, ρ = 0.
  return jnp.where(
    denominator > 0, (actual + relax) / jnp.where(denominator > 0, denominator, 1.0), 0.0
  )
