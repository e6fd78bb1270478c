"""Data-parallel Regression Descent with `jax.sharding`: user helpers.

RD needs no distribution layer of its own: shard the batch along the example
axis over a mesh (`shard_batch`), keep the parameters replicated (`replicate`,
or shard some of them over a second mesh axis), and jit the step. The RD
transforms run unchanged on meshes with `AxisType.Auto` and
`AxisType.Explicit` axes (under Explicit axes the step runs with Auto axes
inside and returns the direction with the parameters' shardings; that
plumbing is private, in `rdescent._mesh`).

Layout of one step, n devices, m examples (m/n per device), k outputs, dense
layers l with widths d_in,l → d_out,l, p parameters:

1. forward pass and the k cotangent passes on local examples: no traffic;
2. K, in one of two layouts:
   * `data_axis=None` (the default, `rdescent._mesh.replicated_call`): an
     all-gather of the network inputs (m × d_0 numbers), after which every
     device builds all of K itself (no K traffic, the K work done n times);
   * `data_axis="data"` (`row_block_gram`): each device computes the Gram
     factors of its own m/n examples (layer inputs a, m × d_in,l, and
     cotangents δ, m × k × d_out,l, for the structured engine; per-example
     Jacobians, m k p numbers, for the jacobian engine), all-gathers the
     others' factors, and builds its block row K[own, all] (1/n of the K
     work); the rows are then all-gathered, (m k)² numbers (k m² per
     output), for the solve;
3. all-gather of the residuals r (m k numbers); every device then solves the
   (m k)² system (k systems of m² per output) replicated: its cost,
   (m k)³/3 flops, is what limits m on many devices (per-output mode solves
   k systems of m², k² times less; or use smaller batches per solve);
4. the direction Jᵀα is a local VJP with the local slice of α followed by a
   psum (all-reduce) of p numbers.

The compiled dual step shows exactly these collectives (all-gather of x, or
of the factors and of K's rows, and of r; one all-reduce of the
parameter-shaped direction; a few flags). The primal system (p < m k)
instead all-reduces the local JᵀJ and Jᵀr (p² + p numbers). Under `jax.jit`
the XLA SPMD partitioner derives the collectives from the shardings. The
bytes each device receives per step, as a formula of m, n, k, the widths
and the layout, are in `benchmarks/communication.py` (`communication_bytes`,
used by the sharding benchmark).

Examples:
  A data-parallel training loop on one host (on many hosts call
  `jax.distributed.initialize()` first; every process then runs the same
  program on its own part of the batch, see `shard_batch`). It runs as written
  on any number of devices that divides the batch, one included:

  >>> import jax, jax.numpy as jnp, optax
  >>> import rdescent as rd
  >>> from jax.sharding import AxisType
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",),
  ...                      axis_types=(AxisType.Explicit,))
  >>> def apply_fn(params, x):                      # a 1-8-1 tanh network
  ...   return jnp.tanh(x @ params["w"] + params["b"]) @ params["v"]
  >>> params = {"w": jnp.linspace(-2.0, 2.0, 8)[None], "b": jnp.zeros(8),
  ...           "v": jnp.zeros((8, 1))}
  >>> # data_axis="data": each device builds its block row of K (see above);
  >>> # leave it out to have every device build all of K.
  >>> tx = rd.regression_descent(apply_fn, learning_rate=1.0, data_axis="data",
  ...                            damping=rd.damping.levenberg_marquardt(initial=1e-3))
  >>> params = rd.sharding.replicate(params, mesh)
  >>> opt_state = tx.init(params)
  >>> @jax.jit
  ... def train_step(params, opt_state, batch):
  ...   updates, opt_state = tx.update(None, opt_state, params, batch=batch)
  ...   return optax.apply_updates(params, updates), opt_state
  >>> inputs = jnp.linspace(-1.0, 1.0, 16)[:, None]  # m = 16, divisible by the devices
  >>> targets = jnp.sin(3.0 * inputs)
  >>> loss = lambda p: float(jnp.sum((apply_fn(p, inputs) - targets) ** 2))
  >>> before = loss(params)
  >>> with jax.set_mesh(mesh):
  ...   for step in range(3):                       # one batch per step in practice
  ...     batch = rd.sharding.shard_batch((inputs, targets), mesh, axis="data")
  ...     params, opt_state = train_step(params, opt_state, batch)
  >>> loss(params) < 0.01 * before
  True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from rdescent._mesh import row_block_gram as row_block_gram


def shard_batch(batch: Any, mesh: Mesh, axis: str | Sequence[str] = "data") -> Any:
  """Places every array of `batch` on `mesh`, split along its leading (example) axis.

  Each leaf of shape (m, ...) gets `NamedSharding(mesh, PartitionSpec(axis))`:
  device j of the `axis` mesh dimension holds examples [j m/n, (j+1) m/n)
  (n the size of `axis`, replicated over the other mesh axes).

  On several hosts (after `jax.distributed.initialize()`) pass each process's
  own examples and build the global array with
  `jax.make_array_from_process_local_data(sharding, local_batch)` instead.

  Args:
    batch: an array or pytree of arrays with a common leading axis m.
    mesh: the device mesh (`jax.make_mesh`).
    axis: the mesh axis (or axes) the examples are split over.

  Returns:
    The batch as global `jax.Array`s sharded over `axis`.
  """
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  for name in axes:
    if name not in mesh.axis_names:
      raise ValueError(
        f"shard_batch: axis={name!r} is not an axis of the mesh; mesh axes are {mesh.axis_names}."
      )
  num_shards = math.prod(mesh.shape[name] for name in axes)
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    raise ValueError("shard_batch: `batch` has no array leaves.")
  for leaf in leaves:
    shape = jax.numpy.shape(leaf)
    if not shape or shape[0] % num_shards:
      raise ValueError(
        f"shard_batch: every leaf needs a leading example axis divisible by the "
        f"{num_shards} shards of mesh axis {axis!r}; got a leaf of shape {shape}."
      )
  spec = PartitionSpec(axes[0] if len(axes) == 1 else axes)
  return jax.device_put(batch, NamedSharding(mesh, spec))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh` (`PartitionSpec()`)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
