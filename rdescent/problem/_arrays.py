"""The one builder of the arrays a form is made from: K and J.

Every Gram matrix and every Jacobian of a step comes from `SystemArrays`:

* where J comes from: the per-example Jacobians of independent examples
  (`rdescent.gram.per_example_jacobian`, kept as one block per parameter
  leaf, or concatenated to (m, k, p)), or the Jacobian of the whole-batch
  function for `examples="coupled"` (`rdescent._jacobian.batch_jacobian`,
  computed once per step and shared by every array built from it);
* which engine builds K (`rdescent.gram.gram_matrix`: `"auto"` chooses by
  flop estimate, `rdescent.gram.choose_method`), or K from the coupled J;
* K's layout on a mesh: every device builds all of it
  (`rdescent._mesh.replicated_call`, `data_axis=None`) or its block row
  (`rdescent._mesh.row_block_gram`). Jacobians are computed replicated.

An output map (`_output_maps`) says which model's Gram it needs
(`gram_model`, `gram_rows`) and in which mode (`gram_outputs`).

With a metric (`rdescent.metric`) every array is that of J̃ = J diag(w):
`scale_by(w)` returns the builder of the scaled arrays, sharing the
Jacobians already computed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jax

from rdescent import _jacobian
from rdescent import _mesh
from rdescent import gram as gram_lib

ApplyFn = Callable[[Any, Any], jax.Array]


class SystemArrays:
  """K and J of one batch at θ, each built at most once."""

  def __init__(
    self,
    apply_fn: ApplyFn,
    params: Any,
    inputs: Any,
    *,
    num_examples: int,
    num_outputs: int,
    method: str,
    chunk_size: int | None,
    data_axis: str | None,
    coupled: bool,
  ):
    self._apply_fn = apply_fn
    self._params = params
    self._inputs = inputs
    self._num_examples = num_examples
    self._num_outputs = num_outputs
    self._method = method
    self._chunk_size = chunk_size
    self._data_axis = data_axis
    self._coupled = coupled
    self._batch_jacobian: jax.Array | None = None
    self._example_jacobian: Any = None
    self._scales: Any = None

  def scale_by(self, scales: Any) -> SystemArrays:
    """The builder of J̃ = J diag(w) and its Gram (w = `scales`, params-shaped)."""
    scaled = copy.copy(self)
    scaled._scales = scales
    return scaled

  def _scaled_blocks(self, blocks: Any) -> Any:
    if self._scales is None:
      return blocks
    if self._coupled:
      return blocks * gram_lib.flat_scales(self._scales, self._params).astype(blocks.dtype)
    return jax.tree_util.tree_map(lambda block, w: block * w, blocks, self._scales)

  def batch_jacobian(self) -> jax.Array:
    """J of the batch function (coupled examples), (m, k, p), replicated; once per step."""
    if self._batch_jacobian is None:
      self._batch_jacobian = _mesh.replicated_call(_jacobian.batch_jacobian)(
        self._apply_fn, self._params, self._inputs
      )
    return self._batch_jacobian

  def _per_example_jacobian(self) -> Any:
    """The per-example Jacobians, a pytree like `params` of (m, k, *leaf) arrays, replicated."""
    if self._example_jacobian is None:
      self._example_jacobian = _mesh.replicated_call(gram_lib.per_example_jacobian)(
        self._apply_fn,
        self._params,
        self._inputs,
        num_outputs=self._num_outputs,
        chunk_size=self._chunk_size,
      )
    return self._example_jacobian

  def unscaled_jacobian_blocks(self) -> Any:
    """J's column blocks before any metric (for the metric's own statistic)."""
    return self.batch_jacobian() if self._coupled else self._per_example_jacobian()

  def jacobian_blocks(self) -> Any:
    """J as column blocks: per-leaf per-example Jacobians, or the flat coupled J."""
    return self._scaled_blocks(self.unscaled_jacobian_blocks())

  def flat_jacobian(self) -> jax.Array:
    """J as one (m, k, p) array (`ravel_pytree` order)."""
    blocks = self.jacobian_blocks()
    if self._coupled:
      return blocks
    return gram_lib.flat_jacobian(blocks, self._num_examples, self._num_outputs)

  def gram(self, outputs_map: Any) -> jax.Array:
    """The Gram matrix the output map's dual matrix is made from."""
    outputs = outputs_map.gram_outputs
    if self._coupled:
      rows = outputs_map.gram_rows(self.jacobian_blocks())
      return gram_lib.gram_from_jacobian(rows, outputs=outputs)
    model = outputs_map.gram_model(self._apply_fn)
    if self._example_jacobian is not None and model is self._apply_fn:
      # J is already here (a metric's column norms): K from it, no second pass.
      return gram_lib.gram_from_jacobian(self.jacobian_blocks(), outputs=outputs)
    if self._data_axis is None:
      return _mesh.replicated_call(gram_lib.gram_matrix)(
        model,
        self._params,
        self._inputs,
        method=self._method,
        outputs=outputs,
        chunk_size=self._chunk_size,
        scales=self._scales,
      )
    return _mesh.row_block_gram(
      model,
      self._params,
      self._inputs,
      axis=self._data_axis,
      method=self._method,
      outputs=outputs,
      chunk_size=self._chunk_size,
      scales=self._scales,
    )
