"""Small models and dense references shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import rdescent as rd

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


def mlp_init(key, sizes, dtype=jnp.float32):
  """List of {"w", "b"} dicts for an MLP with the given layer sizes."""
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, wkey, bkey = jax.random.split(key, 3)
    params.append(
      {
        "w": (jax.random.normal(wkey, (fan_in, fan_out)) / np.sqrt(fan_in)).astype(dtype),
        "b": (0.1 * jax.random.normal(bkey, (fan_out,))).astype(dtype),
      }
    )
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


# ------------------------------------------------------------ Gram references


def normal(seed, shape, dtype=jnp.float64):
  """Standard normal test data from NumPy (no per-shape compilation of jax.random)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def numpy_mlp_init(seed, sizes, dtype=jnp.float64):
  """`mlp_init`-shaped parameters, drawn with NumPy (`normal`)."""
  return [
    {
      "w": normal(seed + 2 * i, (n, o), dtype) / float(np.sqrt(n)),
      "b": 0.1 * normal(seed + 2 * i + 1, (o,), dtype),
    }
    for i, (n, o) in enumerate(zip(sizes[:-1], sizes[1:]))
  ]


def jacobian_reference(apply_fn, params, x):
  """J as a dense (m, k, p) float64 array (reverse mode on the flat parameters)."""
  flat_params, unravel = ravel_pytree(params)
  out = lambda v, x: jnp.reshape(apply_fn(unravel(v), x), (x.shape[0], -1))
  return np.asarray(jax.jit(jax.jacrev(out))(flat_params, x), dtype=np.float64)


GRAM_RTOL = 1e-10
GRAM_OUTPUT_MODES = ("full", "per_output")


def assert_gram_equals_reference(
  apply_fn, params, x, outputs=GRAM_OUTPUT_MODES, method="structured"
):
  """K of `rd.gram_matrix` (jitted, each mode in `outputs`) is J Jᵀ of `jacobian_reference`."""
  outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
  jacobian = jacobian_reference(apply_fn, params, x)
  m, k, _ = jacobian.shape
  expected = {
    "full": jacobian.reshape(m * k, -1) @ jacobian.reshape(m * k, -1).T,
    "per_output": np.einsum("icp,jcp->cij", jacobian, jacobian),
  }
  run = jax.jit(
    lambda p, x: [rd.gram_matrix(apply_fn, p, x, method=method, outputs=mode) for mode in outputs]
  )
  for mode, gram in zip(outputs, run(params, x)):
    gram = np.asarray(gram)
    assert gram.shape == expected[mode].shape, mode
    scale = np.max(np.abs(expected[mode]))
    np.testing.assert_allclose(
      gram, expected[mode], rtol=GRAM_RTOL, atol=GRAM_RTOL * scale, err_msg=mode
    )


def small_cnn_init(seed, channels=8):
  """Parameters of `small_cnn_apply` in float64, drawn with NumPy."""
  return {
    "conv": {
      "kernel": normal(seed, (3, 3, 1, channels)) / 3,
      "bias": 0.1 * jnp.ones((channels,), jnp.float64),
    },
    "dense": {
      "kernel": normal(seed + 1, (13 * 13 * channels, 10)) / 30,
      "bias": jnp.zeros((10,), jnp.float64),
    },
  }


def small_cnn_apply(params, x):
  """The paper's SmallCNN: conv 1→8 3×3 VALID, ReLU, 2×2 max-pool, dense 1352→10."""
  x = (
    jax.lax.conv_general_dilated(
      x, params["conv"]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + params["conv"]["bias"]
  )
  x = jax.nn.relu(x)
  m, channels = x.shape[0], x.shape[-1]
  x = x.reshape(m, 13, 2, 13, 2, channels).max(axis=(2, 4)).reshape(m, -1)
  return x @ params["dense"]["kernel"] + params["dense"]["bias"]


def batch_norm_mlp_apply(params, x):
  """`mlp_apply` with batch normalisation (training mode) after every hidden layer.

  Its examples are coupled: each output depends on every example of the batch
  through the batch mean and variance.
  """
  *hidden, last = params
  h = x
  for layer in hidden:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
  return h @ last["w"] + last["b"]


def two_layer_apply(params, x):
  """tanh(x W1 + b1) W2 + b2: the small net of the row and column sketch tests."""
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def two_layer_problem(m=12, k=2):
  """`two_layer_apply`'s float64 params (3-6-k) with random inputs (m, 3) and targets (m, k)."""
  keys = jax.random.split(jax.random.key(5), 4)
  params = {
    "w1": jax.random.normal(keys[0], (3, 6), jnp.float64),
    "b1": jnp.zeros((6,), jnp.float64),
    "w2": 0.3 * jax.random.normal(keys[1], (6, k), jnp.float64),
    "b2": jnp.zeros((k,), jnp.float64),
  }
  x = jax.random.normal(keys[2], (m, 3), jnp.float64)
  y = jax.random.normal(keys[3], (m, k), jnp.float64)
  return params, x, y


def two_layer_jacobian(params, x):
  """J of `two_layer_apply` over the batch, (m k, p), by forward mode."""
  flat_params, unravel = ravel_pytree(params)
  return np.asarray(jax.jacfwd(lambda v: two_layer_apply(unravel(v), x).reshape(-1))(flat_params))


def drawn_rows(seed, count, m, s):
  """The examples `row_sketch=s` draws at step `count` (`sketch_seed`'s stream 0x5EED)."""
  stream = jax.random.fold_in(jax.random.key(seed), 0x5EED)
  return np.asarray(jax.random.choice(jax.random.fold_in(stream, count), m, (s,), replace=False))
