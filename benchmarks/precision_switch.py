"""Precision switching on the 2D Poisson PINN (1,020 points, `benchmarks.pinn_2d`): RD +
Levenberg-Marquardt (Cholesky) in float32 until the switch rule fires, then float64
(`precision=rd.precision_switch()`), against the same optimizer in float64 throughout.

Parameters are float64 in both (x64 on). Each run: `--budget` seconds of training (compile
excluded; `pinn_2d.train`, which evaluates at steps 1, 2, 4, ... and every budget/200 s);
reported per method: the median over `--seeds` seeds of the seconds to a relative L2 error of
1e-5 and 1e-7 (inf: not reached) and of the final error; each switching run's record has the
update at which it switched (`state.precision.switched_at`, found by an untimed rerun).

    python -m benchmarks.precision_switch --budget 30 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import jax

import rdescent as rd
from benchmarks import pinn_2d
from benchmarks import report

TARGETS = (1e-5, 1e-7)


def method(label: str, precision: Any) -> pinn_2d.Method:
  """RD + LM (Cholesky, `pinn_2d.rd_lm_method`) with `precision=`."""
  return pinn_2d.rd_lm_method(label, {"precision": repr(precision)}, precision=precision)


def switched_at(problem: pinn_2d.Problem, run: pinn_2d.Method, seed: int, limit: int = 5000) -> int:
  """The update at which a switching run first steps in float64 (untimed; -1 within `limit`)."""
  init, step = run.build(problem)
  params = pinn_2d.init_params(problem, seed)
  state = init(params)
  step = jax.jit(step)
  for _ in range(limit):
    params, state = step(params, state, problem.inputs, problem.targets)
    precision = pinn_2d._rd_state(state).precision
    if int(precision.bits) == 64:
      return int(precision.switched_at)
  return -1


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", type=float, default=30.0)
  parser.add_argument("--seeds", type=int, default=3)
  args = parser.parse_args(argv)
  config = pinn_2d.FULL
  rows = []
  with jax.enable_x64(True):
    problem = pinn_2d.make_problem(config["grid"], config["edge"], config["hidden"], config["test"])
    print(f"2D Poisson, {problem.inputs.shape[0]} points, budget {args.budget:g} s", flush=True)
    for run in (method("float64", None), method("float32 -> float64", rd.precision_switch())):
      cache: dict = {}
      for seed in range(args.seeds):
        record = pinn_2d.train(problem, run, seed, budget=args.budget, compiled_cache=cache)
        row = {
          "method": run.label,
          "seed": seed,
          "steps": record["steps"],
          "seconds_per_step": record["ms_per_step"] / 1e3,
          "final_rel_l2": record["final_rel_l2"],
          **{f"to_{t:g}": report.time_to_target(record, t, key="rel_l2") for t in TARGETS},
          "switched_at": switched_at(problem, run, seed) if run.label != "float64" else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| method | s/step | s to 1e-5 | s to 1e-7 | final rel. L2 |")
    print("|---|---:|---:|---:|---:|")
    for label in ("float64", "float32 -> float64"):
      mine = [r for r in rows if r["method"] == label]
      print(
        f"| {label} | {report.median([r['seconds_per_step'] for r in mine]):.3g} | "
        + " | ".join(f"{report.median([r[f'to_{t:g}'] for r in mine]):.3g}" for t in TARGETS)
        + f" | {report.median([r['final_rel_l2'] for r in mine]):.2g} |"
      )
  json.dump(rows, sys.stderr)
  return rows


if __name__ == "__main__":
  main()
