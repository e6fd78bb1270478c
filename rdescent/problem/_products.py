"""Where a form's products with J and Jᵀ come from.

Every form needs J d (the output change of a direction, shape (m, k)) and
Jᵀ c (the direction of output-space coefficients, params-shaped). Three
sources, each with the `Products` interface:

* `NetworkProducts`: a JVP and a VJP through the model (no Jacobian); the
  JVP of one `jax.linearize` per step for matrix-free solvers.
* `JacobianBlocks`: J materialised once per step as column blocks, one per
  parameter leaf (the per-example Jacobians) or one flat block (the batch
  Jacobian of coupled examples): each product is matrix-vector products.
* `FlatJacobian`: J as one (m, k, p) array, as the dense primal forms hold
  it (their normal matrix is built from it).

`kind` is the kind of operator a matrix-free solve over these products is
(`rdescent.solvers.OPERATOR_KINDS`): "function" for the network's products,
"factored" for products from a materialised factor J.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rdescent import metric as metric_lib
from rdescent.problem._batch import Batch


class Products(Protocol):
  """J d and Jᵀ c of one batch at θ."""

  kind: str

  def jvp(self, direction: Any) -> jax.Array:
    """J d, shape (m, k)."""
    ...

  def vjp(self, coefficients: jax.Array) -> Any:
    """Jᵀ c for c of shape (m, k), params-shaped."""
    ...


def flat(tree: Any) -> jax.Array:
  """The leaves of a params-shaped tree as one vector (`ravel_pytree` order)."""
  return ravel_pytree(tree)[0]


class NetworkProducts:
  """J d by a JVP, Jᵀ c by the batch's VJP: passes through the model, no Jacobian.

  With `linearized` (the JVP of `jax.linearize`, built once per step) each J d
  reuses the linearisation; without it each is a `jax.jvp` at θ.
  """

  kind = "function"

  def __init__(self, batch: Batch, linearized: Callable[[Any], jax.Array] | None = None):
    self._batch = batch
    self._linearized = linearized

  def jvp(self, direction: Any) -> jax.Array:
    if self._linearized is None:
      return self._batch.jvp(direction)
    return self._linearized(direction).reshape(self._batch.outputs.shape[0], -1)

  def vjp(self, coefficients: jax.Array) -> Any:
    return self._batch.vjp_direction(coefficients)


class JacobianBlocks:
  """Products from a materialised J = [J_1 … J_L], J_l (m k × p_l).

  One block per parameter leaf (the per-example Jacobians, never
  concatenated: on XLA:CPU the concatenation of a large J costs more than
  computing it), or a single block (the batch Jacobian of coupled examples,
  flat in `ravel_pytree` order). J d = Σ_l J_l d_l, and Jᵀ c is the row of
  blocks cᵀ J_l, which XLA:CPU runs as fast as J d (a transposed product
  Jᵀ c is several times slower).
  """

  kind = "factored"

  def __init__(self, jacobian: Any, params: Any, num_examples: int):
    self._num_examples = num_examples
    if isinstance(jacobian, jax.Array):  # one flat (m, k, p) block
      unravel = ravel_pytree(params)[1]
      self._blocks = [jacobian.reshape(-1, jacobian.shape[-1])]
      self._split: Callable[[Any], list[jax.Array]] = lambda tree: [flat(tree)]
      self._join: Callable[[list[jax.Array]], Any] = lambda vectors: unravel(vectors[0])
      return
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = [leaf.shape for leaf in leaves]
    blocks = jax.tree_util.tree_leaves(jacobian)
    self._blocks = [block.reshape(-1, leaf.size) for block, leaf in zip(blocks, leaves)]
    self._split = lambda tree: [leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)]
    self._join = lambda vectors: jax.tree_util.tree_unflatten(
      treedef, [v.reshape(shape) for v, shape in zip(vectors, shapes)]
    )

  def jvp(self, direction: Any) -> jax.Array:
    pieces = self._split(direction)
    change = sum(block @ piece.astype(block.dtype) for block, piece in zip(self._blocks, pieces))
    return jnp.asarray(change).reshape(self._num_examples, -1)

  def vjp(self, coefficients: jax.Array) -> Any:
    coefficients = coefficients.reshape(-1)
    return self._join([coefficients.astype(block.dtype) @ block for block in self._blocks])


class FlatJacobian:
  """Products from J as one (m, k, p) array (`ravel_pytree` order of the parameters)."""

  kind = "factored"

  def __init__(self, jacobian: jax.Array, params: Any):
    self.jacobian = jacobian
    self._unravel = ravel_pytree(params)[1]

  def jvp(self, direction: Any) -> jax.Array:
    return jnp.einsum("ikp,p->ik", self.jacobian, flat(direction).astype(self.jacobian.dtype))

  def vjp(self, coefficients: jax.Array) -> Any:
    return self._unravel(jnp.einsum("ikp,ik->p", self.jacobian, coefficients))


class ScaledProducts:
  """The products of J̃ = J diag(w) (a metric's scaled coordinates, `rdescent.metric`).

  J̃ v = J (w ⊙ v) and J̃ᵀ c = w ⊙ Jᵀ c, from any other products; w is
  params-shaped (a 0-d array per leaf, or one number per parameter).
  """

  def __init__(self, products: Products, scales: Any):
    self._products = products
    self._scales = scales
    self.kind = products.kind

  def jvp(self, direction: Any) -> jax.Array:
    return self._products.jvp(metric_lib.apply(self._scales, direction))

  def vjp(self, coefficients: jax.Array) -> Any:
    return metric_lib.apply(self._scales, self._products.vjp(coefficients))
