"""λ per example: damping in the units of the mean loss over the batch.

Losses are summed over the batch, so K, the right-hand side and λ are all in
the units of a sum of m examples. `per_example(λ̄)` sets

    λ = m λ̄,

m the number of examples of the step's batch. Dividing the system by m shows
what λ̄ is: the step solves

    ((1/m) Lᵀ K L + λ̄ I) α = (1/m) u,

the ridge regression of the *mean* loss with ridge λ̄, the units of an
optimizer that steps on the mean gradient (Adam's, somax's `lam0`). A fixed
λ̄ therefore means the same trade-off between the batch's Gauss-Newton model
and the step length at every batch size, while a fixed λ weighs the ridge
against a system that grows with m. With λ → ∞ the step tends to
(1/λ̄) × the mean gradient: λ̄ is the inverse learning rate of the gradient
limit. λ̄ may be a float or an optax schedule of the step count.

On MNIST's SmallCNN with softmax cross-entropy at batch 32
(benchmarks/ce_diagnosis.py), λ̄ = 1 (λ = 32) with `momentum=0.5` was at or
below Adam(3e-3)'s loss at equal steps over 1,000 steps on two seeds of
three; see docs/guide/losses.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent.damping import _base


class PerExampleState(NamedTuple):
  """State of `per_example`.

  Attributes:
    damping: λ = m λ̄ of the last step (λ̄ itself before the first step, when
      m is not known yet).
  """

  damping: jax.Array


def per_example(damping: float | Callable[[jax.Array], Any] = 1.0) -> _base.DampingController:
  """λ = m λ̄: damping per example of the batch (the mean loss's units).

  Args:
    damping: λ̄ ≥ 0, finite: a float, or an optax schedule of the step count.

  Returns:
    A `DampingController` whose state is a `PerExampleState`.

  Raises:
    ValueError: for a negative or non-finite float (when the controller is built).

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> controller = rd.damping.per_example(1.0)   # λ = 32 for a batch of 32
    >>> float(controller.current(controller.init(jnp.zeros(2)), 0))
    1.0
  """
  if callable(damping):
    mean_damping: Callable[[jax.Array], Any] = damping
  else:
    _validation.check_nonnegative_finite("damping", damping)
    value = damping
    mean_damping = lambda count: value  # noqa: E731

  def init(params):
    dtype = dtypes_lib.compute_dtype(params)
    return PerExampleState(damping=jnp.asarray(mean_damping(jnp.zeros([], jnp.int32)), dtype))

  def current(state, count):
    del count
    return state.damping

  def step(problem, state, count, step_size):
    value = problem.num_examples * jnp.asarray(mean_damping(count), state.damping.dtype)
    trial = problem.solve(value, step_size)
    return _base.accept(trial, PerExampleState(damping=value))

  return _base.DampingController(init=init, current=current, step=step)
