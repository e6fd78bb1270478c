"""Whether `apply_fn` maps each example on its own (`examples="independent"`).

The Gram engines and the per-example Jacobians assume it; two checks guard
it: at trace time, `apply_fn` on a batch of one example must return one
example's outputs (`check_single_example`); in every step, each example
evaluated alone must match the batch call (`examples_consistent`, one extra
forward pass), or the step is skipped with a status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rdescent import _jacobian

ApplyFn = Callable[[Any, Any], jax.Array]


def check_single_example(
  apply_fn: ApplyFn, params: Any, inputs: Any, batch_shape: tuple[int, ...], name: str
) -> None:
  """Trace time: `apply_fn` on a batch of one example returns one example's outputs."""
  one = jax.tree_util.tree_map(lambda leaf: leaf[:1], inputs)
  hint = (
    "With examples='independent' (the default) apply_fn must map each example on its own; "
    "for a residual function of the whole batch (batch statistics, residuals that mix "
    "examples, a plain residual vector) pass examples='coupled'."
  )
  try:
    shape = jax.eval_shape(apply_fn, params, one).shape
  except Exception as error:  # the user's function, on a batch of one
    raise ValueError(f"{name}: apply_fn fails on a batch of one example ({error}). {hint}") from (
      error
    )
  if tuple(shape) != (1, *batch_shape[1:]):
    raise ValueError(
      f"{name}: apply_fn(params, inputs) returns {tuple(batch_shape)} for the batch but "
      f"{tuple(shape)} for a batch of one example, expected {(1, *batch_shape[1:])}. {hint}"
    )


def examples_consistent(
  apply_fn: ApplyFn, params: Any, inputs: Any, outputs: jax.Array, chunk_size: int | None = None
) -> jax.Array:
  """Whether each example evaluated alone gives the batch call's outputs (one forward pass).

  The check of `examples="independent"`; `outputs` is the batch call's,
  shape (m, k).

  Equal to √ε·(1 + max |f|) per entry: rounding differs between a batch and
  its examples, a coupling (batch statistics) changes outputs at O(1).
  Non-finite outputs of single examples count as a mismatch.
  """

  def one(example):
    return apply_fn(params, _jacobian.batch_of_one(example)).reshape(-1)

  alone = _jacobian.map_examples(one, inputs, chunk_size).astype(outputs.dtype)
  tolerance = jnp.sqrt(jnp.finfo(outputs.dtype).eps) * (1.0 + jnp.max(jnp.abs(outputs)))
  return jnp.all(jnp.abs(alone - outputs) <= tolerance)
