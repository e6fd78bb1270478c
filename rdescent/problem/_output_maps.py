"""Output maps: which rows of the linearised model a form regresses.

With the loss residual u (m, q) and factor L (m, k, q) (`_batch`), the full
Gauss-Newton model regresses u on the rows Lᵀ J (q per example). An output
map picks the regression:

* `FullOutputs`: the rows Lᵀ J and the residual u (F = L).
* `SketchedOutputs`: a random s-dimensional projection S (q × s) of each
  example's residual: rows Fᵀ J with F = L S and residual Sᵀ u (F = S for
  squared error). S has orthonormal columns scaled by √(q/s), so
  E[S Sᵀ] = I and the sketched model is unbiased for the full one.
* `PerOutput`: the paper's form for squared error, k separate regressions,
  one per output c, of r_c on the rows J_c; the k solutions are averaged.

Each map says how a system residual is made from u (`system_residual`, the
dual right-hand side; `project`, the residual of the rows), how system
coefficients a become output-space coefficients F a (`coefficients`, whose
Jᵀ is the dual direction), how J d becomes the rows' change Fᵀ J d
(`rows_change`), and how the dense matrices are made from K (`dual_matrix`)
or J (`rows`, `normal_matrix`, `normal_rhs`). `systems` is None for one
system and k for the per-output batch of systems.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rdescent.problem._batch import Batch

ApplyFn = Callable[[Any, Any], jax.Array]


def _sandwich(factor: jax.Array, gram: jax.Array) -> jax.Array:
  """Fᵀ K F for F (m, k, s) and K (m k, m k): shape (m s, m s)."""
  m, k, size = factor.shape
  blocks = jnp.einsum("iks,ikjl,jlr->isjr", factor, gram.reshape(m, k, m, k), factor)
  return blocks.reshape(m * size, m * size)


class FullOutputs:
  """F = L: the rows Lᵀ J regress u (m q rows; L = I, u = r for squared error)."""

  name = "full"
  systems = None

  def __init__(self, batch: Batch):
    self._batch = batch
    self._num_examples = batch.outputs.shape[0]
    # The Gram K of the model itself: J d = K F α needs no pass.
    self.gram_holds_outputs = True

  def gram_model(self, apply_fn: ApplyFn) -> ApplyFn:
    """The model whose Gram the dual matrix is built from."""
    return apply_fn

  gram_outputs = "full"

  def gram_rows(self, jacobian: jax.Array) -> jax.Array:
    """The rows whose Gram the dual matrix is built from, given J (m, k, p)."""
    return jacobian

  def project(self, loss_residual: jax.Array) -> jax.Array:
    return loss_residual

  def system_residual(self, loss_residual: jax.Array) -> jax.Array:
    return loss_residual.reshape(-1)

  def coefficients(self, solution: jax.Array) -> jax.Array:
    return self._batch.factor_times(solution.reshape(self._num_examples, -1))

  def rows_change(self, output_change: jax.Array) -> jax.Array:
    return self._batch.factor_transpose_times(output_change)

  def dual_matrix(self, gram: jax.Array) -> jax.Array:
    factor = self._batch.loss_factor
    return gram if factor is None else _sandwich(factor, gram)

  def rows(self, jacobian: jax.Array) -> jax.Array:
    factor = self._batch.loss_factor
    return jacobian if factor is None else jnp.einsum("ikq,ikp->iqp", factor, jacobian)

  def normal_matrix(self, rows: jax.Array) -> jax.Array:
    return jnp.einsum("iqp,iqs->ps", rows, rows)

  def normal_rhs(self, rows: jax.Array, residual: jax.Array) -> jax.Array:
    return jnp.einsum("iqp,iq->p", rows, residual)

  def combine(self, solution: jax.Array) -> jax.Array:
    return solution


class SketchedOutputs(FullOutputs):
  """F = L S: the rows Fᵀ J regress Sᵀ u (m s rows, S of `rdescent.problem.output_sketch`).

  For squared error the dual matrix Sᵀ K S is the Gram of the sketched model
  x ↦ Sᵀ f(θ; x), built with s instead of k backward passes per example;
  J d then costs one JVP. With loss factors K is built and sandwiched.
  """

  name = "sketched"

  def __init__(self, batch: Batch, sketch: jax.Array):
    super().__init__(batch)
    self.sketch = sketch
    m = batch.outputs.shape[0]
    if batch.loss_factor is None:
      self.factor = None
      self.gram_holds_outputs = False
    else:
      factor = batch.loss_factor
      self.factor = jnp.einsum("ikq,qs->iks", factor, sketch.astype(factor.dtype))
    self._system_factor = (
      jnp.broadcast_to(sketch, (m, *sketch.shape)) if self.factor is None else self.factor
    )

  def gram_model(self, apply_fn: ApplyFn) -> ApplyFn:
    if self.factor is not None:
      return apply_fn
    sketch = self.sketch

    def sketched(params, inputs):
      outputs = apply_fn(params, inputs)
      return outputs.reshape(outputs.shape[0], -1) @ sketch.astype(outputs.dtype)

    return sketched

  def gram_rows(self, jacobian: jax.Array) -> jax.Array:
    if self.factor is not None:
      return jacobian
    return jnp.einsum("ikp,ks->isp", jacobian, self.sketch)

  def project(self, loss_residual: jax.Array) -> jax.Array:
    return loss_residual @ self.sketch.astype(loss_residual.dtype)

  def system_residual(self, loss_residual: jax.Array) -> jax.Array:
    return self.project(loss_residual).reshape(-1)

  def coefficients(self, solution: jax.Array) -> jax.Array:
    alpha = solution.reshape(self._num_examples, -1)
    if self.factor is None:
      return alpha @ self.sketch.T.astype(alpha.dtype)
    return jnp.einsum("iks,is->ik", self.factor, alpha)

  def rows_change(self, output_change: jax.Array) -> jax.Array:
    return jnp.einsum("iks,ik->is", self._system_factor, output_change)

  def dual_matrix(self, gram: jax.Array) -> jax.Array:
    return gram if self.factor is None else _sandwich(self.factor, gram)

  def rows(self, jacobian: jax.Array) -> jax.Array:
    return jnp.einsum("iks,ikp->isp", self._system_factor, jacobian)


class PerOutput:
  """k regressions of r_c on J_c (squared error), solutions averaged: d = (1/k) Σ_c d_c."""

  name = "per_output"
  gram_holds_outputs = False
  gram_outputs = "per_output"

  def __init__(self, batch: Batch):
    self._batch = batch
    self.systems = batch.outputs.shape[1]

  def gram_model(self, apply_fn: ApplyFn) -> ApplyFn:
    return apply_fn

  def gram_rows(self, jacobian: jax.Array) -> jax.Array:
    return jacobian

  def project(self, loss_residual: jax.Array) -> jax.Array:
    return loss_residual

  def system_residual(self, loss_residual: jax.Array) -> jax.Array:
    return loss_residual.T

  def coefficients(self, solution: jax.Array) -> jax.Array:
    # (1/k) Σ_c J_cᵀ α_c = Jᵀ (αᵀ / k): one VJP for the k systems.
    return solution.T / self.systems

  def rows_change(self, output_change: jax.Array) -> jax.Array:
    return output_change.T

  def dual_matrix(self, gram: jax.Array) -> jax.Array:
    return gram

  def rows(self, jacobian: jax.Array) -> jax.Array:
    return jacobian

  def normal_matrix(self, rows: jax.Array) -> jax.Array:
    return jnp.einsum("icp,ics->cps", rows, rows)

  def normal_rhs(self, rows: jax.Array, residual: jax.Array) -> jax.Array:
    return jnp.einsum("icp,ic->cp", rows, residual)

  def combine(self, solution: jax.Array) -> jax.Array:
    return jnp.mean(solution, axis=0)
