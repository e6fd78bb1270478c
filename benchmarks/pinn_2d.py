"""The 2D Poisson PINN of Dangel et al. 2024 ("Kronecker-factored approximate curvature for
physics-informed neural networks", NeurIPS 2024): RD + Levenberg-Marquardt against Adam and
`optax.lbfgs`, relative L2 error against seconds.

Problem: −Δu = 2π² sin(πx) sin(πy) on the unit square, u = 0 on its boundary; the exact
solution is u* = sin(πx) sin(πy). u_θ is an MLP 2-64-1 (tanh; 257 parameters), float64
(x64 is switched on for this study's run only, `jax.enable_x64(True)`).

Collocation points (fixed, the same for every method and seed): a 30 × 30 grid of cell
midpoints of the square (900 interior points) and 30 equispaced midpoints on each edge
(120 boundary points). The residuals, all in one batch with target 0:

* interior point x_i: r_i = −Δu_θ(x_i) − f(x_i), the Laplacian by forward-over-reverse
  autodiff (`jax.jvp` of `jax.grad` along the two unit vectors), vmapped over points;
* boundary point x_j: r_j = w u_θ(x_j) with w = √(N_Ω / N_∂Ω) = √7.5, so that ½ Σ r² is
  N_Ω times the loss of Dangel et al., ½ mean_Ω r² + ½ mean_∂Ω r² (both terms averaged over
  their own points).

The batch's inputs are (n, 3): the point and a flag column (1 on the boundary);
`apply_fn(params, inputs) -> (n,)` is the residual, the targets are zeros, the loss "mse"
(RD: ½ Σ r²; Adam and L-BFGS: the mean of r², as the shared runner trains them).

Metric: the relative L2 error ‖u_θ − u*‖ / ‖u*‖ on a fixed 100 × 100 test grid of [0, 1]²
(boundary included), recorded against training seconds and steps (compile and evaluation
excluded: the runner's protocol, docs/benchmarks.md, and its loop, `training.train_loop`), at
steps 1, 2, 4, ... and every
budget / `EVAL_POINTS` seconds. Methods: RD + LM with the dense Cholesky solver (the default)
and with the matrix-free Nyström-PCG solver (`CG`), Adam over `ADAM_LRS`, `optax.lbfgs()`;
`FULL["budget"]` seconds per run, `FULL["seeds"]` initialisation seeds.

    python -m benchmarks run poisson_2d --out benchmarks/results/cpu
    python -m benchmarks run poisson_2d --quick --out /tmp/x

The study at scale, `poisson_2d_scale` (`SCALE`): 100 × 100 interior and 4 × 200 boundary
points (10,800 residuals), MLP 2-64-64-64-1 (8,577 parameters), 120 s per run. Methods: Adam,
`optax.lbfgs`, RD + LM with the matrix-free `cg` (products through the network), with
`cg(products="jacobian")` (J materialised once per step, products from it) and with the dense
Cholesky solver (primal JᵀJ, 8,577²). Besides the error curves it records each compiled step's
XLA memory and each method's peak process memory, measured in a fresh process per method
(`python -m benchmarks.pinn_2d --probe LABEL`):

    python -m benchmarks run poisson_2d_scale --out benchmarks/results/cpu
"""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import rdescent as rd
from benchmarks import models
from benchmarks import plotting
from benchmarks import registry
from benchmarks import report
from benchmarks import training
from benchmarks.report import by_label
from benchmarks.report import format_number
from benchmarks.report import median
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info
from benchmarks.runner import select
from benchmarks.training import rounded

FULL = {"grid": 30, "edge": 30, "hidden": 64, "test": 100, "seeds": 3, "budget": 30.0}
QUICK = {"grid": 6, "edge": 6, "hidden": 8, "test": 20, "seeds": 1, "budget": 0.3}
TARGET = 1e-7  # relative L2 error
TARGET_SECONDS = 10.0  # the target: TARGET within this many seconds
EVAL_POINTS = 200
ADAM_LRS = (1e-3, 3e-3, 1e-2)
# Nyström rank ℓ, CG iterations and tolerance of the matrix-free solver (see the table note):
# with ℓ = 20 the first steps (λ large) converge in 2-8 iterations to 1e-8, later ones stop
# at maxiter; a larger ℓ costs ℓ products per step and did not pay, neither did truncated CG.
# Products through the network, named: cg's default products="auto" would take J here.
CG = {"rank": 20, "maxiter": 50, "tol": 1e-8, "products": "network"}
# The study at scale (`poisson_2d_scale`, the target (ii)): 10,000 interior + 800
# boundary points, MLP 2-64-64-64-1 (8,577 parameters), 120 s per run.
SCALE = {"grid": 100, "edge": 200, "hidden": (64, 64, 64), "test": 100, "seeds": 3, "budget": 120.0}
SCALE_QUICK = {"grid": 6, "edge": 6, "hidden": (8, 8), "test": 20, "seeds": 1, "budget": 0.3}
SCALE_TARGET = 1e-6
SCALE_TARGET_SECONDS = 120.0
SCALE_MEMORY_TARGET = 3e9  # bytes of peak process memory
# cg with its products from the materialised J (pilot, seed 0, 120 s: ℓ = 100 needs 3-5
# iterations per solve and reached 2.1e-4; ℓ = 200 needs 1-2 but costs 0.6 s more per step).
CG_JACOBIAN = {"rank": 100, "maxiter": 50, "tol": 1e-8, "products": "jacobian"}
# Dangel et al. 2024, Table/Figure of the 2D Poisson problem (MLP 2-64-1, 257 parameters),
# best run of each method after 1,000 s on a GPU: relative L2 error.
PUBLISHED = {"ENGD": 6.2e-8, "KFAC": 2.0e-7, "Adam": 9.4e-5, "L-BFGS": 1.8e-4}


