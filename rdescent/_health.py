"""What keeps a non-finite hyperparameter out of the updates and the state.

The learning rate, the damping and the momentum can change inside compiled
code (schedules, `optax.inject_hyperparams`), so a NaN or an infinity among
them is found in the step, not when the transform is built: the step is then
skipped with a status that names the hyperparameter (see
`rdescent.STATUS_MESSAGES`), the learning rate that scales the direction is
replaced by 0 (0 · d = 0 for the zero direction of a skipped step, where
NaN · 0 would be NaN), and no non-finite value enters the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def is_finite(value: Any) -> jax.Array:
  """Scalar bool: every entry of a hyperparameter's value is finite (True for None)."""
  if value is None:
    return jnp.asarray(True)
  return jnp.all(jnp.isfinite(jnp.asarray(value)))


def value_at(value: Any, count: jax.Array) -> Any:
  """A hyperparameter at step `count`: a schedule's value, or the value itself."""
  return value(count) if callable(value) else value


def finite_or_zero(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  """The learning rate with every non-finite value replaced by 0 (a schedule stays one).

  `optax.scale_by_learning_rate(finite_or_zero(η))` multiplies the zero
  direction of a step skipped for a non-finite η by 0, not by NaN.
  """

  def finite(value):
    value = jnp.asarray(value)
    return jnp.where(jnp.isfinite(value), value, jnp.zeros_like(value))

  if callable(learning_rate):
    return lambda count: finite(learning_rate(count))
  if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool):
    return learning_rate  # checked finite when the transform is built
  return finite(learning_rate)


def keep_finite(new_state: Any, old_state: Any) -> Any:
  """`new_state` with each non-finite entry of a floating leaf replaced by `old_state`'s.

  The last guard of the rule that nothing non-finite enters the optimizer
  state (a damping schedule that returns NaN, for one); both trees have the
  same structure.
  """

  def keep(new, old):
    new = jnp.asarray(new)
    if not jnp.issubdtype(new.dtype, jnp.inexact):
      return new
    return jnp.where(jnp.isfinite(new), new, jnp.asarray(old, new.dtype))

  return jax.tree_util.tree_map(keep, new_state, old_state)
