"""Trace-time checks of user input, each with a message that names the argument.

Every check here runs on shapes, dtypes and Python values only, so it fires
when a function is traced (under `jax.jit` too), never inside compiled code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_option(name: str, value: Any, valid: Sequence[str]) -> str:
  """Returns `value` if it is one of `valid`, else raises a ValueError listing them."""
  if not isinstance(value, str) or value not in valid:
    raise ValueError(
      f"{name}={value!r} is not a valid option; expected one of "
      f"{', '.join(repr(v) for v in valid)}."
    )
  return value


def check_params(params: Any, transform: str) -> None:
  """Raises a ValueError when `params` was not given to `update`."""
  if params is None:
    raise ValueError(
      f"{transform}.update needs the current parameters: call "
      "`tx.update(grads, state, params, batch=(inputs, targets))`; "
      "`params` was None."
    )
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves:
    raise ValueError(f"{transform}.update: `params` has no array leaves.")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
      raise TypeError(
        f"{transform}: every leaf of `params` must be a floating-point "
        f"array; found dtype {jnp.asarray(leaf).dtype}."
      )


def check_batch(batch: Any, transform: str, *, coupled: bool = False) -> tuple[Any, Any]:
  """Checks that `batch` is a pair `(inputs, targets)` with a common leading axis.

  With `coupled` (`examples="coupled"`) the inputs are free (None for a plain
  residual function) and the targets' leading axis is checked against the
  outputs later.

  Returns:
    The pair `(inputs, targets)`; `inputs` may be a pytree of arrays that all
    share the leading (example) axis m.
  """
  if batch is None:
    raise ValueError(
      f"{transform}.update needs the batch: call "
      "`tx.update(grads, state, params, batch=(inputs, targets))`; "
      "`batch` was missing."
    )
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    kind = type(batch).__name__
    length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise ValueError(
      f"{transform}: `batch` must be a pair (inputs, targets); got a {kind}{length}."
    )
  inputs, targets = batch
  if coupled:
    if np.ndim(targets) == 0:
      raise ValueError(
        f"{transform}: targets must have the examples on their leading axis; got a scalar."
      )
    return inputs, targets
  input_leaves = jax.tree_util.tree_leaves(inputs)
  if not input_leaves:
    raise ValueError(
      f"{transform}: `batch` inputs have no array leaves. For a residual function without "
      "per-example inputs (a plain residual vector), pass examples='coupled' and "
      "batch=(None, targets)."
    )
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in input_leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
      f"{transform}: every array in the batch inputs must have the same "
      f"leading (example) axis; got leading sizes {sorted(map(str, sizes))}."
    )
  (num_examples,) = sizes
  if num_examples == 0:
    raise ValueError(f"{transform}: the batch is empty (m = 0 examples).")
  if np.ndim(targets) == 0 or np.shape(targets)[0] != num_examples:
    raise ValueError(
      f"{transform}: targets must have the batch's {num_examples} examples "
      f"on their leading axis; got targets of shape {np.shape(targets)}."
    )
  return inputs, targets


def check_outputs(outputs: jax.Array, num_examples: int, transform: str) -> None:
  """Checks that `apply_fn` returned one row of outputs per example."""
  if not hasattr(outputs, "ndim") or not hasattr(outputs, "dtype"):
    kind = type(outputs).__name__
    size = f" of {len(outputs)} elements" if isinstance(outputs, (tuple, list, dict)) else ""
    raise TypeError(
      f"{transform}: apply_fn(params, inputs) must return one array of shape (m,) or (m, k) "
      f"with m = {num_examples}; got a {kind}{size}. Return a single array: the model's "
      "outputs only (drop auxiliary values, e.g. `lambda p, x: model(p, x)[0]`), or several "
      "outputs joined along the last axis (`jnp.concatenate(..., axis=-1)`)."
    )
  if outputs.ndim == 0 or outputs.shape[0] != num_examples:
    raise ValueError(
      f"{transform}: apply_fn(params, inputs) must return shape (m,) or "
      f"(m, k) with m = {num_examples}; got {outputs.shape}."
    )
  if not jnp.issubdtype(outputs.dtype, jnp.inexact):
    raise TypeError(
      f"{transform}: apply_fn must return floating-point outputs; got dtype {outputs.dtype}."
    )


def check_floating(name: str, tree: Any, transform: str) -> None:
  """Raises a TypeError when a leaf of `tree` is not floating point."""
  for leaf in jax.tree_util.tree_leaves(tree):
    dtype = jnp.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{transform}: `{name}` must be floating point for this loss; got "
        f"dtype {dtype}. Cast it, e.g. `{name}.astype(jnp.float32)`."
      )


def check_input_dtypes(
  inputs: Any, params_dtype: Any, transform: str, *, integer_inputs: bool = False
) -> None:
  """Inputs must be floating with the parameters' (compute) dtype.

  A float64 batch against float32 parameters (or the reverse) would silently
  promote the model and the step to another precision; integer inputs would
  silently be promoted by the model's arithmetic. Both are refused at trace
  time; `integer_inputs=True` allows integer arrays (embedding ids). Inputs in
  a lower precision than the compute dtype (bfloat16 data with float32
  compute) are accepted.
  """
  params_dtype = jnp.dtype(params_dtype)
  for leaf in jax.tree_util.tree_leaves(inputs):
    dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
      if integer_inputs:
        continue
      raise TypeError(
        f"{transform}: batch inputs have dtype {dtype}; expected floating "
        f"point ({params_dtype}, the parameters' dtype). Cast the inputs, or "
        "pass `integer_inputs=True` if apply_fn takes integer ids."
      )
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"{transform}: batch inputs have dtype {dtype}; expected floating point ({params_dtype})."
      )
    if jnp.finfo(dtype).bits > jnp.finfo(params_dtype).bits:
      raise TypeError(
        f"{transform}: batch inputs have dtype {dtype} but the parameters "
        f"compute in {params_dtype}; cast the inputs to {params_dtype} (or "
        "the parameters to the inputs' dtype) so that both agree."
      )


def is_concrete(value: Any) -> bool:
  """True when `value` is a Python or NumPy number (not a tracer)."""
  return isinstance(value, (int, float, np.number, np.ndarray)) and not isinstance(value, bool)


def check_nonnegative_finite(name: str, value: Any) -> None:
  """Raises a ValueError for a concrete negative or non-finite hyperparameter, or a string."""
  if isinstance(value, (str, bytes)):
    raise ValueError(
      f"{name} must be a number, a scalar array or an optax schedule (a callable of the step "
      f"count); got the string {value!r}. Pass {name}={_number_hint(value)}."
    )
  if is_concrete(value):
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 0:
      raise ValueError(f"{name} must be a scalar; got shape {array.shape}.")
    if not np.isfinite(array) or array < 0:
      raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  """Raises a ValueError for a concrete hyperparameter that is not finite and > 0."""
  check_nonnegative_finite(name, value)
  if is_concrete(value) and value <= 0:
    raise ValueError(f"{name} must be > 0; got {value!r}.")


def all_finite(tree: Any) -> jax.Array:
  """Scalar bool array, inside jit too: every entry of every leaf is finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _number_hint(text: str | bytes) -> str:
  """`0.1` for the string '0.1', else a placeholder."""
  try:
    return repr(float(text))
  except ValueError:
    return "<a float>"


