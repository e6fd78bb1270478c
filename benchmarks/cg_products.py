"""Which products pay for `solver="cg"` on the 2D Poisson PINN (`benchmarks.pinn_2d`): J
materialised once per step or a JVP and a VJP through the network per product, and what
`products="auto"` (cg's default) chooses (`rdescent.problem.choose_products`).

Short runs (issue 26, item 2): RD + Levenberg-Marquardt with cg's default rank and maxiter
(ℓ = 20, 100 iterations, tol √ε) and products from the network or "auto"; cg(ℓ =
100, maxiter = 50, tol = 1e-8) from J (the at-scale study's setting); the dense Cholesky
solver (1,020 points only: at 10,800 its primal JᵀJ is 8,577²) and optax.lbfgs as references.
Each run: `--budget` seconds of training (compile excluded; `pinn_2d.train`), seed 0;
reported: steps, seconds per step and the relative L2 error at the end.

    python -m benchmarks.cg_products --size small --budget 20
    python -m benchmarks.cg_products --size scale --budget 45 \
      --only "cg auto (default),cg ℓ=100 maxiter=50 tol=1e-8 jacobian"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import jax

import rdescent as rd
from benchmarks import pinn_2d

SIZES = {"small": pinn_2d.FULL, "scale": pinn_2d.SCALE}


def solvers(size: str) -> dict[str, Any]:
  """The RD runs of one size: label -> solver."""
  runs: dict[str, Any] = {
    "cg network": rd.solvers.cg(products="network"),
    "cg auto (default)": rd.solvers.cg(),
    "cg ℓ=100 maxiter=50 tol=1e-8 jacobian": rd.solvers.cg(**pinn_2d.CG_JACOBIAN),
  }
  if size == "small":
    runs["cholesky"] = "cholesky"
  return runs


def chosen(problem: pinn_2d.Problem, solver: Any) -> str:
  """What the transform's products="auto" takes for this solver on the batch."""
  if isinstance(solver, str):
    return "matrix"
  if solver.products != "auto":
    return solver.products
  params = pinn_2d.init_params(problem, 0)
  return rd.problem.choose_products(problem.apply, params, problem.inputs, solver=solver)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="small")
  parser.add_argument("--budget", type=float, default=20.0)
  parser.add_argument(
    "--only", default=None, help="comma-separated labels to run (default: all, then optax.lbfgs)"
  )
  args = parser.parse_args(argv)
  config = SIZES[args.size]
  rows = []
  with jax.enable_x64(True):
    problem = pinn_2d.make_problem(config["grid"], config["edge"], config["hidden"], config["test"])
    points = int(problem.inputs.shape[0])
    print(f"2D Poisson, {points} points, budget {args.budget:g} s, seed 0", flush=True)
    print("| method | products | steps | s/step | rel. L2 at the end |")
    print("|---|---|---:|---:|---:|")
    runs = solvers(args.size)
    every = [
      *(pinn_2d.rd_method(label, solver, {"solver": label}) for label, solver in runs.items()),
      pinn_2d.lbfgs_method(),
    ]
    only = None if args.only is None else args.only.split(",")
    for method in [m for m in every if only is None or m.label in only]:
      record = pinn_2d.train(problem, method, 0, budget=args.budget, compiled_cache={})
      solver = runs.get(method.label)
      products = "-" if solver is None else chosen(problem, solver)
      row = {
        "points": points,
        "method": method.label,
        "products": products,
        "steps": record["steps"],
        "seconds_per_step": record["ms_per_step"] / 1e3,
        "final_rel_l2": record["final_rel_l2"],
      }
      rows.append(row)
      error = row["final_rel_l2"]
      print(
        f"| {row['method']} | {products} | {row['steps']} | {row['seconds_per_step']:.3g} | "
        f"{'diverged' if error is None else format(error, '.2g')} |",
        flush=True,
      )
  json.dump(rows, sys.stderr)
  return rows


if __name__ == "__main__":
  main()
