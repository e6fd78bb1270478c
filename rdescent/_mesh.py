"""Private mesh plumbing of the RD step (not user API; see `rdescent.sharding`).

* `auto_axes_update`: runs an `update_fn` with Auto mesh axes under a mesh
  with Explicit axes, and gives the outputs the shardings of their inputs.
* `replicated_call`: evaluates a function with all of its array arguments on
  every device of the mesh (the Gram matrix, the per-example Jacobians and
  the solve of one step).
* `row_block_gram`: K built in block rows, one per device of a mesh axis
  (`data_axis=`); public as `rdescent.sharding.row_block_gram`.

The problem's array builder (`rdescent.problem._arrays`) is their one caller
for K and J.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

from rdescent import gram as gram_lib


def _spec(leaf: Any) -> PartitionSpec:
  """The PartitionSpec of an array's type (replicated for non-arrays)."""
  try:
    return jax.typeof(leaf).sharding.spec
  except (AttributeError, TypeError):
    return PartitionSpec()


def _explicit_mesh(tree: Any) -> Any:
  """The abstract mesh with Explicit axes in use, or None.

  The mesh set by `jax.set_mesh`, else the mesh of the first array of `tree`
  whose sharding has Explicit axes (arrays placed with `shard_batch` and
  passed to a jitted step without a mesh context).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh if mesh.explicit_axes else None
  for leaf in jax.tree_util.tree_leaves(tree):
    if not isinstance(leaf, jax.Array):
      continue
    leaf_mesh = getattr(jax.typeof(leaf).sharding, "mesh", None)
    if leaf_mesh is not None and not leaf_mesh.empty and leaf_mesh.explicit_axes:
      return getattr(leaf_mesh, "abstract_mesh", leaf_mesh)
  return None


def auto_axes_update(update_fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
  """Runs an RD `update_fn` with Auto mesh axes when the current mesh has Explicit ones.

  Under `AxisType.Explicit` every contraction over a sharded axis needs its
  output sharding spelled out ("contracting dimensions are sharded"). RD's
  Gram matrices and solves contract over the example axis everywhere, and
  their operands are small, so the step is traced with the mesh's axes made
  Auto (`jax.sharding.auto_axes`): the XLA partitioner places the
  collectives. The returned direction gets each parameter's sharding and the
  state the shardings of the incoming state. Without a mesh, or with Auto
  axes only, `update_fn` is called as is.
  """

  def wrapped(updates, state, params=None, **extra_args):
    mesh = _explicit_mesh((params, extra_args))
    if params is None or mesh is None:
      return update_fn(updates, state, params, **extra_args)
    leaves, treedef = jax.tree_util.tree_flatten(extra_args)
    is_array = [isinstance(leaf, jax.Array) for leaf in leaves]
    arrays = [leaf for leaf, array in zip(leaves, is_array) if array]

    def call(updates, state, params, arrays):
      it = iter(arrays)
      merged = [next(it) if array else leaf for leaf, array in zip(leaves, is_array)]
      return update_fn(updates, state, params, **jax.tree_util.tree_unflatten(treedef, merged))

    out_sharding = (jax.tree_util.tree_map(_spec, params), jax.tree_util.tree_map(_spec, state))
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(call, out_sharding=out_sharding)(updates, state, params, arrays)

  return wrapped


def replicated_call(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` evaluated with all of its array arguments on every device of the mesh.

  Under a mesh context (`jax.set_mesh`, or the Auto axes of
  `auto_axes_update`) the call runs inside `jax.shard_map` with replicated
  inputs and output: the arguments are all-gathered (for RD: the m inputs of
  the batch, m · d_0 numbers, and any parameter sharded over a model axis),
  and every device evaluates `fn` on all of them, without the XLA partitioner.
  RD builds its Gram matrix K (and the per-example Jacobians of the primal
  system) and solves the damped system this way: the (m k)² solve runs
  replicated anyway; the partitioner of XLA 0.10 computes a wrong per-example
  Jacobian of a convolution whose batch is sharded (vmap of a convolution's
  kernel gradient); and a partitioned solve puts collectives inside the
  retry loop of `damped_cholesky_solve`, which hung XLA:CPU on repeated
  calls. Without a mesh, or inside `shard_map`, `fn` is called as is.
  """

  def wrapped(*args, **kwargs):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes:
      return fn(*args, **kwargs)
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    is_array = [isinstance(leaf, jax.Array) for leaf in leaves]
    arrays = [leaf for leaf, array in zip(leaves, is_array) if array]

    def local(arrays):
      it = iter(arrays)
      merged = [next(it) if array else leaf for leaf, array in zip(leaves, is_array)]
      call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, merged)
      return fn(*call_args, **call_kwargs)

    return jax.shard_map(
      local, mesh=mesh, in_specs=(PartitionSpec(),), out_specs=PartitionSpec(), check_vma=False
    )(arrays)

  return wrapped