def check_state(state: Any, expected: Any, transform: str) -> None:
  """Raises a ValueError when `state` was not made by `init` on params like the current ones.

  Args:
    state: the state passed to `update`.
    expected: `jax.eval_shape(init, params)` for the current params.
    transform: the transform's name, for the message.
  """
  fix = (
    "a state is tied to the params it was made from: call `state = tx.init(params)` again "
    "after changing the params' tree or shapes."
  )
  got_tree = jax.tree_util.tree_structure(state)
  expected_tree = jax.tree_util.tree_structure(expected)
  if got_tree != expected_tree:  # type: ignore[operator]  # PyTreeDef defines __ne__
    raise ValueError(
      f"{transform}.update: the optimizer state does not match `params`: it was made by "
      f"`init` on another tree of parameters (or another optimizer); {fix}"
    )
  for path, leaf, want in zip(
    jax.tree_util.tree_leaves_with_path(state),
    jax.tree_util.tree_leaves(state),
    jax.tree_util.tree_leaves(expected),
  ):
    if np.shape(leaf) != tuple(want.shape):
      raise ValueError(
        f"{transform}.update: the optimizer state does not match `params`: state leaf "
        f"{jax.tree_util.keystr(path[0])} has shape {np.shape(leaf)}, but `init` on these "
        f"params makes {tuple(want.shape)}; {fix}"
      )