class Problem(NamedTuple):
  """The collocation batch, the test grid and u_θ of one size."""

  inputs: jax.Array  # (n, 3): point, boundary flag
  targets: jax.Array  # (n,) zeros
  test_points: jax.Array  # (t, 2)
  exact: jax.Array  # (t,) u* on the test points
  net: models.Model
  apply: Callable[[Any, jax.Array], jax.Array]  # (params, inputs) -> (n,) residuals
  num_interior: int
  num_boundary: int
  boundary_weight: float


def exact_solution(points: jax.Array) -> jax.Array:
  """u*(x, y) = sin(πx) sin(πy) of points (..., 2)."""
  return jnp.sin(jnp.pi * points[..., 0]) * jnp.sin(jnp.pi * points[..., 1])


def forcing(point: jax.Array) -> jax.Array:
  """f = 2π² sin(πx) sin(πy), so that −Δu* = f."""
  return 2.0 * jnp.pi**2 * exact_solution(point)


def laplacian(u: Callable[[jax.Array], jax.Array], point: jax.Array) -> jax.Array:
  """Δu at one point (2,): forward-over-reverse, Σ_i ∂_i (∇u)_i by `jax.jvp` of `jax.grad`."""
  gradient = jax.grad(u)
  eye = jnp.eye(point.shape[0], dtype=point.dtype)
  return sum(jax.jvp(gradient, (point,), (eye[i],))[1][i] for i in range(point.shape[0]))


def pde_residual(
  u: Callable[[jax.Array], jax.Array], row: jax.Array, boundary_weight: float
) -> jax.Array:
  """The residual of one batch row (x, y, flag): −Δu − f inside, w u on the boundary."""
  point, flag = row[:2], row[2]
  interior = -laplacian(u, point) - forcing(point)
  return jnp.where(flag > 0, boundary_weight * u(point), interior)


def collocation(grid: int, edge: int) -> tuple[np.ndarray, np.ndarray]:
  """Interior points (grid², 2), cell midpoints; boundary points (4 edge, 2), edge midpoints."""
  g = (np.arange(grid) + 0.5) / grid
  xs, ys = np.meshgrid(g, g, indexing="ij")
  interior = np.stack([xs.ravel(), ys.ravel()], axis=1)
  e = (np.arange(edge) + 0.5) / edge
  zero, one = np.zeros(edge), np.ones(edge)
  boundary = np.concatenate(
    [
      np.stack([e, zero], 1),
      np.stack([e, one], 1),
      np.stack([zero, e], 1),
      np.stack([one, e], 1),
    ]
  )
  return interior, boundary


def make_problem(grid: int, edge: int, hidden: int | Sequence[int], test: int) -> Problem:
  """The problem at one size (call with x64 on: float64 arrays); `hidden`: the hidden
  widths of the tanh MLP (one int: one layer)."""
  interior, boundary = collocation(grid, edge)
  points = np.concatenate([interior, boundary])
  flag = np.concatenate([np.zeros(len(interior)), np.ones(len(boundary))])
  inputs = jnp.asarray(np.concatenate([points, flag[:, None]], axis=1), jnp.float64)
  weight = math.sqrt(len(interior) / len(boundary))
  widths = [hidden] if isinstance(hidden, int) else list(hidden)
  net = models.mlp([2, *widths, 1], "tanh")

  def apply(params, batch):
    u = lambda point: net.apply(params, point[None])[0, 0]
    return jax.vmap(lambda row: pde_residual(u, row, weight))(batch)

  t = np.linspace(0.0, 1.0, test)
  tx, ty = np.meshgrid(t, t, indexing="ij")
  test_points = jnp.asarray(np.stack([tx.ravel(), ty.ravel()], axis=1), jnp.float64)
  return Problem(
    inputs=inputs,
    targets=jnp.zeros(points.shape[0], jnp.float64),
    test_points=test_points,
    exact=exact_solution(test_points),
    net=net,
    apply=apply,
    num_interior=len(interior),
    num_boundary=len(boundary),
    boundary_weight=weight,
  )


def init_params(problem: Problem, seed: int) -> Any:
  """The seed's initial parameters (LeCun normal, zero biases), float64."""
  params = problem.net.init(jax.random.PRNGKey(seed))
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


def relative_l2(problem: Problem, params: Any) -> jax.Array:
  """‖u_θ − u*‖ / ‖u*‖ on the test grid."""
  prediction = problem.net.apply(params, problem.test_points)[:, 0]
  return jnp.linalg.norm(prediction - problem.exact) / jnp.linalg.norm(problem.exact)


