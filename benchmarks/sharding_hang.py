"""Reproducer of a hang seen in the sharding study (simulated CPU devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
      python -m benchmarks.sharding_hang per_output rep 64

On the 2-core CPU container (jax 0.10.2) the first call of the compiled
per-output step with the replicated K layout returns in ~60 ms and the second
call never returns (every thread waits on a futex). `per_output rows 64`
(data_axis="data"), `per_output rep 8` and `full rep 64` run all five calls.
The damped Cholesky solve alone, under `replicated_call` on the same mesh,
does not hang. Cause not found; see README, "Data-parallel RD", Measured.
"""
import sys, time, jax
from jax.sharding import AxisType
import rdescent as rd
from benchmarks import models
outputs, layout, m = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = models.mlp([64,128,128,10], "tanh")
key = jax.random.PRNGKey(0); params = model.init(key)
x = jax.random.normal(jax.random.fold_in(key,1),(m,64)); y = jax.random.normal(jax.random.fold_in(key,2),(m,10))
mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Explicit,))
tx = rd.scale_by_regression_descent(model.apply, damping=1e-3, outputs=outputs, system="dual", data_axis="data" if layout=="rows" else None)
step = jax.jit(lambda p,s,x,y: tx.update(None,s,p,batch=(x,y)))
state = tx.init(params)
with jax.set_mesh(mesh):
  args = (rd.sharding.replicate(params, mesh), state, *rd.sharding.shard_batch((x,y), mesh))
  c = step.lower(*args).compile(); print("compiled", flush=True)
  for i in range(5):
    t=time.perf_counter(); jax.block_until_ready(c(*args)); print(i, time.perf_counter()-t, flush=True)
