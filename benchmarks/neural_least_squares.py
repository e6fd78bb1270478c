"""A neural least-squares fit: RD's LM, with and without a scaled metric, against MINPACK.

The problem: a batch-normalised MLP 1-8-8-1 (tanh; batch statistics, so the
examples are coupled) fitted to 256 noisy samples of y = sin(3x) + x/2 on
[−2, 2], float64, one full batch. The parameters' scales differ by layer (the
first layer sees raw x, the batch norm's scales and offsets act after
normalisation, the head sees tanh units), which is where a metric matters.

Optimizers, each from the same initialisation (per seed):

* RD + LM, λI: `rd.regression_descent(apply_fn, 1.0, damping=levenberg_marquardt(),
  examples="coupled")`;
* RD + LM, `metric=rd.metric.marquardt()`: (JᵀJ + λ D²) with D² the running max
  of J's squared column norms (MINPACK's `mode=1` scaling);
* RD + LM, `metric=rd.metric.layerwise(decay=0)`: one scale per parameter leaf;
* MINPACK: scipy `least_squares(method="lm", x_scale="jac")` (lmder with its
  own column-norm scaling), and with `x_scale=1.0` (no scaling), the Jacobian
  from `jax.jacfwd`, jitted.

The cost ½‖r‖² after 30, 100 and 300 iterations, counted as Jacobian
evaluations for both (RD: one per update, rejected re-solves reuse it;
MINPACK: `max_nfev` caps function evaluations, so the runs are made with a
budget and the cost read at the first evaluation count at or past each
mark, from MINPACK's own iteration record: `njev`). Medians over seeds.

    python -m benchmarks run neural_least_squares --out benchmarks/results/cpu
    python -m benchmarks run neural_least_squares --quick --out /tmp/x
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import rdescent as rd
from benchmarks import plotting
from benchmarks import registry
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info

MARKS = (30, 100, 300)
NUM_POINTS = 256
WIDTH = 8


def _init(key: jax.Array) -> dict[str, Any]:
  keys = jax.random.split(key, 3)

  def dense(k, fan_in, fan_out):
    return {
      "kernel": jax.random.normal(k, (fan_in, fan_out), jnp.float64) / np.sqrt(fan_in),
      "bias": jnp.zeros((fan_out,), jnp.float64),
    }

  def norm(width):
    return {"scale": jnp.ones((width,), jnp.float64), "offset": jnp.zeros((width,), jnp.float64)}

  return {
    "dense1": dense(keys[0], 1, WIDTH),
    "norm1": norm(WIDTH),
    "dense2": dense(keys[1], WIDTH, WIDTH),
    "norm2": norm(WIDTH),
    "head": dense(keys[2], WIDTH, 1),
  }


def apply_fn(params: Any, x: jax.Array) -> jax.Array:
  """The batch-normalised MLP on the whole batch (batch statistics: examples coupled)."""

  def batch_norm(z, p):
    mean = jnp.mean(z, axis=0)
    var = jnp.var(z, axis=0)
    return p["scale"] * (z - mean) / jnp.sqrt(var + 1e-5) + p["offset"]

  h = x @ params["dense1"]["kernel"] + params["dense1"]["bias"]
  h = jnp.tanh(batch_norm(h, params["norm1"]))
  h = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
  h = jnp.tanh(batch_norm(h, params["norm2"]))
  return h @ params["head"]["kernel"] + params["head"]["bias"]


def _data(seed: int) -> tuple[jax.Array, jax.Array]:
  x = jnp.linspace(-2.0, 2.0, NUM_POINTS, dtype=jnp.float64)[:, None]
  noise = 0.05 * jax.random.normal(jax.random.key(1000 + seed), x.shape, jnp.float64)
  return x, jnp.sin(3.0 * x) + 0.5 * x + noise


def _cost(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  return 0.5 * jnp.sum(jnp.square(apply_fn(params, x) - y))


def run_rd(params: Any, x: jax.Array, y: jax.Array, metric: Any, steps: int) -> list[float]:
  """½‖r‖² after each of `steps` updates (one Jacobian each), in one jitted scan."""
  tx = rd.regression_descent(
    apply_fn,
    1.0,
    damping=rd.damping.levenberg_marquardt(),
    examples="coupled",
    metric=metric,
  )

  @jax.jit
  def solve(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(None, state, params, batch=(x, y))
      params = optax.apply_updates(params, updates)
      return (params, state), _cost(params, x, y)

    _, costs = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return costs

  return [float(c) for c in solve(params)]


def run_minpack(params: Any, x: jax.Array, y: jax.Array, x_scale: Any, steps: int) -> list[float]:
  """½‖r‖² at each Jacobian evaluation of scipy's MINPACK lmder (x_scale as given)."""
  from scipy.optimize import least_squares

  flat, unravel = ravel_pytree(params)
  residuals = jax.jit(lambda v: (apply_fn(unravel(v), x) - y).reshape(-1))
  jacobian = jax.jit(jax.jacfwd(lambda v: (apply_fn(unravel(v), x) - y).reshape(-1)))
  costs: list[float] = []

  def jac(v):
    # lmder evaluates J once per outer iteration, at the iteration's point.
    value = np.asarray(residuals(v))
    costs.append(0.5 * float(value @ value))
    return np.asarray(jacobian(v))

  least_squares(
    lambda v: np.asarray(residuals(v)),
    np.asarray(flat),
    jac=jac,
    method="lm",
    x_scale=x_scale,
    max_nfev=20 * steps,
    xtol=1e-15,
    ftol=1e-15,
    gtol=1e-15,
  )
  # costs[i] is the cost at the i-th Jacobian, i.e. after i iterations; pad a converged run.
  costs = costs[1:] + [costs[-1]] * max(0, steps + 1 - len(costs))
  return costs[:steps]