def mean_loss(problem: Problem, params: Any, inputs: jax.Array) -> jax.Array:
  """The mean of r² over the batch rows (Adam's and L-BFGS's objective)."""
  return jnp.mean(jnp.square(problem.apply(params, inputs)))


# ----------------------------------------------------------------------------- methods


class Method(NamedTuple):
  """A method of the study: `build(problem) -> (init, step)`, with
  `init(params) -> state` and `step(params, state, inputs, targets) -> (params, state)`."""

  label: str
  family: str
  hyperparams: Mapping[str, Any]
  build: Callable[[Problem], tuple[Callable, Callable]]


def rd_lm_method(label: str, describe: Mapping[str, Any], **options: Any) -> Method:
  """RD + Levenberg-Marquardt with `gram="jacobian"` and the given options of
  `rd.regression_descent` (`describe`: how the record names them)."""

  def build(problem):
    tx = rd.regression_descent(
      problem.apply,
      1.0,
      damping=rd.damping.levenberg_marquardt(),
      gram="jacobian",  # the residual holds nested derivatives
      **options,
    )

    def step(params, state, inputs, targets):
      updates, state = tx.update(None, state, params, batch=(inputs, targets))
      return optax.apply_updates(params, updates), state

    return tx.init, step

  hyperparams = {"damping": "levenberg_marquardt()", "learning_rate": 1.0, **describe}
  return Method(label, "rd", hyperparams, build)


def rd_method(label: str, solver: Any, describe: Mapping[str, Any], metric: Any = None) -> Method:
  return rd_lm_method(label, describe, solver=solver, metric=metric)


def adam_method(learning_rate: float) -> Method:
  def build(problem):
    tx = optax.adam(learning_rate)

    def step(params, state, inputs, targets):
      del targets
      grads = jax.grad(mean_loss, argnums=1)(problem, params, inputs)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    return tx.init, step

  return Method(f"adam lr={learning_rate:g}", "adam", {"learning_rate": learning_rate}, build)


def lbfgs_method() -> Method:
  def build(problem):
    tx = optax.lbfgs()

    def step(params, state, inputs, targets):
      del targets
      value_fn = lambda p: mean_loss(problem, p, inputs)
      # The same loss every step: reuse the line search's last evaluation.
      value, grads = optax.value_and_grad_from_state(value_fn)(params, state=state)
      updates, state = tx.update(grads, state, params, value=value, grad=grads, value_fn=value_fn)
      return optax.apply_updates(params, updates), state

    return tx.init, step

  return Method("optax.lbfgs", "lbfgs", {"memory_size": 10, "linesearch": "zoom"}, build)


CHOLESKY_LABEL = "rd + lm (cholesky)"
MARQUARDT_LABEL = "rd + lm + marquardt metric (cholesky)"
CG_LABEL = f"rd + lm (cg ℓ={CG['rank']})"


def default_methods(quick: bool) -> list[Method]:
  cg = rd.solvers.cg(**CG)
  return [
    rd_method(CHOLESKY_LABEL, "cholesky", {"solver": "cholesky"}),
    # Not in --quick: on its 33-parameter net Marquardt's metric stalls (see the PINN guide).
    *(
      ()
      if quick
      else (
        rd_method(
          MARQUARDT_LABEL,
          "cholesky",
          {"solver": "cholesky", "metric": "marquardt"},
          metric="marquardt",
        ),
      )
    ),
    rd_method(
      CG_LABEL,
      cg,
      {"solver": f"cg(rank={CG['rank']}, maxiter={CG['maxiter']}, tol={CG['tol']:g})"},
    ),
    *(adam_method(lr) for lr in ((3e-3,) if quick else ADAM_LRS)),
    lbfgs_method(),
  ]


CG_JACOBIAN_LABEL = f"rd + lm (cg ℓ={CG_JACOBIAN['rank']}, products from J)"


def _cg_describe(config: Mapping[str, Any]) -> str:
  return (
    "cg("
    + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" for k, v in config.items())
    + ")"
  )


def scale_methods(quick: bool) -> list[Method]:
  """The at-scale study's methods, cheapest in memory first (the process's peak memory,
  recorded after each run, then rises method by method)."""
  del quick
  return [
    adam_method(1e-3),
    lbfgs_method(),
    rd_method(CG_LABEL, rd.solvers.cg(**CG), {"solver": _cg_describe(CG)}),
    rd_method(
      CG_JACOBIAN_LABEL, rd.solvers.cg(**CG_JACOBIAN), {"solver": _cg_describe(CG_JACOBIAN)}
    ),
    rd_method(CHOLESKY_LABEL, "cholesky", {"solver": "cholesky (dense primal JᵀJ, p × p)"}),
  ]


# ----------------------------------------------------------------------------- runs


def _rd_state(state: Any) -> Any:
  """The `RegressionDescentState` inside an RD chain's state, or None."""
  for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "solve_iterations")):
    if hasattr(leaf, "solve_iterations"):
      return leaf
  return None


