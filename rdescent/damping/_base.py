"""The damping-controller protocol, fixed λ, schedules, and shared helpers.

A controller is a tuple of pure, jit-able functions whose state lives in the
optimizer state:

* `init(params) -> state`
* `current(state, count) -> λ`: the damping the next step would start from.
* `step(problem, state, count, step_size) -> DampingStep`: chooses λ for the
  `rdescent.problem.LinearizedProblem` of this step, solves it (possibly
  several times, reusing the same system matrix) and returns the direction d.
  `step_size` is the η that the chain applies after the transform (the
  step is θ − η d); controllers that predict or undo steps use it.
* `fail(state) -> state`: the state after a step that was not applied for a
  numerical reason (non-finite loss or outputs, failed Cholesky, non-finite
  direction), given the state from *before* that step. Adaptive controllers
  grow λ here; fixed ones return the state unchanged.

A plain float means `constant(value)`; a callable means an optax schedule of
the step count.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import dtypes as dtypes_lib


class DampingStep(NamedTuple):
  """What a controller decided for one step.

  Attributes:
    direction: params-shaped, gradient sign. When `accepted`, the RD direction
      d (the chain applies −η d). When not accepted, the controller's
      correction, applied as is: zeros, or the undo of the previous step
      (`next_batch_ratio`).
    damping: λ used for the direction, a scalar.
    accepted: scalar bool, False when the controller rejects the step.
    solve_ok: scalar bool, the health of the last linear solve.
    state: the controller's new state.
  """

  direction: Any
  damping: jax.Array
  accepted: jax.Array
  solve_ok: jax.Array
  state: Any


def _unchanged(state: Any) -> Any:
  return state


class DampingController(NamedTuple):
  """A damping rule; see the module docstring."""

  init: Callable[[Any], Any]
  current: Callable[[Any, jax.Array], jax.Array]
  step: Callable[[Any, Any, jax.Array, jax.Array], DampingStep]
  fail: Callable[[Any], Any] = _unchanged


def solve_and_step(problem, damping, state) -> DampingStep:
  """One Cholesky solve at λ = `damping`, accepted (fixed-λ controllers)."""
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

  def step(problem, state, count, step_size):
    del count, step_size
    return solve_and_step(problem, value, state)

  return DampingController(init=init, current=current, step=step)


def schedule(schedule_fn: Callable[[jax.Array], jax.Array]) -> DampingController:
  """λ = `schedule_fn(count)`, any optax schedule of the step count."""

  def init(params):
    del params
    return ()

  def current(state, count):
    del state
    return jnp.asarray(schedule_fn(count))

  def step(problem, state, count, step_size):
    del step_size
    return solve_and_step(problem, schedule_fn(count), state)

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


def step_params(params: Any, direction: Any, step_size: jax.Array) -> Any:
  """θ − η d."""
  return jax.tree_util.tree_map(
      lambda p, d: (p - step_size * d).astype(jnp.asarray(p).dtype), params, direction
  )


def predicted_reduction(problem, solution, direction, step_size) -> jax.Array:
  """Decrease of the loss predicted by the Gauss-Newton model for θ − η d.

  With the output change Δz = −η J d and the loss factors g = L u, H = L Lᵀ
  (`rdescent.losses`), w = Lᵀ Δz per example and

      pred = −(g·Δz + ½ Δzᵀ H Δz) = −(u·w + ½‖w‖²),

  which for squared error is ½‖r‖² − ½‖r − η J d‖². In the full dual form
  Lᵀ J d = (Lᵀ K L) α is the system matrix times the solution (no extra
  pass); otherwise J d costs one JVP.
  """
  rhs_u, factor = problem.factors
  if problem.system == "dual" and not problem.per_output:
    lifted = (problem.matrix @ solution).reshape(rhs_u.shape)
  else:
    change = problem.output_change(direction)
    lifted = change if factor is None else jnp.einsum("ikq,ik->iq", factor, change)
  w = -jnp.asarray(step_size, lifted.dtype) * lifted
  return -(jnp.sum(rhs_u * w) + 0.5 * jnp.sum(jnp.square(w)))


def gradient_norm(problem) -> jax.Array:
  """‖Jᵀ g‖ = ‖Jᵀ L u‖ (‖Jᵀ r‖ for squared error), the loss gradient's norm.

  Full dual form: uᵀ (Lᵀ K L) u, no extra pass. Primal form: the right-hand
  side is Jᵀ L u (per output: J_cᵀ r_c, summed). Per-output dual form: one
  VJP through `problem.direction`.
  """
  rhs = problem.rhs
  if not problem.per_output:
    if problem.system == "dual":
      return jnp.sqrt(jnp.maximum(rhs @ (problem.matrix @ rhs), 0.0))
    return jnp.linalg.norm(rhs)
  if problem.system == "primal":
    return jnp.linalg.norm(jnp.sum(rhs, axis=0))
  gradient = problem.direction(rhs)
  flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(gradient)])
  return problem.num_outputs * jnp.linalg.norm(flat)
