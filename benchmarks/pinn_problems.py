"""The problems of the PINN suite (`benchmarks.pinn_suite`): residuals, collocation points,
networks and test sets.

A problem is a list of conditions c (DSGNAR's names: "pde", "ic", "ic_t", "bc"), each with its
points, targets and weight w_c; every method minimises the same loss

    L(θ) = Σ_c w_c mean_{i ∈ c} r_c(θ; x_i)²,

as RD's ½ Σ r² of the residual rows √(w_c / n_c) r_c(θ; x_i) (`SuiteProblem.apply`), Adam's
and L-BFGS's mean of their squares (a constant multiple), and DSGNAR's own weighted mean
(given the unscaled residuals and the weights; its adaptive reweighting then moves them).

The equations (the same equation, domain, coefficients, initial and boundary conditions as
DSGNAR's examples; its `src/pinn/references/` holds the reference solutions):

* `burgers`: u_t + u u_x − ν u_xx = 0, x ∈ [−1, 1) periodic, t ∈ [0, 1], ν = 0.01,
  u(x, 0) = −sin(πx); reference: our Cole–Hopf solution (`benchmarks.burgers_reference`).
* `kdv`: u_t + η u u_x + μ² u_xxx = 0, x ∈ [−1, 1) periodic, t ∈ [0, 1], η = 1, μ = 0.022,
  u(x, 0) = cos(πx); reference: DSGNAR's `kdv.npz` (needs the checkout).
* `wave`: u_tt − c² u_xx = 0, x ∈ [0, 1], t ∈ [0, 1], c = 2, u(0, t) = u(1, t) = 0,
  u(x, 0) = sin(πx) + ½ sin(4πx), u_t(x, 0) = 0; reference: the exact standing wave
  u = sin(πx) cos(2πt) + ½ sin(4πx) cos(8πt).
* `poisson_1020`, `poisson_10800`: the 2D Poisson problem of `benchmarks.pinn_2d` (its points,
  network, forcing and exact solution), conditions "pde" (interior) and "bc" (boundary), both
  of weight 1 (the loss of `pinn_2d` divided by its number of interior points).

Periodic problems use a network of the features (cos πx, sin πx, t) (periodic in x by
construction, as DSGNAR's `periodic_bc=True`); the others a tanh MLP of the raw coordinates.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import burgers_reference
from benchmarks import models
from benchmarks import pinn_2d

Scalar = Callable[[jax.Array], jax.Array]  # u: point (d,) -> scalar

BURGERS_NU = burgers_reference.NU
KDV_ETA, KDV_MU = 1.0, 0.022
WAVE_C, WAVE_BETA = 2.0, 4.0
# The loss weights of DSGNAR's examples (its RunConfig values), used by every method.
WEIGHTS = {
  "burgers": {"pde": 1e-2, "ic": 1.0},
  "kdv": {"pde": 1e-4, "ic": 1.0},
  "wave": {"pde": 1e-6, "ic": 1.0, "ic_t": 1e-3, "bc": 1.0},
  "poisson_1020": {"pde": 1.0, "bc": 1.0},
  "poisson_10800": {"pde": 1.0, "bc": 1.0},
}
PROBLEMS = tuple(WEIGHTS)
REFERENCE_FILES = {"kdv": "kdv.npz", "wave": "wave.npz", "burgers": "burgers.npz"}


class Condition(NamedTuple):
  """One condition: points (n, d), targets (n,), its weight and residual r(u, point, target)."""

  name: str
  points: np.ndarray
  targets: np.ndarray
  weight: float
  residual: Callable[[Scalar, jax.Array, jax.Array], jax.Array]


class SuiteProblem(NamedTuple):
  """A problem of the suite at one size, float64 (cast with `cast`)."""

  name: str
  description: str
  conditions: tuple[Condition, ...]
  net: models.Model  # apply(params, points (n, d)) -> (n, 1)
  inputs: jax.Array  # (n, d + 3): point, condition index, target, row scale √(w_c / n_c)
  targets: jax.Array  # (n,) zeros
  test_points: jax.Array  # (t, d)
  exact: jax.Array  # (t,)
  t_max: float | None  # None: steady
  reference: str  # where `exact` comes from

  @property
  def dim(self) -> int:
    return self.test_points.shape[1]

  def apply(self, params: Any, inputs: jax.Array) -> jax.Array:
    """The residual rows √(w_c / n_c) r_c(θ; x_i), (n,): each row on its own (vmapped)."""
    d = self.dim
    residuals = [c.residual for c in self.conditions]

    def row(values):
      point, index, target, scale = values[:d], values[d], values[d + 1], values[d + 2]
      u = lambda p: self.net.apply(params, p[None])[0, 0]
      branches = [lambda pt, tg, f=f: f(u, pt, tg) for f in residuals]
      value = jax.lax.switch(index.astype(jnp.int32), branches, point, target)
      return scale * value

    return jax.vmap(row)(inputs)

  def predict(self, params: Any, points: jax.Array) -> jax.Array:
    return self.net.apply(params, points)[:, 0]


def cast(problem: SuiteProblem, dtype: Any) -> SuiteProblem:
  """The problem with its arrays in `dtype` (float32 runs)."""
  return problem._replace(
    inputs=problem.inputs.astype(dtype),
    targets=problem.targets.astype(dtype),
    test_points=problem.test_points.astype(dtype),
    exact=problem.exact.astype(dtype),
  )


def relative_l2(problem: SuiteProblem, params: Any) -> jax.Array:
  """‖u_θ − u_ref‖ / ‖u_ref‖ on the test points."""
  prediction = problem.predict(params, problem.test_points)
  return jnp.linalg.norm(prediction - problem.exact) / jnp.linalg.norm(problem.exact)


def mean_loss(problem: SuiteProblem, params: Any, inputs: jax.Array) -> jax.Array:
  """The mean of the squared residual rows (Adam's and L-BFGS's objective)."""
  return jnp.mean(jnp.square(problem.apply(params, inputs)))


# ----------------------------------------------------------------------------- derivatives


def derivative(u: Scalar, point: jax.Array, axis: int, order: int = 1) -> jax.Array:
  """∂ⁿu/∂x_axisⁿ at `point`: n nested forward-mode derivatives along that axis."""
  direction = jnp.zeros_like(point).at[axis].set(1.0)
  f = lambda s: u(point + s * direction)
  for _ in range(order):
    f = (lambda g: lambda s: jax.jvp(g, (s,), (jnp.ones_like(s),))[1])(f)
  return f(jnp.zeros((), point.dtype))


X, T = 0, 1


def burgers_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """u_t + u u_x − ν u_xx."""
  del target
  return (
    derivative(u, point, T)
    + u(point) * derivative(u, point, X)
    - BURGERS_NU * derivative(u, point, X, 2)
  )


def kdv_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """u_t + η u u_x + μ² u_xxx."""
  del target
  return (
    derivative(u, point, T)
    + KDV_ETA * u(point) * derivative(u, point, X)
    + KDV_MU**2 * derivative(u, point, X, 3)
  )


def wave_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """u_tt − c² u_xx."""
  del target
  return derivative(u, point, T, 2) - WAVE_C**2 * derivative(u, point, X, 2)


def value_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """u − target (initial and Dirichlet conditions)."""
  return u(point) - target


def time_derivative_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """u_t − target (the initial velocity)."""
  return derivative(u, point, T) - target


def poisson_residual(u: Scalar, point: jax.Array, target: jax.Array) -> jax.Array:
  """−Δu − f with f = 2π² sin(πx) sin(πy) (`pinn_2d`)."""
  del target
  return -pinn_2d.laplacian(u, point) - pinn_2d.forcing(point)


def wave_exact(points: np.ndarray) -> np.ndarray:
  """u = sin(πx) cos(cπt) + ½ sin(βπx) cos(βcπt) (c = 2, β = 4)."""
  xp = jnp if isinstance(points, jax.Array) else np  # numpy for the data, jnp in tests
  x, t = points[..., 0], points[..., 1]
  return xp.sin(np.pi * x) * xp.cos(WAVE_C * np.pi * t) + 0.5 * xp.sin(
    WAVE_BETA * np.pi * x
  ) * xp.cos(WAVE_BETA * WAVE_C * np.pi * t)


# ----------------------------------------------------------------------------- networks


def periodic_mlp(hidden: Sequence[int]) -> models.Model:
  """A tanh MLP of the features (cos πx, sin πx, t): periodic in x ∈ [−1, 1)."""
  inner = models.mlp([3, *hidden, 1], "tanh")

  def apply(params, points):
    x, t = points[:, :1], points[:, 1:2]
    return inner.apply(params, jnp.concatenate([jnp.cos(jnp.pi * x), jnp.sin(jnp.pi * x), t], 1))

  return models.Model(f"periodic features (cos πx, sin πx, t) + {inner.name}", inner.init, apply)


# ----------------------------------------------------------------------------- points


def interior_points(n: int, lower: Sequence[float], upper: Sequence[float], seed: int = 0):
  """n uniform points of the box (fixed seed: the same points for every method)."""
  rng = np.random.default_rng(seed)
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  return lower + (upper - lower) * rng.random((n, len(lower)))


def initial_line(n: int, x_min: float, x_max: float, periodic: bool) -> np.ndarray:
  """n equispaced points (x, 0) (the right end left out when periodic)."""
  x = np.linspace(x_min, x_max, n, endpoint=not periodic)
  return np.stack([x, np.zeros(n)], 1)


def walls(n: int, x_min: float, x_max: float, t_max: float) -> np.ndarray:
  """n/2 points on each wall x = x_min, x = x_max, t equispaced in [0, t_max]."""
  t = np.linspace(0.0, t_max, n // 2)
  return np.concatenate(
    [np.stack([np.full_like(t, x_min), t], 1), np.stack([np.full_like(t, x_max), t], 1)]
  )


def time_grid(nx: int, nt: int, x_min: float, x_max: float, periodic: bool) -> np.ndarray:
  """The test grid (nx × nt, x-major) of x ∈ [x_min, x_max] × t ∈ [0, 1]."""
  x = np.linspace(x_min, x_max, nx, endpoint=not periodic)
  t = np.linspace(0.0, 1.0, nt)
  xs, ts = np.meshgrid(x, t, indexing="ij")
  return np.stack([xs.ravel(), ts.ravel()], 1)


# ----------------------------------------------------------------------------- problems


def _assemble(
  name: str,
  description: str,
  conditions: Sequence[Condition],
  net: models.Model,
  test_points: np.ndarray,
  exact: np.ndarray,
  t_max: float | None,
  reference: str,
) -> SuiteProblem:
  rows = []
  for index, c in enumerate(conditions):
    n = len(c.points)
    scale = math.sqrt(c.weight / n)
    rows.append(
      np.concatenate(
        [c.points, np.full((n, 1), index), c.targets[:, None], np.full((n, 1), scale)], 1
      )
    )
  inputs = np.concatenate(rows)
  return SuiteProblem(
    name=name,
    description=description,
    conditions=tuple(conditions),
    net=net,
    inputs=jnp.asarray(inputs, jnp.float64),
    targets=jnp.zeros(len(inputs), jnp.float64),
    test_points=jnp.asarray(test_points, jnp.float64),
    exact=jnp.asarray(exact, jnp.float64),
    t_max=t_max,
    reference=reference,
  )


def reference_file(dsgnar: str | pathlib.Path | None, name: str) -> pathlib.Path | None:
  """DSGNAR's reference `.npz` of `name` in a checkout, or None."""
  if dsgnar is None:
    return None
  path = pathlib.Path(dsgnar) / "src" / "pinn" / "references" / REFERENCE_FILES[name]
  return path if path.is_file() else None