def compile_method(problem: Problem, method: Method, cache: dict) -> tuple[Callable, Any, float]:
  """`(init, compiled step, compile seconds)` of `method`, compiled once (kept in `cache`)."""
  if method.label not in cache:
    init, step = method.build(problem)
    params = init_params(problem, 0)
    state = jax.tree_util.tree_map(jnp.copy, init(params))
    start = time.perf_counter()
    compiled = (
      jax.jit(step, donate_argnums=(0, 1))
      .lower(params, state, problem.inputs, problem.targets)
      .compile()
    )
    cache[method.label] = (init, compiled, time.perf_counter() - start)
  return cache[method.label]


def step_memory_bytes(compiled: Any) -> int | None:
  """XLA's memory of one compiled step: arguments + outputs + temporaries − aliased."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports it
    return None
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far: VmHWM of /proc/self/status on Linux (the
  high-water mark of this process image; `ru_maxrss` would also count what a parent held
  when it forked this process), else `ru_maxrss`."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return 1024 * int(line.split()[1])
  except OSError:
    pass
  return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def process_peak_memory(label: str, quick: bool, steps: int = 3) -> int | None:
  """Peak resident memory of a fresh process that builds the at-scale problem, compiles
  the method `label` and runs `steps` steps of it (`python -m benchmarks.pinn_2d --probe`):
  the memory the method needs on its own, JAX's runtime included."""
  command = [sys.executable, "-m", "benchmarks.pinn_2d", "--probe", label, "--steps", str(steps)]
  if quick:
    command.append("--quick")
  root = pathlib.Path(__file__).resolve().parent.parent
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
  )
  done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
  for line in done.stdout.splitlines():
    if line.startswith("peak_rss_bytes "):
      return int(line.split()[1])
  raise RuntimeError(
    f"memory probe of {label!r} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
  )


def _probe(label: str, quick: bool, steps: int) -> None:
  """The child of `process_peak_memory`: prints the peak RSS after `steps` steps."""
  sizes = SCALE_QUICK if quick else SCALE
  with jax.enable_x64(True):
    problem = make_problem(sizes["grid"], sizes["edge"], sizes["hidden"], sizes["test"])
    (method,) = [m for m in scale_methods(quick) if m.label == label]
    train(problem, method, 0, budget=math.inf, compiled_cache={}, max_steps=steps, eval_points=1)
  print(f"peak_rss_bytes {peak_rss_bytes()}", flush=True)


def train(
  problem: Problem,
  method: Method,
  seed: int,
  *,
  budget: float,
  compiled_cache: dict,
  max_steps: int | None = None,
  eval_points: int = EVAL_POINTS,
  target: float = TARGET,
) -> dict[str, Any]:
  """One run: the compiled step until `budget` seconds of training; the run record."""
  params = init_params(problem, seed)
  init, compiled, compile_seconds = compile_method(problem, method, compiled_cache)
  state = jax.tree_util.tree_map(jnp.copy, init(params))
  error_fn = jax.jit(lambda p: relative_l2(problem, p))
  loss_fn = jax.jit(lambda p: mean_loss(problem, p, problem.inputs))
  curve: dict[str, list] = {"step": [], "seconds": [], "rel_l2": [], "loss": []}
  solver_curve: dict[str, list] = {"step": [], "damping": [], "iterations": [], "residual": []}

  def evaluate(carry: tuple, steps: int, seconds: float) -> float:
    params, state = carry
    error = float(error_fn(params))
    curve["step"].append(steps)
    curve["seconds"].append(rounded(seconds))
    curve["rel_l2"].append(rounded(error))
    curve["loss"].append(rounded(loss_fn(params)))
    rd_state = _rd_state(state)
    if rd_state is not None and steps > 0:
      solver_curve["step"].append(steps)
      solver_curve["damping"].append(rounded(rd_state.damping))
      solver_curve["iterations"].append(int(rd_state.solve_iterations))
      solver_curve["residual"].append(rounded(rd_state.solve_residual, 3))
    return error

  loop = training.train_loop(
    compiled,
    (params, state),
    lambda _: (problem.inputs, problem.targets),
    evaluate,
    training.EvaluationSchedule(budget / eval_points).due,
    budget=budget,
    max_steps=max_steps,
  )
  (params, state), steps, seconds, diverged = loop.carry, loop.steps, loop.seconds, loop.diverged
  reached = report.time_to_target({"curve": curve}, target, key="rel_l2")
  final = curve["rel_l2"][-1]
  record = {
    "label": method.label,
    "family": method.family,
    "hyperparams": dict(method.hyperparams),
    "seed": seed,
    "steps": steps,
    "train_seconds": round(seconds, 4),
    "compile_seconds": round(compile_seconds, 4),
    "ms_per_step": 1e3 * seconds / max(steps, 1),
    "final_rel_l2": final if not diverged else None,
    "best_rel_l2": min((e for e in curve["rel_l2"] if e is not None), default=None),
    "final_loss": curve["loss"][-1],
    "time_to_target": reached if math.isfinite(reached) else None,
    "diverged": diverged,
    "curve": curve,
  }
  record["step_memory_bytes"] = step_memory_bytes(compiled)
  rd_state = _rd_state(state)
  if rd_state is not None:
    record["num_rejected"] = int(rd_state.num_rejected)
    record["final_damping"] = rounded(rd_state.damping)
    record["solver"] = solver_curve
  return record


