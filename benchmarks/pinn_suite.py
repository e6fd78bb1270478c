"""The PINN suite (issue 26, item 6): Burgers, KdV, wave and the 2D Poisson pair; RD + LM at
its best setting, Adam, `optax.lbfgs` and DSGNAR (Webb, Jerad, Cartis 2026) as a peer, in
float32 and float64; time to relative L2 ≤ 1e-3 / 1e-5 / 1e-6 / 1e-7 / 1e-10.

    python -m benchmarks run pinn_suite --dsgnar PATH --out benchmarks/results/cpu
    python -m benchmarks run pinn_suite --quick --out /tmp/x          # seconds, no DSGNAR

The problems, their points, weights and references: `benchmarks.pinn_problems`; the project's
own Burgers reference: `benchmarks.burgers_reference`; the peer: `benchmarks.dsgnar_peer`
(`--dsgnar PATH` or `RDESCENT_DSGNAR_PATH`; without either, DSGNAR's runs are skipped and
the record says so, and so is KdV, whose reference only the checkout holds).

Protocol (as `benchmarks.pinn_2d`): the same network, initial parameters (seed 0, drawn in
float64; float32 runs start from their cast), collocation points and loss weights for every
method; each step compiled before the clock starts (compile seconds reported apart); the clock
counts the steps alone (waited for), evaluations of the relative L2 error on the test points
stop it, at steps 1, 2, 4, ... and every budget / `EVAL_POINTS` seconds. Float32 runs run
with x64 off; their error is computed in float64 from their float32 predictions.

RD's setting is picked per problem by a short float64 sweep (`SWEEP_BUDGET` seconds each;
recorded): Levenberg-Marquardt with `solver="cholesky"`, with `solver="cg"` (products chosen by
cost) and with `precision=rd.precision_switch()`; the best final error runs at the full
budget in float64, and its solver in float32. Adam: learning rate `ADAM_LR`. Sizes fit the 2 cores
of the machine the results were measured on (`FULL`): 2,048 interior + 256 initial (+ 256
boundary) points and a 3-20-20-20-1 tanh network for the 1D problems (DSGNAR's examples:
2^15 + 2^14 points and 4 × 20-60 wide networks on an H100).
"""

from __future__ import annotations

import datetime
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import dsgnar_peer
from benchmarks import models
from benchmarks import pinn_2d
from benchmarks import pinn_problems
from benchmarks import plotting
from benchmarks import registry
from benchmarks import report
from benchmarks import training
from benchmarks.report import format_number
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info
from benchmarks.training import rounded

THRESHOLDS = (1e-3, 1e-5, 1e-6, 1e-7, 1e-10)
EVAL_POINTS = 100
ADAM_LR = 3e-3
_ONE_D = {"n_pde": 2048, "n_ic": 256, "n_bc": 256, "hidden": (20, 20, 20), "test_x": 128}
FULL: dict[str, dict[str, Any]] = {
  "burgers": {**_ONE_D, "test_t": 26, "budget": 60.0},
  "kdv": {**_ONE_D, "test_t": 26, "budget": 20.0},
  "wave": {**_ONE_D, "test_t": 26, "budget": 20.0},
  "poisson_1020": {"poisson": (30, 30, 64, 100), "budget": 15.0},
  "poisson_10800": {"poisson": (100, 200, (64, 64, 64), 100), "budget": 30.0},
}
_TINY = {"n_pde": 32, "n_ic": 8, "n_bc": 8, "hidden": (6,), "test_x": 16, "test_t": 5}
# `--quick` (tests: seconds of compiling on 2 cores): Burgers and a tiny Poisson problem.
QUICK: dict[str, dict[str, Any]] = {
  "burgers": {**_TINY, "budget": 0.3},
  "poisson_1020": {"poisson": (4, 4, 6, 8), "budget": 0.3},
}
SWEEP_BUDGET, QUICK_SWEEP_BUDGET = 6.0, 0.2
# RD's sweep per problem (poisson_10800: cg alone; its dense primal system is 8,577² and
# poisson_2d_scale measured it slower than cg with products from J).
RD_VARIANTS = {"cholesky": "cholesky", "cg": "cg", "precision_switch": "cholesky"}
RD_VARIANTS_BY_PROBLEM = {"poisson_10800": ("cg",)}
# The problems DSGNAR runs on: each DSGNAR run compiles its step 2-6 times (its state's types
# settle over the first steps of each precision), 1-2 minutes each on the loaded 2 cores.
DSGNAR_PROBLEMS = ("burgers", "poisson_1020")
TARGET_BURGERS = 1e-10  # the target: Burgers in float64
TARGET_RACE = 1e-6  # the race: RD reaches 1e-6 before DSGNAR


