"""The MGH least-squares problems (`benchmarks.mgh`): RD + Levenberg–Marquardt against peers.

Per problem, in float64, from the paper's standard start:

* RD: `rd.regression_descent(apply_fn, 1.0, damping=rd.damping.levenberg_marquardt(),
  examples="coupled")` with `apply_fn = lambda x, inputs: residuals(x)` (one
  plain residual vector; the inputs are None, the targets zero), loss ½‖r‖².
  At most `MAX_STEPS` updates in one jitted `lax.while_loop`, which stops when
  `PATIENCE` updates in a row have not lowered the best ½‖r‖² so far by more
  than a relative `IMPROVEMENT` (64 ulps): the cost has stopped changing.
  Seconds: the second call of the compiled loop (the first compiles).
* scipy `least_squares(method="lm")` (MINPACK lmder) and `method="trf"`,
  xtol = ftol = gtol = 1e-15, the Jacobian from `jax.jacfwd`, both jitted
  and compiled before the clock (`benchmarks.mgh.scipy_reference`).
* optimistix `least_squares(fn, LevenbergMarquardt(rtol=1e-12, atol=1e-12), x0,
  max_steps=1000, throw=False)`, jitted, timed after a warm-up call; skipped
  when optimistix (the `peers` extra) is not installed.

"RD reached scipy lm" means cost_rd ≤ cost_lm (1 + 1e-8) + 1e-20. Costs are
½‖r‖²; the paper's f* is ‖r‖² (`published f*` column).

    python -m benchmarks run least_squares --out benchmarks/results/cpu
    python -m benchmarks run least_squares --quick --out /tmp/x     # 3 problems
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import mgh
from benchmarks import plotting
from benchmarks import registry
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info

MAX_STEPS = 1000
PATIENCE = 10
# An update "improves" when it lowers the best ½‖r‖² so far by more than this (relative,
# 64 float64 ulps): at a minimum RD's LM controller keeps accepting steps whose predicted
# decrease is negligible, and ½‖r‖² then jitters by a few ulps (up to ~1.5e-15 relative).
IMPROVEMENT = 64 * float(np.finfo(np.float64).eps)
QUICK_PROBLEMS = ("rosenbrock", "beale", "helical_valley")
REACHED_RTOL, REACHED_ATOL = 1e-8, 1e-20


def _cost(problem: mgh.Problem, x) -> jax.Array:
  return 0.5 * jnp.sum(jnp.square(problem.residuals(x)))


def reached(cost: float | None, reference: float | None) -> bool | None:
  """Whether `cost` is at most scipy lm's `reference` (relative 1e-8, absolute 1e-20)."""
  if cost is None or reference is None or not np.isfinite(cost):
    return None if reference is None else False
  return bool(cost <= reference * (1.0 + REACHED_RTOL) + REACHED_ATOL)


def run_rd(problem: mgh.Problem, max_steps: int = MAX_STEPS) -> dict[str, Any]:
  """RD + LM damping on `problem` (call inside `jax.enable_x64(True)`)."""
  m = problem.num_residuals
  form = 'examples="coupled", apply_fn(x, None) = r(x)'
  inputs = None

  def apply_fn(x, inputs):
    del inputs
    return problem.residuals(x)

  tx = rd.regression_descent(
    apply_fn, 1.0, damping=rd.damping.levenberg_marquardt(), examples="coupled"
  )
  targets = jnp.zeros(m, jnp.float64)

  @jax.jit
  def solve(x0):
    def cond(carry):
      _, _, step, stall, _, _ = carry
      return (step < max_steps) & (stall < PATIENCE)

    def body(carry):
      x, state, step, stall, best, last_change = carry
      updates, state = tx.update(None, state, x, batch=(inputs, targets))
      x = optax.apply_updates(x, updates)
      cost = _cost(problem, x)
      improved = cost < best * (1.0 - IMPROVEMENT)
      stall = jnp.where(improved, 0, stall + 1)
      last_change = jnp.where(improved, step + 1, last_change)
      return x, state, step + 1, stall, jnp.minimum(best, cost), last_change

    zero = jnp.asarray(0, jnp.int32)
    carry = (x0, tx.init(x0), zero, zero, _cost(problem, x0), zero)
    x, state, step, stall, _, last_change = jax.lax.while_loop(cond, body, carry)
    return x, _cost(problem, x), step, stall, last_change, state[0].status, state[0].num_rejected

  x0 = jnp.asarray(problem.start, jnp.float64)
  start = time.perf_counter()
  jax.block_until_ready(solve(x0))
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  x, cost, steps, stall, last_change, status, rejected = jax.block_until_ready(solve(x0))
  seconds = time.perf_counter() - start
  return {
    "cost": float(cost),
    "steps": int(steps),
    "last_change_step": int(last_change),
    "stopped": "no improvement" if int(stall) >= PATIENCE else "max_steps",
    "rejected": int(rejected),
    "status": rd.STATUS_MESSAGES.get(int(status), str(int(status))),
    "seconds": seconds,
    "compile_seconds": compile_seconds - seconds,
    "x": np.asarray(x).tolist(),
    "form": form,
  }