# ----------------------------------------------------------------------------- checks


def _median_ms(fn: Callable, *args: Any, repeats: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def first_step_update(problem: Problem, compiled: tuple[Callable, Any, float], params: Any) -> Any:
  """θ₁ − θ₀ of one compiled step (`compile_method`) from `params` (the RD + LM update: η = 1)."""
  init, step, _ = compiled
  copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)
  stepped, _ = step(copy(params), copy(init(params)), problem.inputs, problem.targets)
  return jax.tree_util.tree_map(lambda a, b: a - b, stepped, params)


def relative_difference(a: Any, b: Any) -> float:
  fa, fb = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def step_breakdown(
  problem: Problem,
  params: Any,
  rank: int,
  repeats: int = 20,
  *,
  dense: bool = True,
  jacobian_rank: int | None = None,
) -> dict[str, float]:
  """Milliseconds of the parts of an RD step at `params` (median of repeats, jitted each):
  the residuals (one forward pass of the batch), the per-point Jacobian J (n × p, vmapped
  reverse mode over points), JᵀJ + its Cholesky solve (the dense primal system; `dense`),
  one matrix-free product JᵀJ v (a JVP of the linearised batch function and a VJP), and the
  ℓ products of the Nyström sketch (vmapped over ℓ vectors). With `jacobian_rank`: also
  one product from the materialised J, J (vᵀJ)ᵀ, and the sketch of that rank from J (two
  matrix-matrix products), as `cg(products="jacobian")` computes them."""
  flat, unravel = ravel_pytree(params)
  inputs = problem.inputs
  fn = lambda f: problem.apply(unravel(f), inputs)

  def one_residual(f, row):
    return problem.apply(unravel(f), row[None])[0]

  jacobian = jax.jit(jax.vmap(jax.jacrev(one_residual), in_axes=(None, 0)))
  matrix = jacobian(flat, inputs)
  residuals = fn(flat)

  def dense_solve(j, r):
    a = j.T @ j + 1e-6 * jnp.eye(j.shape[1], dtype=j.dtype)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), j.T @ r)

  def product(f, v):
    _, jvp = jax.linearize(fn, f)
    _, vjp = jax.vjp(fn, f)
    return vjp(jvp(v))[0]

  def sketch(f, vs):
    _, jvp = jax.linearize(fn, f)
    _, vjp = jax.vjp(fn, f)
    return jax.vmap(lambda v: vjp(jvp(v))[0])(vs)

  vectors = jnp.ones((rank, flat.size), flat.dtype)
  parts = {
    "residuals_ms": _median_ms(jax.jit(fn), flat, repeats=repeats),
    "jacobian_ms": _median_ms(jacobian, flat, inputs, repeats=repeats),
  }
  if dense:
    parts["normal_matrix_and_cholesky_ms"] = _median_ms(
      jax.jit(dense_solve), matrix, residuals, repeats=repeats
    )
  parts["product_ms"] = _median_ms(jax.jit(product), flat, flat, repeats=repeats)
  parts[f"sketch_{rank}_products_ms"] = _median_ms(jax.jit(sketch), flat, vectors, repeats=repeats)
  if jacobian_rank is not None:
    rows = matrix.reshape(matrix.shape[0], -1)
    parts["jacobian_product_ms"] = _median_ms(
      jax.jit(lambda j, v: (j @ v) @ j), rows, flat, repeats=repeats
    )
    block = jnp.ones((flat.size, jacobian_rank), flat.dtype)
    parts[f"jacobian_sketch_{jacobian_rank}_ms"] = _median_ms(
      jax.jit(lambda j, b: ((j @ b).T @ j).T), rows, block, repeats=repeats
    )
  return parts


# ----------------------------------------------------------------------------- study


def _header(study: str, options: StudyOptions) -> dict[str, Any]:
  """The results JSON's first entries: study, kind, when, the command and the machine."""
  return {
    "study": study,
    "kind": "pinn_2d",
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": options.command,
    "machine": machine_info(),
  }


def task_record(
  name: str, problem: Problem, sizes: Mapping[str, Any], num_params: int
) -> dict[str, Any]:
  """The results JSON's "task" entry of one problem size."""
  hidden = sizes["hidden"]
  widths = str(hidden) if isinstance(hidden, int) else "-".join(str(w) for w in hidden)
  return {
    "name": name,
    "model": f"MLP 2-{widths}-1 (tanh)",
    "num_params": num_params,
    "interior_points": problem.num_interior,
    "boundary_points": problem.num_boundary,
    "boundary_weight": problem.boundary_weight,
    "test_grid": f"{sizes['test']} × {sizes['test']} on [0, 1]²",
    "dtype": "float64",
    "loss": "rd: ½ Σ r²; adam, lbfgs: mean r² (r: interior −Δu − f, boundary w u)",
  }


def _settings(
  study: str, options: StudyOptions, full: Mapping[str, Any], quick: Mapping[str, Any], methods
) -> tuple[Mapping[str, Any], int, float, list[Method]]:
  """(sizes, seeds, budget, the selected methods) of a run of `study`."""
  sizes = quick if options.quick else full
  chosen = select(methods(options.quick), options.optimizers)
  if not chosen:
    wanted = ",".join(options.optimizers or ())
    raise SystemExit(f"{study}: no method matches --optimizers {wanted}.")
  return sizes, options.seeds or sizes["seeds"], options.budget or sizes["budget"], chosen