class Method(NamedTuple):
  """`build(problem) -> (init, step)` with `step(params, state, inputs, targets)`."""

  label: str
  family: str
  hyperparams: Mapping[str, Any]
  build: Callable[[Any], tuple[Callable, Callable]]


def rd_method(variant: str) -> Method:
  """RD + Levenberg-Marquardt (η = 1) with the sweep's `variant`."""
  solver = RD_VARIANTS[variant]
  precision = rd.precision_switch() if variant == "precision_switch" else None

  def build(problem):
    tx = rd.regression_descent(
      problem.apply,
      1.0,
      damping=rd.damping.levenberg_marquardt(),
      gram="jacobian",  # the residual holds nested derivatives
      solver=solver,
      precision=precision,
    )

    def step(params, state, inputs, targets):
      updates, state = tx.update(None, state, params, batch=(inputs, targets))
      return optax.apply_updates(params, updates), state

    return tx.init, step

  hyperparams = {
    "damping": "levenberg_marquardt()",
    "learning_rate": 1.0,
    "solver": solver,
    "precision": "precision_switch()" if precision is not None else None,
  }
  return Method(f"rd + lm ({variant})", "rd", hyperparams, build)


def baseline_methods() -> list[Method]:
  adam = pinn_2d.adam_method(ADAM_LR)
  lbfgs = pinn_2d.lbfgs_method()
  return [Method(*adam), Method(*lbfgs)]


DSGNAR_LABEL = "dsgnar"


# ----------------------------------------------------------------------------- runs


def _dtype(bits: int) -> Any:
  return jnp.float64 if bits == 64 else jnp.float32


def initial_params(problem: pinn_problems.SuiteProblem, seed: int, bits: int) -> Any:
  """Seed's parameters drawn in float64 (x64 on), cast to the run's precision."""
  with jax.enable_x64(True):
    params = problem.net.init(jax.random.PRNGKey(seed))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a.astype(np.dtype(_dtype(bits)))), params)


def train(
  problem: pinn_problems.SuiteProblem,
  method: Method,
  bits: int,
  budget: float,
  seed: int = 0,
  cache: dict | None = None,
) -> dict[str, Any]:
  """One run of `method` in float`bits` (call with x64 on; float32 runs turn it off); the
  compiled step is kept in `cache` (by problem, precision and label) for a later run."""
  exact = np.asarray(problem.exact, np.float64)
  cache = {} if cache is None else cache
  key = (problem.name, bits, method.label)
  with jax.enable_x64(bits == 64):
    cast = pinn_problems.cast(problem, _dtype(bits))
    params = initial_params(problem, seed, bits)
    if jax.tree_util.tree_leaves(params)[0].dtype != _dtype(bits) or cast.inputs.dtype != _dtype(
      bits
    ):
      raise AssertionError(f"train: float{bits} run with {cast.inputs.dtype} inputs")
    if key not in cache:
      init, step = method.build(cast)
      state = jax.tree_util.tree_map(jnp.copy, init(params))
      start = time.perf_counter()
      lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, cast.inputs, cast.targets)
      cache[key] = (init, lowered.compile(), time.perf_counter() - start)
    init, compiled, compile_seconds = cache[key]
    state = jax.tree_util.tree_map(jnp.copy, init(params))
    predict = jax.jit(lambda p: cast.predict(p, cast.test_points))
    loss_fn = jax.jit(lambda p: pinn_problems.mean_loss(cast, p, cast.inputs))
    curve: dict[str, list] = {"step": [], "seconds": [], "rel_l2": [], "loss": []}

    def evaluate(carry, steps, seconds):
      values = np.asarray(predict(carry[0]), np.float64)
      error = float(np.linalg.norm(values - exact) / np.linalg.norm(exact))
      curve["step"].append(steps)
      curve["seconds"].append(rounded(seconds))
      curve["rel_l2"].append(rounded(error))
      curve["loss"].append(rounded(loss_fn(carry[0])))
      return error

    loop = training.train_loop(
      compiled,
      (params, state),
      lambda _: (cast.inputs, cast.targets),
      evaluate,
      training.EvaluationSchedule(budget / EVAL_POINTS).due,
      budget=budget,
    )
  return {
    "problem": problem.name,
    "bits": bits,
    "label": method.label,
    "family": method.family,
    "hyperparams": dict(method.hyperparams),
    "seed": seed,
    "steps": loop.steps,
    "train_seconds": round(loop.seconds, 4),
    "compile_seconds": round(compile_seconds, 4),
    "ms_per_step": 1e3 * loop.seconds / max(loop.steps, 1),
    "final_rel_l2": None if loop.diverged else curve["rel_l2"][-1],
    "best_rel_l2": min((e for e in curve["rel_l2"] if e is not None), default=None),
    "diverged": loop.diverged,
    "time_to": time_to_thresholds(curve),
    "curve": curve,
  }


