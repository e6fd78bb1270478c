"""`make demo`: Regression Descent against Adam on Lorenz96, in about a minute.

A preset of the Lorenz96 study (`benchmarks.lorenz96`, same runner and
protocol): one seed, MLP 40-128-128-40 on x(t) → x(t + 0.05) (N = 40, F = 8,
RK4), RD in the paper's setting (per-output, λ = 1e-5, batch 32, step 1)
and RD in full mode with Levenberg-Marquardt damping against Adam (lr 1e-3,
batch 32), each for the same seconds of training.
Prints a table and writes `demo_output/lorenz96.png` (loss against seconds
and against steps) and `demo_output/lorenz96.json`.

    python -m benchmarks.demo [--budget SECONDS] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from benchmarks import lorenz96
from benchmarks import optimizers as opt
from benchmarks import report
from benchmarks import runner

OUT_DIR = pathlib.Path("demo_output")


def demo_specs() -> list[runner.OptimizerSpec]:
  return [
      opt.rd_spec("rd paper (per-output λ=1e-5)", damping=1e-5, outputs="per_output"),
      opt.rd_spec("rd full levenberg_marquardt", outputs="full",
                  damping=("levenberg_marquardt", {"initial": 1e-3}),
                  describe="levenberg_marquardt(initial=1e-3)"),
      *opt.adam_grid([1e-3]),
  ]


def print_table(result) -> None:
  summary = report.summarize(result)
  target = summary["target"]
  print(f"\nLorenz96 (N=40, F=8, RK4), {result['task']['model']}, "
        f"{result['task']['train_size']} training pairs, batch {result['config']['batch_size']}, "
        f"{result['config']['budget_seconds']:g} s of training each "
        f"({result['machine']['device']}).")
  print(f"Target = Adam's final loss {target:.4g}; clock excludes compile and evaluation.\n")
  header = f"{'optimizer':34s} {'steps':>7s} {'seconds':>8s} {'final loss':>11s} " \
           f"{'time to target':>15s} {'compile s':>9s}"
  print(header)
  print("-" * len(header))
  for run in result["runs"]:
    ttt = report.time_to_target(run, target)
    ttt_text = f"{ttt:.2f} s" if np.isfinite(ttt) else "not reached"
    print(f"{run['label']:34s} {run['steps']:7d} {run['train_seconds']:8.2f} "
          f"{run['final_loss']:11.4g} {ttt_text:>15s} {run['compile_seconds']:9.2f}")
  ratio = summary["rd_over_adam"]
  if ratio is not None and np.isfinite(ratio):
    print(f"\nRD reached Adam's final loss in {ratio:.2f}x Adam's time "
          f"(the paper claims <= 0.6x).")
  else:
    print("\nRD did not reach Adam's final loss within the budget.")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--budget", type=float, default=20.0, help="seconds of training per optimizer")
  parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
  args = parser.parse_args(argv)
  options = runner.StudyOptions(seeds=1, budget=args.budget, out_dir=args.out,
                                command="python -m benchmarks.demo " + " ".join(argv or sys.argv[1:]))
  print("Generating Lorenz96 trajectories and compiling (not timed)...")
  result = lorenz96.run(options, specs=demo_specs(), study="lorenz96")
  runner.save(result, args.out)
  plot = report.plot_study(result, args.out / "lorenz96.png")
  print_table(result)
  print(f"\nPlot: {plot}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