def _compiled(sizes: Mapping[str, Any], methods: Sequence[Method]) -> tuple[Problem, Any, dict]:
  """The problem, seed 0's parameters and every method compiled before any clock starts
  (call with x64 on)."""
  problem = make_problem(sizes["grid"], sizes["edge"], sizes["hidden"], sizes["test"])
  cache: dict = {}
  for method in methods:
    compile_method(problem, method, cache)
  return problem, init_params(problem, 0), cache


def run(options: StudyOptions) -> dict[str, Any]:
  sizes, seeds, budget, methods = _settings("poisson_2d", options, FULL, QUICK, default_methods)
  runs = []
  with jax.enable_x64(True):
    problem, params0, cache = _compiled(sizes, methods)
    rd_labels = [m.label for m in methods if m.family == "rd"]
    checks: dict[str, Any] = {
      "exact_residual_max": float(
        jnp.max(
          jnp.abs(
            jax.vmap(lambda row: pde_residual(exact_solution, row, problem.boundary_weight))(
              problem.inputs
            )
          )
        )
      ),
      "first_step_cg_vs_cholesky": None,
    }
    if CHOLESKY_LABEL in rd_labels and CG_LABEL in rd_labels:
      updates = [first_step_update(problem, cache[k], params0) for k in (CG_LABEL, CHOLESKY_LABEL)]
      checks["first_step_cg_vs_cholesky"] = relative_difference(*updates)
    breakdown = step_breakdown(problem, params0, CG["rank"], repeats=5 if options.quick else 50)
    for seed in range(seeds):  # seed-major, so that machine load affects all alike
      for method in methods:
        record = train(problem, method, seed, budget=budget, compiled_cache=cache)
        runs.append(record)
        if options.progress:
          print(
            f"poisson_2d {method.label:24s} seed {seed}: rel L2 {record['final_rel_l2']} "
            f"after {record['steps']} steps ({record['ms_per_step']:.3g} ms/step), "
            f"1e-7 at {record['time_to_target']} s",
            flush=True,
          )
    num_params = models.num_params(params0)
  return {
    **_header("poisson_2d", options),
    "task": task_record(
      "2D Poisson PINN −Δu = 2π² sin(πx) sin(πy), u = 0 on ∂[0,1]² (Dangel et al. 2024)",
      problem,
      sizes,
      num_params,
    ),
    "config": {
      "seeds": seeds,
      "budget_seconds": budget,
      "target_rel_l2": TARGET,
      "target_seconds": TARGET_SECONDS,
      "eval_points": EVAL_POINTS,
      "cg": dict(CG),
      "quick": options.quick,
      "published_gpu_1000s": dict(PUBLISHED),
    },
    "methods": [
      {"label": m.label, "family": m.family, "hyperparams": dict(m.hyperparams)} for m in methods
    ],
    "checks": checks,
    "step_breakdown": breakdown,
    "runs": runs,
  }


def run_scale(options: StudyOptions) -> dict[str, Any]:
  """The issue's target (ii): the 2D Poisson PINN with 10,800 residuals and 8,577 parameters."""
  sizes, seeds, budget, methods = _settings(
    "poisson_2d_scale", options, SCALE, SCALE_QUICK, scale_methods
  )
  runs = []
  with jax.enable_x64(True):
    problem, params0, cache = _compiled(sizes, methods)
    breakdown = step_breakdown(
      problem,
      params0,
      CG["rank"],
      repeats=2 if options.quick else 5,
      dense=False,
      jacobian_rank=CG_JACOBIAN["rank"],
    )
    # Each method's memory on its own, in a fresh process (this one holds all of them).
    peak_memory = {m.label: process_peak_memory(m.label, options.quick) for m in methods}
    for seed in range(seeds):  # seed-major, so that machine load affects all alike
      for method in methods:
        record = train(
          problem, method, seed, budget=budget, compiled_cache=cache, target=SCALE_TARGET
        )
        record["process_peak_bytes"] = peak_memory[method.label]
        runs.append(record)
        if options.progress:
          print(
            f"poisson_2d_scale {method.label:36s} seed {seed}: rel L2 {record['final_rel_l2']} "
            f"after {record['steps']} steps ({record['ms_per_step']:.4g} ms/step), step memory "
            f"{_gigabytes(record['step_memory_bytes'])} GB, peak RSS "
            f"{_gigabytes(record['process_peak_bytes'])} GB",
            flush=True,
          )
    num_params = models.num_params(params0)
  return {
    **_header("poisson_2d_scale", options),
    "task": task_record(
      "2D Poisson PINN at scale, −Δu = 2π² sin(πx) sin(πy), u = 0 on ∂[0,1]²",
      problem,
      sizes,
      num_params,
    ),
    "config": {
      "seeds": seeds,
      "budget_seconds": budget,
      "target_rel_l2": SCALE_TARGET,
      "target_seconds": SCALE_TARGET_SECONDS,
      "target_memory_bytes": SCALE_MEMORY_TARGET,
      "eval_points": EVAL_POINTS,
      "cg": dict(CG),
      "cg_jacobian": dict(CG_JACOBIAN),
      "quick": options.quick,
    },
    "methods": [
      {"label": m.label, "family": m.family, "hyperparams": dict(m.hyperparams)} for m in methods
    ],
    "step_breakdown": breakdown,
    "runs": runs,
  }


