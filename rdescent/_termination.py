"""MINPACK-style termination tests: when a full-batch least-squares run is done.

`termination(ftol=, xtol=, gtol=)` makes the value of the transform option
`termination=`. With it, every step that applies something (status "ok") or
has a zero direction is tested after the damping controller chose it, as
MINPACK's `lmder` does (Moré, Garbow and Hillstrom, "User guide for MINPACK-1",
1980), on the step θ' = θ − η d actually taken:

* ftol: |ℓ − ℓ'| ≤ ftol |ℓ| + r ε_f, pred ≤ ftol |ℓ| and ρ = (ℓ − ℓ') / pred ≤ 2
  (ρ = 0 when pred = 0): both the actual and the predicted relative reductions
  of the batch loss are at most ftol. ε_f = `Trial.loss_noise` is the rounding
  noise of ℓ − ℓ' (r = 2, as the judges of `rdescent.damping` use it), so in
  float32 near a fit a decrease below the loss's own rounding counts as none.
* xtol: ‖η d‖ ≤ xtol (xtol + ‖θ‖), norms over all leaves (scipy's form of
  MINPACK's relative step test, without its trust-region radius).
* gtol: ‖Jᵀ g‖ ≤ gtol, the 2-norm of the loss gradient (‖Jᵀ r‖ for squared
  error; scipy's trf test in the 2-norm). MINPACK's cosine needs J's column
  norms, which the matrix-free forms never form. Off by default (gtol = 0, as
  MINPACK's `lmder1`): it costs one more VJP a step on the forms that have no
  Gram matrix at hand.

A step that passes any test gets status `STATUS_CONVERGED` instead of "ok" (or
"zero direction"), and is still applied; `RegressionDescentState.converged_by`
says which tests passed (a bit mask of `FTOL`, `XTOL`, `GTOL`). Rejected or
skipped steps are not tested: they keep their own status.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# Bits of `RegressionDescentState.converged_by`.
FTOL = 1
XTOL = 2
GTOL = 4
TEST_NAMES = {FTOL: "ftol", XTOL: "xtol", GTOL: "gtol"}


class Termination(NamedTuple):
  """The tolerances of the termination tests (see `termination`).

  Attributes:
    ftol: relative reduction of the loss, or None for √ε of the compute dtype.
    xtol: relative step length, or None for √ε of the compute dtype.
    gtol: gradient norm; 0 turns the test off.
  """

  ftol: float | None = None
  xtol: float | None = None
  gtol: float = 0.0


def _check_tolerance(name: str, value: Any, *, below_one: bool) -> None:
  if value is None and name != "gtol":
    return
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise ValueError(
      f"termination: {name} must be a Python float"
      + (" or None (√ε of the compute dtype)" if name != "gtol" else "")
      + f"; got {value!r}."
    )
  value = float(value)
  if not math.isfinite(value) or value < 0 or (below_one and value >= 1):
    bound = "0 <= {0} < 1" if below_one else "a finite {0} >= 0"
    raise ValueError(f"termination: need {bound.format(name)}; got {name}={value!r}.")


def termination(
  ftol: float | None = None, xtol: float | None = None, gtol: float = 0.0
) -> Termination:
  """MINPACK-style termination tests for `termination=` of `regression_descent`.

  Args:
    ftol: the step is converged when both the actual and the predicted relative
      reductions of the batch loss are ≤ ftol (and their ratio ≤ 2). None: √ε
      of the compute dtype (1.5e-8 in float64, 3.5e-4 in float32), MINPACK's
      recommended value. 0 ≤ ftol < 1.
    xtol: the step is converged when ‖η d‖ ≤ xtol (xtol + ‖θ‖). None: √ε of
      the compute dtype. 0 ≤ xtol < 1.
    gtol: the step is converged when ‖Jᵀ g‖ ≤ gtol (the loss gradient's
      2-norm). Default 0: off. A finite gtol ≥ 0.

  Every tolerance is checked here, with an error that names it. An xtol of 0
  passes only on a zero step, an ftol of 0 only where neither the loss nor its
  model decreases beyond rounding (at an exact minimiser).

  ftol judges the cost, as MINPACK's does: a relative cost accuracy of ftol
  leaves θ accurate to about √ftol relative on a well-conditioned problem
  (the step that passes is applied and usually lands much closer); xtol
  judges θ itself.

  Returns:
    A `Termination`, for `termination=`.

  Examples:
    >>> import rdescent as rd
    >>> rd.termination(ftol=1e-10)
    Termination(ftol=1e-10, xtol=None, gtol=0.0)
  """
  _check_tolerance("ftol", ftol, below_one=True)
  _check_tolerance("xtol", xtol, below_one=True)
  _check_tolerance("gtol", gtol, below_one=False)
  return Termination(
    ftol=None if ftol is None else float(ftol),
    xtol=None if xtol is None else float(xtol),
    gtol=float(gtol),
  )


def check(value: Any) -> Termination | None:
  """The transform option `termination`: None, or a `Termination` (checked again)."""
  if value is None:
    return None
  if not isinstance(value, Termination):
    raise ValueError(
      "termination must be None or rdescent.termination(ftol=..., xtol=..., gtol=...); "
      f"got {value!r}."
    )
  return termination(*value)


def _norm(tree: Any, dtype: Any) -> jax.Array:
  flat, _ = ravel_pytree(jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), tree))
  return jnp.linalg.norm(flat)


def _relative(value: jax.Array, scale: jax.Array) -> jax.Array:
  """value / scale; 0 / 0 = 0 and x / 0 = ∞ otherwise."""
  safe = jnp.where(scale > 0, scale, 1.0)
  return jnp.where(scale > 0, value / safe, jnp.where(value == 0, 0.0, jnp.inf))


def passed_tests(
  tolerances: Termination, problem: Any, trial: Any, params: Any, step_size: Any
) -> jax.Array:
  """The bit mask (int32) of the tests that the step θ − η d of `trial` passes.

  `problem` is the step's `LinearizedProblem` and `trial` the `Trial` its
  controller chose; `params` are θ (in the compute dtype).
  """
  loss = problem.loss
  dtype = loss.dtype
  sqrt_eps = float(np.sqrt(np.finfo(dtype).eps))
  ftol = sqrt_eps if tolerances.ftol is None else tolerances.ftol
  xtol = sqrt_eps if tolerances.xtol is None else tolerances.xtol
  scale = jnp.abs(loss)
  actual = loss - trial.loss_after
  predicted = trial.predicted_reduction
  # ρ = 0 when nothing is predicted (MINPACK's convention).
  ratio = jnp.where(predicted != 0, actual / jnp.where(predicted != 0, predicted, 1.0), 0.0)
  noise = 2.0 * trial.loss_noise
  passes_ftol = (
    (_relative(jnp.maximum(jnp.abs(actual) - noise, 0.0), scale) <= ftol)
    & (_relative(predicted, scale) <= ftol)
    & (ratio <= 2.0)
  )
  step_norm = jnp.abs(jnp.asarray(step_size, dtype)) * _norm(trial.direction, dtype)
  passes_xtol = step_norm <= xtol * (xtol + _norm(params, dtype))
  mask = jnp.where(passes_ftol, FTOL, 0) | jnp.where(passes_xtol, XTOL, 0)
  if tolerances.gtol > 0:
    mask = mask | jnp.where(problem.gradient_norm() <= tolerances.gtol, GTOL, 0)
  return jnp.asarray(mask, jnp.int32)


def names(mask: int) -> tuple[str, ...]:
  """The names of the tests in a `converged_by` mask, e.g. ("ftol", "xtol")."""
  return tuple(name for bit, name in TEST_NAMES.items() if int(mask) & bit)
