"""Many least-squares problems at once: one `jax.vmap` of RD's init/update against single runs.

For each of a few Moré–Garbow–Hillstrom problems (`benchmarks.mgh`), a batch
of `BATCH` = 64 problems: the standard start scaled entry by entry by
1 + 0.2 u, u uniform in [−1, 1] (seed 0), in float64. Each problem is solved by
RD + Levenberg–Marquardt (`examples="coupled"`, `termination=rd.termination()`)
in a jitted `lax.while_loop` of at most `MAX_STEPS` updates that stops on
`STATUS_CONVERGED`:

* vmapped: `jax.jit(jax.vmap(solve))` over the 64 starts, one call (the loop
  runs until the last problem stops; the others keep their result);
* single runs: `jax.jit(solve)` called on each start in turn (one compile, 64
  calls, each waited for).

Seconds are the median of `REPEATS` timed calls after a compiling call; the
final iterates of both must agree (relative 1e-8) and their statuses match.

    python -m benchmarks run vmap_problems --out /tmp/vmap
    python -m benchmarks run vmap_problems --quick --out /tmp/vmap     # 1 problem, 8 starts
"""

from __future__ import annotations

import pathlib
import statistics
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

BATCH = 64
MAX_STEPS = 200
REPEATS = 5
SPREAD = 0.2
PROBLEMS = ("rosenbrock", "helical_valley", "osborne_1", "extended_rosenbrock")
QUICK_PROBLEMS = ("rosenbrock",)
QUICK_BATCH = 8
AGREE_RTOL = 1e-8


def _solver(problem: mgh.Problem):
  """x0 ↦ (x, ½‖r‖², steps, status): RD + LM until converged (call under x64)."""

  def apply_fn(x, inputs):
    del inputs
    return problem.residuals(x)

  tx = rd.regression_descent(
    apply_fn,
    1.0,
    damping=rd.damping.levenberg_marquardt(),
    examples="coupled",
    termination=rd.termination(),
  )
  targets = jnp.zeros(problem.num_residuals, jnp.float64)

  def solve(x0):
    def cond(carry):
      _, state = carry
      return (state[0].count < MAX_STEPS) & (state[0].status != rd.STATUS_CONVERGED)

    def body(carry):
      x, state = carry
      updates, state = tx.update(None, state, x, batch=(None, targets))
      return optax.apply_updates(x, updates), state

    x, state = jax.lax.while_loop(cond, body, (x0, tx.init(x0)))
    cost = 0.5 * jnp.sum(jnp.square(problem.residuals(x)))
    return x, cost, state[0].count, state[0].status

  return solve


def _starts(problem: mgh.Problem, batch: int) -> jax.Array:
  rng = np.random.default_rng(0)
  start = np.asarray(problem.start, np.float64)
  factors = 1.0 + SPREAD * rng.uniform(-1.0, 1.0, size=(batch, start.size))
  return jnp.asarray(start * factors)


def _timed(fn, repeats: int) -> tuple[list[float], Any]:
  result = None
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times, result


def run_problem(problem: mgh.Problem, batch: int, repeats: int = REPEATS) -> dict[str, Any]:
  """The vmapped batch and the single runs of one problem (call under x64)."""
  solve = _solver(problem)
  starts = _starts(problem, batch)
  batched = jax.jit(jax.vmap(solve))
  single = jax.jit(solve)

  start = time.perf_counter()
  jax.block_until_ready(batched(starts))
  batched_compile = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(single(starts[0]))
  single_compile = time.perf_counter() - start

  batched_times, (x_b, cost_b, steps_b, status_b) = _timed(lambda: batched(starts), repeats)
  one_by_one = list(starts)  # the 64 starts as separate arrays, split before the clock
  single_times, singles = _timed(
    lambda: [jax.block_until_ready(single(x0)) for x0 in one_by_one], repeats
  )
  x_s = np.stack([np.asarray(s[0]) for s in singles])
  steps_s = np.asarray([int(s[2]) for s in singles])
  status_s = np.asarray([int(s[3]) for s in singles])
  agree = bool(
    np.allclose(np.asarray(x_b), x_s, rtol=AGREE_RTOL, atol=1e-12)
    and np.array_equal(np.asarray(status_b), status_s)
  )
  batched_median = statistics.median(batched_times)
  single_median = statistics.median(single_times)
  return {
    "problem": problem.name,
    "m": problem.num_residuals,
    "n": problem.num_params,
    "batch": batch,
    "vmapped_seconds": batched_median,
    "single_seconds": single_median,
    "speedup": single_median / batched_median,
    "vmapped_times": batched_times,
    "single_times": single_times,
    "vmapped_compile_seconds": batched_compile - batched_median,
    "single_compile_seconds": single_compile - single_median / batch,
    "steps_mean": float(np.mean(steps_s)),
    "steps_max": int(np.max(steps_s)),
    "converged": int(np.sum(status_s == rd.STATUS_CONVERGED)),
    "cost_median": float(np.median(np.asarray(cost_b))),
    "agree": agree,
  }


