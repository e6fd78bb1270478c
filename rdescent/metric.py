"""Scaled metrics: damping that is not λI in raw parameter coordinates.

Plain RD damps every parameter alike, (JᵀJ + λI) d = Jᵀr, although the layers
of a network differ in scale by orders of magnitude. A metric D (diagonal,
positive) solves the same regression in scaled coordinates φ = D θ:

    J̃ = J D⁻¹,   α = (J̃ J̃ᵀ + λI)⁻¹ r,   d = D⁻¹ J̃ᵀ α = D⁻² Jᵀ α,

the direction of (JᵀJ + λ D²) d = Jᵀ r (Marquardt's scaled damping). Every form
of the system is unchanged in the scaled coordinates: K̃ = J D⁻² Jᵀ on the dual
side, J̃ᵀJ̃ on the primal side, J̃ products for matrix-free solvers. With a
generalized Gauss-Newton loss the statistics below are those of the rows Lᵀ J
(H = L Lᵀ), so that D² is diag(Jᵀ H J) and its scaled form.

D² is the statistic itself, not normalised: λ is then relative to the
curvature, (JᵀJ + λ diag(JᵀJ)) d = Jᵀr for Marquardt's own scaling, and the
direction does not change when a parameter is rescaled (θ_j → c θ_j scales
J's column j by 1/c and D_j with it). Re-tune λ when switching a metric on:
λ = 1e-3 means a thousandth of each column's (or layer's) curvature, not
1e-3 in raw units. Two metrics:

* `marquardt()`: per parameter, D_j² = max over the steps so far of
  ‖(Lᵀ J)_{:, j}‖², the column norms of MINPACK's `lmder` (its `mode=1`). It
  needs J's columns: J is materialised (the primal side, `products="jacobian"`,
  or the dual matrix built by the Jacobian engine: a per-parameter scale breaks
  the Kronecker structure of a dense layer's per-example gradients, so the
  structured Gram engine is not used). Meant for full-batch least squares.
* `layerwise(decay)`: one scale per parameter leaf (a layer's kernel, its
  bias), D_ℓ² = a running average across batches of ‖Lᵀ J_ℓ‖_F² / |θ_ℓ|, the
  mean squared column norm of the leaf, estimated from one probe per step:
  with a Rademacher vector z (m q), E ‖(Jᵀ L z)_ℓ‖² = ‖Lᵀ J_ℓ‖_F², one VJP (the
  cost of a gradient). A scalar per leaf keeps the structured Gram: a dense
  layer's block of K̃ is (a_i · a_j)(δ_i · δ_j) / D_ℓ², the same m² d_in +
  m² k² d_out flops as K's block, with m d_in + m k d_out multiplications to
  scale its factors. Meant for mini-batches.

Which to pick: `marquardt()` for full-batch least squares with LM (small p,
J materialised anyway); `layerwise()` for mini-batch training with the
structured Gram; none when the parameters are already on one scale.

Columns with (nearly) no signal (a dead unit, an unused parameter) are kept
from a zero scale by `floor`: D² ≥ floor · mean(D²) (the mean over the p
parameters). A statistic that is
non-finite, or whose mean is not positive, gives no scale: the step is
skipped with `rdescent.STATUS_BAD_METRIC` and the metric's state is kept.

Examples:
  >>> import jax.numpy as jnp, optax, rdescent as rd
  >>> apply_fn = lambda p, x: x @ p["w"] + p["b"]
  >>> params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros(1)}
  >>> x, y = jnp.eye(3) * jnp.array([1.0, 10.0, 100.0]), jnp.ones((3, 1))
  >>> tx = rd.regression_descent(apply_fn, 1.0, damping=1e-6, metric=rd.metric.marquardt())
  >>> state = tx.init(params)
  >>> updates, state = tx.update(None, state, params, batch=(x, y))
  >>> params = optax.apply_updates(params, updates)
  >>> bool(jnp.allclose(apply_fn(params, x), y, atol=1e-4))
  True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = (
  "KINDS",
  "Metric",
  "MetricState",
  "check",
  "init",
  "layerwise",
  "marquardt",
  "scales",
  "update",
)

KINDS = ("marquardt", "layerwise")


class Metric(NamedTuple):
  """A scaled metric D (see the module docstring); build with `marquardt` or `layerwise`.

  Attributes:
    kind: `"marquardt"` (per parameter, running max of J's column norms) or
      `"layerwise"` (per parameter leaf, running average of a probe).
    decay: β of the running average (`layerwise`); unused by `marquardt`.
    floor: the least D² relative to its mean over the parameters, in (0, 1].
    seed: the seed of the probes (`layerwise`), folded with the step count.
  """

  kind: str
  decay: float = 0.99
  floor: float = 1e-8
  seed: int = 0

  @property
  def per_parameter(self) -> bool:
    """True when D has one entry per parameter (the structured Gram then does not apply)."""
    return self.kind == "marquardt"


class MetricState(NamedTuple):
  """The metric's running statistic.

  Attributes:
    moment: params-shaped: per parameter (`marquardt`, the running max of the
      squared column norms) or a 0-d array per leaf (`layerwise`, the running
      average of the mean squared column norm).
    count: statistics taken so far (int32), for the average's bias correction.
  """

  moment: Any
  count: jax.Array  # type: ignore[assignment]  # the optax name; shadows tuple.count


def _check_fraction(name: str, value: Any, *, closed_low: bool) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (0.0 <= value < 1.0 if closed_low else 0.0 < value <= 1.0)
  if not ok:
    interval = "[0, 1)" if closed_low else "(0, 1]"
    raise ValueError(f"metric: {name} must be a float in {interval}; got {name}={value!r}.")


def marquardt(floor: float = 1e-8) -> Metric:
  """Marquardt's scaling: D_j² = max over steps of ‖(Lᵀ J)_{:, j}‖² (MINPACK's `mode=1`).

  Args:
    floor: the least D_j² relative to the mean of D², in (0, 1].
  """
  _check_fraction("floor", floor, closed_low=False)
  return Metric("marquardt", floor=float(floor))


def layerwise(decay: float = 0.99, floor: float = 1e-8, seed: int = 0) -> Metric:
  """One scale per parameter leaf: D_ℓ² = the running mean of ‖Lᵀ J_ℓ‖_F² / |θ_ℓ|.

  Args:
    decay: β in [0, 1) of the bias-corrected running average across batches
      (0: this batch's estimate alone).
    floor: the least D_ℓ² relative to the mean of D² over the parameters, in (0, 1].
    seed: seed of the Rademacher probes (one per step, `fold_in(key(seed), count)`).
  """
  _check_fraction("decay", decay, closed_low=True)
  _check_fraction("floor", floor, closed_low=False)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"metric: seed must be an int; got seed={seed!r}.")
  return Metric("layerwise", decay=float(decay), floor=float(floor), seed=seed)


def check(metric: Any) -> Metric | None:
  """`metric=` as given to the transforms: None or a `Metric` (else a ValueError)."""
  if metric is None:
    return None
  if isinstance(metric, str):
    if metric == "marquardt":
      return marquardt()
    if metric == "layerwise":
      return layerwise()
  if not isinstance(metric, Metric) or metric.kind not in KINDS:
    raise ValueError(
      "metric must be None, 'marquardt', 'layerwise' or an rdescent.metric.Metric "
      f"(rd.metric.marquardt(), rd.metric.layerwise()); got metric={metric!r}."
    )
  return metric


def init(metric: Metric, params: Any) -> MetricState:
  """The state before any step: a zero statistic."""
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))

  def zero(leaf):
    leaf = jnp.asarray(leaf)
    return jnp.zeros(leaf.shape if metric.per_parameter else (), dtype)

  return MetricState(jax.tree_util.tree_map(zero, params), jnp.zeros([], jnp.int32))


def update(metric: Metric, state: MetricState, statistic: Any) -> MetricState:
  """The state after one batch's `statistic` (same structure as `state.moment`)."""
  if metric.per_parameter:
    moment = jax.tree_util.tree_map(jnp.maximum, state.moment, statistic)
  else:
    beta = metric.decay
    moment = jax.tree_util.tree_map(
      lambda old, new: beta * old + (1.0 - beta) * new.astype(old.dtype), state.moment, statistic
    )
  return MetricState(moment, state.count + 1)


def scales(metric: Metric, state: MetricState, params: Any) -> tuple[Any, jax.Array]:
  """(w, healthy): w = D⁻¹ (params-shaped, or a 0-d array per leaf) from the state.

  D² is the state's statistic (bias-corrected for `layerwise`), at least
  `floor` times its mean over the p parameters. `healthy` is False when the
  statistic has a non-finite entry or no positive mean; w is then 1.
  """
  moment = state.moment
  if not metric.per_parameter:
    count = jnp.maximum(state.count, 1)
    moment = jax.tree_util.tree_map(
      lambda v: v / (1.0 - jnp.power(jnp.asarray(metric.decay, v.dtype), count)), moment
    )
  sizes = [jnp.asarray(p).size for p in jax.tree_util.tree_leaves(params)]
  leaves, treedef = jax.tree_util.tree_flatten(moment)
  total = sum(jnp.sum(v) if v.ndim else v * size for v, size in zip(leaves, sizes))
  mean = total / sum(sizes)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))
  healthy = finite & (mean > 0)
  safe_mean = jnp.where(healthy, mean, 1.0)

  def inverse_scale(v):
    squared = jnp.maximum(v, metric.floor * safe_mean)
    return jnp.where(healthy, jax.lax.rsqrt(jnp.where(healthy, squared, 1.0)), 1.0)

  return jax.tree_util.tree_unflatten(treedef, [inverse_scale(v) for v in leaves]), healthy


