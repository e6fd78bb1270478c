"""λ proportional to a power of the residual or the gradient.

The adaptive Levenberg-Marquardt schedules of the Gauss-Newton convergence
analyses tie λ to how far the current point is from a solution, so that λ → 0
(and the step becomes Gauss-Newton's) as the fit becomes exact:

    residual_proportional:  λ = μ (‖u‖² / m)^(δ/2)    (‖r‖² for squared error)
    gradient_proportional:  λ = μ ‖Jᵀ L u‖^(1/2)       (‖Jᵀ r‖ for squared error)

with m the number of examples. ‖Jᵀr‖² = rᵀ K r comes from the system matrix
in the full dual form; otherwise it costs one VJP at most. λ is clamped to
[`min_damping`, `max_damping`].

Failures: a non-finite residual or a failed solve multiplies a boost b by
`failure_growth` (λ = b × formula, b ≤ 1e6); every healthy step divides b by
the same factor down to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base

MAX_BOOST = 1e6


class ProportionalState(NamedTuple):
  """λ of the last step and the failure boost b ≥ 1."""

  damping: jax.Array
  boost: jax.Array


def _proportional(
  measure: Callable,
  initial: float,
  min_damping: float,
  max_damping: float,
  failure_growth: float,
) -> _base.DampingController:
  _base.check_range(min_damping, max_damping)
  _validation.check_positive("failure_growth", failure_growth)

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return ProportionalState(
      damping=_base.clamp(jnp.asarray(initial, dtype), min_damping, max_damping),
      boost=jnp.ones([], dtype),
    )

  def current(state, count):
    del count
    return state.damping

  def fail(state):
    boost = jnp.minimum(state.boost * failure_growth, MAX_BOOST)
    damping = _base.clamp(state.damping * failure_growth, min_damping, max_damping)
    return ProportionalState(damping=damping, boost=boost)

  def step(problem, state, count, step_size):
    del count
    dtype = state.damping.dtype
    formula = state.boost * jnp.asarray(measure(problem), dtype)
    damping = jnp.where(
      jnp.isfinite(formula), _base.clamp(formula, min_damping, max_damping), state.damping
    )
    new_state = ProportionalState(
      damping=damping, boost=jnp.maximum(state.boost / failure_growth, 1.0)
    )
    return _base.accept(problem.solve(damping, step_size), new_state)

  return _base.DampingController(init=init, current=current, step=step, fail=fail)


def residual_proportional(
  mu: float = 1.0,
  delta: float = 1.0,
  *,
  min_damping: float = 1e-10,
  max_damping: float = 1e10,
  failure_growth: float = 10.0,
) -> _base.DampingController:
  """λ = μ (‖r‖² / m)^(δ/2), clamped to [min_damping, max_damping].

  Args:
    mu: μ > 0.
    delta: δ > 0; δ ∈ [1, 2] gives local quadratic convergence of LM on
      zero-residual problems.
  """
  _validation.check_positive("mu", mu)
  _validation.check_positive("delta", delta)

  def measure(problem):
    rhs_u = problem.factors.rhs
    return mu * (jnp.sum(jnp.square(rhs_u)) / problem.num_examples) ** (delta / 2)

  return _proportional(measure, mu, min_damping, max_damping, failure_growth)


def gradient_proportional(
  mu: float = 1.0,
  *,
  min_damping: float = 1e-10,
  max_damping: float = 1e10,
  failure_growth: float = 10.0,
) -> _base.DampingController:
  """λ = μ ‖Jᵀ r‖^(1/2), clamped to [min_damping, max_damping]."""
  _validation.check_positive("mu", mu)

  def measure(problem):
    return mu * jnp.sqrt(problem.gradient_norm())

  return _proportional(measure, mu, min_damping, max_damping, failure_growth)
