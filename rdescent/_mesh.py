"""Private mesh plumbing of the RD step (not user API; see `rdescent.sharding`).

* `auto_axes_update`: runs an `update_fn` with Auto mesh axes under a mesh
  with Explicit axes, and gives the outputs the shardings of their inputs.
* `replicated_call`: evaluates a function with all of its array arguments on
  every device of the mesh (the Gram matrix, the per-example Jacobians and
  the solve of one step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec


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