def run_scipy(problem: mgh.Problem, method: str) -> dict[str, Any]:
  cost, x, nfev, seconds = mgh.scipy_reference(problem, method=method)
  return {"cost": cost, "nfev": nfev, "seconds": seconds, "x": x.tolist()}


def _optimistix():
  try:
    import optimistix
  except ImportError:
    return None
  return optimistix


def run_optimistix(problem: mgh.Problem, optx) -> dict[str, Any]:
  """optimistix's Levenberg–Marquardt (call inside `jax.enable_x64(True)`)."""
  solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

  @jax.jit
  def solve(x0):
    solution = optx.least_squares(
      lambda y, args: problem.residuals(y), solver, x0, max_steps=MAX_STEPS, throw=False
    )
    converged = solution.result == optx.RESULTS.successful
    return solution.value, _cost(problem, solution.value), solution.stats["num_steps"], converged

  x0 = jnp.asarray(problem.start, jnp.float64)
  jax.block_until_ready(solve(x0))
  start = time.perf_counter()
  x, cost, steps, converged = jax.block_until_ready(solve(x0))
  seconds = time.perf_counter() - start
  return {
    "cost": float(cost),
    "steps": int(steps),
    "converged": bool(converged),
    "seconds": seconds,
    "x": np.asarray(x).tolist(),
  }


def run(options: StudyOptions) -> dict[str, Any]:
  names = QUICK_PROBLEMS if options.quick else tuple(mgh.PROBLEMS)
  optx = _optimistix()
  rows = []
  with jax.enable_x64(True):
    for name in names:
      problem = mgh.PROBLEMS[name]
      lm = run_scipy(problem, "lm")
      trf = run_scipy(problem, "trf")
      rd_result = run_rd(problem)
      optx_result = run_optimistix(problem, optx) if optx is not None else None
      row = {
        "problem": name,
        "m": problem.num_residuals,
        "n": problem.num_params,
        "published_f": problem.optimum,
        "published_local_f": list(problem.local_optima),
        "note": problem.note,
        "rd": rd_result,
        "scipy_lm": lm,
        "scipy_trf": trf,
        "optimistix_lm": optx_result,
        "rd_reached_scipy_lm": reached(rd_result["cost"], lm["cost"]),
      }
      rows.append(row)
      if options.progress:
        print(
          f"least_squares {name:28s} rd {rd_result['cost']:.6g} ({rd_result['steps']} steps, "
          f"{rd_result['status']}) lm {lm['cost']:.6g} trf {trf['cost']:.6g}"
          + (f" optx {optx_result['cost']:.6g}" if optx_result else ""),
          flush=True,
        )
  return {
    "study": "least_squares",
    "kind": "least_squares",
    "command": options.command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "config": {
      "problems": "Moré, Garbow & Hillstrom (1981), standard starts",
      "dtype": "float64",
      "rd": {
        "call": "rd.regression_descent(apply_fn, 1.0, damping=rd.damping.levenberg_marquardt())",
        "form": rows[0]["rd"]["form"] if rows else None,
        "max_steps": MAX_STEPS,
        "stop": f"best ½‖r‖² not lowered by a relative {IMPROVEMENT:.3g} in {PATIENCE} updates",
      },
      "scipy": "least_squares(method='lm' | 'trf', xtol=ftol=gtol=1e-15, jac=jax.jacfwd)",
      "optimistix": (
        "least_squares(fn, LevenbergMarquardt(rtol=1e-12, atol=1e-12), max_steps=1000)"
        if optx is not None
        else None
      ),
      "reached": f"cost_rd ≤ cost_lm (1 + {REACHED_RTOL:g}) + {REACHED_ATOL:g}",
      "quick": options.quick,
    },
    "rows": rows,
  }


def _published(row: Mapping[str, Any]) -> str:
  if row["published_f"] is not None:
    return f"{row['published_f']:.6g}"
  return " or ".join(f"{v:.6g}" for v in row["published_local_f"]) or "–"


def _short(message: str) -> str:
  """The first two words of a status message ("step rejected", "zero direction")."""
  return " ".join(message.split()[:2]).rstrip(",;:")


