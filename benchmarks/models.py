"""The benchmark models, as plain JAX functions `init(key) -> params`, `apply(params, x)`.

Plain `x @ w + b` dense layers and `lax.conv_general_dilated` convolutions,
so that every Gram engine of `rdescent.gram` sees ordinary layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "tanh": jnp.tanh,
  "relu": jax.nn.relu,
  "sigmoid": jax.nn.sigmoid,
}


class Model(NamedTuple):
  """A model: `init(key) -> params`, `apply(params, inputs) -> (m, k)`."""

  name: str
  init: Callable[[jax.Array], Any]
  apply: Callable[[Any, jax.Array], jax.Array]


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel (fan_in, fan_out), zero bias."""
  kernel = jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in)
  return {"kernel": kernel, "bias": jnp.zeros((fan_out,))}


def mlp(sizes: Sequence[int], activation: str = "tanh") -> Model:
  """Fully connected network with layer sizes `sizes` (input first, output last).

  Inputs of any trailing shape are flattened to (m, sizes[0]).
  """
  act = ACTIVATIONS[activation]
  sizes = tuple(int(s) for s in sizes)

  def init(key):
    keys = jax.random.split(key, len(sizes) - 1)
    return [_dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def apply(params, inputs):
    x = inputs.reshape(inputs.shape[0], -1)
    for i, layer in enumerate(params):
      x = x @ layer["kernel"] + layer["bias"]
      if i < len(params) - 1:
        x = act(x)
    return x

  name = f"MLP {'-'.join(map(str, sizes))} ({activation})"
  return Model(name, init, apply)


def small_cnn(channels: int = 8, num_classes: int = 10, side: int = 28) -> Model:
  """The paper's SmallCNN: conv 1→8 3×3 (valid), ReLU, 2×2 max-pool, dense 1352→10.

  Inputs are (m, side, side) or (m, side, side, 1) images (side 28: MNIST; a
  smaller even side gives a smaller model of the same shape, for quick runs).
  """
  pooled = (side - 2) // 2
  features = pooled * pooled * channels

  def init(key):
    kconv, kdense = jax.random.split(key)
    conv = jax.random.normal(kconv, (3, 3, 1, channels)) / 3.0
    return {
      "conv": {"kernel": conv, "bias": jnp.zeros((channels,))},
      "dense": _dense_init(kdense, features, num_classes),
    }

  def apply(params, inputs):
    x = inputs.reshape(inputs.shape[0], side, side, 1)
    x = (
      jax.lax.conv_general_dilated(
        x,
        params["conv"]["kernel"],
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
      + params["conv"]["bias"]
    )
    x = jax.nn.relu(x)
    m = x.shape[0]
    x = x.reshape(m, pooled, 2, pooled, 2, channels).max(axis=(2, 4))
    x = x.reshape(m, features)
    return x @ params["dense"]["kernel"] + params["dense"]["bias"]

  return Model(
    f"SmallCNN (conv 1→{channels} 3×3, ReLU, max-pool, dense {features}→{num_classes})", init, apply
  )


def num_params(params: Any) -> int:
  """Total number of parameters of a pytree."""
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
