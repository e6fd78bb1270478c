"""Losses in generalized Gauss-Newton form.

A per-example loss ℓ(z, y) on the model outputs z ∈ R^k enters Regression
Descent only through two factors, per example i:

    g_i = ∂ℓ/∂z_i = L_i u_i,         H_i = ∂²ℓ/∂z_i² = L_i L_iᵀ,

with L_i of shape (k, q). The RD direction is then

    d = (Jᵀ H J + λI)⁻¹ Jᵀ g = Jᵀ L (Lᵀ K L + λI)⁻¹ u,        K = J Jᵀ,

one symmetric positive semi-definite (m q) × (m q) system. Squared error is the
case L = I, u = r = z − y (`factor is None` below means L = I).

Losses are summed over the batch, never averaged, so that λ means the same for
every loss and batch size.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class GaussNewtonFactors(NamedTuple):
  """Per-example factors of a loss at the current outputs.

  Attributes:
    rhs: u, shape (m, q), with g_i = L_i u_i.
    factor: L, shape (m, k, q), with H_i = L_i L_iᵀ; None means L_i = I (q = k).
  """

  rhs: jax.Array
  factor: jax.Array | None


class Loss(NamedTuple):
  """A loss as Regression Descent sees it.

  Attributes:
    name: short name used in error messages.
    value: `value(outputs, targets) -> scalar`, the loss summed over examples;
      outputs have shape (m, k).
    factors: `factors(outputs, targets) -> GaussNewtonFactors`.
    prepare_targets: `prepare_targets(targets, outputs) -> targets` validates
      and converts targets at trace time (e.g. integer labels to one-hot) and
      returns them with shape (m, k).
    squared_error: True for the plain squared error, the only loss the
      per-output mode accepts.
  """

  name: str
  value: Callable[[jax.Array, jax.Array], jax.Array]
  factors: Callable[[jax.Array, jax.Array], GaussNewtonFactors]
  prepare_targets: Callable[[jax.Array, jax.Array], jax.Array]
  squared_error: bool = False


def _same_shape_targets(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  def prepare(targets: jax.Array, outputs: jax.Array) -> jax.Array:
    targets = jnp.asarray(targets)
    if targets.size != outputs.size:
      raise ValueError(
          f"loss={name!r}: targets must have the same shape as the outputs of "
          f"apply_fn; got targets {targets.shape} and outputs "
          f"{outputs.shape} (as (m, k))."
      )
    return targets.reshape(outputs.shape).astype(outputs.dtype)

  return prepare


def mean_squared_error() -> Loss:
  """Squared error ℓ = ½‖z − y‖² summed over examples: g = r, H = I."""

  def value(outputs, targets):
    return 0.5 * jnp.sum(jnp.square(outputs - targets))

  def factors(outputs, targets):
    return GaussNewtonFactors(rhs=outputs - targets, factor=None)

  return Loss(
      name="mse",
      value=value,
      factors=factors,
      prepare_targets=_same_shape_targets("mse"),
      squared_error=True,
  )


_BUILTIN: dict[str, Callable[[], Loss]] = {
    "mse": mean_squared_error,
}


def register(name: str, factory: Callable[[], Loss]) -> None:
  """Makes `loss=name` resolve to `factory()` (used by the built-in losses)."""
  _BUILTIN[name] = factory


def get(loss: Any) -> Loss:
  """Resolves a loss given by name or as a `Loss`."""
  if isinstance(loss, Loss):
    return loss
  if isinstance(loss, str) and loss in _BUILTIN:
    return _BUILTIN[loss]()
  raise ValueError(
      f"loss={loss!r} is not a valid option; expected one of "
      f"{', '.join(repr(n) for n in _BUILTIN)} or an rdescent.losses.Loss."
  )
