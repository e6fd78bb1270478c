"""The private mesh plumbing of the RD step (rdescent/_mesh.py), on one device.

Its multi-device behaviour (4 simulated devices, Auto and Explicit meshes) is
tested end to end through the RD step in test_sharding.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec

from rdescent import _mesh


def _scaled_gram(x, *, scale):
  return scale * (x @ x.T)


def test_replicated_call_without_a_mesh_is_the_function():
  x = jnp.arange(6.0).reshape(3, 2)
  got = _mesh.replicated_call(_scaled_gram)(x, scale=2.0)
  np.testing.assert_array_equal(got, _scaled_gram(x, scale=2.0))


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_replicated_call_on_a_mesh_runs_inside_shard_map():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
  x = jnp.arange(6.0).reshape(3, 2)
  call = lambda x: _mesh.replicated_call(_scaled_gram)(x, scale=2.0)
  assert "shard_map" not in _primitives(call, x)
  with jax.set_mesh(mesh):
    assert "shard_map" in _primitives(call, x)
    got = jax.jit(call)(jax.device_put(x, jax.sharding.NamedSharding(mesh, PartitionSpec("data"))))
  np.testing.assert_allclose(got, _scaled_gram(x, scale=2.0))


def _update(updates, state, params=None, *, batch, name):
  """An update_fn with array and non-array extra arguments; contracts over the example axis."""
  assert name == "step"
  inputs, targets = batch
  scale = jnp.sum(inputs.T @ inputs) / 2 + jnp.sum(targets)  # 8 for 4 examples of ones
  direction = jax.tree_util.tree_map(lambda p: p * scale, params)
  return direction, state + 1


def test_auto_axes_update_without_an_explicit_mesh_is_the_update():
  params, batch = {"w": jnp.ones(3)}, (jnp.ones((4, 2)), jnp.zeros(4))
  direction, state = _mesh.auto_axes_update(_update)(None, 0, params, batch=batch, name="step")
  np.testing.assert_array_equal(direction["w"], 8.0 * jnp.ones(3))
  assert state == 1


def test_auto_axes_update_keeps_the_parameter_and_state_shardings():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
  sharding = lambda spec: jax.sharding.NamedSharding(mesh, spec)
  params = {"w": jax.device_put(jnp.ones(3), sharding(PartitionSpec()))}
  batch = (
    jax.device_put(jnp.ones((4, 2)), sharding(PartitionSpec("data"))),
    jax.device_put(jnp.zeros(4), sharding(PartitionSpec("data"))),
  )
  state = jax.device_put(jnp.zeros(()), sharding(PartitionSpec()))
  step = jax.jit(lambda p, s, b: _mesh.auto_axes_update(_update)(None, s, p, batch=b, name="step"))
  plain = jax.jit(lambda p, s, b: _update(None, s, p, batch=b, name="step"))
  with jax.set_mesh(mesh):
    # Under Explicit axes the contraction over the sharded example axis needs
    # an output sharding; the wrapper traces the update with Auto axes instead.
    with pytest.raises(Exception, match="Contracting dimensions are sharded"):
      plain(params, state, batch)
    direction, new_state = step(params, state, batch)
  np.testing.assert_allclose(direction["w"], 8.0 * np.ones(3))
  assert float(new_state) == 1.0
  # Replicated in, replicated out (a spec of None entries or none at all).
  assert all(axis is None for axis in direction["w"].sharding.spec)
  assert all(axis is None for axis in new_state.sharding.spec)