def run(options: StudyOptions) -> dict[str, Any]:
  names = QUICK_PROBLEMS if options.quick else PROBLEMS
  batch = QUICK_BATCH if options.quick else BATCH
  repeats = 2 if options.quick else REPEATS
  rows = []
  with jax.enable_x64(True):
    for name in names:
      row = run_problem(mgh.PROBLEMS[name], batch, repeats)
      rows.append(row)
      if options.progress:
        print(
          f"vmap_problems {name:22s} {batch} problems: vmapped {row['vmapped_seconds']:.4f} s, "
          f"single runs {row['single_seconds']:.4f} s ({row['speedup']:.1f}x), steps mean "
          f"{row['steps_mean']:.1f} max {row['steps_max']}, converged {row['converged']}, "
          f"agree {row['agree']}",
          flush=True,
        )
  return {
    "study": "vmap_problems",
    "kind": "vmap_problems",
    "command": options.command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "config": {
      "dtype": "float64",
      "batch": batch,
      "starts": f"standard start × (1 + {SPREAD} u), u ~ U[-1, 1], seed 0",
      "rd": (
        "rd.regression_descent(apply_fn, 1.0, damping=rd.damping.levenberg_marquardt(), "
        "examples='coupled', termination=rd.termination())"
      ),
      "loop": f"lax.while_loop until STATUS_CONVERGED or {MAX_STEPS} updates",
      "timing": f"median of {repeats} calls after a compiling call",
      "agree": f"final x within rtol {AGREE_RTOL:g}, same statuses",
      "quick": options.quick,
    },
    "rows": rows,
  }


def markdown_table(result: Mapping[str, Any]) -> str:
  rows = result["rows"]
  lines = [
    "| problem | m | n | problems | vmapped s | 64 single runs s | speedup | steps mean / max "
    "| converged | same results |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['problem']} | {r['m']} | {r['n']} | {r['batch']} | {r['vmapped_seconds']:.4f} "
      f"| {r['single_seconds']:.4f} | {r['speedup']:.1f}× | {r['steps_mean']:.1f} / "
      f"{r['steps_max']} | {r['converged']} | {'yes' if r['agree'] else 'no'} |"
    )
  lines += [
    "",
    f"Median of the timed calls after compilation; {result['config']['loop']}. "
    f"Machine: {result['machine']['device']}.",
  ]
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Total seconds per problem: vmapped against single runs (log scale)."""
  plt = plotting.pyplot()
  rows = result["rows"]
  fig, ax = plt.subplots(figsize=(6.0, 3.6))
  positions = np.arange(len(rows))
  ax.bar(positions - 0.2, [r["vmapped_seconds"] for r in rows], 0.4, label="one vmapped call")
  ax.bar(positions + 0.2, [r["single_seconds"] for r in rows], 0.4, label="single runs")
  ax.set_yscale("log")
  ax.set_xticks(positions)
  ax.set_xticklabels([r["problem"] for r in rows], fontsize=8)
  ax.set_ylabel(f"seconds for {result['config']['batch']} problems")
  ax.legend(fontsize=8)
  ax.set_title(f"RD + LM on a batch of problems — {result['machine']['device']}", fontsize=9)
  return plotting.save_figure(fig, path)


registry.register(
  "vmap_problems",
  run,
  "64 MGH problems from perturbed starts: one vmapped RD + LM solve against 64 single runs",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