def make_problem(
  name: str, sizes: Mapping[str, Any], dsgnar: str | pathlib.Path | None = None
) -> SuiteProblem | None:
  """The problem `name` at `sizes` (n_pde, n_ic, n_bc, hidden, test_x, test_t); None when its
  reference needs a DSGNAR checkout that is not given (kdv). Call with x64 on."""
  weights = WEIGHTS[name]
  n_pde, n_ic, n_bc = sizes.get("n_pde", 0), sizes.get("n_ic", 0), sizes.get("n_bc", 0)
  hidden = tuple(sizes.get("hidden", ()))
  if name == "burgers":
    ic = initial_line(n_ic, -1.0, 1.0, periodic=True)
    conditions = [
      Condition(
        "pde",
        interior_points(n_pde, [-1, 0], [1, 1]),
        np.zeros(n_pde),
        weights["pde"],
        burgers_residual,
      ),
      Condition(
        "ic",
        ic,
        burgers_reference.initial_condition(ic[:, 0]),
        weights["ic"],
        value_residual,
      ),
    ]
    test = time_grid(sizes["test_x"], sizes["test_t"], -1.0, 1.0, periodic=True)
    exact = burgers_reference.cole_hopf(test[:, 0], test[:, 1])
    return _assemble(
      name,
      "Burgers u_t + u u_x = 0.01 u_xx, x ∈ [−1, 1) periodic, t ∈ [0, 1], u₀ = −sin(πx)",
      conditions,
      periodic_mlp(hidden),
      test,
      exact,
      1.0,
      "Cole–Hopf (benchmarks.burgers_reference, 200 Gauss–Hermite nodes)",
    )
  if name == "kdv":
    path = reference_file(dsgnar, "kdv")
    if path is None:
      return None
    data = np.load(path)
    coords, solution = data["coords"], data["solution"][:, 0]
    xs, ts = np.unique(coords[:, 0]), np.unique(coords[:, 1])
    keep_x = np.isin(coords[:, 0], xs[:: max(1, len(xs) // sizes["test_x"])])
    keep_t = np.isin(coords[:, 1], ts[:: max(1, (len(ts) - 1) // (sizes["test_t"] - 1))])
    keep = keep_x & keep_t
    ic = initial_line(n_ic, -1.0, 1.0, periodic=True)
    conditions = [
      Condition(
        "pde",
        interior_points(n_pde, [-1, 0], [1, 1]),
        np.zeros(n_pde),
        weights["pde"],
        kdv_residual,
      ),
      Condition("ic", ic, np.cos(np.pi * ic[:, 0]), weights["ic"], value_residual),
    ]
    return _assemble(
      name,
      "KdV u_t + u u_x + 0.022² u_xxx = 0, x ∈ [−1, 1) periodic, t ∈ [0, 1], u₀ = cos(πx)",
      conditions,
      periodic_mlp(hidden),
      coords[keep],
      solution[keep],
      1.0,
      f"DSGNAR's kdv.npz ({path}), every {max(1, len(xs) // sizes['test_x'])}th x",
    )
  if name == "wave":
    ic = initial_line(n_ic, 0.0, 1.0, periodic=False)
    conditions = [
      Condition(
        "pde",
        interior_points(n_pde, [0, 0], [1, 1]),
        np.zeros(n_pde),
        weights["pde"],
        wave_residual,
      ),
      Condition("ic", ic, wave_exact(ic), weights["ic"], value_residual),
      Condition("ic_t", ic, np.zeros(n_ic), weights["ic_t"], time_derivative_residual),
      Condition("bc", walls(n_bc, 0.0, 1.0, 1.0), np.zeros(n_bc), weights["bc"], value_residual),
    ]
    test = time_grid(sizes["test_x"], sizes["test_t"], 0.0, 1.0, periodic=False)
    return _assemble(
      name,
      "wave u_tt = 4 u_xx, x ∈ [0, 1], t ∈ [0, 1], u = 0 on the walls, "
      "u₀ = sin(πx) + ½ sin(4πx), u_t(x, 0) = 0",
      conditions,
      models.mlp([2, *hidden, 1], "tanh"),
      test,
      wave_exact(test),
      1.0,
      "the exact standing wave",
    )
  if name.startswith("poisson_"):
    grid, edge, hidden_2d, test = sizes["poisson"]
    base = pinn_2d.make_problem(grid, edge, hidden_2d, test)
    interior = np.asarray(base.inputs[: base.num_interior, :2])
    boundary = np.asarray(base.inputs[base.num_interior :, :2])
    conditions = [
      Condition("pde", interior, np.zeros(len(interior)), weights["pde"], poisson_residual),
      Condition("bc", boundary, np.zeros(len(boundary)), weights["bc"], value_residual),
    ]
    return _assemble(
      name,
      f"2D Poisson −Δu = 2π² sin(πx) sin(πy), u = 0 on ∂[0,1]² (benchmarks.pinn_2d, "
      f"{len(interior)} + {len(boundary)} points)",
      conditions,
      base.net,
      np.asarray(base.test_points),
      np.asarray(base.exact),
      None,
      "exact u* = sin(πx) sin(πy)",
    )
  raise ValueError(f"make_problem: unknown problem {name!r}; expected one of {PROBLEMS}.")