def row_block_gram(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  inputs: Any,
  *,
  axis: str,
  method: str = "auto",
  outputs: str = "full",
  chunk_size: int | None = None,
  scales: Any = None,
) -> jax.Array:
  """K = J Jᵀ built in block rows, one block per device along mesh axis `axis`.

  With the m examples split over the n devices of `axis` (m/n each), inside
  `jax.shard_map` every device

  1. computes the `rdescent.gram.gram_factors` of its own examples (layer
     inputs and output cotangents for the structured engine, per-example
     Jacobians for the jacobian engine): 1/n of that work;
  2. all-gathers them (`jax.lax.all_gather`, tiled) from the other devices;
  3. assembles its block row K[own examples, all examples]
     (`rdescent.gram.cross_gram`): 1/n of K's flops.

  The result is the global K with its rows sharded over `axis` (per output:
  (k, m, m) with the second axis sharded); the replicated solve that follows
  all-gathers it, (m k)² numbers (k m² per output). Compare
  `rdescent._mesh.replicated_call`, where every device builds all of K from the
  all-gathered inputs: less traffic, n times the K work.

  Without a mesh context (`jax.set_mesh`, or the Auto axes that
  `rdescent._mesh.auto_axes_update` sets under Explicit meshes), or inside `shard_map`,
  K is built as on one device.

  Args:
    apply_fn: as for `rdescent.gram.gram_matrix`.
    params: as for `rdescent.gram.gram_matrix`.
    inputs: as for `rdescent.gram.gram_matrix`, examples split over `axis`.
    axis: the mesh axis the examples are split over.
    method: the Gram engine, as for `rdescent.gram.gram_matrix`.
    outputs: `"full"` or `"per_output"`, as for `rdescent.gram.gram_matrix`.
    chunk_size: as for `rdescent.gram.gram_matrix`.
    scales: as for `rdescent.gram.gram_matrix` (replicated).

  Returns:
    K as `rdescent.gram.gram_matrix` returns it.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.manual_axes:
    return gram_lib.gram_matrix(
      apply_fn,
      params,
      inputs,
      method=method,
      outputs=outputs,
      chunk_size=chunk_size,
      scales=scales,
    )
  if axis not in mesh.axis_names:
    raise ValueError(
      f"data_axis={axis!r} is not an axis of the current mesh; its axes are {mesh.axis_names}."
    )
  num_devices = mesh.shape[axis]
  num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  if num_examples % num_devices:
    raise ValueError(
      f"data_axis={axis!r}: the batch of {num_examples} examples must split evenly "
      f"over the {num_devices} devices of that mesh axis."
    )

  def block_row(params, inputs, scales):
    own = gram_lib.gram_factors(
      apply_fn,
      params,
      inputs,
      method=method,
      outputs=outputs,
      chunk_size=chunk_size,
      scales=scales,
    )
    every = jax.lax.all_gather(own, axis, tiled=True)
    return gram_lib.cross_gram(own, every, outputs=outputs)

  rows = PartitionSpec(axis) if outputs == "full" else PartitionSpec(None, axis)
  return jax.shard_map(
    block_row,
    mesh=mesh,
    in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec()),
    out_specs=rows,
    check_vma=False,
  )(params, inputs, scales)
