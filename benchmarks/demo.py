"""`make demo`: both faces of Regression Descent, in about two minutes on a 2-core CPU.

(a) Full batch, where RD wins: the `fit_1d` study (`benchmarks.full_batch_fit`),
    y = sin(3πx)·exp(−x²) + 0.3 cos(7x) on 256 points of [-1, 1], MLP 1-32-32-1
    (tanh), float32, every step on all 256 points. RD with Levenberg-Marquardt
    damping (`rd.regression_descent(apply_fn, damping=rd.damping.levenberg_marquardt())`)
    against Adam (lr 3e-3, the best of 1e-3 / 3e-3 / 1e-2 on this task) and
    `optax.lbfgs` (zoom line search); target MSE 1e-7.
(b) Mini-batch, where RD does not yet win: the `lorenz96` study
    (`benchmarks.lorenz96`), MLP 40-128-128-40 on x(t) → x(t + 0.05) (N = 40,
    F = 8, RK4), batch 32: RD in the paper's setting (per-output, λ = 1e-5) and
    in full mode with Levenberg-Marquardt damping against Adam (lr 1e-3); the
    target is Adam's final loss.

Same runner and protocol as the studies (`benchmarks.runner`): one seed, same
initialisation and data order for every method, the same seconds of training
each, compile and evaluations excluded from the clock. Prints one table and
writes to `--out` (default `demo_output/`): `demo.png` (loss against seconds,
one panel per task, one colour per optimizer, the settings in its caption),
`demo.md` and `demo.json` (the table), and the two studies' records
`fit_1d.json` and `lorenz96.json` (the curves).

    python -m benchmarks.demo                # 106-109 s measured on a busy 2-core CPU
    python -m benchmarks.demo --quick --out /tmp/demo   # tiny sizes, seconds (tests)
"""

from __future__ import annotations

import os

# One OpenBLAS thread (unless the caller sets another count), before numpy loads
# OpenBLAS: jax's CPU Cholesky calls it, and on a 2-core machine its spinning
# worker threads compete with XLA's; measured while other processes shared the
# cores, the 1D fit's RD step took 250-580 ms with the default thread count and
# about 1 ms with one thread. Adam and L-BFGS make no LAPACK calls.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any

import numpy as np  # noqa: E402

from benchmarks import full_batch_fit  # noqa: E402
from benchmarks import lorenz96  # noqa: E402
from benchmarks import optimizers as opt  # noqa: E402
from benchmarks import plotting  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import runner  # noqa: E402

OUT_DIR = pathlib.Path("demo_output")
FIT_BUDGET = 5.0  # seconds of training per method, full-batch fit
LORENZ_BUDGET = 12.0  # seconds of training per method, Lorenz96
QUICK_BUDGET = 0.3
TASKS = {"fit_1d": "1D fit, full batch", "lorenz96": "Lorenz96, batch 32"}
COLUMNS = (
  ("task", "task"),
  ("method", "method"),
  ("final_loss", "final loss"),
  ("time_to_target", "time to target s"),
  ("steps", "steps"),
  ("ms_per_step", "ms/step"),
  ("compile_seconds", "compile s"),
)


FIT_ADAM_LR = 3e-3  # the best of 1e-3 / 3e-3 / 1e-2 on the 1D fit
LORENZ_ADAM_LR = 1e-3  # the best of the Lorenz96 study's grid
PAPER_DAMPING = 1e-5  # the paper's constant λ (per-output systems)
LORENZ_LM_INITIAL = 1e-3

# The figure's plain names and one colour per optimizer, the same in both panels (by the
# spec labels below); the settings behind each name are in the caption.
RD_LM, RD_PAPER, ADAM, LBFGS = (
  "RD, Levenberg-Marquardt damping",
  "RD, the paper's setting",
  "Adam",
  "L-BFGS",
)
METHOD_STYLE = {  # name -> (colour, line style)
  RD_LM: ("tab:blue", "-"),
  RD_PAPER: ("tab:purple", "-"),
  ADAM: ("tab:orange", "--"),
  LBFGS: ("tab:green", "-."),
}


def fit_specs() -> list[runner.OptimizerSpec]:
  """RD + Levenberg-Marquardt, Adam(3e-3), `optax.lbfgs()`."""
  return [
    opt.rd_spec(
      "rd + levenberg_marquardt",
      outputs="full",
      damping=("levenberg_marquardt", {}),
      describe="levenberg_marquardt()",
    ),
    *opt.adam_grid([FIT_ADAM_LR]),
    opt.lbfgs_spec("optax.lbfgs"),
  ]


