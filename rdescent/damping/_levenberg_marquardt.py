"""Levenberg-Marquardt damping: the trust ratio on the same batch.

For the step θ' = θ − η d(λ), compare the actual decrease of the batch loss
with the decrease predicted by the Gauss-Newton model (one extra forward
pass, and J d from the system matrix or one JVP):

    ρ = (ℓ(θ) − ℓ(θ') + r ε_f) / (pred + r ε_f),
    pred = −(g·Δz + ½ Δzᵀ H Δz),  Δz = −η J d

(for squared error pred = ½‖r‖² − ½‖r − η J d‖²). ε_f (`Trial.loss_noise`)
is the scale of the rounding error of the realised decrease and r = 2: the
noise-tolerant ratio of Sun & Nocedal (2023), which is the plain ratio
unless the decreases are down at the loss's rounding level (float32 near a
fit), where the plain ratio is noise and would only push λ up. The step is accepted when
ρ > `accept_ratio`; otherwise it is re-solved with λ ← ν λ, ν ← 2ν on the same
system matrix (no new Jacobian) inside a bounded `lax.while_loop`. A failed
Cholesky or a non-finite trial loss counts as a rejection. On acceptance λ
follows Nielsen's rule, λ ← λ · max(1/3, 1 − (2ρ − 1)³), ν ← 2: it decreases
when ρ > ½ (down to ⅓ λ for a near-perfect model) and grows when the model is
poor. λ always stays in [`min_damping`, `max_damping`].

LM is designed for η = 1 (the model's step); with η ≠ 1 the controller judges
the step actually applied, θ − η d, which needs η passed as `step_size` to
`scale_by_regression_descent` (`regression_descent` does this).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base


class LevenbergMarquardtState(NamedTuple):
  """λ for the next step and the growth factor ν of the next rejection."""

  damping: jax.Array
  growth: jax.Array


def nielsen_update(damping, growth, ratio, accepted, min_damping, max_damping):
  """One LM update of (λ, ν) from the trust ratio ρ.

  accepted: λ ← λ max(1/3, 1 − (2ρ − 1)³), ν ← 2.   rejected: λ ← ν λ, ν ← 2ν.
  """
  factor = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
  factor = jnp.where(jnp.isfinite(factor), factor, 1.0)
  new_damping = jnp.where(accepted, damping * factor, damping * growth)
  new_growth = jnp.where(accepted, 2.0, jnp.minimum(2.0 * growth, 1e6))
  return _base.clamp(new_damping, min_damping, max_damping), new_growth


def levenberg_marquardt(
  initial: float = 1e-3,
  *,
  accept_ratio: float = 1e-4,
  max_solves: int = 10,
  min_damping: float = 1e-12,
  max_damping: float = 1e12,
) -> _base.DampingController:
  """Levenberg-Marquardt trust-ratio control of λ (see the module docstring).

  Args:
    initial: λ of the first step.
    accept_ratio: smallest ρ that accepts a step.
    max_solves: most solves per step (the first and its re-solves); when all
      are rejected the step is skipped (status "rejected") with λ grown.
    min_damping: the smallest λ.
    max_damping: the largest λ.

  A step whose predicted decrease is negligible (≤ 10 ε ℓ, e.g. at an exact
  solution) is accepted with λ unchanged, so λ stays bounded there.

  Returns:
    A `DampingController` whose state is a `LevenbergMarquardtState`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.levenberg_marquardt(initial=1e-2)
    >>> state = controller.init(jnp.zeros(3))
    >>> float(controller.current(state, 0)), float(controller.fail(state).damping)
    (0.01, 0.02)
  """
  _base.check_range(min_damping, max_damping)
  _validation.check_positive("initial", initial)
  if not isinstance(max_solves, int) or max_solves < 1:
    raise ValueError(f"max_solves must be a positive int; got {max_solves!r}.")

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return LevenbergMarquardtState(
      damping=jnp.asarray(initial, dtype), growth=jnp.asarray(2.0, dtype)
    )

  def current(state, count):
    del count
    return state.damping

  def fail(state):
    damping, growth = nielsen_update(
      state.damping, state.growth, 0.0, False, min_damping, max_damping
    )
    return LevenbergMarquardtState(damping=damping, growth=growth)

  def step(problem, state, count, step_size):
    del count
    dtype = problem.outputs.dtype

    def body(carry):
      i, damping, growth, _, _, _ = carry
      trial = problem.solve(damping, step_size)
      actual, negligible = _base.decrease(problem.loss, trial)
      ratio = jnp.where(negligible, 1.0, _base.noise_tolerant_ratio(actual, trial))
      accepted = trial.healthy & (negligible | (ratio > accept_ratio))
      new_damping, new_growth = nielsen_update(
        damping, growth, ratio, accepted, min_damping, max_damping
      )
      new_damping = jnp.where(accepted & negligible, damping, new_damping)
      chosen = _base.tree_select(accepted, trial, problem.null_trial(damping, step_size))
      return i + 1, new_damping, new_growth, accepted, trial.solve_ok, chosen

    def cond(carry):
      i, _, _, accepted, _, _ = carry
      return (i < max_solves) & ~accepted

    damping = jnp.asarray(state.damping, dtype)
    start = (
      jnp.asarray(0),
      damping,
      jnp.asarray(state.growth, dtype),
      jnp.asarray(False),
      jnp.asarray(True),
      problem.null_trial(damping, step_size),
    )
    _, damping, growth, accepted, ok, trial = lax.while_loop(cond, body, start)
    new_state = LevenbergMarquardtState(
      damping=damping.astype(state.damping.dtype), growth=growth.astype(state.growth.dtype)
    )
    # A skipped step reports the health of its last solve.
    trial = trial._replace(solve_ok=ok)
    return _base.DampingStep(
      direction=trial.direction, trial=trial, accepted=accepted, state=new_state
    )

  return _base.DampingController(init=init, current=current, step=step, fail=fail)
