"""Sketched Gauss-Newton steps on the 2D Poisson PINN at scale (`benchmarks.pinn_2d`'s
`SCALE`: 10,800 residuals, MLP 2-64-64-64-1, 8,577 parameters, float64): RD + Levenberg-
Marquardt with `row_sketch=` (drawn examples) and `column_sketch=` (drawn parameter
coordinates), against the study's best unsketched form, `cg(rank=100, products="jacobian")`.

Each run: `--budget` seconds of training from the same initial parameters (compile excluded;
`pinn_2d.train`, which evaluates at steps 1, 2, 4, ... and every budget/200 s). Reported per
method: the median over `--seeds` seeds of seconds per step, the seconds to a relative L2 error
of 1e-2, 1e-3 and 1e-4 (inf: not reached) and the final error. Runs are seed-major, so that
machine load affects every method alike.

    python -m benchmarks.sketched_pinn --budget 120 --seeds 1 \
      --out benchmarks/results/cpu/sketched_pinn.json
    python -m benchmarks.sketched_pinn --budget 120 --seeds 2 --only "rows 2000" "from J" \
      --out benchmarks/results/cpu/sketched_pinn_seeds.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import jax

import rdescent as rd
from benchmarks import pinn_2d
from benchmarks import report
from benchmarks.runner import machine_info

TARGETS = (1e-2, 1e-3, 1e-4)
SKETCHES = (  # the options of `rd.regression_descent`
  {"row_sketch": 2000, "column_sketch": 2000, "system": "primal"},
  {"column_sketch": 2000, "system": "primal"},
  {"row_sketch": 4000, "column_sketch": 3000, "system": "primal"},
)


def sketch_label(options: dict[str, Any]) -> str:
  """ "rows s × columns c" of the sketch options."""
  parts = [f"rows {options['row_sketch']}"] if "row_sketch" in options else []
  parts += [f"columns {options['column_sketch']}"] if "column_sketch" in options else []
  return " × ".join(parts)


def method(label: str, options: dict[str, Any]) -> pinn_2d.Method:
  """RD + LM (`pinn_2d.rd_lm_method`) with the given options."""
  describe = {
    k: pinn_2d._cg_describe(pinn_2d.CG_JACOBIAN) if k == "solver" else v for k, v in options.items()
  }
  return pinn_2d.rd_lm_method(label, describe, **options)


def methods(quick: bool) -> list[pinn_2d.Method]:
  scale = 0.01 if quick else 1.0
  runs = [
    method(
      pinn_2d.CG_JACOBIAN_LABEL,
      {"solver": rd.solvers.cg(**pinn_2d.CG_JACOBIAN)},
    )
  ]
  for options in SKETCHES:
    sized = {k: (max(4, int(v * scale)) if k.endswith("sketch") else v) for k, v in options.items()}
    runs.append(method(sketch_label(sized), sized))
  return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", type=float, default=120.0)
  parser.add_argument("--seeds", type=int, default=1)
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
  parser.add_argument(
    "--only", nargs="*", default=None, help="run the methods whose label contains one of these"
  )
  parser.add_argument("--out", type=pathlib.Path, default=None, help="results JSON")
  args = parser.parse_args(argv)
  sizes = pinn_2d.SCALE_QUICK if args.quick else pinn_2d.SCALE
  rows = []
  chosen = [
    m for m in methods(args.quick) if not args.only or any(word in m.label for word in args.only)
  ]
  with jax.enable_x64(True):
    problem = pinn_2d.make_problem(sizes["grid"], sizes["edge"], sizes["hidden"], sizes["test"])
    print(f"2D Poisson, {problem.inputs.shape[0]} points, budget {args.budget:g} s", flush=True)
    cache: dict = {}
    for seed in range(args.seeds):
      for run in chosen:
        record = pinn_2d.train(problem, run, seed, budget=args.budget, compiled_cache=cache)
        row = {
          "method": run.label,
          "options": dict(run.hyperparams),
          "seed": seed,
          "steps": record["steps"],
          "seconds_per_step": record["ms_per_step"] / 1e3,
          "compile_seconds": record["compile_seconds"],
          "final_rel_l2": record["final_rel_l2"],
          **{f"to_{t:g}": report.time_to_target(record, t, key="rel_l2") for t in TARGETS},
          "curve": record["curve"],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
  lines = [
    "| method | s/step | " + " | ".join(f"s to {t:g}" for t in TARGETS) + " | final rel. L2 |",
    "|---|---:|" + "---:|" * len(TARGETS) + "---:|",
  ]
  for run in chosen:
    mine = [r for r in rows if r["method"] == run.label]
    lines.append(
      f"| {run.label} | {report.median([r['seconds_per_step'] for r in mine]):.3g} | "
      + " | ".join(f"{report.median([r[f'to_{t:g}'] for r in mine]):.3g}" for t in TARGETS)
      + f" | {report.median([r['final_rel_l2'] for r in mine]):.2g} |"
    )
  table = "\n".join(lines)
  print(table)
  result = {
    "study": "sketched_pinn",
    "command": "python -m benchmarks.sketched_pinn " + " ".join(argv or []),
    "machine": machine_info(),
    "budget_seconds": args.budget,
    "num_points": int(problem.inputs.shape[0]),
    "table": table,
    "runs": rows,
  }
  if args.out is not None:
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
  return result


if __name__ == "__main__":
  import sys

  main(sys.argv[1:])