def time_to_thresholds(curve: Mapping[str, list]) -> dict[str, float | None]:
  """Seconds until the error first reaches each of `THRESHOLDS` (None: never)."""
  out = {}
  for threshold in THRESHOLDS:
    reached = report.time_to_target({"curve": curve}, threshold, key="rel_l2")
    out[f"{threshold:g}"] = reached if math.isfinite(reached) else None
  return out


def dsgnar_run(
  root: pathlib.Path, problem: pinn_problems.SuiteProblem, sizes, bits: int, budget: float
) -> dict[str, Any]:
  record = dsgnar_peer.run(root, problem.name, _json_sizes(sizes), bits, budget, EVAL_POINTS)
  record.update(
    problem=problem.name,
    bits=bits,
    label=DSGNAR_LABEL,
    family="dsgnar",
    seed=0,
    time_to=time_to_thresholds(record["curve"]),
  )
  finals = [e for e in record["curve"]["rel_l2"] if e is not None]
  record["best_rel_l2"] = min(finals, default=None)
  return record


def _json_sizes(sizes: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes.items()}


def _score(record: Mapping[str, Any]) -> float:
  final = record["final_rel_l2"]
  return math.inf if final is None else final


# ----------------------------------------------------------------------------- study


def dsgnar_path(options: StudyOptions) -> pathlib.Path | None:
  return dsgnar_peer.checkout(getattr(options, "dsgnar", None))


