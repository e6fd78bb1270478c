"""Peer least-squares solvers run as whole solves, for the full-batch fits (`fit_1d`).

Each peer minimises ½‖r(θ)‖² of a plain residual vector r: R^p → R^m (the flattened
parameters; `residual_vector` builds it from a `runner.Task`) in one call that runs up to
`max_steps` iterations. A whole solve cannot be stopped at a wall-clock budget from outside,
so each peer is timed as a whole solve at a few `max_steps` values (`MAX_STEPS`), each one
compiled before the clock (`jax.jit(...).lower(...).compile()`, reused across seeds), and
recorded as (seconds, final MSE) points; `sweep` stops at the first value whose solve
exceeds the budget. The peers (the `peers` extra; each is skipped when not importable):

* `optimistix.least_squares(fn, optx.LevenbergMarquardt(rtol, atol), y0, max_steps,
  throw=False)`: optimistix's LM (a trust region with a damped-Newton step, the augmented
  system solved by `lineax.QR`), rtol = atol = 1e-12 so that it runs to `max_steps`;
* `jaxopt.LevenbergMarquardt(residual_fun, maxiter, tol=0)`: its default, matrix-free
  `solve_cg` on the primal system (JᵀJ + μI) δ = Jᵀr by JVP/VJP products, warm-started
  from the previous δ; and `materialize_jac=True, solver="cholesky"` (J by `jax.jacfwd`,
  JᵀJ formed and factorised). tol = 0 disables its gradient-norm stop;
* `scipy.optimize.least_squares(method="trf")` (exact trust-region subproblem by an SVD of
  J each iteration), J from `jax.jacfwd`, both jitted and compiled before the clock;
  `max_nfev` is the budget, xtol = ftol = gtol = 1e-15. `method="lm"` (MINPACK) refuses
  problems with fewer residuals than parameters; `scipy_lm_refusal` records its message.

somax's exact Gauss-Newton steps one batch at a time and runs in the shared runner
(`benchmarks.optimizers.somax_spec`), not here.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks.runner import Task

# Denser around 100-300, where the fastest peer (jaxopt's CG) crosses MSE 1e-9.
MAX_STEPS = (10, 30, 100, 150, 200, 250, 300, 500, 1000, 3000)
QUICK_MAX_STEPS = (5,)
TOLERANCE = 1e-12  # optimistix rtol = atol
SCIPY_TOLERANCE = 1e-15  # scipy xtol = ftol = gtol
# Bisections of the max_steps at which a peer first reaches the target (`refine`).
REFINE_ITERATIONS = 4

PACKAGES = {"optimistix": "optimistix", "jaxopt": "jaxopt", "somax": "somax", "scipy": "scipy"}


def available() -> dict[str, bool]:
  """Which peer packages are importable."""
  return {name: importlib.util.find_spec(module) is not None for name, module in PACKAGES.items()}


def residual_vector(task: Task, params: Any) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
  """r(θ) = f(θ; X) − Y of the task's training set as a function of the flat parameters
  (m k,), and the flat `params`."""
  flat, unravel = ravel_pytree(params)
  x, y = task.train_inputs, task.train_targets

  def residual(theta):
    outputs = task.model.apply(unravel(theta), x)
    return (outputs - y.reshape(outputs.shape)).reshape(-1)

  return residual, flat


def mse(residual: Callable[[jax.Array], jax.Array], theta: Any) -> float:
  """The mean of r² (the runner's MSE for one output per example)."""
  return float(jnp.mean(jnp.square(residual(jnp.asarray(theta)))))


class Peer(NamedTuple):
  """A whole-solve peer. `prepare(residual, theta0, max_steps)` compiles (or sets up) the
  solve and returns `solve(theta0) -> (theta, steps, status)`, timed by `sweep`."""

  label: str
  family: str
  hyperparams: Mapping[str, Any]
  prepare: Callable[..., Callable[[jax.Array], tuple[Any, int, str]]]


def optimistix_lm(rtol: float = TOLERANCE, atol: float = TOLERANCE) -> Peer:
  def prepare(residual, theta0, max_steps):
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)

    def solve(theta):
      solution = optx.least_squares(
        lambda y, args: residual(y), solver, theta, max_steps=max_steps, throw=False
      )
      return solution.value, solution.stats["num_steps"], solution.result == optx.RESULTS.successful

    compiled = jax.jit(solve).lower(theta0).compile()

    def run(theta):
      value, steps, ok = jax.block_until_ready(compiled(theta))
      return value, int(steps), "converged" if bool(ok) else "max_steps"

    return run

  hyperparams = {"call": "optx.least_squares(fn, optx.LevenbergMarquardt(rtol, atol), y0)"}
  hyperparams.update(rtol=rtol, atol=atol, linear_solver="lineax.QR (default)")
  return Peer("optimistix LM", "optimistix", hyperparams, prepare)


