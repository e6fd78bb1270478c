"""Lorenz96 trajectories, generated in JAX (no files).

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F,        i = 1..N (cyclic)

integrated with classical fourth-order Runge-Kutta. The learning task is the
map x(t) → x(t + lead_steps·dt) on the attractor.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Lorenz96Data(NamedTuple):
  """Pairs (x(t), x(t + lead)) and the affine map used to standardise them.

  Attributes:
    inputs: (num_samples, N) states x(t), standardised when requested.
    targets: (num_samples, N) states x(t + lead_steps·dt), same scaling.
    mean: the scalar subtracted (0 when not standardised).
    std: the scalar divided by (1 when not standardised).
  """

  inputs: jax.Array
  targets: jax.Array
  mean: jax.Array
  std: jax.Array


def lorenz96_tendency(state: jax.Array, forcing: float = 8.0) -> jax.Array:
  """dx/dt of Lorenz96 for states of shape (..., N).

  Examples:
    The rest state x = F is a fixed point:

    >>> import jax.numpy as jnp
    >>> from rdescent.datasets import lorenz96_tendency
    >>> lorenz96_tendency(jnp.full(5, 8.0)).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0]
  """
  return (
    (jnp.roll(state, -1, axis=-1) - jnp.roll(state, 2, axis=-1)) * jnp.roll(state, 1, axis=-1)
    - state
    + forcing
  )


def rk4_step(state: jax.Array, dt: float, forcing: float = 8.0) -> jax.Array:
  """One classical Runge-Kutta step of size dt, for states of shape (..., N).

  Examples:
    A perturbation of the rest state grows (the dynamics are chaotic):

    >>> import jax.numpy as jnp
    >>> from rdescent.datasets import rk4_step
    >>> state = jnp.full(40, 8.0).at[0].add(0.01)
    >>> for _ in range(100):
    ...   state = rk4_step(state, dt=0.01)
    >>> bool(jnp.max(jnp.abs(state - 8.0)) > 0.01)
    True
  """
  k1 = lorenz96_tendency(state, forcing)
  k2 = lorenz96_tendency(state + 0.5 * dt * k1, forcing)
  k3 = lorenz96_tendency(state + 0.5 * dt * k2, forcing)
  k4 = lorenz96_tendency(state + dt * k3, forcing)
  return state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def lorenz96_dataset(
  num_samples: int,
  *,
  num_variables: int = 40,
  forcing: float = 8.0,
  dt: float = 0.01,
  lead_steps: int = 5,
  spinup_steps: int = 1000,
  sample_every: int = 10,
  num_trajectories: int = 16,
  standardize: bool = True,
  seed: int = 0,
) -> Lorenz96Data:
  """Samples (x(t), x(t + lead_steps·dt)) pairs from Lorenz96 trajectories.

  `num_trajectories` random perturbations of the rest state x = F are spun up
  for `spinup_steps` RK4 steps onto the attractor, then sampled every
  `sample_every` steps. With the defaults (dt = 0.01, lead 5) the target is
  x(t + 0.05).

  Returns:
    `Lorenz96Data`; with `standardize`, inputs and targets are shifted and
    scaled by the same scalar mean and standard deviation of the inputs.

  Examples:
    A tiny data set (the benchmarks use 8192 pairs of N = 40):

    >>> import jax.numpy as jnp
    >>> from rdescent.datasets import lorenz96_dataset
    >>> data = lorenz96_dataset(16, num_variables=8, spinup_steps=100, num_trajectories=2)
    >>> data.inputs.shape, data.targets.shape
    ((16, 8), (16, 8))
    >>> abs(float(jnp.mean(data.inputs))) < 1e-5, round(float(jnp.std(data.inputs)), 4)
    (True, 1.0)
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}.")
  per_trajectory = -(-num_samples // num_trajectories)
  key = jax.random.PRNGKey(seed)
  start = forcing + 0.01 * jax.random.normal(key, (num_trajectories, num_variables))

  def advance(state, steps):
    return jax.lax.fori_loop(0, steps, lambda _, s: rk4_step(s, dt, forcing), state)

  @jax.jit
  def generate(start):
    on_attractor = advance(start, spinup_steps)

    def sample(state, _):
      target = advance(state, lead_steps)
      return advance(state, sample_every), (state, target)

    _, (xs, ys) = jax.lax.scan(sample, on_attractor, None, length=per_trajectory)
    return xs, ys

  xs, ys = generate(start)
  xs = jnp.swapaxes(xs, 0, 1).reshape(-1, num_variables)[:num_samples]
  ys = jnp.swapaxes(ys, 0, 1).reshape(-1, num_variables)[:num_samples]
  if standardize:
    mean, std = jnp.mean(xs), jnp.std(xs)
  else:
    mean, std = jnp.zeros(()), jnp.ones(())
  return Lorenz96Data((xs - mean) / std, (ys - mean) / std, mean, std)
