"""`products="auto"` for a matrix-free solver: J materialised, or products through the network.

A matrix-free solve (`rdescent.solvers.cg`) needs products v ↦ J v and
u ↦ Jᵀ u, up to N = `Solver.products_per_step` of them per step (cg: ℓ for the
Nyström preconditioner, plus `maxiter` iterations). They can come from

* `"network"`: one `jax.linearize` of the batch function per step, then a JVP
  and a VJP through it per product; no Jacobian is stored;
* `"jacobian"`: J (m k × p) materialised once per step, then two
  matrix-vector products with it per product (m k p numbers of memory).

With the batch function's forward pass costing L flops in dot_general and
conv_general_dilated and O in every other operation (counted from its jaxpr,
`rdescent._structured_trace.count_flops`, 2 per multiply-add), the estimates
(`product_flops`) are

    network:   (L + O)  +  N (3 L + 2 O)
    jacobian:  D  +  4 N m k p,

with D the cost of materialising J: k (2 L + O) for per-example Jacobians
in reverse mode (k VJPs of every example, batched), p (L + O) in forward
mode (p < k); for `examples="coupled"` the batch Jacobian, m k (2 L + O)
reversed or p (L + O) forward, whichever `batch_jacobian` takes. A JVP
costs about L + O, a VJP 2 L + O (every linear operation transposed for its
input and for its parameter), a product with J or Jᵀ 2 m k p.

`choose_products` takes `"jacobian"` when J's m k p numbers fit in
`JACOBIAN_BYTES` (1 GiB) and its estimate is at most the network's, and
`"network"` otherwise; `gram="auto"` chooses its engine the same way
(`rdescent.gram.choose_method`). For a PINN, whose residual holds input
derivatives (L and O are several forward passes), J pays from the first
iteration; for a plain MLP with k outputs the network's products win once
k is large (each product with J costs k times a forward pass's matmuls).
The estimate does not model the flop rates: the preconditioner's ℓ products
with J are one matrix-matrix product (faster per flop than ℓ network
passes), while each CG product with J streams J through memory twice.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rdescent import _structured_trace as trace_lib
from rdescent import solvers as solvers_lib
from rdescent.problem._batch import ApplyFn

# The largest J (bytes) `products="auto"` materialises.
JACOBIAN_BYTES = 2**30
CANDIDATES = ("jacobian", "network")


def _forward_count(apply_fn: ApplyFn, params: Any, inputs: Any) -> trace_lib.FlopCount:
  """L and O of one forward pass of the batch function."""
  return trace_lib.count_flops(jax.make_jaxpr(apply_fn)(params, inputs))


def product_flops(
  apply_fn: ApplyFn,
  params: Any,
  inputs: Any,
  *,
  products_per_step: int,
  examples: str = "independent",
) -> dict[str, int]:
  """The estimated flops of one step's products of each kind (module docstring).

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs`, (m,) or (m, k).
    params: θ (p numbers).
    inputs: the batch.
    products_per_step: N, the products with J and Jᵀ one step makes.
    examples: `"independent"` (per-example Jacobians) or `"coupled"` (the
      batch Jacobian).

  Returns:
    `{"jacobian": int, "network": int}`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.problem import product_flops
    >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
    >>> flops = product_flops(apply_fn, jnp.ones((8, 1)), jnp.ones((16, 8)), products_per_step=30)
    >>> flops["jacobian"] < flops["network"]
    True
  """
  shape = jax.eval_shape(apply_fn, params, inputs).shape
  m = shape[0] if shape else 1
  k = math.prod(shape[1:])
  p = ravel_pytree(params)[0].size
  count = _forward_count(apply_fn, params, inputs)
  linear, other = count.linear, count.other
  forward, jvp, vjp = linear + other, linear + other, 2 * linear + other
  rows = m * k if examples == "coupled" else k
  materialise = rows * vjp if rows <= p else p * jvp
  return {
    "jacobian": forward + materialise + 4 * products_per_step * m * k * p,
    "network": forward + products_per_step * (jvp + vjp),
  }


def choose_products(
  apply_fn: ApplyFn,
  params: Any,
  inputs: Any,
  *,
  solver: solvers_lib.Solver | str = "cg",
  examples: str = "independent",
) -> str:
  """What `products="auto"` takes for a matrix-free solver on this batch.

  `"jacobian"` when the solver accepts it, J (m k p numbers of the
  parameters' dtype) fits in `JACOBIAN_BYTES` and `product_flops` estimates
  it at most the network's cost; else `"network"` (module docstring).

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent.problem import choose_products
    >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
    >>> choose_products(apply_fn, jnp.ones((8, 1)), jnp.ones((16, 8)))
    'jacobian'
    >>> choose_products(apply_fn, jnp.ones((8, 1000)), jnp.ones((16, 8)))  # k = 1000 outputs
    'network'
  """
  solver = solvers_lib.get(solver)
  accepted = [c for c in CANDIDATES if solvers_lib.PRODUCT_KINDS[c] in solver.accepts]
  if len(accepted) < 2:
    return accepted[0] if accepted else "network"
  shape = jax.eval_shape(apply_fn, params, inputs).shape
  flat = ravel_pytree(params)[0]
  size = math.prod(shape) * flat.size * jnp.dtype(flat.dtype).itemsize
  if size > JACOBIAN_BYTES:
    return "network"
  flops = product_flops(
    apply_fn,
    params,
    inputs,
    products_per_step=max(solver.products_per_step, 1),
    examples=examples,
  )
  return "jacobian" if flops["jacobian"] <= flops["network"] else "network"
