"""The floating dtype Regression Descent computes in.

RD computes its Gram matrix, its solve and its state in the parameters'
common floating dtype, but at least float32: a bfloat16 or float16 Cholesky
of K fails or is meaningless (8 or 11 significant bits). Directions are cast
back to each parameter leaf's own dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _at_least_float32(dtype: Any) -> jnp.dtype:
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def compute_dtype(tree: Any) -> jnp.dtype:
  """The dtype RD computes in for `tree`: its leaves' common dtype, at least float32.

  Args:
    tree: a pytree of arrays (the parameters), or a single dtype.

  Returns:
    `jnp.result_type` of the leaves, with bfloat16/float16 raised to float32;
    float32 for a tree without leaves.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> rd.compute_dtype({"w": jnp.ones(2, jnp.bfloat16)})
    dtype('float32')
    >>> rd.compute_dtype(jnp.float16)
    dtype('float32')
  """
  if isinstance(tree, (jnp.dtype, type)) or (isinstance(tree, str)):
    return _at_least_float32(tree)
  dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(tree)]
  return _at_least_float32(jnp.result_type(*dtypes)) if dtypes else jnp.dtype(jnp.float32)


def upcast(tree: Any) -> Any:
  """`tree` with bfloat16/float16 leaves cast to float32, other leaves unchanged."""
  return jax.tree_util.tree_map(
    lambda leaf: jnp.asarray(leaf).astype(_at_least_float32(jnp.asarray(leaf).dtype)), tree
  )