def _cost_cell(result: Mapping[str, Any] | None, flag: str | None = None) -> str:
  if result is None:
    return "–"
  text = f"{result['cost']:.4g}"
  if flag:
    text += f" ({flag})"
  return text


def markdown_table(result: Mapping[str, Any]) -> str:
  """One row per problem; ½‖r‖² at the end of each method; RD steps and seconds."""
  rows = result["rows"]
  has_optx = any(r["optimistix_lm"] is not None for r in rows)
  head = [
    "problem",
    "m",
    "n",
    "published f* = ‖r‖²",
    "RD + LM ½‖r‖²",
    "scipy lm",
    "scipy trf",
    "optimistix LM",
    "RD steps",
    "RD s",
    "scipy lm nfev",
    "reached scipy lm",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    rd_result, optx_result = r["rd"], r["optimistix_lm"]
    rd_flag = None if rd_result["status"] == "ok" else _short(rd_result["status"])
    if rd_result["stopped"] == "max_steps":
      rd_flag = "max steps" + (f", {rd_flag}" if rd_flag else "")
    optx_flag = None
    if optx_result is not None and not optx_result["converged"]:
      optx_flag = "not converged"
    cells = [
      r["problem"],
      str(r["m"]),
      str(r["n"]),
      _published(r),
      _cost_cell(rd_result, rd_flag),
      _cost_cell(r["scipy_lm"]),
      _cost_cell(r["scipy_trf"]),
      _cost_cell(optx_result, optx_flag) if has_optx else "not installed",
      f"{rd_result['last_change_step']} / {rd_result['steps']}",
      f"{rd_result['seconds']:.3g}",
      str(r["scipy_lm"]["nfev"]),
      {True: "yes", False: "**no**", None: "–"}[r["rd_reached_scipy_lm"]],
    ]
    lines.append("| " + " | ".join(cells) + " |")
  count = sum(1 for r in rows if r["rd_reached_scipy_lm"])
  elsewhere = [
    f"{r['problem']} ({r['note']})"
    for r in rows
    if not any(
      mgh.digits_agree(2.0 * r["scipy_lm"]["cost"], f)
      for f in ([r["published_f"]] if r["published_f"] is not None else r["published_local_f"])
    )
  ]
  lines += [
    "",
    f"RD reached scipy-lm's cost on {count} of {len(rows)} problems "
    f"({result['config']['reached']}).",
    "",
    "½‖r‖² at the end of each run (the paper's f* is ‖r‖², twice that). RD steps: the "
    "last update that lowered the best ½‖r‖² / updates run (the loop stops after "
    f"{PATIENCE} updates without improvement, i.e. the cost stopped changing, or at "
    f"{result['config']['rd']['max_steps']}); RD s: seconds of the compiled loop (after "
    "compilation). A flag after RD's cost is its last status when not ok."
    + ("" if has_optx else " optimistix is not installed (the `peers` extra): its column is –."),
  ]
  if elsewhere:
    lines += ["", f"scipy lm's 2 × ½‖r‖² differs from the paper's f* on: {'; '.join(elsewhere)}."]
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Final ½‖r‖² per problem and method (log scale, zeros drawn at 1e-32)."""
  plt = plotting.pyplot()
  rows = result["rows"]
  floor = 1e-32
  methods = [
    ("rd", "RD + LM", "o"),
    ("scipy_lm", "scipy lm", "s"),
    ("scipy_trf", "scipy trf", "^"),
    ("optimistix_lm", "optimistix LM", "x"),
  ]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2.0), 4.2))
  positions = np.arange(len(rows))
  for key, label, marker in methods:
    costs = [r[key]["cost"] if r[key] is not None else None for r in rows]
    if all(c is None for c in costs):
      continue
    values = [max(c, floor) if c is not None and np.isfinite(c) else np.nan for c in costs]
    ax.semilogy(positions, values, marker, label=label, alpha=0.8, fillstyle="none")
  ax.set_xticks(positions)
  ax.set_xticklabels([r["problem"] for r in rows], rotation=75, ha="right", fontsize=7)
  ax.set_ylabel("final ½‖r‖² (zeros at 1e-32)")
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize=8)
  count = sum(1 for r in rows if r["rd_reached_scipy_lm"])
  ax.set_title(
    f"MGH problems, float64: RD reached scipy lm on {count} of {len(rows)} — "
    f"{result['machine']['device']}",
    fontsize=9,
  )
  return plotting.save_figure(fig, path)


registry.register(
  "least_squares",
  run,
  "MGH least-squares problems: RD + LM against scipy lm/trf and optimistix (float64)",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
