"""Precision switching: float32 steps first, float64 steps to finish, in one optimizer.

`precision_switch(rtol=, patience=)` makes the value of the transform option
`precision=`. The parameters and the optimizer state stay float64 (x64 on);
while `RegressionDescentState.precision.bits` is 32 each step is computed on
the problem cast to float32: the parameters, the batch's floating inputs and
targets, and the controller's state are cast down, the step is linearised,
solved and judged (Levenberg-Marquardt's trust ratio included) in float32,
and its direction and state are cast back up. From the switch on, every
step is the plain float64 step. One `lax.cond` on the state's flag picks the
branch, so the update stays one jit-able function with no host round-trip.

**Switch rule.** After each float32 step t ≥ 1, with ℓ_t the batch loss
before step t (computed in float32), the last step made no progress when

    ℓ_{t−1} − ℓ_t ≤ rtol · |ℓ_{t−1}|,

which also holds for a step the controller rejected, or one skipped for a
numerical failure (the loss does not move). After `patience` such steps in
a row the next step, and every one after it, runs in float64;
`precision.switched_at` records the index of the first float64 update
(−1 before). rtol defaults to 64 ε₃₂ ≈ 7.6e-6: a relative decrease that a
few float32 roundings of a sum of squares can fake or hide.

Termination tests (`termination=`) judge float64 steps only: a float32 step
is never reported "converged" (its stall is what switches the precision).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# rtol's default, in units of float32's ε.
DEFAULT_RTOL_EPS = 64
LOW = jnp.dtype(jnp.float32)
HIGH = jnp.dtype(jnp.float64)


class PrecisionSwitch(NamedTuple):
  """The switch rule (see `precision_switch`).

  Attributes:
    rtol: a float32 step made no progress when the loss fell by at most
      rtol times itself; None: 64 ε₃₂.
    patience: float32 steps in a row without progress that switch to
      float64.
  """

  rtol: float | None = None
  patience: int = 3


class PrecisionState(NamedTuple):
  """`RegressionDescentState.precision`.

  Attributes:
    bits: the precision the next step runs in (int32: 32 or 64). Without
      `precision=` the compute dtype's bits, fixed.
    switched_at: the index (state.count) of the first float64 update after
      float32 ones; −1 before the switch, and without `precision=`.
    stalled: float32 steps in a row that made no progress (the switch rule).
  """

  bits: jax.Array
  switched_at: jax.Array
  stalled: jax.Array


def precision_switch(rtol: float | None = None, patience: int = 3) -> PrecisionSwitch:
  """Train in float32, finish in float64: the value of the option `precision=`.

  Args:
    rtol: 0 < rtol < 1, or None (64 ε₃₂ ≈ 7.6e-6): a float32 step made no
      progress when the batch loss fell by at most rtol times its value.
    patience: an int ≥ 1: float32 steps in a row without progress that
      switch every later step to float64.

  Needs x64 on and float64 parameters (checked when the step is traced).

  Returns:
    A `PrecisionSwitch`, for `precision=`.

  Examples:
    >>> import rdescent as rd
    >>> rd.precision_switch(patience=2)
    PrecisionSwitch(rtol=None, patience=2)
  """
  if rtol is not None:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating)):
      raise ValueError(f"precision_switch: rtol must be a float or None; got {rtol!r}.")
    if not (math.isfinite(float(rtol)) and 0 < float(rtol) < 1):
      raise ValueError(f"precision_switch: need 0 < rtol < 1; got rtol={rtol!r}.")
    rtol = float(rtol)
  if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
    raise ValueError(f"precision_switch: patience must be an int >= 1; got {patience!r}.")
  return PrecisionSwitch(rtol=rtol, patience=int(patience))


def check(value: Any) -> PrecisionSwitch | None:
  """The transform option `precision`: None, or a `PrecisionSwitch` (checked again)."""
  if value is None:
    return None
  if not isinstance(value, PrecisionSwitch):
    raise ValueError(f"precision must be None or rdescent.precision_switch(...); got {value!r}.")
  return precision_switch(value.rtol, value.patience)


def check_params(switch: PrecisionSwitch | None, dtype: Any, name: str) -> None:
  """Refuses `precision=` without x64 or without float64 parameters (trace time)."""
  if switch is None:
    return
  if not jax.config.read("jax_enable_x64"):
    raise ValueError(
      f"{name}: precision=rd.precision_switch() switches from float32 to float64 steps and "
      "needs x64 on (jax.config.update('jax_enable_x64', True), or jax.enable_x64(True))."
    )
  if jnp.dtype(dtype) != HIGH:
    raise ValueError(
      f"{name}: precision=rd.precision_switch() needs float64 parameters (the float64 "
      f"iterate the float32 steps update); got parameters of dtype {jnp.dtype(dtype).name}."
    )


def init(switch: PrecisionSwitch | None, dtype: Any) -> PrecisionState:
  """The state before any step: float32 first with a switch, else the compute dtype's bits."""
  bits = 32 if switch is not None else jnp.finfo(dtype).bits
  return PrecisionState(
    bits=jnp.asarray(bits, jnp.int32),
    switched_at=jnp.asarray(-1, jnp.int32),
    stalled=jnp.zeros([], jnp.int32),
  )


def lower(tree: Any) -> Any:
  """`tree` with float64 array leaves cast to float32 (other leaves, Python floats
  included, unchanged)."""
  return jax.tree_util.tree_map(
    lambda leaf: leaf.astype(LOW) if hasattr(leaf, "dtype") and leaf.dtype == HIGH else leaf, tree
  )


def like(tree: Any, reference: Any) -> Any:
  """`tree` with each leaf cast to the dtype of `reference`'s leaf (same structure)."""
  return jax.tree_util.tree_map(
    lambda leaf, ref: jnp.asarray(leaf).astype(jnp.asarray(ref).dtype), tree, reference
  )


def after_low_step(
  switch: PrecisionSwitch,
  state: PrecisionState,
  count: jax.Array,
  previous_loss: jax.Array,
  loss: jax.Array,
) -> PrecisionState:
  """The switch rule after float32 update `count` (module docstring).

  Args:
    switch: the rule.
    state: the precision state before the update.
    count: the update's index.
    previous_loss: ℓ_{count−1}, the loss before the previous update.
    loss: ℓ_count, the loss before this update (both as the state stores them).
  """
  rtol = DEFAULT_RTOL_EPS * float(jnp.finfo(LOW).eps) if switch.rtol is None else switch.rtol
  decrease = previous_loss - loss
  no_progress = (count > 0) & ~(decrease > rtol * jnp.abs(previous_loss))
  stalled = jnp.where(no_progress, state.stalled + 1, 0).astype(jnp.int32)
  switch_now = stalled >= switch.patience
  return PrecisionState(
    bits=jnp.where(switch_now, 64, 32).astype(jnp.int32),
    switched_at=jnp.where(switch_now, count + 1, -1).astype(jnp.int32),
    stalled=stalled,
  )
