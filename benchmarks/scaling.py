"""Scaling study: the cost of one RD step against m, k and width, per Gram engine.

Model: MLP d_in-w-w-k (tanh), random inputs and targets. One step is the jitted
`scale_by_regression_descent` update in full mode with `system="dual"` (so the
(m k) × (m k) Gram system is always built). Time: median over repeats after
compilation. Three sweeps around a base point (m = 32, k = 10, w = 64); the
log-log slope of each sweep is the empirical cost exponent.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

import rdescent as rd
from benchmarks import models
from benchmarks import plotting
from benchmarks import registry
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info

INPUT_DIM = 64
BASE = {"m": 32, "k": 10, "width": 64}
FULL_SWEEPS = {"m": (8, 16, 32, 64, 128), "k": (1, 2, 5, 10, 20), "width": (16, 32, 64, 128, 256)}
QUICK_SWEEPS = {"m": (4, 8), "k": (1, 2), "width": (8, 16)}


def engines() -> list[str]:
  """The Gram engines to compare: those of `rd.gram.METHODS` other than "auto"."""
  return [m for m in rd.gram.METHODS if m != "auto"]


def step_seconds(engine: str, m: int, k: int, width: int, repeats: int) -> tuple[float, float]:
  """(median seconds per RD step, compile seconds) for one configuration."""
  model = models.mlp([INPUT_DIM, width, width, k], "tanh")
  key = jax.random.PRNGKey(0)
  params = model.init(key)
  x = jax.random.normal(jax.random.fold_in(key, 1), (m, INPUT_DIM))
  y = jax.random.normal(jax.random.fold_in(key, 2), (m, k))
  tx = rd.scale_by_regression_descent(
    model.apply, damping=1e-3, outputs="full", gram=engine, system="dual"
  )
  state = tx.init(params)
  start = time.perf_counter()
  step = (
    jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y)))
    .lower(params, state, x, y)
    .compile()
  )
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, state, x, y))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), compile_seconds


def run(options: StudyOptions) -> dict[str, Any]:
  sweeps = QUICK_SWEEPS if options.quick else FULL_SWEEPS
  repeats = 2 if options.quick else (options.seeds or 5)
  measurements = []
  for engine in engines():
    for axis, values in sweeps.items():
      for value in values:
        point = dict(BASE if not options.quick else {"m": 4, "k": 2, "width": 8}, **{axis: value})
        seconds, compile_seconds = step_seconds(
          engine, point["m"], point["k"], point["width"], repeats
        )
        measurements.append(
          {
            "engine": engine,
            "sweep": axis,
            **point,
            "seconds": seconds,
            "compile_seconds": compile_seconds,
          }
        )
        if options.progress:
          print(f"scaling {engine:10s} {axis}={value:<4d} {1e3 * seconds:9.2f} ms/step", flush=True)
  return {
    "study": "scaling",
    "kind": "scaling",
    "command": options.command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "config": {
      "model": f"MLP {INPUT_DIM}-w-w-k (tanh)",
      "base": BASE,
      "repeats": repeats,
      "outputs": "full",
      "system": "dual",
      "damping": 1e-3,
      "seeds": repeats,
      "quick": options.quick,
    },
    "measurements": measurements,
    "slopes": slopes(measurements),
  }


def slopes(measurements) -> dict[str, dict[str, float]]:
  """Least-squares slope of log(seconds) against log(value), per engine and sweep."""
  out: dict[str, dict[str, float]] = {}
  for row in measurements:
    out.setdefault(row["engine"], {}).setdefault(row["sweep"], None)
  for engine, sweeps in out.items():
    for axis in sweeps:
      rows = [r for r in measurements if r["engine"] == engine and r["sweep"] == axis]
      xs = np.log([r[axis] for r in rows])
      ys = np.log([r["seconds"] for r in rows])
      sweeps[axis] = float(np.polyfit(xs, ys, 1)[0]) if len(rows) > 1 else float("nan")
  return out


def markdown_table(result: Mapping[str, Any]) -> str:
  """One row per measured configuration, then the fitted cost exponents."""
  rows = result["measurements"]
  lines = [
    "| engine | sweep | m | k | width | ms/step | compile s |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['engine']} | {r['sweep']} | {r['m']} | {r['k']} | {r['width']} | "
      f"{1e3 * r['seconds']:.3g} | {r['compile_seconds']:.2f} |"
    )
  lines.append("")
  fitted = "; ".join(
    f"{engine}: " + ", ".join(f"∝ {axis}^{slope:.2f}" for axis, slope in s.items())
    for engine, s in result["slopes"].items()
  )
  lines.append(
    f"Log-log slopes (cost exponents) — {fitted}. Base point {result['config']['base']}, "
    f"full mode, dual system, median of {result['config']['repeats']} repeats."
  )
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Log-log ms per step against each swept axis, one line per engine."""
  plt = plotting.pyplot()
  rows = result["measurements"]
  axes_names = list(dict.fromkeys(r["sweep"] for r in rows))
  fig, axes = plt.subplots(1, len(axes_names), figsize=(4.5 * len(axes_names), 3.8))
  for ax, axis in zip(np.atleast_1d(axes), axes_names):
    for engine in dict.fromkeys(r["engine"] for r in rows):
      sel = [r for r in rows if r["sweep"] == axis and r["engine"] == engine]
      slope = result["slopes"][engine][axis]
      ax.loglog(
        [r[axis] for r in sel],
        [1e3 * r["seconds"] for r in sel],
        "o-",
        label=f"{engine} (slope {slope:.2f})",
      )
    ax.set_xlabel(axis)
    ax.set_ylabel("ms per RD step (full mode)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(
    f"RD step cost, {result['config']['model']}, base {result['config']['base']} — "
    f"{result['machine']['device']}",
    fontsize=9,
  )
  return plotting.save_figure(fig, path)


registry.register(
  "scaling",
  run,
  "RD step time against m, k and width, per Gram engine",
  table=markdown_table,
  plot=plot,
)