def lorenz_specs() -> list[runner.OptimizerSpec]:
  """RD in the paper's setting, RD full mode + Levenberg-Marquardt, Adam(1e-3)."""
  return [
    opt.rd_spec("rd paper (per-output λ=1e-5)", damping=PAPER_DAMPING, outputs="per_output"),
    opt.rd_spec(
      "rd full + levenberg_marquardt",
      outputs="full",
      damping=("levenberg_marquardt", {"initial": LORENZ_LM_INITIAL}),
      describe="levenberg_marquardt(initial=1e-3)",
    ),
    *opt.adam_grid([LORENZ_ADAM_LR]),
  ]


def method_name(run: Mapping[str, Any]) -> str:
  """The figure's plain name of a run (one of METHOD_STYLE), from its family and label."""
  if run["family"] == "adam":
    return ADAM
  if run["family"] == "lbfgs":
    return LBFGS
  if run["family"] == "rd":
    return RD_LM if "levenberg_marquardt" in run["label"] else RD_PAPER
  return run["label"]


def _sci(value: float) -> str:
  """3e-3, 1e-5: a setting as one writes it."""
  return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def caption(results: Sequence[Mapping[str, Any]]) -> str:
  """What each name of the figure ran, and what each panel's target is."""
  lines = [
    f"{RD_LM}: rd.regression_descent(apply_fn, damping=rd.damping.levenberg_marquardt()), "
    f"the full system (outputs='full'), learning rate 1; in (b) LM starts at "
    f"λ = {_sci(LORENZ_LM_INITIAL)}.",
    f"{RD_PAPER}: one m × m system per output (outputs='per_output'), constant "
    f"λ = {_sci(PAPER_DAMPING)}, as in the paper's code.",
    f"{ADAM}: optax.adam, learning rate {_sci(FIT_ADAM_LR)} in (a) and {_sci(LORENZ_ADAM_LR)} in "
    f"(b), "
    f"each the best of a grid.  {LBFGS}: optax.lbfgs() (memory 10, zoom line search).",
  ]
  for panel, result in zip("ab", results):
    lines.append(f"Target ({panel}): {target_meaning(result)}.")
  return "\n".join(lines)


def target_meaning(result: Mapping[str, Any]) -> str:
  """The target line in words: a fixed loss, or Adam's own final loss (the race's bar)."""
  target, source = report.reference_target(result)
  if source.startswith("median final loss of adam"):
    return (
      f"{target:.3g}, Adam's own final loss after the same seconds: a method beats Adam "
      "when it gets there sooner"
    )
  return f"{target:.3g}, a fixed loss set for this task"


