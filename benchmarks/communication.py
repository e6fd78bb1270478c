"""Communication cost model of a data-parallel RD step (used by `benchmarks.sharding`).

The bytes each of n devices receives in one step of data-parallel Regression
Descent (`rdescent.sharding`), as a formula of the batch, the widths of a
dense network and the layout of K: what the collectives of the compiled step
move, without running it. The step's layout (which arrays are all-gathered
and why) is described in the `rdescent.sharding` module docstring; this module
only counts.

With 4 devices, 64 examples and a 5-7-3 network (p = 66 parameters), the
default layout (every device builds all of K from the gathered inputs)
receives the inputs, the residuals and the all-reduced direction:

>>> from benchmarks import communication
>>> got = communication.communication_bytes(64, [5, 7, 3], 4)
>>> got.layer_inputs, got.residuals, got.gram, got.direction
(960.0, 576.0, 0.0, 396.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

GRAM_LAYOUTS = ("replicated", "row_blocks")
GATHERED = ("inputs", "factors", "jacobian")


class CommunicationBytes(NamedTuple):
  """Bytes each device receives in one data-parallel RD step (`communication_bytes`).

  Attributes:
    layer_inputs: all-gather of the network inputs, (n−1)/n · m d_0; with
      `gathered="factors"` of all layer inputs, (n−1)/n · m · Σ_l d_in,l.
    cotangents: 0; with `gathered="factors"` the all-gather of the
      cotangents, (n−1)/n · m k · Σ_l d_out,l;
      with `gathered="jacobian"`: the per-example Jacobians, (n−1)/n · m k p
      (and `layer_inputs` is 0).
    residuals: all-gather of the residuals, (n−1)/n · m k.
    gram: all-gather of K's block rows, (n−1)/n · (m k)² (per output:
      (n−1)/n · k m²); 0 when every device builds all of K.
    direction: ring all-reduce of the p-vector Jᵀα, 2 (n−1)/n · p.
    total: the sum.
  """

  layer_inputs: float
  cotangents: float
  residuals: float
  gram: float
  direction: float
  total: float


def communication_bytes(
  num_examples: int,
  layer_sizes: Sequence[int],
  num_devices: int,
  *,
  num_outputs: int | None = None,
  outputs: str = "full",
  gram_layout: str = "replicated",
  gathered: str = "inputs",
  num_params: int | None = None,
  bytes_per_number: int = 4,
) -> CommunicationBytes:
  """Bytes received per device in one data-parallel RD step of a dense network.

  With n devices, m examples, k outputs, dense layers d_in,l → d_out,l
  (consecutive `layer_sizes`), p parameters and b bytes per number:

      b (n−1)/n · [ m d_0                                 (inputs, "inputs")
                    + m k                                 (residuals)
                    + G                                   (K's rows, see below)
                    + 2 p ]                               (psum of Jᵀα)

  G = 0 when every device builds all of K from what it gathered
  (`gram_layout="replicated"`, no K traffic, the K work done n times), or
  G = (m k)² (per output: k m²) when each builds its block row and the rows
  are all-gathered (`"row_blocks"`). `gathered="factors"` replaces the input
  term by K's low-rank factors, m Σ_l d_in,l + m k Σ_l d_out,l (a, δ);
  `gathered="jacobian"` by the per-example Jacobians, m k p. The all-reduce is
  counted as a ring (reduce-scatter then all-gather). Loss scalars are
  ignored. Per-output mode gathers the same numbers (all k cotangents).

  Args:
    num_examples: m, the global batch size.
    layer_sizes: widths [d_0, d_1, ..., d_L] of the dense layers.
    num_devices: n, devices along the data axis.
    num_outputs: k (default: `layer_sizes[-1]`).
    outputs: `"full"` or `"per_output"`.
    gram_layout: `"replicated"` or `"row_blocks"`.
    gathered: `"inputs"` (every device builds all of K: `data_axis=None`),
      `"factors"` (K's factors a, δ: the structured engine with
      `data_axis`) or `"jacobian"` (per-example Jacobians: the jacobian
      engine with `data_axis`).
    num_params: p (default: weights and biases of the dense layers).
    bytes_per_number: 4 for float32.

  Returns:
    A `CommunicationBytes` of per-device received bytes.
  """
  if outputs not in ("full", "per_output"):
    raise ValueError(f"outputs={outputs!r}; expected 'full' or 'per_output'.")
  if gram_layout not in GRAM_LAYOUTS:
    raise ValueError(f"gram_layout={gram_layout!r}; expected one of {GRAM_LAYOUTS}.")
  if gathered not in GATHERED:
    raise ValueError(f"gathered={gathered!r}; expected one of {GATHERED}.")
  if len(layer_sizes) < 2:
    raise ValueError(f"layer_sizes needs at least two widths; got {list(layer_sizes)}.")
  if num_devices < 1 or num_examples % num_devices:
    raise ValueError(
      f"num_examples={num_examples} must be divisible by num_devices={num_devices} >= 1."
    )
  m, n = num_examples, num_devices
  k = layer_sizes[-1] if num_outputs is None else num_outputs
  fan_in, fan_out = layer_sizes[:-1], layer_sizes[1:]
  p = num_params if num_params is not None else sum(i * o + o for i, o in zip(fan_in, fan_out))
  share = bytes_per_number * (n - 1) / n
  if gathered == "inputs":
    layer_inputs = share * m * layer_sizes[0]
    cotangents = 0.0
  elif gathered == "factors":
    layer_inputs = share * m * sum(fan_in)
    cotangents = share * m * k * sum(fan_out)
  else:
    layer_inputs = 0.0
    cotangents = share * m * k * p
  residuals = share * m * k
  gram_numbers = (m * k) ** 2 if outputs == "full" else k * m * m
  gram = share * gram_numbers if gram_layout == "row_blocks" else 0.0
  direction = 2 * share * p
  total = layer_inputs + cotangents + residuals + gram + direction
  return CommunicationBytes(layer_inputs, cotangents, residuals, gram, direction, total)
