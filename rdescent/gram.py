"""Gram matrices K = J Jᵀ of a model's outputs with respect to its parameters.

For a batch of m examples with k outputs, J is the (m k) × p Jacobian of the
outputs (example-major: row i k + c is output c of example i) and

    K[(i, c), (j, c')] = ⟨∂f_{i,c}/∂θ, ∂f_{j,c'}/∂θ⟩,        shape (m k, m k).

`outputs="per_output"` returns only the k diagonal blocks K_c = J_c J_cᵀ,
shape (k, m, m).

Engines:

* `"jacobian"`: per-example Jacobians with `jax.vmap` of `jax.jacrev` (or
  `jax.jacfwd` when p < k), evaluated over the examples in chunks of
  `chunk_size` with `jax.lax.map`. Peak memory: the Jacobian itself, m·k·p
  numbers, plus one chunk's autodiff intermediates (about chunk_size·k times
  the activations of one example), plus the Gram, (m k)² numbers.
* `"structured"`: `rdescent.structured_gram`: K assembled layer by layer from
  layer inputs and output cotangents, (x_i · x_j)(δ_{i,c} · δ_{j,c'}) for a
  dense layer, without forming J; parameters outside recognised operations
  fall back to their own per-example Jacobian, so K still equals J Jᵀ. Peak
  memory: see that module.
* `"auto"`: `"structured"` whenever the trace finds at least one parameter
  used by a recognised operation (dot_general, conv_general_dilated, bias
  add), `"jacobian"` otherwise (where both would compute the same thing).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import structured_gram as structured_lib

Params = Any
ApplyFn = Callable[[Params, Any], jax.Array]

METHODS = ("auto", "jacobian", "structured")
OUTPUT_MODES = ("full", "per_output")


def _single_example_fn(apply_fn: ApplyFn) -> Callable[[Params, Any], jax.Array]:
  """f(params, x_i) -> (k,) for one example, from a batched apply_fn."""

  def single(params, example):
    batched = jax.tree_util.tree_map(lambda leaf: leaf[None], example)
    return jnp.reshape(apply_fn(params, batched), (-1,))

  return single


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
  """
  single = _single_example_fn(apply_fn)
  num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  jac = jax.jacfwd(single) if num_params < num_outputs else jax.jacrev(single)
  if chunk_size is None:
    return jax.vmap(jac, in_axes=(None, 0))(params, inputs)
  return jax.lax.map(lambda example: jac(params, example), inputs, batch_size=chunk_size)


def flat_jacobian(jacobian: Params, num_examples: int, num_outputs: int) -> jax.Array:
  """Concatenates a per-example Jacobian pytree into one (m, k, p) array.

  The parameter order is that of `jax.flatten_util.ravel_pytree(params)`.
  """
  leaves = jax.tree_util.tree_leaves(jacobian)
  return jnp.concatenate(
      [leaf.reshape(num_examples, num_outputs, -1) for leaf in leaves], axis=-1
  )


def jacobian_factors(jacobian: Params) -> structured_lib.GramFactors:
  """The `GramFactors` of a per-example Jacobian pytree: one gradient block per leaf."""
  leaves = jax.tree_util.tree_leaves(jacobian)
  num_examples, num_outputs = leaves[0].shape[:2]
  flats = tuple(leaf.reshape(num_examples, num_outputs, -1) for leaf in leaves)
  reference = jnp.zeros((num_examples, num_outputs, 0), jnp.result_type(*leaves))
  return structured_lib.GramFactors((), (), flats, reference)


def gram_from_jacobian(jacobian: Params, *, outputs: str = "full") -> jax.Array:
  """K = J Jᵀ from a per-example Jacobian pytree, leaf by leaf (no concatenation).

  Returns (m k, m k) for `outputs="full"`, (k, m, m) for `"per_output"`.
  """
  factors = jacobian_factors(jacobian)
  return structured_lib.cross_gram(factors, factors, outputs=outputs)


def gram_factors(
    apply_fn: ApplyFn,
    params: Params,
    inputs: Any,
    *,
    method: str = "auto",
    outputs: str = "full",
    chunk_size: int | None = None,
) -> structured_lib.GramFactors:
  """Per-example factors of K (`rdescent.structured_gram.GramFactors`).

  K's block between two sets of examples is `cross_gram` of their factors;
  `cross_gram(f, f)` equals `gram_matrix` with the same arguments. The
  structured engine's factors are layer inputs and output cotangents (plus
  per-example gradients of the leaves it materialises); the jacobian
  engine's are the per-example Jacobians (m k p numbers).
  """
  _validation.check_option("method", method, METHODS)
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  if method in ("auto", "structured"):
    traced = structured_lib.trace_model(apply_fn, params, inputs)
    if method == "structured" or traced.covered:
      return structured_lib.factors_from_trace(
          traced, apply_fn, params, inputs, outputs=outputs, chunk_size=chunk_size
      )
  out_shape = jax.eval_shape(apply_fn, params, inputs).shape
  jacobian = per_example_jacobian(
      apply_fn, params, inputs, num_outputs=math.prod(out_shape[1:]),
      chunk_size=chunk_size,
  )
  return jacobian_factors(jacobian)


def cross_gram(
    rows: structured_lib.GramFactors, cols: structured_lib.GramFactors, *, outputs: str = "full"
) -> jax.Array:
  """K's block between the examples of two `gram_factors` of the same model and engine.

  K[(i, c), (j, c')] for i in `rows`, j in `cols`: (m_r k, m_c k),
  example-major, for `outputs="full"`, (k, m_r, m_c) for `"per_output"`.
  """
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  return structured_lib.cross_gram(rows, cols, outputs=outputs)


def gram_matrix(
    apply_fn: ApplyFn,
    params: Params,
    inputs: Any,
    *,
    method: str = "auto",
    outputs: str = "full",
    chunk_size: int | None = None,
) -> jax.Array:
  """The empirical neural tangent kernel K = J Jᵀ of a batch.

  Args:
    apply_fn: `apply_fn(params, inputs) -> (m,) or (m, k)`.
    params: parameter pytree.
    inputs: array or pytree of arrays with leading axis m.
    method: `"auto"`, `"structured"` or `"jacobian"` (see the module
      docstring); all three return the same K up to rounding.
    outputs: `"full"` for the (m k, m k) matrix, example-major, or
      `"per_output"` for the k diagonal blocks, shape (k, m, m).
    chunk_size: examples differentiated at once (None: all m).

  Returns:
    K as described by `outputs`.
  """
  factors = gram_factors(
      apply_fn, params, inputs, method=method, outputs=outputs, chunk_size=chunk_size
  )
  return structured_lib.cross_gram(factors, factors, outputs=outputs)