def table_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One row per run of a one-seed study: the columns of `COLUMNS`, the family and target."""
  target, source = report.reference_target(result)
  rows = []
  for run in result["runs"]:
    rows.append(
      {
        "task": TASKS.get(result["study"], result["study"]),
        "study": result["study"],
        "method": run["label"],
        "family": run["family"],
        "final_loss": run["final_loss"],
        "target": target,
        "target_source": source,
        "time_to_target": report.time_to_target(run, target),
        "steps": run["steps"],
        "ms_per_step": 1e3 * run["seconds_per_step"],
        "compile_seconds": run["compile_seconds"],
        "budget_seconds": result["config"]["budget_seconds"],
      }
    )
  return rows


def _cell(key: str, value: Any) -> str:
  if key in ("final_loss",):
    return "diverged" if value is None or not np.isfinite(value) else f"{value:.3g}"
  if key == "time_to_target":
    return f"{value:.3g}" if np.isfinite(value) else "not reached"
  if key == "steps":
    return str(value)
  if key in ("ms_per_step", "compile_seconds"):
    return f"{value:.3g}"
  return str(value)


def verdict(rows: Sequence[Mapping[str, Any]]) -> str:
  """One sentence per task: how the best RD run compares with the best other method."""
  lines = []
  for study in dict.fromkeys(r["study"] for r in rows):
    task = [r for r in rows if r["study"] == study]
    key = lambda r: (
      r["time_to_target"],
      r["final_loss"] if r["final_loss"] is not None and np.isfinite(r["final_loss"]) else np.inf,
    )
    rd = min((r for r in task if r["family"] == "rd"), key=key)
    other = min((r for r in task if r["family"] != "rd"), key=key)
    target, name = task[0]["target"], task[0]["task"]
    rd_loss, other_loss = rd["final_loss"] or np.inf, other["final_loss"] or np.inf
    if np.isfinite(rd["time_to_target"]) and np.isfinite(other["time_to_target"]):
      when = (
        f"{rd['method']} reached the target {target:.3g} in {rd['time_to_target']:.3g} s, "
        f"{other['time_to_target'] / max(rd['time_to_target'], 1e-9):.3g}x sooner than the "
        f"best other method ({other['method']}, {other['time_to_target']:.3g} s)"
        if rd["time_to_target"] <= other["time_to_target"]
        else f"{rd['method']} reached the target {target:.3g} in {rd['time_to_target']:.3g} s, "
        f"{rd['time_to_target'] / max(other['time_to_target'], 1e-9):.3g}x later than "
        f"{other['method']} ({other['time_to_target']:.3g} s)"
      )
    elif np.isfinite(rd["time_to_target"]):
      when = (
        f"{rd['method']} reached the target {target:.3g} in {rd['time_to_target']:.3g} s; "
        f"no other method reached it in {rd['budget_seconds']:g} s"
      )
    elif np.isfinite(other["time_to_target"]):
      when = (
        f"RD did not reach the target {target:.3g} ({task[0]['target_source']}) in "
        f"{rd['budget_seconds']:g} s; {other['method']} did in "
        f"{other['time_to_target']:.3g} s"
      )
    else:
      when = f"no method reached the target {target:.3g} in {rd['budget_seconds']:g} s"
    ratio = rd_loss / other_loss if other_loss > 0 else np.inf
    compared = f"{1 / ratio:.3g}x lower" if ratio < 1 else f"{ratio:.3g}x higher"
    lines.append(
      f"{name}: {when}; best RD final loss {rd_loss:.3g}, {compared} than "
      f"{other['method']}'s {other_loss:.3g}."
    )
  return "\n".join(lines)


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The table as aligned plain text (what the demo prints)."""
  cells = [[header for _, header in COLUMNS]]
  cells += [[_cell(key, row[key]) for key, _ in COLUMNS] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
  fmt = lambda line: "  ".join(
    c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
  )
  return "\n".join([fmt(cells[0]), "-" * len(fmt(cells[0])), *map(fmt, cells[1:])])


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The table as markdown, then the target of each task."""
  lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_cell(key, row[key]) for key, _ in COLUMNS) + " |" for row in rows]
  lines.append("")
  for study in dict.fromkeys(r["study"] for r in rows):
    row = next(r for r in rows if r["study"] == study)
    lines.append(
      f"- {row['task']}: target loss {row['target']:.4g} ({row['target_source']}), "
      f"{row['budget_seconds']:g} s of training per method."
    )
  return "\n".join(lines)


def plot(results: Sequence[Mapping[str, Any]], path: pathlib.Path) -> pathlib.Path:
  """One figure, one panel per task: training loss against training seconds (log-log).

  One colour per optimizer in both panels (METHOD_STYLE), plain names in the legends, the
  target's meaning next to its line, the settings in the caption below the panels.
  """
  plt = plotting.pyplot()
  fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 6.6))
  for panel, (ax, result) in enumerate(zip(np.atleast_1d(axes), results)):
    target, source = report.reference_target(result)
    for run in result["runs"]:
      name = method_name(run)
      color, style = METHOD_STYLE.get(name, ("black", ":"))
      seconds = np.asarray(run["curve"]["seconds"], float)
      loss = np.asarray([np.nan if v is None else v for v in run["curve"]["loss"]], float)
      keep = seconds > 0  # log time axis; the t = 0 loss is the same for every method
      ax.plot(
        seconds[keep],
        loss[keep],
        style,
        color=color,
        lw=1.8,
        marker=".",
        ms=3,
        label=f"{name} ({run['steps']:,} steps)",
      )
    adams = source.startswith("median final loss of adam")
    ax.axhline(target, color="gray", lw=1.0, ls=":")
    ax.annotate(
      f"target {target:.3g}" + (" = Adam's own final loss" if adams else " (fixed)"),
      xy=(0.02, target),  # at the left, where no curve has come down yet
      xycoords=("axes fraction", "data"),
      ha="left",
      va="bottom",
      fontsize=8,
      color="dimgray",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds (compile and evaluation excluded)")
    ax.set_ylabel("training loss (mean squared error)")
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes: inside, the legend hid the curves' steepest part.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    task = result["task"]
    face = "RD wins" if result["study"] == "fit_1d" else "RD does not win yet"
    ax.set_title(
      f"({'ab'[panel]}) {TASKS.get(result['study'], result['study'])}: {face}\n"
      f"{task['model']}, {task['train_size']} examples, "
      f"{result['config']['budget_seconds']:g} s of training each",
      fontsize=9,
    )
  machine = results[0]["machine"]
  names = {method_name(run) for result in results for run in result["runs"]}
  against = "Adam" + (" (and L-BFGS in (a))" if LBFGS in names else "")
  fig.suptitle(
    f"Regression Descent against {against}: loss over the same seconds of training — "
    f"{machine['device']}, {machine['cpu_count']} CPUs, jax {machine['jax']}, one seed",
    fontsize=10,
  )
  fig.text(0.01, 0.01, caption(results), fontsize=7.5, va="bottom", ha="left", wrap=True)
  return plotting.save_figure(fig, path, rect=(0, 0.13, 1, 1), dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.demo",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--fit-budget",
    type=float,
    default=None,
    help=f"seconds of training per method, 1D fit (default {FIT_BUDGET:g})",
  )
  parser.add_argument(
    "--lorenz-budget",
    type=float,
    default=None,
    help=f"seconds of training per method, Lorenz96 (default {LORENZ_BUDGET:g})",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help=f"tiny sizes and {QUICK_BUDGET:g} s per method (a smoke test)",
  )
  parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  command = "python -m benchmarks.demo " + " ".join(sys.argv[1:] if argv is None else argv)

  def options(budget: float | None, default: float) -> runner.StudyOptions:
    return runner.StudyOptions(
      seeds=1,
      budget=budget or (QUICK_BUDGET if args.quick else default),
      quick=args.quick,
      out_dir=args.out,
      progress=sys.stderr.isatty(),
      command=command.strip(),
    )

  print(
    "(a) 1D fit, full batch: RD + Levenberg-Marquardt, Adam, optax.lbfgs (compile not timed)...",
    flush=True,
  )
  fit = full_batch_fit.run_fit_1d(options(args.fit_budget, FIT_BUDGET), specs=fit_specs())
  print(
    "(b) Lorenz96, batch 32: generating trajectories; RD (paper, full + LM), Adam...", flush=True
  )
  race = lorenz96.run(options(args.lorenz_budget, LORENZ_BUDGET), specs=lorenz_specs())
  results = [fit, race]
  rows = [row for result in results for row in table_rows(result)]
  for result in results:
    runner.save(result, args.out)
  figure = plot(results, args.out / "demo.png")
  summary = verdict(rows)
  wall = time.perf_counter() - start
  machine = runner.machine_info()
  heading = (
    f"Regression Descent demo — {machine['device']}, {machine['cpu_count']} CPUs, "
    f"jax {machine['jax']}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; "
    f"one seed, same seconds of training per method, compile "
    f"and evaluation excluded; {wall:.0f} s in all. Command: `{command.strip()}`."
  )
  (args.out / "demo.md").write_text(
    f"{heading}\n\n{markdown_table(rows)}\n\n{summary}\n\n![demo](demo.png)\n\n"
    + "".join(f"- {line}\n" for line in caption(results).splitlines())
  )
  machine["openblas_num_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
  runner.save(
    {
      "study": "demo",
      "command": command.strip(),
      "machine": machine,
      "wall_seconds": round(wall, 2),
      "rows": rows,
      "verdict": summary.splitlines(),
    },
    args.out,
  )
  print()
  print(text_table(rows))
  print()
  for row in (next(r for r in rows if r["study"] == s) for s in TASKS):
    print(
      f"{row['task']}: target loss {row['target']:.4g} ({row['target_source']}), "
      f"{row['budget_seconds']:g} s of training per method."
    )
  print()
  print(summary)
  print(f"\nWrote {figure}, {args.out / 'demo.md'}, {args.out / 'demo.json'} ({wall:.0f} s).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
