"""Batched dense linear algebra that cannot starve XLA:CPU's thread pool.

The per-output mode factorises k matrices at once (one per output), and the
GCV damping eigendecomposes them. On CPU, jaxlib's batched LAPACK kernels
(Cholesky, triangular solve, symmetric eigendecomposition) split the batch
over the intra-op thread pool that runs the program and block until the
pieces are done. A process with several CPU devices (for instance
`--xla_force_host_platform_device_count=n` on a machine with at most n
cores) runs one program per device on that same pool; when every pool
thread is inside such a kernel, none is left to run the pieces and the step
never returns (seen with 2 simulated devices on 2 cores: the per-output
step returns once or twice, then every thread waits on a futex).

`map_over_batch` evaluates a function written for one matrix over leading
batch axes: as one batched (vmapped) call, except in the CPU lowering of a
process that has several CPU devices, where it loops over the batch with
`lax.map`. Unbatched kernels do not wait on the pool. GPUs and TPUs keep the
batched call (`lax.platform_dependent` chooses at lowering time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax


def several_cpu_devices() -> bool:
  """True when this process has more than one CPU device."""
  try:
    return len(jax.local_devices(backend="cpu")) > 1
  except RuntimeError:  # no CPU backend in this process
    return False


def map_over_batch(fn: Callable[..., Any], *arrays: jax.Array, core_ndims: Sequence[int]) -> Any:
  """`fn` over the leading (batch) axes of `arrays`; see the module docstring.

  Args:
    fn: a function of one item of each array (no batch axes), returning a
      pytree of arrays.
    *arrays: arrays with the same leading batch shape B; the last
      `core_ndims[i]` axes of `arrays[i]` are what `fn` receives.
    core_ndims: the number of trailing axes of each array that `fn` takes.

  Returns:
    The outputs of `fn`, each with the batch shape B in front.
  """
  if len(core_ndims) != len(arrays):
    raise ValueError(
      f"map_over_batch: core_ndims has {len(core_ndims)} entries for {len(arrays)} arrays."
    )
  first = arrays[0]
  batch_shape = first.shape[: first.ndim - core_ndims[0]]
  if not batch_shape:
    return fn(*arrays)
  size = math.prod(batch_shape)
  flat = [a.reshape((size,) + a.shape[a.ndim - n :]) for a, n in zip(arrays, core_ndims)]

  def batched(*items):
    return jax.vmap(fn)(*items)

  if several_cpu_devices():

    def looped(*items):
      return lax.map(lambda item: fn(*item), items)

    out = lax.platform_dependent(*flat, cpu=looped, default=batched)
  else:
    out = batched(*flat)
  return jax.tree_util.tree_map(lambda o: o.reshape(batch_shape + o.shape[1:]), out)