def jaxopt_lm(dense: bool = False) -> Peer:
  def prepare(residual, theta0, max_steps):
    import jaxopt

    options = {"materialize_jac": True, "solver": "cholesky"} if dense else {}
    solver = jaxopt.LevenbergMarquardt(residual_fun=residual, maxiter=max_steps, tol=0.0, **options)

    def solve(theta):
      params, state = solver.run(theta)
      return params, state.iter_num

    compiled = jax.jit(solve).lower(theta0).compile()

    def run(theta):
      value, steps = jax.block_until_ready(compiled(theta))
      return value, int(steps), "maxiter"

    return run

  if dense:
    label, hyperparams = "jaxopt LM (cholesky)", {"materialize_jac": True, "solver": "cholesky"}
  else:
    label, hyperparams = (
      "jaxopt LM (cg)",
      {"materialize_jac": False, "solver": "solve_cg (default)"},
    )
  hyperparams.update(tol=0.0, damping_parameter=1e-6)
  return Peer(label, "jaxopt", hyperparams, prepare)


def scipy_trf(tolerance: float = SCIPY_TOLERANCE) -> Peer:
  def prepare(residual, theta0, max_steps):
    from scipy.optimize import least_squares

    dtype = theta0.dtype
    fun = jax.jit(residual).lower(theta0).compile()
    jac = jax.jit(jax.jacfwd(residual)).lower(theta0).compile()
    as_jax = lambda x: jnp.asarray(x, dtype)

    def run(theta):
      result = least_squares(
        lambda x: np.asarray(fun(as_jax(x)), np.float64),
        np.asarray(theta, np.float64),
        jac=lambda x: np.asarray(jac(as_jax(x)), np.float64),
        method="trf",
        max_nfev=max_steps,
        xtol=tolerance,
        ftol=tolerance,
        gtol=tolerance,
      )
      status = "max_nfev" if result.status == 0 else f"status {result.status}"
      return as_jax(result.x), int(result.njev or result.nfev), status

    return run

  hyperparams = {"method": "trf", "xtol": tolerance, "ftol": tolerance, "gtol": tolerance}
  hyperparams["jac"] = "jax.jacfwd"
  hyperparams["max_steps"] = "max_nfev"
  return Peer("scipy trf", "scipy", hyperparams, prepare)


def scipy_lm_refusal(residual: Callable[[jax.Array], jax.Array], theta0: jax.Array) -> str | None:
  """scipy's `least_squares(method="lm")` error message on this problem (None if it runs)."""
  from scipy.optimize import least_squares

  fun = jax.jit(residual)
  try:
    least_squares(
      lambda x: np.asarray(fun(jnp.asarray(x, theta0.dtype)), np.float64),
      np.asarray(theta0, np.float64),
      method="lm",
      max_nfev=1,
    )
  except ValueError as error:
    return str(error)
  return None


def default_peers() -> list[Peer]:
  """The whole-solve peers that are importable."""
  have = available()
  peers = []
  if have["optimistix"]:
    peers.append(optimistix_lm())
  if have["jaxopt"]:
    peers += [jaxopt_lm(), jaxopt_lm(dense=True)]
  if have["scipy"]:
    peers.append(scipy_trf())
  return peers


def sweep(
  peer: Peer,
  residual: Callable[[jax.Array], jax.Array],
  starts: Sequence[jax.Array],
  *,
  max_steps: Sequence[int] = MAX_STEPS,
  budget: float,
  progress: bool = False,
) -> dict[str, Any]:
  """The peer from each start at each `max_steps` (ascending): one point per (value, start),
  `seconds` of the whole solve (compile excluded), its steps and final MSE. Stops after the
  first value whose median seconds exceed `budget`."""
  points = []
  for value in sorted(max_steps):
    start = time.perf_counter()
    solve = peer.prepare(residual, starts[0], value)
    compile_seconds = time.perf_counter() - start
    seconds = []
    for seed, theta0 in enumerate(starts):
      start = time.perf_counter()
      theta, steps, status = solve(theta0)
      elapsed = time.perf_counter() - start
      seconds.append(elapsed)
      final = mse(residual, theta)
      points.append(
        {
          "max_steps": value,
          "seed": seed,
          "seconds": round(elapsed, 4),
          "compile_seconds": round(compile_seconds, 3),
          "steps": steps,
          "mse": float(f"{final:.5g}") if np.isfinite(final) else None,
          "status": status,
        }
      )
      if progress:
        print(
          f"  {peer.label:22s} max_steps {value:5d} seed {seed}: {elapsed:.3g} s, "
          f"{steps} steps, MSE {final:.4g} ({status})",
          flush=True,
        )
    if np.median(seconds) > budget:
      break
  return {
    "label": peer.label,
    "family": peer.family,
    "hyperparams": dict(peer.hyperparams),
    "points": points,
  }


