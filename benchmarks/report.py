"""Summaries, tables and plots from the results JSON.

Time-to-target is read off each run's loss curve: the training time of the
first evaluation whose loss is at or below the target. Unless the study fixes
a target, the target is the median final loss (at the budget) of the best
Adam configuration, so Adam's own time-to-target is close to the budget and
the RD / Adam ratio answers the paper's claim (≤ 0.6 means RD reaches Adam's
budget loss in at most 60% of Adam's time).

Studies whose records are not training records register their own table and
plot functions (`registry.register(..., table=, plot=)`); `markdown_table` and
`plot_study` look them up in the registry, so this module imports no study.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import plotting
from benchmarks import registry

INF = float("inf")


def time_to_target(run: Mapping[str, Any], target: float, key: str = "loss") -> float:
  """Seconds of training until the curve's `key` first reaches `target` (inf if never)."""
  curve = run["curve"]
  for seconds, value in zip(curve["seconds"], curve[key]):
    if value is not None and np.isfinite(value) and value <= target:
      return float(seconds)
  return INF


def median(values: Sequence[float | None]) -> float:
  """The median, None and NaN counted as inf (not reached); inf when empty."""
  values = [INF if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
  return float(np.median(values)) if values else INF


def by_label(result: Mapping[str, Any], key: str = "runs") -> dict[str, list[dict]]:
  """The records of `result[key]` grouped by their label, in order of first appearance."""
  groups: dict[str, list[dict]] = {}
  for record in result[key]:
    groups.setdefault(record["label"], []).append(record)
  return groups


def reference_target(result: Mapping[str, Any]) -> tuple[float, str]:
  """The study's target loss and where it comes from."""
  config = result.get("config", {})
  if isinstance(config.get("target_loss"), (int, float)):
    return float(config["target_loss"]), "fixed target"
  reference = config.get("reference_family", "adam")
  best, best_loss = None, INF
  for label, runs in by_label(result).items():
    if runs[0]["family"] != reference:
      continue
    loss = median([r["final_loss"] for r in runs])
    if loss < best_loss:
      best, best_loss = label, loss
  if best is None:  # no reference family: the best final loss of all configurations
    for label, runs in by_label(result).items():
      loss = median([r["final_loss"] for r in runs])
      if loss < best_loss:
        best, best_loss = label, loss
  return best_loss, f"median final loss of {best}"


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
  """Per-configuration medians and spreads, best of each family, RD / Adam ratio."""
  target, target_source = reference_target(result)
  rows = []
  for label, runs in by_label(result).items():
    finals = [r["final_loss"] for r in runs]
    ttts = [time_to_target(r, target) for r in runs]
    accs = [r.get("test_accuracy") for r in runs if r.get("test_accuracy") is not None]
    finite_finals = [f for f in finals if f is not None and np.isfinite(f)]
    rows.append(
      {
        "label": label,
        "family": runs[0]["family"],
        "batch_size": runs[0]["batch_size"],
        "seeds": len(runs),
        "steps": float(np.median([r["steps"] for r in runs])),
        "ms_per_step": 1e3 * float(np.median([r["seconds_per_step"] for r in runs])),
        "compile_seconds": float(np.median([r["compile_seconds"] for r in runs])),
        "final_loss": median(finals),
        "final_loss_min": min(finite_finals) if finite_finals else INF,
        "final_loss_max": max(finite_finals) if finite_finals else INF,
        "time_to_target": median(ttts),
        "time_to_target_min": min(ttts),
        "time_to_target_max": max(ttts),
        "reached": sum(np.isfinite(t) for t in ttts),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "test_accuracy": float(np.median(accs)) if accs else None,
        "test_accuracy_min": min(accs) if accs else None,
        "test_accuracy_max": max(accs) if accs else None,
        "test_loss": median([r.get("test_loss") for r in runs]),
      }
    )
  best: dict[str, dict] = {}
  for row in rows:
    key = (row["time_to_target"], row["final_loss"])
    current = best.get(row["family"])
    if current is None or key < (current["time_to_target"], current["final_loss"]):
      best[row["family"]] = row
  ratio = None
  if "rd" in best and "adam" in best and np.isfinite(best["adam"]["time_to_target"]):
    ratio = best["rd"]["time_to_target"] / best["adam"]["time_to_target"]
  return {
    "target": target,
    "target_source": target_source,
    "rows": rows,
    "best": {f: r["label"] for f, r in best.items()},
    "best_batch_size": {f: r["batch_size"] for f, r in best.items()},
    "rd_over_adam": ratio,
  }


def format_number(value: float | None, fmt: str = ".3g") -> str:
  """`value` in `fmt`; "–" for None, "not reached" for inf, "nan" for another non-finite."""
  if value is None:
    return "–"
  if not np.isfinite(value):
    return "not reached" if value == INF else "nan"
  return format(value, fmt)


def _registered(result: Mapping[str, Any], what: str) -> Callable[..., Any] | None:
  """The `table` or `plot` function that the result's study registered, if any."""
  study = registry.find(result["study"])
  function = getattr(study, what) if study is not None else None
  if function is None and result.get("kind", "training") != "training":
    raise ValueError(
      f"study {result['study']!r} has results of kind {result.get('kind')!r} "
      f"but registered no {what} function (registry.register(..., {what}=...))."
    )
  return function


def markdown_table(result: Mapping[str, Any]) -> str:
  """One study's markdown table: the study's registered `table`, else `training_table`."""
  table = _registered(result, "table")
  return table(result) if table is not None else training_table(result)


def training_table(result: Mapping[str, Any]) -> str:
  """A training study's table (one row per configuration) with its headline line."""
  summary = summarize(result)
  classification = any(r["test_accuracy"] is not None for r in summary["rows"])
  head = [
    "optimizer",
    "batch",
    "steps",
    "ms/step",
    "compile s",
    "final loss [min–max]",
    "time to target s [min–max] (reached)",
  ]
  head.append("test acc. [min–max]" if classification else "test loss")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  best_labels = set(summary["best"].values())
  for row in summary["rows"]:
    label = f"**{row['label']}**" if row["label"] in best_labels else row["label"]
    ttt = (
      f"{format_number(row['time_to_target'])} [{format_number(row['time_to_target_min'])}–"
      f"{format_number(row['time_to_target_max'])}] ({row['reached']}/{row['seeds']})"
    )
    final = (
      f"{format_number(row['final_loss'], '.4g')} [{format_number(row['final_loss_min'], '.4g')}–"
      f"{format_number(row['final_loss_max'], '.4g')}]"
    )
    if row["diverged"]:
      final += f" ({row['diverged']} diverged)"
    if classification:
      last = (
        f"{format_number(row['test_accuracy'], '.4f')} "
        f"[{format_number(row['test_accuracy_min'], '.4f')}–"
        f"{format_number(row['test_accuracy_max'], '.4f')}]"
      )
    else:
      last = format_number(row["test_loss"], ".4g")
    cells = [
      label,
      str(row["batch_size"]),
      f"{row['steps']:.0f}",
      f"{row['ms_per_step']:.3g}",
      f"{row['compile_seconds']:.2f}",
      final,
      ttt,
      last,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  ratio = summary["rd_over_adam"]
  verdict = ""
  if ratio is not None:
    verdict = (
      f" Best RD / best Adam time-to-target: **{format_number(ratio, '.2f')}** "
      f"({'meets' if ratio <= 0.6 else 'misses'} the paper's ≤ 0.6)."
    )
  if len({row["batch_size"] for row in summary["rows"]}) > 1:
    picked = ", ".join(f"{k} {v}" for k, v in summary["best_batch_size"].items())
    verdict += f" Batch size each family's best picked: {picked}."
  lines.append("")
  lines.append(
    f"Target loss {summary['target']:.4g} ({summary['target_source']}). "
    f"Best per family in bold ({', '.join(f'{k}: {v}' for k, v in summary['best'].items())})."
    + verdict
  )
  return "\n".join(lines)


def study_section(result: Mapping[str, Any], plot_prefix: str = "") -> str:
  """Markdown section of one study: what, where, how, table, plot."""
  task = result.get("task", {})
  config = result.get("config", {})
  machine = result.get("machine", {})
  lines = [f"### {result['study']}", ""]
  if task:
    lines.append(
      f"{task.get('name', '')}; model {task.get('model', '')} "
      f"({task.get('num_params', '?')} parameters), loss {task.get('loss', '')}"
      + (f", {task['train_size']} training examples." if "train_size" in task else ".")
    )
  if config and "budget_seconds" not in config and "iterations" in config:
    lines.append(
      f"{config['iterations']} iterations per run, {config.get('seeds', '?')} seeds, "
      "medians over seeds."
    )
  elif config:
    lines.append(
      f"Budget {config.get('budget_seconds', '–')} s of training per run, "
      f"{config.get('seeds', '?')} seeds, medians [min–max] over seeds."
    )
  lines.append(
    f"Machine: {machine.get('device', '?')} ({machine.get('backend', '?')}), "
    f"{machine.get('cpu_count', '?')} CPUs, jax {machine.get('jax', '?')}. "
    f"Command: `{result.get('command', '')}` ({result.get('created', '')})."
  )
  lines += ["", markdown_table(result), ""]
  lines.append(f"![{result['study']}]({plot_prefix}{result['study']}.png)")
  lines.append("")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def curve_grid(runs: Sequence[Mapping], axis: str, points: int) -> np.ndarray:
  """Where to draw the runs' curves against `axis`: `points` seconds from 0 to the longest
  run's end, or whole steps from 1 log-spaced (`points` at most)."""
  end = max(max(run["curve"][axis]) for run in runs)
  if axis == "seconds":
    return np.linspace(0, end, points)
  return np.unique(np.geomspace(1, max(end, 1), points).round())


def median_curve(
  runs: Sequence[Mapping], axis: str, grid: np.ndarray, key: str = "loss"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Median, min and max over seeds of the curve's `key` as a step function of `axis` (the
  curve's "seconds" or "step"), on `grid`."""
  values = []
  for run in runs:
    xs = np.asarray(run["curve"][axis], float)
    ys = np.asarray([np.nan if v is None else v for v in run["curve"][key]], float)
    index = np.searchsorted(xs, grid, side="right") - 1
    row = np.where(index >= 0, ys[np.clip(index, 0, None)], np.nan)
    row[grid > xs[-1]] = np.nan
    values.append(row)
  values = np.asarray(values)
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after a run diverged
    return np.nanmedian(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0)


def plotted_labels(result: Mapping[str, Any]) -> list[str]:
  """The best configuration of each baseline family, and every RD configuration."""
  summary = summarize(result)
  labels = []
  for row in summary["rows"]:
    if row["family"] == "rd" or summary["best"].get(row["family"]) == row["label"]:
      labels.append(row["label"])
  return labels


def plot_study(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """One study's PNG: the study's registered `plot`, else `training_plot`."""
  plot = _registered(result, "plot")
  return plot(result, path) if plot is not None else training_plot(result, path)


def training_plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """PNG with loss vs seconds, loss vs steps, and test accuracy vs seconds where it applies."""
  plt = plotting.pyplot()
  groups = by_label(result)
  labels = plotted_labels(result)
  classification = any("accuracy" in r["curve"] for r in result["runs"])
  panels = 3 if classification else 2
  # The legend goes below the panels (inside, it hid the curves): one row per 3 entries.
  legend_rows = -(-(len(labels) + 1) // 3)
  legend_height = 0.2 * legend_rows + 0.15
  height = 4.2 + legend_height
  fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, height))
  target = summarize(result)["target"]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, label in enumerate(labels):
    runs = groups[label]
    color = colors[i % len(colors)]
    style = "-" if runs[0]["family"] == "rd" else "--"
    for ax, axis in zip(axes[:2], ("seconds", "step")):
      grid = curve_grid(runs, axis, 300)
      med, low, high = median_curve(runs, axis, grid)
      ax.plot(grid, med, style, color=color, label=label)
      if len(runs) > 1:
        ax.fill_between(grid, low, high, color=color, alpha=0.15)
    if classification:
      for run_index, run in enumerate(runs):
        axes[2].plot(
          run["curve"]["seconds"],
          run["curve"]["accuracy"],
          style,
          color=color,
          alpha=0.8,
          label=label if run_index == 0 else None,
        )
  for ax in axes[:2]:
    ax.set_yscale("log")
    ax.axhline(target, color="gray", lw=0.8, ls=":", label="target")
    ax.set_ylabel(f"training loss ({result.get('task', {}).get('loss', '')}, eval subset)")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_xlabel("training wall-clock seconds (compile and evaluation excluded)")
  axes[1].set_xlabel("steps")
  axes[1].set_xscale("log")
  if classification:
    axes[2].set_xlabel("training wall-clock seconds")
    axes[2].set_ylabel("test accuracy (first 2000 test images)")
    axes[2].grid(True, alpha=0.3)
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=3, fontsize=7, frameon=False)
  machine = result.get("machine", {})
  fig.suptitle(
    f"{result['study']}: {result.get('task', {}).get('model', '')} — "
    f"{machine.get('device', '')}, median over {result['config']['seeds']} seed(s), "
    "band = min–max",
    fontsize=9,
  )
  return plotting.save_figure(fig, path, rect=(0, legend_height / height, 1, 1))


def print_summary(result: Mapping[str, Any]) -> None:
  print(f"\n== {result['study']} ==")
  print(markdown_table(result))
