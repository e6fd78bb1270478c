"""The Moré–Garbow–Hillstrom least-squares test problems, as JAX residual functions.

Moré, J. J., Garbow, B. S. and Hillstrom, K. E. (1981), "Testing unconstrained
optimization software", ACM Transactions on Mathematical Software 7(1), 17-41
(MGH). Each problem minimises f(x) = Σᵢ rᵢ(x)² from the paper's standard
starting point; the numbers (#1 … #35) are the paper's.

`residuals(x)` is written with `jax.numpy` only (differentiable, jit-able, no
Python control flow on the values of x); its constants take the dtype of `x`,
so it runs in float64 under `jax.enable_x64(True)` (needed for these problems:
several optima lie below float32's resolution). The data are numpy float64
arrays, so importing this module creates no JAX arrays.

`optimum` is the value of f (not ½f) the paper prints (six significant digits,
truncated: "8.21487... 10⁻³"), or None where it prints several finite local
minima; those are then in `local_optima`. Values at infinity (Bard,
Kowalik–Osborne) are in `note` only.

`scipy_reference` solves a problem with MINPACK's Levenberg–Marquardt
(`scipy.optimize.least_squares(method="lm")`), the Jacobian from `jax.jacfwd`.

    python -m benchmarks.mgh     # prints 2 × scipy's cost against the paper's f*
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Problem(NamedTuple):
  """One MGH least-squares problem.

  Attributes:
    name: short snake_case name.
    residuals: `residuals(x) -> (m,)`, x of shape (n,).
    start: the standard starting point x₀ (n floats).
    num_residuals: m.
    optimum: the paper's f* = Σ r² at the minimiser, or None (several).
    note: a short remark (MGH number, local minima, ...).
    local_optima: the published values of f at local minima, when several.
  """

  name: str
  residuals: Callable[[jax.Array], jax.Array]
  start: tuple[float, ...]
  num_residuals: int
  optimum: float | None
  note: str = ""
  local_optima: tuple[float, ...] = ()

  @property
  def num_params(self) -> int:
    """n, the number of unknowns."""
    return len(self.start)

  @property
  def published(self) -> tuple[float, ...]:
    """Every value of f the paper prints for it (the optimum or the local optima)."""
    return (self.optimum,) if self.optimum is not None else self.local_optima


def _c(values, x: jax.Array) -> jax.Array:
  """Constant data in the dtype of x."""
  return jnp.asarray(np.asarray(values, np.float64), x.dtype)


def _index(m: int, x: jax.Array) -> jax.Array:
  """i = 1, …, m in the dtype of x."""
  return jnp.arange(1, m + 1, dtype=x.dtype)


# --------------------------------------------------------------------- n = 2, 3, 4


def rosenbrock(x):  # 1
  return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def freudenstein_roth(x):  # 2
  return jnp.stack(
    [
      -13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
      -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1],
    ]
  )


def powell_badly_scaled(x):  # 3
  return jnp.stack([1e4 * x[0] * x[1] - 1.0, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x):  # 4
  return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def beale(x):  # 5
  i = _index(3, x)
  return _c([1.5, 2.25, 2.625], x) - x[0] * (1.0 - x[1] ** i)


def jennrich_sampson(x, m: int = 10):  # 6
  i = _index(m, x)
  return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def helical_valley(x):  # 7
  # θ = arctan(x₂/x₁)/2π, + 1/2 when x₁ < 0 (the paper's branch, not atan2's).
  safe_x0 = jnp.where(x[0] == 0.0, 1.0, x[0])
  theta = jnp.where(
    x[0] == 0.0,
    0.25 * jnp.sign(x[1]),
    jnp.arctan(x[1] / safe_x0) / (2.0 * jnp.pi) + jnp.where(x[0] < 0.0, 0.5, 0.0),
  )
  return jnp.stack(
    [10.0 * (x[2] - 10.0 * theta), 10.0 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]]
  )


_BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]


def bard(x):  # 8
  u = _index(15, x)
  v = 16.0 - u
  w = jnp.minimum(u, v)
  return _c(_BARD_Y, x) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989]
_GAUSSIAN_Y = _GAUSSIAN_Y + _GAUSSIAN_Y[-2::-1]


def gaussian(x):  # 9
  t = (8.0 - _index(15, x)) / 2.0
  return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - _c(_GAUSSIAN_Y, x)


_MEYER_Y = [
  34780.0,
  28610.0,
  23650.0,
  19630.0,
  16370.0,
  13720.0,
  11540.0,
  9744.0,
  8261.0,
  7030.0,
  6005.0,
  5147.0,
  4427.0,
  3820.0,
  3307.0,
  2872.0,
]


def meyer(x):  # 10
  t = 45.0 + 5.0 * _index(16, x)
  return x[0] * jnp.exp(x[1] / (t + x[2])) - _c(_MEYER_Y, x)


def gulf_research(x, m: int = 99):  # 11
  # The paper's "y_i m i x_2" is y_i − x_2 (a typesetting error).
  t = _index(m, x) / 100.0
  y = 25.0 + (-50.0 * jnp.log(t)) ** (2.0 / 3.0)
  return jnp.exp(-(jnp.abs(y - x[1]) ** x[2]) / x[0]) - t


def box_3d(x, m: int = 10):  # 12
  t = 0.1 * _index(m, x)
  return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10.0 * t))


def powell_singular(x):  # 13
  return jnp.stack(
    [
      x[0] + 10.0 * x[1],
      math.sqrt(5.0) * (x[2] - x[3]),
      (x[1] - 2.0 * x[2]) ** 2,
      math.sqrt(10.0) * (x[0] - x[3]) ** 2,
    ]
  )


def wood(x):  # 14
  return jnp.stack(
    [
      10.0 * (x[1] - x[0] ** 2),
      1.0 - x[0],
      math.sqrt(90.0) * (x[3] - x[2] ** 2),
      1.0 - x[2],
      math.sqrt(10.0) * (x[1] + x[3] - 2.0),
      (x[1] - x[3]) / math.sqrt(10.0),
    ]
  )


_KOWALIK_Y = [
  0.1957,
  0.1947,
  0.1735,
  0.1600,
  0.0844,
  0.0627,
  0.0456,
  0.0342,
  0.0323,
  0.0235,
  0.0246,
]
_KOWALIK_U = [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]


def kowalik_osborne(x):  # 15
  u = _c(_KOWALIK_U, x)
  return _c(_KOWALIK_Y, x) - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(x, m: int = 20):  # 16
  t = _index(m, x) / 5.0
  return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


# --------------------------------------------------------------------- n = 5, 6, 11


_OSBORNE1_Y = [
  0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
  0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
  0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406,
]  # fmt: skip


def osborne_1(x):  # 17
  t = 10.0 * (_index(33, x) - 1.0)
  model = x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4])
  return _c(_OSBORNE1_Y, x) - model


def biggs_exp6(x, m: int = 13):  # 18
  t = 0.1 * _index(m, x)
  y = jnp.exp(-t) - 5.0 * jnp.exp(-10.0 * t) + 3.0 * jnp.exp(-4.0 * t)
  return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y


_OSBORNE2_Y = [
  1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725,
  0.746, 0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724,
  0.649, 0.649, 0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495,
  0.500, 0.423, 0.395, 0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429,
  0.523, 0.562, 0.607, 0.653, 0.672, 0.708, 0.633, 0.668, 0.645, 0.632,
  0.591, 0.559, 0.597, 0.625, 0.739, 0.710, 0.729, 0.720, 0.636, 0.581,
  0.428, 0.292, 0.162, 0.098, 0.054,
]  # fmt: skip


def osborne_2(x):  # 19
  t = (_index(65, x) - 1.0) / 10.0
  model = (
    x[0] * jnp.exp(-t * x[4])
    + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
    + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
    + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
  )
  return _c(_OSBORNE2_Y, x) - model


# --------------------------------------------------------------------- variable n


def watson(x):  # 20, m = 31
  n = x.shape[0]
  t = _index(29, x)[:, None] / 29.0
  j = jnp.arange(n, dtype=x.dtype)  # j − 1 for j = 1, …, n
  powers = t ** jnp.maximum(j - 1.0, 0.0)  # t^(j−2), unused for j = 1
  sum1 = jnp.sum(jnp.where(j >= 1.0, j * x * powers, 0.0), axis=1)
  sum2 = jnp.sum(x * t**j, axis=1)
  return jnp.concatenate([sum1 - sum2**2 - 1.0, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])


def extended_rosenbrock(x):  # 21, m = n even
  odd, even = x[0::2], x[1::2]
  return jnp.stack([10.0 * (even - odd**2), 1.0 - odd], axis=1).reshape(-1)


def extended_powell_singular(x):  # 22, m = n, n a multiple of 4
  a, b, c, d = (x[k::4] for k in range(4))
  return jnp.stack(
    [
      a + 10.0 * b,
      math.sqrt(5.0) * (c - d),
      (b - 2.0 * c) ** 2,
      math.sqrt(10.0) * (a - d) ** 2,
    ],
    axis=1,
  ).reshape(-1)


def penalty_1(x):  # 23, m = n + 1
  a = 1e-5
  return jnp.concatenate([math.sqrt(a) * (x - 1.0), jnp.sum(x**2)[None] - 0.25])


def penalty_2(x):  # 24, m = 2n
  a = 1e-5
  n = x.shape[0]
  i = jnp.arange(2, n + 1, dtype=x.dtype)
  y = jnp.exp(i / 10.0) + jnp.exp((i - 1.0) / 10.0)
  coupled = math.sqrt(a) * (jnp.exp(x[1:] / 10.0) + jnp.exp(x[:-1] / 10.0) - y)
  single = math.sqrt(a) * (jnp.exp(x[1:] / 10.0) - math.exp(-0.1))
  weights = jnp.arange(n, 0, -1, dtype=x.dtype)  # n − j + 1
  last = jnp.sum(weights * x**2) - 1.0
  return jnp.concatenate([(x[0] - 0.2)[None], coupled, single, last[None]])


def variably_dimensioned(x):  # 25, m = n + 2
  s = jnp.sum(_index(x.shape[0], x) * (x - 1.0))
  return jnp.concatenate([x - 1.0, jnp.stack([s, s**2])])


def trigonometric(x):  # 26, m = n
  n = x.shape[0]
  i = _index(n, x)
  return n - jnp.sum(jnp.cos(x)) + i * (1.0 - jnp.cos(x)) - jnp.sin(x)


def brown_almost_linear(x):  # 27, m = n
  n = x.shape[0]
  linear = x[:-1] + jnp.sum(x) - (n + 1.0)
  return jnp.concatenate([linear, (jnp.prod(x) - 1.0)[None]])


def discrete_boundary_value(x):  # 28, m = n
  n = x.shape[0]
  h = 1.0 / (n + 1.0)
  t = h * _index(n, x)
  zero = jnp.zeros((1,), x.dtype)
  left = jnp.concatenate([zero, x[:-1]])
  right = jnp.concatenate([x[1:], zero])
  return 2.0 * x - left - right + h**2 * (x + t + 1.0) ** 3 / 2.0


def discrete_integral_equation(x):  # 29, m = n
  n = x.shape[0]
  h = 1.0 / (n + 1.0)
  t = h * _index(n, x)
  cube = (x + t + 1.0) ** 3
  below = jnp.cumsum(t * cube)  # Σ_{j ≤ i} t_j (x_j + t_j + 1)³
  above = jnp.sum((1.0 - t) * cube) - jnp.cumsum((1.0 - t) * cube)  # Σ_{j > i}
  return x + h * ((1.0 - t) * below + t * above) / 2.0


def broyden_tridiagonal(x):  # 30, m = n
  zero = jnp.zeros((1,), x.dtype)
  left = jnp.concatenate([zero, x[:-1]])
  right = jnp.concatenate([x[1:], zero])
  return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0


def broyden_banded(x):  # 31, m = n; lower bandwidth 5, upper 1
  n = x.shape[0]
  i = np.arange(n)[:, None]
  j = np.arange(n)[None, :]
  band = _c((j != i) & (j >= i - 5) & (j <= i + 1), x)
  return x * (2.0 + 5.0 * x**2) + 1.0 - band @ (x * (1.0 + x))


def linear_full_rank(x, m: int = 10):  # 32
  n = x.shape[0]
  s = jnp.sum(x)
  return jnp.concatenate([x - 2.0 * s / m - 1.0, jnp.full((m - n,), -2.0 * s / m - 1.0)])


def linear_rank_1(x, m: int = 10):  # 33
  s = jnp.sum(_index(x.shape[0], x) * x)
  return _index(m, x) * s - 1.0


def linear_rank_1_zero(x, m: int = 10):  # 34: zero first/last rows, first/last columns
  n = x.shape[0]
  s = jnp.sum(_index(n, x)[1:-1] * x[1:-1])
  i = _index(m, x)
  inner = (i - 1.0) * s - 1.0
  return jnp.where((i == 1.0) | (i == m), -1.0, inner)


def chebyquad(x):  # 35, m = n here
  n = x.shape[0]
  y = 2.0 * x - 1.0  # shifted Chebyshev polynomials T_i(2x − 1) on [0, 1]
  previous, current = jnp.ones_like(y), y
  rows = []
  for i in range(1, n + 1):  # the degree, not data
    integral = -1.0 / (i * i - 1.0) if i % 2 == 0 else 0.0
    rows.append(jnp.mean(current) - integral)
    previous, current = current, 2.0 * y * current - previous
  return jnp.stack(rows)


# --------------------------------------------------------------------- the set


def _problem(name, residuals, start, m, optimum, note="", local_optima=()):
  return Problem(
    name, residuals, tuple(float(v) for v in start), m, optimum, note, tuple(local_optima)
  )


def _problems() -> dict[str, Problem]:
  n10 = np.arange(1, 11)
  grid10 = n10 / 11.0
  problems = [
    _problem("rosenbrock", rosenbrock, (-1.2, 1.0), 2, 0.0, "MGH 1"),
    _problem(
      "freudenstein_roth",
      freudenstein_roth,
      (0.5, -2.0),
      2,
      None,
      "MGH 2; f = 0 at (5, 4), local minimum 48.9842 at (11.41, −0.8968)",
      (0.0, 48.9842),
    ),
    _problem("powell_badly_scaled", powell_badly_scaled, (0.0, 1.0), 2, 0.0, "MGH 3"),
    _problem("brown_badly_scaled", brown_badly_scaled, (1.0, 1.0), 3, 0.0, "MGH 4"),
    _problem("beale", beale, (1.0, 1.0), 3, 0.0, "MGH 5"),
    _problem("jennrich_sampson", jennrich_sampson, (0.3, 0.4), 10, 124.362, "MGH 6, m = 10"),
    _problem("helical_valley", helical_valley, (-1.0, 0.0, 0.0), 3, 0.0, "MGH 7"),
    _problem(
      "bard", bard, (1.0, 1.0, 1.0), 15, 8.21487e-3, "MGH 8; also f = 17.4286 at (0.8406, −∞, −∞)"
    ),
    _problem("gaussian", gaussian, (0.4, 1.0, 0.0), 15, 1.12793e-8, "MGH 9"),
    _problem("meyer", meyer, (0.02, 4000.0, 250.0), 16, 87.9458, "MGH 10; badly scaled"),
    _problem("gulf_research", gulf_research, (5.0, 2.5, 0.15), 99, 0.0, "MGH 11, m = 99"),
    _problem(
      "box_3d", box_3d, (0.0, 10.0, 20.0), 10, 0.0, "MGH 12, m = 10; f = 0 on a line and 2 points"
    ),
    _problem(
      "powell_singular", powell_singular, (3.0, -1.0, 0.0, 1.0), 4, 0.0, "MGH 13; singular J*"
    ),
    _problem("wood", wood, (-3.0, -1.0, -3.0, -1.0), 6, 0.0, "MGH 14"),
    _problem(
      "kowalik_osborne",
      kowalik_osborne,
      (0.25, 0.39, 0.415, 0.39),
      11,
      3.07505e-4,
      "MGH 15; also f = 1.02734e-3 at (+∞, −14.07, −∞, −∞)",
    ),
    _problem("brown_dennis", brown_dennis, (25.0, 5.0, -5.0, -1.0), 20, 85822.2, "MGH 16, m = 20"),
    _problem("osborne_1", osborne_1, (0.5, 1.5, -1.0, 0.01, 0.02), 33, 5.46489e-5, "MGH 17"),
    _problem(
      "biggs_exp6",
      biggs_exp6,
      (1.0, 2.0, 1.0, 1.0, 1.0, 1.0),
      13,
      None,
      "MGH 18, m = 13; f = 0 at (1, 10, 1, 5, 4, 3), local minimum 5.65565e-3",
      (0.0, 5.65565e-3),
    ),
    _problem(
      "osborne_2",
      osborne_2,
      (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5),
      65,
      4.01377e-2,
      "MGH 19",
    ),
    _problem("watson", watson, np.zeros(6), 31, 2.28767e-3, "MGH 20, n = 6"),
    _problem(
      "extended_rosenbrock",
      extended_rosenbrock,
      np.tile([-1.2, 1.0], 5),
      10,
      0.0,
      "MGH 21, n = 10",
    ),
    _problem(
      "extended_powell_singular",
      extended_powell_singular,
      np.tile([3.0, -1.0, 0.0, 1.0], 3),
      12,
      0.0,
      "MGH 22, n = 12; singular J*",
    ),
    _problem("penalty_1", penalty_1, n10, 11, 7.08765e-5, "MGH 23, n = 10"),
    _problem("penalty_2", penalty_2, np.full(10, 0.5), 20, 2.93660e-4, "MGH 24, n = 10"),
    _problem(
      "variably_dimensioned",
      variably_dimensioned,
      1.0 - n10 / 10.0,
      12,
      0.0,
      "MGH 25, n = 10",
    ),
    _problem(
      "trigonometric",
      trigonometric,
      np.full(10, 0.1),
      10,
      0.0,
      "MGH 26, n = 10; from x₀, LM stops at the local minimum f = 2.79506e-5 (not in the paper)",
    ),
    _problem(
      "brown_almost_linear",
      brown_almost_linear,
      np.full(10, 0.5),
      10,
      None,
      "MGH 27, n = 10; f = 0 at (α, …, α, α^(1−n)), f = 1 at (0, …, 0, n + 1)",
      (0.0, 1.0),
    ),
    _problem(
      "discrete_boundary_value",
      discrete_boundary_value,
      grid10 * (grid10 - 1.0),
      10,
      0.0,
      "MGH 28, n = 10",
    ),
    _problem(
      "discrete_integral_equation",
      discrete_integral_equation,
      grid10 * (grid10 - 1.0),
      10,
      0.0,
      "MGH 29, n = 10",
    ),
    _problem(
      "broyden_tridiagonal", broyden_tridiagonal, np.full(10, -1.0), 10, 0.0, "MGH 30, n = 10"
    ),
    _problem("broyden_banded", broyden_banded, np.full(10, -1.0), 10, 0.0, "MGH 31, n = 10"),
    _problem(
      "linear_full_rank", linear_full_rank, np.ones(5), 10, 5.0, "MGH 32, n = 5, m = 10; f* = m − n"
    ),
    _problem(
      "linear_rank_1",
      linear_rank_1,
      np.ones(5),
      10,
      90.0 / 42.0,
      "MGH 33, n = 5, m = 10; f* = m(m − 1)/(2(2m + 1)), minimisers a hyperplane",
    ),
    _problem(
      "linear_rank_1_zero",
      linear_rank_1_zero,
      np.ones(5),
      10,
      124.0 / 34.0,
      "MGH 34, n = 5, m = 10; f* = (m² + 3m − 6)/(2(2m − 3))",
    ),
    _problem("chebyquad", chebyquad, np.arange(1, 9) / 9.0, 8, 3.51687e-3, "MGH 35, n = m = 8"),
  ]
  return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _problems()


def scipy_reference(
  problem: Problem,
  *,
  method: str = "lm",
  tol: float = 1e-15,
  max_nfev: int = 10_000,
) -> tuple[float, np.ndarray, int, float]:
  """Solves `problem` with `scipy.optimize.least_squares` in float64.

  The residuals and the Jacobian (`jax.jacfwd`) are jitted and compiled before
  the clock starts.

  Args:
    problem: the problem.
    method: "lm" (MINPACK's lmder) or "trf" (or "dogbox").
    tol: xtol = ftol = gtol.
    max_nfev: the most residual evaluations.

  Returns:
    (cost = ½ Σ r², x, nfev, seconds of the solve).
  """
  from scipy.optimize import least_squares

  with jax.enable_x64(True):
    fun = jax.jit(problem.residuals)
    jac = jax.jit(jax.jacfwd(problem.residuals))
    x0 = np.asarray(problem.start, np.float64)
    jax.block_until_ready((fun(x0), jac(x0)))  # compile before timing
    start = time.perf_counter()
    solution = least_squares(
      lambda x: np.asarray(fun(x)),
      x0,
      jac=lambda x: np.asarray(jac(x)),
      method=method,
      xtol=tol,
      ftol=tol,
      gtol=tol,
      max_nfev=max_nfev,
    )
    seconds = time.perf_counter() - start
  return float(solution.cost), np.asarray(solution.x), int(solution.nfev), seconds


def digits_agree(value: float, published: float, digits: int = 6) -> bool:
  """Whether f = `value` agrees with the paper's `published` f* to its printed digits.

  The paper prints f* truncated to six significant digits ("8.21487..."), so
  agreement is |f − f*| below one unit in the sixth digit; a zero f* asks for
  f < 1e-10.
  """
  if published == 0.0:
    return abs(value) < 1e-10
  unit = 10.0 ** (math.floor(math.log10(abs(published))) - (digits - 1))
  return abs(value - published) < unit


def check_table(names=None) -> list[dict]:
  """Solves each problem with scipy's lm; rows of f = 2 × cost against the paper."""
  rows = []
  for name in names or PROBLEMS:
    problem = PROBLEMS[name]
    cost, x, nfev, seconds = scipy_reference(problem)
    f = 2.0 * cost
    rows.append(
      {
        "name": name,
        "m": problem.num_residuals,
        "n": problem.num_params,
        "f": f,
        "published": problem.published,
        "agrees": any(digits_agree(f, p) for p in problem.published),
        "nfev": nfev,
        "seconds": seconds,
      }
    )
  return rows


if __name__ == "__main__":
  print(f"{'problem':28s} {'m':>3s} {'n':>3s} {'2 cost':>14s} {'published':>22s} ok   nfev")
  for row in check_table():
    published = " / ".join(f"{p:.6g}" for p in row["published"])
    print(
      f"{row['name']:28s} {row['m']:3d} {row['n']:3d} {row['f']:14.8g} {published:>22s} "
      f"{'yes' if row['agrees'] else 'NO ':3s} {row['nfev']:5d}"
    )
