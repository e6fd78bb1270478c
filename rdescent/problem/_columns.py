"""Column sketches: each step's regression in a random coordinate subspace of θ.

With many parameters (p large), `column_sketch=c` draws c of the p
coordinates without replacement each step (S, the p × c selection; each
parameter leaf gets its share c_ℓ ≈ c p_ℓ / p and at least one, `leaf_sizes`,
so that every layer moves every step) and solves
the regression of the reparametrised model

    g(z) = f(θ + S z),   z ∈ R^c,   at z = 0,

whose Jacobian is J S, the c drawn columns of J. Any form applies to g
unchanged (dual, primal, `cg`, the output maps, a metric), and the step is
d = S d_z: the drawn coordinates move, the others stay. For the full form it
is the minimiser of ‖Lᵀ J S z − u‖² + λ‖z‖².

Every trial is the true problem's: J d = (J S) d_z, its predicted reduction,
and the loss after θ − η d are those of f (g at z = −η d_z is f at θ − η S
d_z), so Levenberg-Marquardt never applies a step that raises the loss. With
`row_sketch` as well the drawn rows' regression of the drawn columns is
solved (a doubly sketched Gauss-Newton step) and the trials are judged on the
whole batch.

**Cost.** The system is that of c columns instead of p: K̃ = (J S)(J S)ᵀ is
m k × m k built with m² k² c flops instead of m² k² p; the primal normal
matrix is c × c (m k c² flops and a c³/3 factorisation instead of m k p² and
p³/3); J S holds m k c numbers. J S is taken by reverse mode through g, whose
cotangent passes through f's full VJP: forming it costs what forming J does.
So it pays when the system, not the Jacobian, is the cost: the primal side
with p in the thousands (p³ and m k p² against m k p).

The rest of the problem answers in θ's coordinates from the whole batch at θ:
`output_change_of` (one JVP), `gradient_norm` (‖Jᵀ L u‖, all p columns; with a
metric, unscaled), `loss_at`, `scale` and `null_trial`.

**A metric** (`rdescent.metric.marquardt()`): its per-parameter state is read
at the drawn coordinates, updated from their column norms and written back;
the other coordinates keep theirs. The floor D² ≥ floor · mean(D²) is taken
over the drawn coordinates. Per-leaf metrics (`layerwise`) are refused: the
subspace has one leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rdescent import metric as metric_lib
from rdescent.problem import _trial
from rdescent.problem._batch import Batch
from rdescent.problem._products import flat
from rdescent.problem._trial import Trial


def leaf_sizes(params: Any, size: int) -> list[int]:
  """c_ℓ: c = `size` shared among the leaves in proportion to their sizes, at least one each.

  One coordinate is reserved per leaf (a leaf with none would never move), the other
  c − L go by largest remainder of (c − L) p_ℓ / p, capped at p_ℓ.
  """
  sizes = [int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
  if size < len(sizes):
    raise ValueError(
      f"column_sketch={size} is below the number of parameter leaves ({len(sizes)}): each "
      "leaf needs at least one drawn coordinate."
    )
  total, spare = sum(sizes), size - len(sizes)
  if size > total:
    raise ValueError(f"column_sketch={size} exceeds the {total} parameters.")
  shares = [spare * (n - 1) / max(total - len(sizes), 1) for n in sizes]
  counts = [1 + min(int(share), n - 1) for share, n in zip(shares, sizes)]
  order = sorted(range(len(sizes)), key=lambda i: int(shares[i]) - shares[i])
  while sum(counts) < size:
    for i in order:
      if sum(counts) < size and counts[i] < sizes[i]:
        counts[i] += 1
  return counts


def draw_columns(key: jax.Array, params: Any, size: int) -> list[jax.Array]:
  """The drawn coordinates, one sorted int array per leaf (`leaf_sizes`), without replacement."""
  leaves = jax.tree_util.tree_leaves(params)
  return [
    jnp.sort(jax.random.choice(jax.random.fold_in(key, i), jnp.size(leaf), (count,), False))
    for i, (leaf, count) in enumerate(zip(leaves, leaf_sizes(params, size)))
  ]


def flat_columns(params: Any, columns: list[jax.Array]) -> jax.Array:
  """The drawn coordinates in `ravel_pytree` order (for references and tests)."""
  offsets, start = [], 0
  for leaf in jax.tree_util.tree_leaves(params):
    offsets.append(start)
    start += int(jnp.size(leaf))
  return jnp.concatenate([offset + index for offset, index in zip(offsets, columns)])


def subspace_model(apply_fn: Any, params: Any, columns: list[jax.Array]) -> Any:
  """g(z, x) = f(θ + S z, x): the model on the drawn coordinates; z a tuple of (c_ℓ,) leaves.

  Each leaf is moved on its own (no flat vector of all p parameters: its transpose, in the
  per-example Jacobian of g, would pad every leaf's cotangent to p).
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)

  def model(z: tuple[jax.Array, ...], inputs: Any) -> jax.Array:
    moved = [
      leaf.reshape(-1).at[index].add(part.astype(leaf.dtype)).reshape(leaf.shape)
      for leaf, index, part in zip(leaves, columns, z)
    ]
    return apply_fn(jax.tree_util.tree_unflatten(treedef, moved), inputs)

  return model


