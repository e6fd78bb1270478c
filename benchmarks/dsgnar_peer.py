"""DSGNAR (Webb, Jerad, Cartis 2026, arXiv 2607.02194) as a peer of the PINN suite.

DSGNAR is not on PyPI and its repository carries no licence: nothing of it is copied here.
The suite takes the path of a fetched checkout (`--dsgnar PATH` or `RDESCENT_DSGNAR_PATH`) and
runs each DSGNAR training in a fresh process (`python -m benchmarks.dsgnar_peer ...`), which
alone puts `PATH/src` on `sys.path`, imports its `pinn` package and calls its own trainer,
`pinn.train32` (float32) or `pinn.train64` (its float32 pass, then float64), with its
`RunConfig`. It needs `equinox` and `jaxtyping` (the `peers` extra).

What is ours: the problem (a `pinn.Problem` subclass whose residuals and samplers are the
suite's: the same points, targets and initial weights), the network (an `equinox.Module`
holding the suite's parameters and calling the suite's `apply`, so that DSGNAR starts from
the same network and initial parameters as every other method), and the measurement:

* its `Optimiser` is replaced, in its trainer module and for this process only, by a subclass
  whose `step` waits for the step's result and times it (DSGNAR's own clock does not wait),
  then evaluates the suite's relative L2 error on the suite's test points at the suite's
  schedule, with the clock stopped;
* a step that compiled (its jitted step's cache grew: the first steps in each precision, as
  its state's types settle) is reported as compilation, not timed, but counted as a step (it
  moves the parameters on); the other steps of its untimed compile "dry run" are real steps
  too, so they count as training;
* its live plotter is replaced by one that draws nothing;
* the run stops when the budget of step seconds is spent (or when DSGNAR stops itself).

Its adaptive reweighting of the conditions (`auto_adjust`, on by default) is part of its
method and is left on: it starts from the suite's weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

ENV_VAR = "RDESCENT_DSGNAR_PATH"
# Its solver's sizes, scaled down to 2 CPU cores (its examples: 800-4,000 sketch rows and
# columns, macro-batches of 2^13-2^14 points, probe batches of 2^9-2^10).
SKETCH = 400
MAX_BATCH = 256


def checkout(path: str | os.PathLike | None) -> pathlib.Path | None:
  """The DSGNAR checkout: `path`, else `$RDESCENT_DSGNAR_PATH`, else None; checked to hold
  `src/pinn/__init__.py` (a `SystemExit` naming the path otherwise)."""
  value = path if path else os.environ.get(ENV_VAR) or None
  if value is None:
    return None
  root = pathlib.Path(value).expanduser().resolve()
  if not (root / "src" / "pinn" / "__init__.py").is_file():
    raise SystemExit(f"--dsgnar / {ENV_VAR}: {root} holds no src/pinn/__init__.py (a checkout).")
  return root


def batch_size(counts: list[int]) -> int:
  """The largest multiple of 4 up to `MAX_BATCH` that divides every condition's point count
  (DSGNAR splits each condition into whole macro-batches of whole micro-batches of 4)."""
  g = 0
  for n in counts:
    g = math.gcd(g, n)
  candidates = [d for d in range(4, min(g, MAX_BATCH) + 1, 4) if g % d == 0]
  if not candidates:
    raise ValueError(
      f"DSGNAR needs point counts with a common divisor that is a multiple of 4; got {counts}."
    )
  return max(candidates)


def solver_settings(problem: Any, num_params: int) -> dict[str, Any]:
  """The `RunConfig` solver fields of the scaled-down runs."""
  counts = [len(c.points) for c in problem.conditions]
  batch = batch_size(counts)
  return {
    "residual_sketch": min(SKETCH, sum(counts)),
    "parameter_sketch": min(SKETCH, num_params),
    "batch_size": batch,
    "sub_batch_size": 4,
    "probe_batch_size": batch,
  }


# ----------------------------------------------------------------------------- the child


class _Budget(Exception):
  """The budget of step seconds is spent."""


def _reference_file(problem: Any, directory: pathlib.Path) -> str:
  """The suite's test points in the schema of DSGNAR's reference files (its trainer loads
  one; the suite measures its own error itself)."""
  axes = ("x", "t") if problem.t_max is not None else ("x", "y")
  path = directory / f"{problem.name}.npz"
  np.savez(
    path,
    coords=np.asarray(problem.test_points, np.float64),
    solution=np.asarray(problem.exact, np.float64)[:, None],
    channels=np.array(["u"]),
    plot_axes=np.array(axes),
    plot_x0=np.array([0.0, 1.0]),
    plot_x1=np.array([0.0, 1.0]),
    plot_u=np.zeros((2, 2)),
  )
  return str(path)


def _problem_class(pinn: Any, problem: Any, ref_path: str) -> type:
  """A `pinn.Problem` of the suite's problem: its conditions, points and targets."""
  import jax.numpy as jnp

  d = problem.dim

  def residual_fn(condition):
    def fn(model, coords):
      u = lambda p: model(p)[0]
      target = coords[d] if coords.shape[0] > d else jnp.zeros((), coords.dtype)
      return jnp.array([condition.residual(u, coords[:d], target)])

    return fn

  def sampler(points):
    return lambda key, n, *times: jnp.asarray(points)

  def initial_values(targets):
    return lambda x: jnp.asarray(targets, x.dtype)[None, :]

  conditions = {c.name: c for c in problem.conditions}
  residuals = {name: residual_fn(c) for name, c in conditions.items()}
  samplers = {name: sampler(c.points) for name, c in conditions.items()}
  attributes: dict[str, Any] = {
    "problem_name": problem.name,
    "ref_path": ref_path,
    "residual_fns": lambda self: residuals,
    "samplers": lambda self: samplers,
  }
  if problem.t_max is not None:
    attributes["t_max"] = problem.t_max
  if "ic" in conditions:
    attributes["analytical_ic"] = lambda self, x: initial_values(conditions["ic"].targets)(x)
  if "ic_t" in conditions:
    attributes["analytical_ic_t"] = lambda self, x: initial_values(conditions["ic_t"].targets)(x)

  def __init__(self, *, n_pde, n_ic, n_bc):
    self.n_pde, self.n_ic, self.n_bc = n_pde, n_ic, n_bc

  attributes["__init__"] = __init__
  return type(f"Suite_{problem.name}", (pinn.Problem,), attributes)


