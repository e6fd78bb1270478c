"""Sides: the same regression solved for its m s coefficients or its p parameters.

For rows R = Fᵀ J (`_output_maps`) and residual b = Sᵀ u, the damped
regression min_δ ‖R δ − b‖² + λ‖δ‖² has two equivalent solutions
(push-through identity, R ᵀ(R Rᵀ + λI)⁻¹ = (RᵀR + λI)⁻¹ Rᵀ):

* `Dual`: α = (R Rᵀ + λI)⁻¹ b, d = Rᵀ α = Jᵀ (F α); the matrix R Rᵀ = Fᵀ K F
  (m s × m s, K = J Jᵀ).
* `Primal`: d = (RᵀR + λI)⁻¹ Rᵀ b; the matrix RᵀR (p × p).

A side holds its system as a dense matrix (built by `linearize` from K or J)
or, for matrix-free solvers, as a `rdescent.solvers.LinearOperator` whose
products come from the form's `Products`. It maps a loss residual to its
right-hand side (`rhs`), a solution to the direction (`direction`) and to J d
(`output_change`), and gives ‖Jᵀ g‖ (`gradient_norm`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rdescent import solvers as solvers_lib
from rdescent.problem._products import Products
from rdescent.problem._products import flat


def _gradient_norm(products: Products, output_gradient: jax.Array) -> jax.Array:
  """‖Jᵀ g‖ by one product."""
  return jnp.linalg.norm(flat(products.vjp(output_gradient)))


class Dual:
  """α = (Fᵀ K F + λI)⁻¹ Sᵀu, d = Jᵀ F α.

  With `gram` (K of the model itself, when the output map's matrix is built
  from it) J d = K F α costs no pass; otherwise it is one product.
  """

  name = "dual"

  def __init__(
    self,
    outputs_map: Any,
    products: Products,
    matrix: jax.Array | None = None,
    gram: jax.Array | None = None,
  ):
    self.outputs_map = outputs_map
    self.products = products
    self.matrix = matrix
    self._gram = gram

  def rhs(self, loss_residual: jax.Array) -> jax.Array:
    return self.outputs_map.system_residual(loss_residual)

  def direction(self, solution: jax.Array) -> Any:
    return self.products.vjp(self.outputs_map.coefficients(solution))

  def output_change(self, solution: jax.Array, direction: Any) -> jax.Array:
    if self._gram is None:
      return self.products.jvp(direction)
    coefficients = self.outputs_map.coefficients(solution)
    return (self._gram @ coefficients.reshape(-1)).reshape(coefficients.shape[0], -1)

  def gradient_norm(self, output_gradient: jax.Array) -> jax.Array:
    if self._gram is None:
      return _gradient_norm(self.products, output_gradient)
    flat_gradient = output_gradient.reshape(-1)
    return jnp.sqrt(jnp.maximum(flat_gradient @ (self._gram @ flat_gradient), 0.0))

  def operator(self, rhs: jax.Array) -> solvers_lib.LinearOperator:
    """v ↦ Fᵀ J Jᵀ F v from the products (matrix-free)."""
    outputs_map, products = self.outputs_map, self.products

    def matvec(v):
      change = products.jvp(products.vjp(outputs_map.coefficients(v)))
      return outputs_map.rows_change(change).reshape(-1).astype(v.dtype)

    return solvers_lib.LinearOperator(matvec, rhs.size, rhs.dtype, kind=products.kind)


class Primal:
  """d = (RᵀR + λI)⁻¹ Rᵀ Sᵀu with R = Fᵀ J; with `rows` (R materialised) Rᵀb is one matmul."""

  name = "primal"

  def __init__(
    self, outputs_map: Any, products: Products, params: Any, rows: jax.Array | None = None
  ):
    self.outputs_map = outputs_map
    self.products = products
    self._rows = rows
    self._unravel = ravel_pytree(params)[1]
    self.matrix = None if rows is None else outputs_map.normal_matrix(rows)

  def rhs(self, loss_residual: jax.Array) -> jax.Array:
    outputs_map = self.outputs_map
    if self._rows is not None:
      return outputs_map.normal_rhs(self._rows, outputs_map.project(loss_residual))
    coefficients = outputs_map.coefficients(outputs_map.system_residual(loss_residual))
    return flat(self.products.vjp(coefficients))

  def direction(self, solution: jax.Array) -> Any:
    return self._unravel(self.outputs_map.combine(solution))

  def output_change(self, solution: jax.Array, direction: Any) -> jax.Array:
    del solution
    return self.products.jvp(direction)

  def gradient_norm(self, output_gradient: jax.Array) -> jax.Array:
    return _gradient_norm(self.products, output_gradient)

  def operator(self, rhs: jax.Array) -> solvers_lib.LinearOperator:
    """v ↦ Jᵀ F Fᵀ J v from the products (matrix-free)."""
    outputs_map, products, unravel = self.outputs_map, self.products, self._unravel

    def matvec(v):
      change = outputs_map.rows_change(products.jvp(unravel(v)))
      return flat(products.vjp(outputs_map.coefficients(change))).astype(v.dtype)

    return solvers_lib.LinearOperator(matvec, rhs.size, rhs.dtype, kind=products.kind)