def subspace_origin(params: Any, columns: list[jax.Array]) -> tuple[jax.Array, ...]:
  """z = 0, one (c_ℓ,) leaf per parameter leaf in its dtype."""
  leaves = jax.tree_util.tree_leaves(params)
  return tuple(
    jnp.zeros(index.shape, jnp.asarray(leaf).dtype) for leaf, index in zip(leaves, columns)
  )


def _written(tree: Any, columns: list[jax.Array], z: Any) -> Any:
  """`tree` with z's leaves written at the drawn coordinates, each leaf in its dtype."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  parts = jax.tree_util.tree_leaves(z)
  moved = [
    leaf.reshape(-1).at[index].set(part.astype(leaf.dtype)).reshape(leaf.shape)
    for leaf, index, part in zip(leaves, columns, parts)
  ]
  return jax.tree_util.tree_unflatten(treedef, moved)


def scatter(params: Any, columns: list[jax.Array], z: Any) -> Any:
  """S z: params-shaped (each leaf in its parameter's dtype, as z's), zero off the drawn
  coordinates."""
  return _written(jax.tree_util.tree_map(jnp.zeros_like, params), columns, z)


def gather_metric_state(state: metric_lib.MetricState, columns: list[jax.Array]) -> Any:
  """The per-parameter metric state at the drawn coordinates, as z's state."""
  moments = jax.tree_util.tree_leaves(state.moment)
  return state._replace(
    moment=tuple(moment.reshape(-1)[index] for moment, index in zip(moments, columns))
  )


def scatter_metric_state(
  old: metric_lib.MetricState, new_drawn: metric_lib.MetricState, columns: list[jax.Array]
) -> metric_lib.MetricState:
  """θ's state: the drawn coordinates' updated moments written into the old ones."""
  return metric_lib.MetricState(
    moment=_written(old.moment, columns, new_drawn.moment), count=new_drawn.count
  )


class ColumnSketch:
  """The problem of one batch solved on drawn coordinates (see the module docstring).

  Args:
    inner: the form of g(z) = f(θ + S z) at z = 0 (`subspace_model`).
    whole: the `Batch` of f at θ that trials are judged on (all examples).
    columns: the drawn coordinates, one int array per parameter leaf (`draw_columns`).
    metric_state: θ's metric state after this batch (None without a metric).
  """

  def __init__(self, inner: Any, whole: Batch, columns: list[jax.Array], metric_state: Any = None):
    self._inner = inner
    self._whole = whole
    self._columns = columns
    self.params = whole.params
    self.outputs = inner.outputs
    self.targets = inner.targets
    self.loss = inner.loss
    self.factors = inner.factors
    self.examples_consistent = inner.examples_consistent
    self.num_examples = inner.num_examples
    self.num_outputs = inner.num_outputs
    self.system = inner.system
    self.per_output = inner.per_output
    self.matrix = inner.matrix
    self.rhs = inner.rhs
    self.metric_state = metric_state
    self.metric_ok = inner.metric_ok

  @property
  def loss_residual(self) -> jax.Array:
    return self._inner.loss_residual

  @property
  def residual_norm(self) -> jax.Array:
    return self._inner.residual_norm

  def solve(self, damping, step_size, *, solver=None) -> Trial:
    trial = self._inner.solve(damping, step_size, solver=solver)
    # J d, the predicted reduction and the loss after the step are already f's at θ − η S d_z.
    return trial._replace(direction=scatter(self.params, self._columns, trial.direction))

  def shifted(self, prior: Any, weight: jax.Array | float) -> Any:
    raise ValueError(
      "column_sketch: a shifted problem (momentum=, SPRING) is not supported with "
      "column_sketch (the prior leaves the drawn subspace); use momentum=0."
    )

  def output_change_of(self, direction: Any) -> jax.Array:
    return self._whole.jvp(direction)

  def scale(self, trial: Trial, factor: jax.Array) -> Trial:
    return _trial.scaled(self._whole, trial, factor)

  def null_trial(self, damping, step_size) -> Trial:
    return _trial.null(self._whole, damping, step_size)

  def gradient_norm(self) -> jax.Array:
    """‖Jᵀ L u‖ over all p coordinates (one VJP of the whole batch)."""
    return jnp.linalg.norm(flat(self._whole.vjp_direction(self._whole.output_gradient())))

  def eigen(self) -> Any:
    return self._inner.eigen()

  def gcv_scores(self, grid: jax.Array) -> jax.Array:
    return self._inner.gcv_scores(grid)

  def loss_at(self, params: Any) -> jax.Array:
    return self._whole.loss_at(params)