def run(options: StudyOptions) -> dict[str, Any]:
  table = QUICK if options.quick else FULL
  sweep_budget = QUICK_SWEEP_BUDGET if options.quick else SWEEP_BUDGET
  root = dsgnar_path(options)
  wanted = [w.strip() for w in options.optimizers or () if w.strip()]
  use = lambda family: not wanted or family in wanted
  skipped: list[str] = []
  if root is None:
    skipped.append(
      "dsgnar: no checkout given (--dsgnar PATH or RDESCENT_DSGNAR_PATH): its runs are skipped"
    )
  elif use("dsgnar"):
    left = [n for n in table if n not in DSGNAR_PROBLEMS]
    if left:
      skipped.append(
        f"dsgnar on {', '.join(left)}: not run (DSGNAR_PROBLEMS; its compiles take 1-2 "
        "minutes each on 2 cores)"
      )
  problems_record, sweep, runs = [], [], []
  for name, sizes in table.items():
    with jax.enable_x64(True):
      problem = pinn_problems.make_problem(name, sizes, root)
    if problem is None:
      skipped.append(f"{name}: its reference is DSGNAR's kdv.npz; no checkout given")
      continue
    budget = options.budget or sizes["budget"]
    params = initial_params(problem, 0, 64)
    problems_record.append(
      {
        "name": name,
        "description": problem.description,
        "model": problem.net.name,
        "num_params": models.num_params(params),
        "points": {c.name: len(c.points) for c in problem.conditions},
        "weights": {c.name: c.weight for c in problem.conditions},
        "test_points": int(problem.test_points.shape[0]),
        "reference": problem.reference,
        "budget_seconds": budget,
      }
    )
    cache: dict = {}
    best = None
    if use("rd"):  # the sweep, in float64
      for variant in RD_VARIANTS_BY_PROBLEM.get(name, tuple(RD_VARIANTS)):
        method = rd_method(variant)
        record = train(problem, method, 64, sweep_budget, cache=cache)
        record.pop("curve")
        sweep.append(record)
        if options.progress:
          print(
            f"pinn_suite sweep {name} float64 {method.label}: "
            f"{record['final_rel_l2']} after {record['steps']} steps",
            flush=True,
          )
        if best is None or _score(record) < _score(best[1]):
          best = (variant, record)
    for bits in (64, 32):
      rd_best = []
      if best is not None:  # float32: the best float64 setting's solver
        variant = best[0] if bits == 64 or best[0] != "precision_switch" else "cholesky"
        rd_best = [rd_method(variant)]
      methods = rd_best + [m for m in baseline_methods() if use(m.family)]
      for method in methods:
        record = train(problem, method, bits, budget, cache=cache)
        runs.append(record)
        _progress(options, record)
      if use("dsgnar") and root is not None and name in DSGNAR_PROBLEMS:
        try:
          record = dsgnar_run(root, problem, sizes, bits, budget)
        except RuntimeError as error:  # recorded, never hidden: the table lists it
          skipped.append(f"dsgnar {name} float{bits} failed: {str(error)[-400:]}")
          continue
        runs.append(record)
        _progress(options, record)
  return {
    "study": "pinn_suite",
    "kind": "pinn_suite",
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": options.command,
    "machine": machine_info(),
    "config": {
      "thresholds": list(THRESHOLDS),
      "eval_points": EVAL_POINTS,
      "sweep_budget_seconds": sweep_budget,
      "budget_seconds": "per problem: "
      + ", ".join(f"{p['name']} {p['budget_seconds']:g}" for p in problems_record),
      "adam_learning_rate": ADAM_LR,
      "seeds": 1,
      "quick": options.quick,
      "dsgnar": None if root is None else str(root),
      "dsgnar_scaled": {
        "sketch": dsgnar_peer.SKETCH,
        "max_batch": dsgnar_peer.MAX_BATCH,
        "note": "its examples: 800-4,000 sketch rows and columns, 2^15 + 2^14 points, "
        "macro-batches of 2^13-2^14 on an H100; here 400 and the suite's points",
      },
      "rd_variants": {k: RD_VARIANTS_BY_PROBLEM.get(k, tuple(RD_VARIANTS)) for k in table},
      "targets": {"burgers_float64": TARGET_BURGERS, "race": TARGET_RACE},
    },
    "skipped": skipped,
    "problems": problems_record,
    "sweep": sweep,
    "runs": runs,
  }


def _progress(options: StudyOptions, record: Mapping[str, Any]) -> None:
  if options.progress:
    reached = ", ".join(f"{k}: {format_number(v)}" for k, v in record["time_to"].items())
    print(
      f"pinn_suite {record['problem']} float{record['bits']} {record['label']}: "
      f"final {record['final_rel_l2']} after {record['steps']} steps; time to {reached}",
      flush=True,
    )


# ----------------------------------------------------------------------------- table, plot


def _seconds(value: float | None) -> str:
  return "–" if value is None else format_number(value)