def _network_class() -> type:
  import equinox as eqx

  class SuiteNetwork(eqx.Module):
    """The suite's network and parameters as an equinox module: coords (d,) -> (1,)."""

    params: Any
    apply: Any = eqx.field(static=True)

    def __call__(self, coords):
      return self.apply(self.params, coords[None])[0]

  return SuiteNetwork


def run_child(arguments: argparse.Namespace) -> dict[str, Any]:
  """One DSGNAR run of the suite (in this process): its record."""
  root = checkout(arguments.dsgnar)
  assert root is not None
  sys.path.insert(0, str(root / "src"))
  import jax
  import jax.numpy as jnp

  from benchmarks import models
  from benchmarks import pinn_problems
  from benchmarks import training
  from benchmarks.training import rounded

  sizes = json.loads(arguments.sizes)
  with jax.enable_x64(True):
    problem = pinn_problems.make_problem(arguments.problem, sizes, root)
    assert problem is not None
    # The suite's float64 initial parameters (DSGNAR casts them to each pass's precision).
    params0 = problem.net.init(jax.random.PRNGKey(arguments.seed))
  num_params = models.num_params(params0)
  exact = np.asarray(problem.exact, np.float64)
  test_points = np.asarray(problem.test_points, np.float64)

  import pinn  # noqa: E402 - from the checkout, on sys.path only here
  from pinn import trainer32
  from pinn import trainer64

  trainer = trainer64 if arguments.bits == 64 else trainer32
  budget = arguments.budget
  curve: dict[str, list] = {"step": [], "seconds": [], "rel_l2": [], "loss": [], "bits": []}
  state = {"seconds": 0.0, "steps": 0, "timed": 0, "compile": 0.0, "compiles": 0, "switch": None}
  schedule = training.EvaluationSchedule(budget / arguments.eval_points)
  predict = {}

  def error(module) -> float:
    params = module.params  # the trainable part of the SuiteNetwork (eqx.partition)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    if dtype not in predict:
      predict[dtype] = jax.jit(problem.net.apply)
    values = np.asarray(predict[dtype](params, jnp.asarray(test_points, dtype)))[:, 0]
    return float(np.linalg.norm(values.astype(np.float64) - exact) / np.linalg.norm(exact))

  def record(params, loss, bits) -> None:
    curve["step"].append(state["steps"])
    curve["seconds"].append(rounded(state["seconds"]))
    curve["rel_l2"].append(rounded(error(params)))
    curve["loss"].append(None if loss is None else rounded(float(loss)))
    curve["bits"].append(bits)

  class TimedOptimiser(trainer.Optimiser):
    def step(self, **kwargs):
      params = kwargs["params"]
      dtype = jax.tree_util.tree_leaves(params)[0].dtype
      bits = 64 if dtype == jnp.float64 else 32
      if not curve["step"]:
        record(params, None, bits)
      compiled_before = self._step_jit._cache_size()
      start = time.perf_counter()
      out = super().step(**kwargs)
      jax.block_until_ready(out[:3])
      elapsed = time.perf_counter() - start
      if self._step_jit._cache_size() > compiled_before:  # this call compiled its step
        state["compiles"] += 1
        state["compile"] += elapsed
      else:
        state["seconds"] += elapsed
        state["timed"] += 1
      state["steps"] += 1
      if bits == 64 and state["switch"] is None and arguments.bits == 64:
        state["switch"] = {"step": state["steps"] - 1, "seconds": rounded(state["seconds"])}
      if schedule.due(state["steps"], state["seconds"], False):
        record(out[1], out[0], bits)
      if state["seconds"] >= budget:
        raise _Budget
      return out

  class QuietPlotter:
    """Draws nothing (the trainer's live plotter needs IPython)."""

    def __init__(self, ref, save_path=None):
      self.channels = list(ref.channels)

    def __getattr__(self, name):
      return lambda *args, **kwargs: None

  network = _network_class()
  params_cast = params0  # cast by DSGNAR's passes
  with tempfile.TemporaryDirectory() as tmp:
    directory = pathlib.Path(tmp)
    problem_class = _problem_class(pinn, problem, _reference_file(problem, directory))
    counts = {c.name: len(c.points) for c in problem.conditions}
    weights = {f"{c.name}_weight": c.weight for c in problem.conditions}
    solver = solver_settings(problem, num_params)
    config = pinn.RunConfig(
      network=lambda key: network(params_cast, problem.net.apply),
      seed=arguments.seed,
      dt=problem.t_max,
      n_pde=counts.get("pde", 0),
      n_ic=counts.get("ic", 0),
      n_bc=counts.get("bc", 0),
      log_every=10**9,
      plot_every=10**9,
      cache_dir=str(directory / "cache"),
      **solver,
      **weights,
    )
    saved = trainer.Optimiser, trainer.Plotter
    trainer.Optimiser, trainer.Plotter = TimedOptimiser, QuietPlotter
    stopped = "budget"
    try:
      trainer.train(problem_class, config)
      stopped = "dsgnar stopped itself (trust radius below its threshold)"
    except _Budget:
      pass
    finally:
      trainer.Optimiser, trainer.Plotter = saved
  finals = [e for e in curve["rel_l2"] if e is not None]
  return {
    "steps": state["steps"],
    "train_seconds": round(state["seconds"], 4),
    "compile_seconds": round(state["compile"], 4),
    "ms_per_step": 1e3 * state["seconds"] / max(state["timed"], 1),
    "compiling_steps": state["compiles"],
    "final_rel_l2": finals[-1] if finals else None,
    "curve": curve,
    "stopped": stopped,
    "precision_switch": state["switch"],
    "hyperparams": {
      "trainer": "pinn.train64" if arguments.bits == 64 else "pinn.train32",
      **solver,
      "n_hashes": 4,
      "target_rho": config.target_rho,
      "auto_adjust": config.auto_adjust,
      "initial_weights": {c.name: c.weight for c in problem.conditions},
      "slabs": 1 if problem.t_max is not None else 0,
    },
  }


