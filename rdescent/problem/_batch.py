"""What every form of the RD system shares: the model at θ on one batch, and its loss.

The loss enters in generalized Gauss-Newton form (`rdescent.losses`): at the
outputs z (m, k) its gradient is g = L u and its Hessian H = L Lᵀ, with the
loss residual u (m, q) and the factor L (m, k, q) (L = I, u = r for squared
error). `Batch` applies L and Lᵀ to output-space arrays, and evaluates the
model and the loss at other parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import losses as losses_lib

ApplyFn = Callable[[Any, Any], jax.Array]


class Batch(NamedTuple):
  """The model at θ on a batch (X, Y), and the loss there.

  Attributes:
    apply_fn: `apply_fn(params, inputs) -> outputs`.
    params: θ.
    inputs: X.
    vjp: the VJP of θ ↦ apply_fn(θ, X) at θ (from the forward pass).
    output_shape: the shape `apply_fn` returns, (m, ...).
    output_dtype: its dtype.
    outputs: f(θ; X) as (m, k).
    targets: Y as (m, k) (after the loss's target conversion).
    loss_fn: the `rdescent.losses.Loss`.
    loss: the summed loss at θ, a scalar.
    factors: the loss's `GaussNewtonFactors` (u, L) at θ.
    examples_consistent: scalar bool (see `rdescent.problem.examples_consistent`).
  """

  apply_fn: ApplyFn
  params: Any
  inputs: Any
  vjp: Callable[[jax.Array], tuple[Any]]
  output_shape: tuple[int, ...]
  output_dtype: Any
  outputs: jax.Array
  targets: jax.Array
  loss_fn: losses_lib.Loss
  loss: jax.Array
  factors: losses_lib.GaussNewtonFactors
  examples_consistent: jax.Array

  @property
  def loss_residual(self) -> jax.Array:
    """u, the loss residual (m, q) (r = f − Y for squared error)."""
    return self.factors.rhs

  @property
  def loss_factor(self) -> jax.Array | None:
    """L (m, k, q), or None for squared error (L = I)."""
    return self.factors.factor

  def factor_times(self, coefficients: jax.Array) -> jax.Array:
    """L a for a of shape (m, q): output-space coefficients (m, k) (a itself when L = I)."""
    factor = self.loss_factor
    return coefficients if factor is None else jnp.einsum("ikq,iq->ik", factor, coefficients)

  def factor_transpose_times(self, output_change: jax.Array) -> jax.Array:
    """Lᵀ c for c of shape (m, k): shape (m, q) (c itself when L = I)."""
    factor = self.loss_factor
    return output_change if factor is None else jnp.einsum("ikq,ik->iq", factor, output_change)

  def output_gradient(self) -> jax.Array:
    """g = L u, the loss gradient with respect to the outputs, shape (m, k)."""
    return self.factor_times(self.loss_residual)

  def outputs_at(self, params: Any) -> jax.Array:
    """f(θ′; X) as (m, k): one forward pass."""
    return self.apply_fn(params, self.inputs).reshape(self.outputs.shape[0], -1)

  def loss_at(self, params: Any) -> jax.Array:
    """The summed loss of the batch at θ′: one forward pass."""
    return self.loss_fn.value(self.outputs_at(params), self.targets)

  def jvp(self, direction: Any) -> jax.Array:
    """J d by one JVP through the model at θ, shape (m, k)."""
    _, tangent = jax.jvp(lambda p: self.apply_fn(p, self.inputs), (self.params,), (direction,))
    return tangent.reshape(self.outputs.shape[0], -1)

  def vjp_direction(self, coefficients: jax.Array) -> Any:
    """Jᵀ c for output-space coefficients c of shape (m, k): one VJP, params-shaped."""
    cotangent = coefficients.reshape(self.output_shape).astype(self.output_dtype)
    (direction,) = self.vjp(cotangent)
    return direction
