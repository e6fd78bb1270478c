"""Per-example Jacobians ∂f_{i,c}/∂θ of a batched model (private; see `rdescent.gram`).

The one implementation of the per-example Jacobian: the jacobian engine of
`rdescent.gram` differentiates every parameter leaf with it, the structured
engine (`rdescent.structured_gram`) only the leaves it cannot factor (its
"fallback" leaves). Both import it from here, below either of them.

For one example x_i, f(θ, x_i) is the model's k outputs (the batched
`apply_fn` called on a batch of one, flattened); its Jacobian with respect to
a leaf θ_ℓ has shape (k, *θ_ℓ.shape), and over the m examples of a batch
(m, k, *θ_ℓ.shape). Forward mode is used when the differentiated leaves have
fewer numbers than the k outputs, reverse mode otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Params = Any
ApplyFn = Callable[[Params, Any], jax.Array]


def batch_of_one(tree: Any) -> Any:
  """One example as a batch of one: every leaf of shape s gets shape (1, *s)."""
  return jax.tree_util.tree_map(lambda leaf: leaf[None], tree)


def map_examples(fn: Callable[[Any], Any], inputs: Any, chunk_size: int | None) -> Any:
  """`fn` over the leading (example) axis of `inputs`.

  All m examples at once with `jax.vmap` (`chunk_size=None`), or `jax.lax.map`
  over chunks of `chunk_size` examples (one chunk's intermediates in memory).
  """
  if chunk_size is None:
    return jax.vmap(fn)(inputs)
  return jax.lax.map(fn, inputs, batch_size=chunk_size)


def leaf_jacobians(
  apply_fn: ApplyFn,
  params: Params,
  inputs: Any,
  leaves: Sequence[int],
  *,
  num_outputs: int,
  chunk_size: int | None = None,
) -> list[jax.Array]:
  """Per-example Jacobians of the chosen parameter leaves, one (m, k, *θ_ℓ.shape) array each.

  Args:
    apply_fn: `apply_fn(params, inputs) -> (m,) or (m, k)`; examples must be
      independent (no batch statistics).
    params: the parameter pytree.
    inputs: array or pytree of arrays with leading axis m.
    leaves: indices, in `jax.tree_util.tree_leaves(params)` order, of the
      leaves to differentiate; the others are held constant.
    num_outputs: k, outputs per example.
    chunk_size: examples differentiated at once (None: all m; see
      `map_examples`).

  Returns:
    The Jacobians of `leaves`, in that order.
  """
  all_leaves, treedef = jax.tree_util.tree_flatten(params)
  chosen = [all_leaves[i] for i in leaves]

  def single(sub: list[jax.Array], example: Any) -> jax.Array:
    full = list(all_leaves)
    for i, leaf in zip(leaves, sub):
      full[i] = leaf
    p = jax.tree_util.tree_unflatten(treedef, full)
    return jnp.reshape(apply_fn(p, batch_of_one(example)), (-1,))

  size = sum(leaf.size for leaf in chosen)
  jac = jax.jacfwd(single) if size < num_outputs else jax.jacrev(single)
  return list(map_examples(lambda example: jac(chosen, example), inputs, chunk_size))


def per_example_jacobian(
  apply_fn: ApplyFn,
  params: Params,
  inputs: Any,
  *,
  num_outputs: int,
  chunk_size: int | None = None,
) -> Params:
  """Per-example Jacobians ∂f_{i,c}/∂θ as a pytree shaped like `params`.

  Each leaf has shape (m, k, *leaf.shape). Forward mode is used when the model
  has fewer parameters than outputs per example, reverse mode otherwise.

  Args:
    apply_fn: `apply_fn(params, inputs) -> (m,) or (m, k)`; examples must be
      independent (no batch statistics).
    params: the parameter pytree.
    inputs: array or pytree of arrays with leading axis m.
    num_outputs: k, outputs per example.
    chunk_size: examples differentiated at once (None: all m, with
      `jax.vmap`; an int: `jax.lax.map` over chunks of that many examples).

  Returns:
    A pytree with the structure of `params`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent import gram
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> apply_fn = lambda p, x: x @ p["w"] + p["b"]
    >>> jacobian = gram.per_example_jacobian(apply_fn, params, jnp.ones((4, 3)), num_outputs=2)
    >>> jacobian["w"].shape, jacobian["b"].shape
    ((4, 2, 3, 2), (4, 2, 2))
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  per_leaf = leaf_jacobians(
    apply_fn,
    params,
    inputs,
    range(len(leaves)),
    num_outputs=num_outputs,
    chunk_size=chunk_size,
  )
  return jax.tree_util.tree_unflatten(treedef, per_leaf)


def flat_jacobian(jacobian: Params, num_examples: int, num_outputs: int) -> jax.Array:
  """Concatenates a per-example Jacobian pytree into one (m, k, p) array.

  The parameter order is that of `jax.flatten_util.ravel_pytree(params)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent import gram
    >>> jacobian = {"w": jnp.ones((4, 2, 3, 2)), "b": jnp.ones((4, 2, 2))}
    >>> gram.flat_jacobian(jacobian, 4, 2).shape
    (4, 2, 8)
  """
  leaves = jax.tree_util.tree_leaves(jacobian)
  return jnp.concatenate([leaf.reshape(num_examples, num_outputs, -1) for leaf in leaves], axis=-1)


def jacobian_flops(
  forward_linear: int,
  forward_other: int,
  *,
  num_examples: int,
  num_outputs: int,
  num_params: int,
  per_output: bool,
) -> int:
  """Estimated floating point operations of the jacobian engine on a batch.

  With one example's forward pass costing F = L + O flops (L in dot_general
  and conv_general_dilated, O elsewhere), reverse mode (p ≥ k) costs

      m F  +  m k (2 L + O)  +  2 m² k' p,         k' = k² ("full") or k ("per_output")

  for the forward pass, k VJPs per example (every linear operation
  transposed twice: for its input's cotangent and for its parameter's
  gradient) and the Gram J Jᵀ of the (m k, p) Jacobian; forward mode (p < k)
  costs m F + m p F + 2 m² k' p (p JVPs per example).

  Args:
    forward_linear: L, for one example.
    forward_other: O, for one example.
    num_examples: m.
    num_outputs: k.
    num_params: p.
    per_output: whether only the k diagonal blocks are assembled.

  Returns:
    The estimate, 2 per multiply-add.
  """
  m, k, p = num_examples, num_outputs, num_params
  forward = forward_linear + forward_other
  if p < k:
    differentiate = m * p * forward
  else:
    differentiate = m * k * (2 * forward_linear + forward_other)
  outputs_squared = k if per_output else k * k
  return m * forward + differentiate + 2 * m * m * outputs_squared * p


def batch_jacobian(apply_fn: ApplyFn, params: Params, inputs: Any) -> jax.Array:
  """J of the whole-batch function θ ↦ apply_fn(θ, inputs), shape (m, k, p).

  For `examples="coupled"`: no per-example structure is assumed (batch
  statistics, residuals that mix examples, `inputs=None`). Row (i, c) is
  ∂f_{i,c}/∂θ of the batch call, in the parameter order of
  `jax.flatten_util.ravel_pytree(params)`. Reverse mode (m k VJPs, batched)
  when m k ≤ p, forward mode (p JVPs) otherwise; m k p numbers.
  """
  flat, unravel = ravel_pytree(params)
  shape = jax.eval_shape(apply_fn, params, inputs).shape
  num_rows = math.prod(shape)

  def batch_outputs(vector):
    return apply_fn(unravel(vector), inputs).reshape(-1)

  differentiate = jax.jacrev if num_rows <= flat.size else jax.jacfwd
  return differentiate(batch_outputs)(flat).reshape(shape[0], num_rows // shape[0], flat.size)