def run(
  root: pathlib.Path,
  problem: str,
  sizes: Mapping[str, Any],
  bits: int,
  budget: float,
  eval_points: int,
  seed: int = 0,
) -> dict[str, Any]:
  """One DSGNAR run in a fresh process (`python -m benchmarks.dsgnar_peer`): its record."""
  import subprocess

  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "record.json"
    command = [
      sys.executable,
      "-m",
      "benchmarks.dsgnar_peer",
      "--dsgnar",
      str(root),
      "--problem",
      problem,
      "--sizes",
      json.dumps(dict(sizes)),
      "--bits",
      str(bits),
      "--budget",
      str(budget),
      "--eval-points",
      str(eval_points),
      "--seed",
      str(seed),
      "--out",
      str(out),
    ]
    project = pathlib.Path(__file__).resolve().parent.parent
    env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
      command, cwd=tmp, env=env, capture_output=True, text=True, timeout=budget * 4 + 900
    )
    if done.returncode != 0 or not out.is_file():
      raise RuntimeError(
        f"DSGNAR run {problem} float{bits} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
      )
    return json.loads(out.read_text())


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="one DSGNAR run of the PINN suite")
  parser.add_argument("--dsgnar", required=True)
  parser.add_argument("--problem", required=True)
  parser.add_argument("--sizes", required=True, help="the suite's sizes, JSON")
  parser.add_argument("--bits", type=int, choices=(32, 64), required=True)
  parser.add_argument("--budget", type=float, required=True)
  parser.add_argument("--eval-points", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  args.out.write_text(json.dumps(run_child(args)))