def refine(
  peer: Peer,
  residual: Callable[[jax.Array], jax.Array],
  starts: Sequence[jax.Array],
  record: dict[str, Any],
  *,
  target: float,
  budget: float,
  iterations: int = REFINE_ITERATIONS,
  progress: bool = False,
) -> dict[str, Any]:
  """Bisects, per seed, the `max_steps` at which the peer's final MSE first reaches `target`
  within `budget` seconds: between the largest swept value that ended above it and the
  smallest that ended at or below it, `iterations` times (each new value compiled once,
  shared by the seeds that need it). The new points are appended to `record["points"]`
  with `"refined": True`, so the time to target is read at a finer resolution."""
  compiled: dict[int, Callable] = {}
  for seed, theta0 in enumerate(starts):
    for _ in range(iterations):
      points = [p for p in record["points"] if p["seed"] == seed]
      hit = [p["max_steps"] for p in points if _reached(p, target) and p["seconds"] <= budget]
      if not hit:
        break
      high = min(hit)
      low = max((p["max_steps"] for p in points if p["max_steps"] < high), default=0)
      middle = (low + high) // 2
      if middle <= low:
        break
      if middle not in compiled:
        compiled[middle] = peer.prepare(residual, starts[0], middle)
      start = time.perf_counter()
      theta, steps, status = compiled[middle](theta0)
      elapsed = time.perf_counter() - start
      final = mse(residual, theta)
      record["points"].append(
        {
          "max_steps": middle,
          "seed": seed,
          "seconds": round(elapsed, 4),
          "steps": steps,
          "mse": float(f"{final:.5g}") if np.isfinite(final) else None,
          "status": status,
          "refined": True,
        }
      )
      if progress:
        print(
          f"  {peer.label:22s} refine max_steps {middle:5d} seed {seed}: {elapsed:.3g} s, "
          f"MSE {final:.4g}",
          flush=True,
        )
  return record


def _reached(point: Mapping[str, Any], target: float) -> bool:
  return point["mse"] is not None and point["mse"] <= target


def summarize(record: Mapping[str, Any], budget: float, target: float) -> dict[str, Any]:
  """Per swept `max_steps`: medians over seeds of seconds, steps and final MSE (`rows`), and
  how many solves ended non-finite. Per seed, over all its solves (`refine`'s too): the
  best final MSE of the solves within `budget` seconds, and the least seconds of a solve
  whose final MSE ≤ `target` (an upper bound on the time to target, at the resolution of
  the sweep and its refinement); then their medians over seeds (a seed that never gets
  there counts as inf)."""
  by_value: dict[int, list[dict]] = {}
  by_seed: dict[int, list[dict]] = {}
  for point in record["points"]:
    if not point.get("refined"):
      by_value.setdefault(point["max_steps"], []).append(point)
    by_seed.setdefault(point["seed"], []).append(point)
  error = lambda p: np.inf if p["mse"] is None else p["mse"]
  rows = [
    {
      "max_steps": value,
      "seconds": float(np.median([p["seconds"] for p in points])),
      "mse": float(np.median([error(p) for p in points])),
      "steps": float(np.median([p["steps"] for p in points])),
      "seeds": len(points),
    }
    for value, points in sorted(by_value.items())
  ]
  best, times = [], []
  for points in by_seed.values():
    best.append(min((error(p) for p in points if p["seconds"] <= budget), default=np.inf))
    times.append(min((p["seconds"] for p in points if error(p) <= target), default=np.inf))
  finite = lambda v: float(v) if np.isfinite(v) else None
  return {
    "rows": rows,
    "best_mse_within_budget": finite(np.median(best)) if best else None,
    "time_to_target": finite(np.median(times)) if times else None,
    "reached": sum(np.isfinite(t) for t in times),
    "seeds": len(times),
    "seed_times": {seed: finite(t) for seed, t in zip(by_seed, times)},
    "non_finite": sum(p["mse"] is None for p in record["points"]),
    "solves": len(record["points"]),
  }