def probe_statistic(vjp_of_probe: Any) -> Any:
  """Per leaf ‖v_ℓ‖² / |θ_ℓ| of v = Jᵀ L z: an unbiased estimate of ‖Lᵀ J_ℓ‖_F² / |θ_ℓ|."""
  return jax.tree_util.tree_map(lambda v: jnp.sum(jnp.square(v)) / v.size, vjp_of_probe)


def column_statistic(jacobian_blocks: Any, params: Any, loss_factor: jax.Array | None) -> Any:
  """Per parameter ‖(Lᵀ J)_{:, j}‖², params-shaped, from J's blocks.

  Args:
    jacobian_blocks: per-leaf per-example Jacobians (m, k, *leaf), or one flat
      (m, k, p) array (coupled examples, `ravel_pytree` order).
    params: θ (for the flat case's unravelling).
    loss_factor: L (m, k, q), or None (L = I).
  """

  def squared_norms(block):
    m, k = block.shape[:2]
    flat_block = block.reshape(m, k, -1)
    if loss_factor is not None:
      flat_block = jnp.einsum("ikq,ikp->iqp", loss_factor.astype(block.dtype), flat_block)
    return jnp.sum(jnp.square(flat_block), axis=(0, 1))

  if isinstance(jacobian_blocks, jax.Array):
    return ravel_pytree(params)[1](squared_norms(jacobian_blocks))
  return jax.tree_util.tree_map(
    lambda block, p: squared_norms(block).reshape(jnp.shape(p)), jacobian_blocks, params
  )


def apply(scale: Any, tree: Any) -> Any:
  """w ⊙ tree, leaf by leaf (a 0-d scale broadcasts over its leaf), in the tree's dtypes."""
  return jax.tree_util.tree_map(lambda w, v: (w * v).astype(jnp.asarray(v).dtype), scale, tree)


def unapply(scale: Any, tree: Any) -> Any:
  """tree ⊘ w, leaf by leaf, in the tree's dtypes."""
  return jax.tree_util.tree_map(lambda w, v: (v / w).astype(jnp.asarray(v).dtype), scale, tree)