def _verdict(met: bool) -> str:
  return "**met**" if met else "**not met**"


def _gigabytes(value: float | None) -> str:
  return "–" if value is None else f"{value / 1e9:.2f}"


def scale_table(result: Mapping[str, Any]) -> str:
  """Per method: final relative L2, time to 1e-6, steps, ms/step, memory; the verdicts."""
  config, task = result["config"], result["task"]
  target = config["target_rel_l2"]
  groups = by_label(result)

  def memory(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: _gigabytes(groups[row["label"]][0].get(key))

  lines, rows = _method_table(
    result,
    [
      ("step memory GB (XLA)", memory("step_memory_bytes")),
      ("peak RSS GB (own process)", memory("process_peak_bytes")),
    ],
    ms_format=".4g",
  )
  lines += [
    "",
    f"{task['name']}; {task['model']}, {task['num_params']} parameters, float64; "
    f"{task['interior_points']} interior + {task['boundary_points']} boundary points; relative "
    f"L2 error on the {task['test_grid']} test grid; {config['budget_seconds']:g} s of training "
    f"per run, {config['seeds']} seed(s), medians [min–max] over seeds. Peak RSS: of a fresh "
    "process that builds the problem, compiles the method and runs 3 steps "
    "(`python -m benchmarks.pinn_2d --probe LABEL`), JAX's runtime included. Step memory: "
    "XLA's arguments + outputs + temporaries of the compiled step. Step parts at the "
    "initial parameters (ms): "
    + ", ".join(f"{k.removesuffix('_ms')} {v:.4g}" for k, v in result["step_breakdown"].items())
    + ".",
    "",
  ]
  best = {
    f: min((r["final_rel_l2"] for r in rows if r["family"] == f), default=math.inf)
    for f in ("rd", "adam", "lbfgs")
  }
  baseline = min(best["adam"], best["lbfgs"])
  verdicts = []
  for row in rows:
    if row["family"] != "rd":
      continue
    first = groups[row["label"]][0]
    within = row["reached"] == row["seeds"] and row["time_to_target"] <= config["target_seconds"]
    memory = first.get("process_peak_bytes") or math.inf
    if math.isfinite(baseline):
      ratio = baseline / row["final_rel_l2"] if row["final_rel_l2"] > 0 else math.inf
      against = (
        f"{ratio:.3g}× below the better of L-BFGS and Adam ({_verdict(ratio >= 100)}, target 100×)"
      )
    else:
      against = "no L-BFGS or Adam run to compare with (target 100× below them)"
    verdicts.append(
      f"{row['label']}: ≤ {target:g} in {config['target_seconds']:g} s "
      f"{_verdict(within)} (final {format_number(row['final_rel_l2'])}); {against}; peak memory "
      f"{_gigabytes(memory)} GB ({_verdict(memory <= config['target_memory_bytes'])}, "
      f"target {config['target_memory_bytes'] / 1e9:g} GB)"
    )
  lines.append("Targets: " + "; ".join(verdicts) + ".")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- table, plot


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
  rows = []
  for label, records in by_label(result).items():
    finals = [r["final_rel_l2"] for r in records]
    times = [r["time_to_target"] for r in records]
    iterations = [i for r in records for i in r.get("solver", {}).get("iterations", [])]
    rows.append(
      {
        "label": label,
        "family": records[0]["family"],
        "seeds": len(records),
        "final_rel_l2": median(finals),
        "final_min": min((f for f in finals if f is not None), default=math.inf),
        "final_max": max((f for f in finals if f is not None), default=math.inf),
        "time_to_target": median(times),
        "reached": sum(t is not None for t in times),
        "steps": float(np.median([r["steps"] for r in records])),
        "ms_per_step": float(np.median([r["ms_per_step"] for r in records])),
        "compile_seconds": float(np.median([r["compile_seconds"] for r in records])),
        "iterations": float(np.median(iterations)) if iterations else None,
      }
    )
  return rows


def _method_table(
  result: Mapping[str, Any],
  columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]],
  *,
  ms_format: str,
) -> tuple[list[str], list[dict[str, Any]]]:
  """The per-method table lines (`summary_rows`): error, time to target, steps, ms/step, the
  study's own `columns` (header, cell of a row), CG iterations; and the rows."""
  target = result["config"]["target_rel_l2"]
  head = [
    "method",
    "final rel. L2 [min–max]",
    f"time to {target:g} s (reached)",
    "steps",
    "ms/step",
    *(name for name, _ in columns),
    "CG iterations (median)",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rows = summary_rows(result)
  for row in rows:
    cells = [
      row["label"],
      f"{format_number(row['final_rel_l2'])} "
      f"[{format_number(row['final_min'])}–{format_number(row['final_max'])}]",
      f"{format_number(row['time_to_target'])} ({row['reached']}/{row['seeds']})",
      f"{row['steps']:.0f}",
      format(row["ms_per_step"], ms_format),
      *(cell(row) for _, cell in columns),
      "–" if not row["iterations"] else f"{row['iterations']:.0f}",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return lines, rows


def markdown_table(result: Mapping[str, Any]) -> str:
  """Per method: final relative L2 (median [min–max] of seeds), time to 1e-7, steps, ms/step."""
  config = result["config"]
  target = config["target_rel_l2"]
  lines, rows = _method_table(
    result, [("compile s", lambda row: f"{row['compile_seconds']:.2f}")], ms_format=".3g"
  )
  task, checks, parts = result["task"], result["checks"], result["step_breakdown"]
  published = ", ".join(f"{k} {v:.2g}" for k, v in config["published_gpu_1000s"].items())
  lines += [
    "",
    f"{task['name']}; {task['model']}, {task['num_params']} parameters, float64; "
    f"{task['interior_points']} interior + {task['boundary_points']} boundary points "
    f"(boundary residuals weighted by √(N_Ω/N_∂Ω) = {task['boundary_weight']:.4g}); relative "
    f"L2 error on the {task['test_grid']} test grid; {config['budget_seconds']:g} s of training "
    f"per run, {config['seeds']} seed(s), medians [min–max] over seeds. cg: "
    f"rdescent.solvers.cg(rank={config['cg']['rank']}, maxiter={config['cg']['maxiter']}, "
    f"tol={config['cg']['tol']:g}); CG iterations: of the last solve of a step, at the "
    "evaluation points.",
    "",
    f"Published (Dangel et al. 2024, GPU, after 1,000 s): {published}.",
    "",
  ]
  target_seconds = config["target_seconds"]
  verdicts = []
  for row in rows:
    if row["family"] != "rd":
      continue
    met = row["reached"] == row["seeds"] and row["time_to_target"] <= target_seconds
    verdicts.append(
      f"{row['label']}: {'**met**' if met else '**not met**'} "
      f"(median time to {target:g}: {format_number(row['time_to_target'])}"
      + (" s)" if np.isfinite(row["time_to_target"]) else ")")
    )
  lines.append(
    f"Target: relative L2 ≤ {target:g} within {target_seconds:g} s of training — "
    + "; ".join(verdicts)
    + "."
  )
  lines += [
    "",
    "Checks: first RD + LM step, cg vs cholesky, relative difference "
    + (
      "–"
      if checks["first_step_cg_vs_cholesky"] is None
      else f"{checks['first_step_cg_vs_cholesky']:.2g}"
    )
    + f"; max |residual| of the exact u* "
    f"{checks['exact_residual_max']:.2g}. Step parts at the initial parameters (ms): "
    + ", ".join(f"{k.removesuffix('_ms')} {v:.3g}" for k, v in parts.items())
    + ".",
  ]
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Relative L2 against seconds and against steps (median over seeds, log scales)."""
  plt = plotting.pyplot()
  groups = by_label(result)
  fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (label, records) in enumerate(groups.items()):
    style = "-" if records[0]["family"] == "rd" else "--"
    for ax, axis in zip(axes, ("seconds", "step")):
      grid = report.curve_grid(records, axis, 400)
      ax.plot(
        grid,
        report.median_curve(records, axis, grid, key="rel_l2")[0],
        style,
        color=colors[i % len(colors)],
        label=label,
      )
  config = result["config"]
  for ax in axes:
    ax.set_yscale("log")
    target = config["target_rel_l2"]
    ax.axhline(target, color="gray", lw=0.8, ls=":", label=f"target {target:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("relative L2 error of u_θ (test grid)")
  if config["budget_seconds"] >= config["target_seconds"]:
    axes[0].axvline(config["target_seconds"], color="gray", lw=0.8, ls="-.")
  axes[0].set_xlabel("training seconds (compile and evaluation excluded)")
  axes[1].set_xscale("log")
  axes[1].set_xlabel("steps")
  axes[0].legend(fontsize=7)
  fig.suptitle(
    f"{result['study']}: {result['task']['model']}, float64 — {result['machine']['device']}, "
    f"median over {config['seeds']} seed(s)",
    fontsize=9,
  )
  return plotting.save_figure(fig, path)


registry.register(
  "poisson_2d",
  run,
  "2D Poisson PINN (Dangel et al. 2024), RD + LM (cholesky, cg) vs Adam and optax.lbfgs, float64",
  in_all=False,
  table=markdown_table,
  plot=plot,
)


registry.register(
  "poisson_2d_scale",
  run_scale,
  "2D Poisson PINN at scale (10,800 residuals, 8,577 parameters), RD + LM (cg, cg from J, "
  "cholesky) vs Adam and optax.lbfgs, float64, 120 s, time and memory per step",
  in_all=False,
  table=scale_table,
  plot=plot,
)

if __name__ == "__main__":
  import argparse

  parser = argparse.ArgumentParser(description="poisson_2d_scale: one method's memory probe")
  parser.add_argument("--probe", required=True, help="the method's label")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  arguments = parser.parse_args()
  _probe(arguments.probe, arguments.quick, arguments.steps)
