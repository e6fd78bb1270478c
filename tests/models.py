"""Small models and dense references shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


def mlp_init(key, sizes, dtype=jnp.float32):
  """List of {"w", "b"} dicts for an MLP with the given layer sizes."""
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, wkey, bkey = jax.random.split(key, 3)
    params.append({
        "w": (jax.random.normal(wkey, (fan_in, fan_out)) / np.sqrt(fan_in)).astype(dtype),
        "b": (0.1 * jax.random.normal(bkey, (fan_out,))).astype(dtype),
    })
  return params


def mlp_problem(key, sizes, m, dtype=jnp.float64):
  """An MLP's params (`mlp_init`) with random inputs (m, sizes[0]) and targets (m, sizes[-1])."""
  kp, kx, ky = jax.random.split(key, 3)
  params = mlp_init(kp, sizes, dtype)
  x = jax.random.normal(kx, (m, sizes[0]), dtype)
  y = jax.random.normal(ky, (m, sizes[-1]), dtype)
  return params, x, y


def mlp_apply(params, x, activation="tanh"):
  act = ACTIVATIONS[activation]
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      x = act(x)
  return x


def dense_jacobian(apply_fn, params, inputs):
  """J as a dense (m k, p) NumPy float64 matrix, via the flattened parameters."""
  flat, unravel = ravel_pytree(params)
  outputs = lambda v: jnp.reshape(apply_fn(unravel(v), inputs), (-1,))
  return np.asarray(jax.jacfwd(outputs)(flat), dtype=np.float64)


def dense_ridge_direction(jacobian, residual, damping):
  """(JᵀJ + λI)⁻¹ Jᵀ r in float64."""
  p = jacobian.shape[1]
  return np.linalg.solve(jacobian.T @ jacobian + damping * np.eye(p), jacobian.T @ residual)


def dense_per_output_direction(jacobian, residual, damping, num_outputs):
  """(1/k) Σ_c J_cᵀ (J_c J_cᵀ + λI)⁻¹ r_c in float64 (rows example-major)."""
  m = jacobian.shape[0] // num_outputs
  total = 0.0
  for c in range(num_outputs):
    jc = jacobian[c::num_outputs]
    rc = residual[c::num_outputs]
    total = total + jc.T @ np.linalg.solve(jc @ jc.T + damping * np.eye(m), rc)
  return total / num_outputs


def first_update(tx, params, batch):
  """(updates, state) of one jitted `tx.update` from `tx.init(params)` on `batch`.

  Jitted: one compile is several times faster than running the update op by op.
  """
  return jax.jit(lambda p, s: tx.update(None, s, p, batch=batch))(params, tx.init(params))


def flat(tree):
  return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)
