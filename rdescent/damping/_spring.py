"""SPRING: memory across batches inside the regression, as a controller wrapper.

`spring(controller, momentum=μ)` (Goldshlager, Abrahamsen & Lin 2024,
"A Kaczmarz-inspired approach to accelerate the optimization of neural
network wavefunctions") carries the previous direction d_{t−1} into the
next regression instead of only chaining momentum after it. In the full dual
form, with the loss factors u, L (L = I, u = r for squared error),

    d_t = μ d_{t−1} + Jᵀ L (Lᵀ K L + λI)⁻¹ (u − μ Lᵀ J d_{t−1}),

the regression of the residual that the previous direction leaves on this
batch, plus that direction. With e = d − μ d_{t−1} this is the ridge
regression of the shifted residual, hence the identity

    d_t = argmin_d ‖Lᵀ J d − u‖² + λ ‖d − μ d_{t−1}‖²:

the RD step whose ridge pulls towards the (damped) previous direction instead
of towards zero. Directions along which this batch has data are fitted to it;
in the null space of J (p ≫ m k, most directions) the step keeps μ times the
previous one, so earlier batches' information decays geometrically rather
than being dropped. Each step costs one extra product J d_{t−1} (a JVP in
the dual forms, a matmul in the primal ones); the system matrix and its
factorisation are unchanged. The per-output form becomes

    d_t = μ d_{t−1} + (1/k) Σ_c J_cᵀ (K_c + λI)⁻¹ (r_c − μ (J d_{t−1})_c),

the mean over c of argmin_d ‖J_c d − r_c‖² + λ ‖d − μ d_{t−1}‖²; see
`rdescent.problem` for the primal forms.

The wrapped controller gets the view `problem.shifted(d_{t−1}, μ)`, whose
trials are of the full step d_t: a judge inside (`levenberg_marquardt`,
`backtracking`) judges the full SPRING step, and λ is chosen for it.
d_{t−1} is the direction the wrapped controller returned (before η); after a
step that was not accepted (a rejection, an undo of `next_batch_ratio`) or a
numerical failure (`fail`) it is zero, so the next step is plain RD.
Composition order says what is remembered: in `spring(backtracking(c))` the
shortened step, in `backtracking(spring(c))` or `cap_logit_change(spring(c))`
(the `max_logit_change=` shorthand) the unshortened SPRING direction, the
shortening acting like a per-step step size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rdescent import _validation
from rdescent.damping import _base


class SpringState(NamedTuple):
  """State of `spring`.

  Attributes:
    inner: the wrapped controller's state.
    previous: d_{t−1}, params-shaped (in the compute dtype): the last
      accepted direction, zeros at init and after a step that was not
      accepted or failed.
  """

  inner: Any
  previous: Any


def check_momentum(momentum: Any, name: str = "momentum") -> None:
  """Trace-time check μ ∈ [0, 1) of a concrete momentum (a ValueError naming it).

  A traced value (`optax.inject_hyperparams`) passes unchecked.
  """
  if isinstance(momentum, bool) or not (
    _validation.is_concrete(momentum) or isinstance(momentum, jax.Array)
  ):
    raise ValueError(f"{name} must be a number in [0, 1); got {momentum!r}.")
  if not _validation.is_concrete(momentum):
    return
  array = np.asarray(momentum, dtype=np.float64)
  if array.ndim != 0:
    raise ValueError(f"{name} must be a scalar in [0, 1); got shape {array.shape}.")
  if not 0.0 <= float(array) < 1.0:
    raise ValueError(f"{name} must be in [0, 1); got {momentum!r}.")


def is_zero(momentum: Any) -> bool:
  """True for a concrete μ = 0 (plain RD, no shifted problem)."""
  return _validation.is_concrete(momentum) and float(np.asarray(momentum)) == 0.0


def _zeros(tree: Any) -> Any:
  # One fresh buffer per leaf (the state can be donated).
  return jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.asarray(x).dtype), tree)


def spring(controller: Any, momentum: float = 0.9) -> _base.DampingController:
  """Wraps `controller` with SPRING momentum inside the regression.

  Args:
    controller: a damping controller, float or schedule (see `as_controller`).
    momentum: μ ∈ [0, 1), the weight of the previous direction (see the
      module docstring); 0 is plain RD (no extra product is computed). A
      traced value (`optax.inject_hyperparams`) is not checked.

  Returns:
    A `DampingController` whose state is a `SpringState`.

  Raises:
    ValueError: for a `momentum` outside [0, 1).

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.spring(rd.damping.constant(1e-3), momentum=0.9)
    >>> state = controller.init({"w": jnp.ones(2)})
    >>> state.previous
    {'w': Array([0., 0.], dtype=float32)}
  """
  inner = _base.as_controller(controller)
  check_momentum(momentum)
  plain = is_zero(momentum)

  def init(params):
    return SpringState(inner=inner.init(params), previous=_zeros(params))

  def current(state, count):
    return inner.current(state.inner, count)

  def fail(state):
    return SpringState(inner=inner.fail(state.inner), previous=_zeros(state.previous))

  def step(problem, state, count, step_size):
    view = problem if plain else problem.shifted(state.previous, momentum)
    inner_step = inner.step(view, state.inner, count, step_size)
    keep = inner_step.accepted & _validation.all_finite(inner_step.direction)
    previous = jax.tree_util.tree_map(
      lambda d, old: jnp.where(keep, d, jnp.zeros_like(d)).astype(old.dtype),
      inner_step.direction,
      state.previous,
    )
    return inner_step._replace(state=SpringState(inner=inner_step.state, previous=previous))

  return _base.wrapper(inner, init=init, current=current, step=step, fail=fail)