def markdown_table(result: Mapping[str, Any]) -> str:
  """One row per problem × precision × method: seconds to each threshold, final error, steps,
  ms/step, compile seconds; the sweep; the issue's targets."""
  thresholds = [f"{t:g}" for t in result["config"]["thresholds"]]
  head = [
    "problem",
    "bits",
    "method",
    *(f"s to {t}" for t in thresholds),
    "final rel. L2",
    "steps",
    "ms/step",
    "compile s",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run in result["runs"]:
    cells = [
      run["problem"],
      str(run["bits"]),
      run["label"],
      *(_seconds(run["time_to"][t]) for t in thresholds),
      format_number(run["final_rel_l2"]) if run["final_rel_l2"] is not None else "diverged",
      str(run["steps"]),
      f"{run['ms_per_step']:.3g}",
      f"{run['compile_seconds']:.1f}",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Problems: " + "; ".join(_describe(p) for p in result["problems"]) + "."]
  if result["sweep"]:
    lines += [
      "",
      "RD's sweep ("
      + f"{result['config']['sweep_budget_seconds']:g} s each, final error): "
      + "; ".join(
        f"{r['problem']} float{r['bits']} {r['label']} {format_number(r['final_rel_l2'])}"
        for r in result["sweep"]
      )
      + ".",
    ]
  if result["skipped"]:
    lines += ["", "Skipped: " + "; ".join(result["skipped"]) + "."]
  lines += ["", "Targets: " + "; ".join(target_verdicts(result)) + "."]
  if result.get("reconstructed"):
    lines += ["", "Note: " + result["reconstructed"]]
  return "\n".join(lines)


def _describe(problem: Mapping[str, Any]) -> str:
  points = " + ".join(f"{n} {k}" for k, n in problem["points"].items())
  weights = ", ".join(f"{k} {w:g}" for k, w in problem["weights"].items())
  return (
    f"{problem['name']}: {problem['description']}; {problem['model']}, "
    f"{problem['num_params']} parameters; {points} points, weights {weights}; "
    f"{problem['test_points']} test points ({problem['reference']}); "
    f"{problem['budget_seconds']:g} s per run"
  )


def _runs(result, problem, bits, family=None):
  return [
    r
    for r in result["runs"]
    if r["problem"] == problem and r["bits"] == bits and (family is None or r["family"] == family)
  ]


def target_verdicts(result: Mapping[str, Any]) -> list[str]:
  """The issue's targets, as measured: Burgers in float64 ≤ 1e-10; RD reaches 1e-6 before
  DSGNAR (per problem and precision where both ran); where DSGNAR ends lower."""
  verdicts = []
  rd_burgers = _runs(result, "burgers", 64, "rd")
  if rd_burgers:
    final = rd_burgers[0]["final_rel_l2"]
    met = final is not None and final <= TARGET_BURGERS
    verdicts.append(
      f"Burgers float64 ≤ {TARGET_BURGERS:g}: {'**met**' if met else '**not met**'} "
      f"(RD final {format_number(final)})"
    )
  key = f"{TARGET_RACE:g}"
  for problem in [p["name"] for p in result["problems"]]:
    for bits in (64, 32):
      rd_runs, peer = _runs(result, problem, bits, "rd"), _runs(result, problem, bits, "dsgnar")
      if not rd_runs or not peer:
        continue
      ours, theirs = rd_runs[0]["time_to"][key], peer[0]["time_to"][key]
      if ours is None and theirs is None:
        race = "neither reached it"
      elif theirs is None or (ours is not None and ours < theirs):
        race = f"RD first (**met**: {_seconds(ours)} s vs {_seconds(theirs)} s)"
      else:
        race = f"DSGNAR first (**not met**: RD {_seconds(ours)} s vs {_seconds(theirs)} s)"
      lower = peer[0]["final_rel_l2"] is not None and _score(peer[0]) < _score(rd_runs[0])
      verdicts.append(
        f"{problem} float{bits} 1e-6: {race}"
        + (
          f", DSGNAR ends lower ({format_number(peer[0]['final_rel_l2'])} vs "
          f"{format_number(rd_runs[0]['final_rel_l2'])})"
          if lower
          else ""
        )
      )
  if not any(r["family"] == "dsgnar" for r in result["runs"]):
    verdicts.append("RD vs DSGNAR: no DSGNAR run (skipped)")
  return verdicts


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Relative L2 against training seconds, one panel per problem (solid: float64)."""
  plt = plotting.pyplot()
  names = [p["name"] for p in result["problems"]]
  cols = min(3, max(1, len(names)))
  rows = -(-len(names) // cols) if names else 1
  fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.8 * rows), squeeze=False)
  colors = {"rd": "C0", "adam": "C1", "lbfgs": "C2", "dsgnar": "C3"}
  for ax, name in zip(axes.ravel(), names):
    for run in result["runs"]:
      if run["problem"] != name:
        continue
      curve = run["curve"]
      if curve is None:  # a record rebuilt without its curves (see its "reconstructed")
        continue
      pairs = [(s, e) for s, e in zip(curve["seconds"], curve["rel_l2"]) if e is not None]
      if not pairs:
        continue
      seconds, errors = zip(*pairs)
      ax.plot(
        np.maximum(seconds, 1e-3),
        errors,
        "-" if run["bits"] == 64 else "--",
        color=colors.get(run["family"], "C4"),
        label=f"{run['label']} f{run['bits']}",
      )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("relative L2")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
  for ax in axes.ravel()[len(names) :]:
    ax.axis("off")
  fig.suptitle(f"pinn_suite — {result['machine']['device']}", fontsize=9)
  fig.tight_layout()
  return plotting.save_figure(fig, path)


registry.register(
  "pinn_suite",
  run,
  "PINN suite (Burgers, KdV, wave, 2D Poisson pair): RD + LM vs Adam, optax.lbfgs and DSGNAR "
  "(--dsgnar PATH), float32 and float64, time to 1e-3 ... 1e-10",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