METHODS = {
  "RD LM, λI": ("rd", None),
  "RD LM, marquardt": ("rd", "marquardt"),
  "RD LM, layerwise": ("rd", "layerwise"),
  "MINPACK lm, x_scale='jac'": ("minpack", "jac"),
  "MINPACK lm, x_scale=1": ("minpack", 1.0),
}


def run(options: StudyOptions) -> dict[str, Any]:
  with jax.enable_x64(True):
    seeds = [0] if options.quick else list(range(options.seeds or 3))
    steps = 30 if options.quick else MARKS[-1]
    marks = [m for m in MARKS if m <= steps]
    curves: dict[str, list[list[float]]] = {name: [] for name in METHODS}
    for seed in seeds:
      x, y = _data(seed)
      params = _init(jax.random.key(seed))
      for name, (kind, setting) in METHODS.items():
        if kind == "rd":
          metric = {"marquardt": rd.metric.marquardt(), "layerwise": rd.metric.layerwise(decay=0.0)}
          curve = run_rd(params, x, y, metric.get(setting) if setting else None, steps)
        else:
          curve = run_minpack(params, x, y, setting, steps)
        curves[name].append(curve)
  reference = "MINPACK lm, x_scale='jac'"
  rows = []
  for name, runs in curves.items():
    row: dict[str, Any] = {"method": name}
    for mark in marks:
      at_mark = [run_[mark - 1] for run_ in runs]
      ref = [run_[mark - 1] for run_ in curves[reference]]
      row[f"cost_{mark}"] = float(np.median(at_mark))
      row[f"ratio_{mark}"] = float(np.median(np.asarray(at_mark) / np.asarray(ref)))
    rows.append(row)
  return {
    "study": "neural_least_squares",
    "kind": "neural_least_squares",
    "machine": machine_info(),
    "config": {
      "model": f"batch-normalised MLP 1-{WIDTH}-{WIDTH}-1, tanh",
      "points": NUM_POINTS,
      "seeds": seeds,
      "marks": marks,
      "reference": reference,
    },
    "rows": rows,
    "curves": {name: np.median(np.asarray(runs), axis=0).tolist() for name, runs in curves.items()},
  }


def markdown_table(result: Mapping[str, Any]) -> str:
  marks = result["config"]["marks"]
  header = "| method | " + " | ".join(f"½‖r‖² at {m} (÷ MINPACK jac)" for m in marks) + " |"
  lines = [header, "|---|" + "---|" * len(marks)]
  for row in result["rows"]:
    cells = [f"{row[f'cost_{m}']:.4g} ({row[f'ratio_{m}']:.2f}×)" for m in marks]
    lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
  lines += [
    "",
    f"{result['config']['model']}, {result['config']['points']} points, float64; iterations = "
    f"Jacobian evaluations; medians over seeds {result['config']['seeds']} (ratios: median of "
    f"per-seed ratios). Machine: {result['machine']['device']}.",
  ]
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 3.6))
  for name, curve in result["curves"].items():
    ax.plot(np.arange(1, len(curve) + 1), curve, label=name, lw=1.2)
  ax.set_yscale("log")
  ax.set_xlabel("iterations (Jacobian evaluations)")
  ax.set_ylabel("½‖r‖² (median over seeds)")
  ax.legend(fontsize=7)
  ax.set_title(f"Neural least squares — {result['machine']['device']}", fontsize=9)
  return plotting.save_figure(fig, path)


registry.register(
  "neural_least_squares",
  run,
  "batch-normalised MLP fit, full batch: RD's LM with and without a scaled metric vs MINPACK",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
