"""Momentum study: memory across batches on the saturated sigmoid MLP, per step.

The task of `benchmarks.saturation` (MNIST, MLP 784-32-32-32-32-32-10 with
sigmoid, MSE on one-hot, batch 32). Each configuration trains for a fixed
number of steps (not a time budget: this compares what a step does, on a
machine whose timings are not trusted) and reports the mean squared error on
the fixed 2048-image training subset of the runner (`runner.mean_loss`) at
checkpoint steps, for the parameters and for their exponential moving
average (decay 0.99, debiased: iterate averaging).

Configurations: RD per-output (λ = 0.3, step η = 3) and full (λ = 0.3,
η = 1), each plain, with SPRING momentum inside the regression (`momentum=μ`,
μ = 0.5, 0.9) at the same η and at η (1 − μ), and with `optax.trace(0.5)`
chained after the direction; Adam(1e-3) as the reference.

    RDESCENT_DATA_DIR=/path/to/data python -m benchmarks run momentum --out DIR
    python -m benchmarks run momentum --quick --out /tmp/momentum   # a smoke test
"""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import mnist
from benchmarks import models
from benchmarks import plotting
from benchmarks import registry
from benchmarks import report
from benchmarks import runner
from benchmarks import training
from benchmarks.saturation import SIZES

EMA_DECAY = 0.99
FULL = {"checkpoints": (100, 300, 1000, 2000, 3000), "table_steps": (1000, 3000), "seeds": 1}
QUICK = {"checkpoints": (5, 10), "table_steps": (5, 10), "seeds": 1}


class Config(NamedTuple):
  """One optimizer of the study: `build(apply_fn) -> transform`, and whether it takes a batch."""

  label: str
  build: Callable[[Any], optax.GradientTransformation]
  hyperparams: Mapping[str, Any]
  uses_batch: bool = True


def _rd(outputs: str, damping: float, step: float, momentum: float = 0.0, trace=None) -> Config:
  name = "per-output" if outputs == "per_output" else "full"
  label = f"RD {name} λ={damping:g} step {step:g}"
  if momentum:
    label += f", SPRING μ={momentum:g}"
  if trace is not None:
    label += f", + optax.trace({trace:g})"

  def build(apply_fn):
    if trace is None:
      return rd.regression_descent(
        apply_fn, step, damping=damping, loss="mse", outputs=outputs, momentum=momentum
      )
    return optax.chain(
      rd.scale_by_regression_descent(
        apply_fn, damping=damping, loss="mse", outputs=outputs, step_size=step
      ),
      optax.trace(trace),
      optax.scale_by_learning_rate(step),
    )

  hyperparams = {"outputs": outputs, "damping": damping, "learning_rate": step}
  hyperparams.update(momentum=momentum, trace=trace)
  return Config(label, build, hyperparams)


def configurations(quick: bool) -> list[Config]:
  adam = Config("adam lr=1e-3", lambda _: optax.adam(1e-3), {"learning_rate": 1e-3}, False)
  if quick:
    return [_rd("per_output", 0.3, 3.0), _rd("per_output", 0.3, 3.0, momentum=0.9), adam]
  configs = []
  for outputs, step in (("per_output", 3.0), ("full", 1.0)):
    configs += [_rd(outputs, 0.3, step, momentum=mu) for mu in (0.0, 0.5, 0.9)]
    # The same with the step scaled by 1 − μ: a direction kept for ever sums
    # to 1 / (1 − μ) times itself, so η (1 − μ) keeps that total at η.
    configs += [_rd(outputs, 0.3, round(step * (1 - mu), 6), momentum=mu) for mu in (0.5, 0.9)]
    configs.append(_rd(outputs, 0.3, step, trace=0.5))
  return configs + [adam]


def _step_fn(config: Config, tx: optax.GradientTransformation, apply_fn):
  def loss_fn(params, x, y):
    return runner.mean_loss("mse", apply_fn(params, x), y)

  def step(params, state, average, count, inputs, targets, indices):
    x = jnp.take(inputs, indices, axis=0)
    y = jnp.take(targets, indices, axis=0)
    if config.uses_batch:
      updates, state = tx.update(None, state, params, batch=(x, y))
    else:
      updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
    params = optax.apply_updates(params, updates)
    average = jax.tree_util.tree_map(
      lambda a, p: EMA_DECAY * a + (1 - EMA_DECAY) * p, average, params
    )
    return params, state, average, count + 1

  return jax.jit(step, donate_argnums=(0, 1, 2))


def _debiased(average, count):
  return jax.tree_util.tree_map(lambda a: a / (1 - EMA_DECAY ** float(count)), average)


def train(task: runner.Task, config: Config, seed: int, checkpoints, batch_size: int) -> dict:
  """Trains to the last checkpoint; the eval MSE of the params and of their EMA at each one."""
  model = task.model
  evaluator = runner.Evaluator(task)
  order = runner.BatchOrder(task.train_inputs.shape[0], batch_size, seed)
  params = model.init(jax.random.PRNGKey(seed))
  tx = config.build(model.apply)
  state = jax.tree_util.tree_map(jnp.copy, tx.init(params))
  average = jax.tree_util.tree_map(jnp.zeros_like, params)
  count = jnp.zeros([], jnp.int32)
  losses, ema_losses = {}, {}

  def evaluate(carry: tuple, steps: int, seconds: float) -> float:
    params, _, average, _ = carry
    losses[str(steps)] = evaluator.curve_loss(params)
    ema_losses[str(steps)] = evaluator.curve_loss(_debiased(average, steps))
    return losses[str(steps)]

  # Steps, not seconds: no budget, no evaluation before the first step, no divergence stop.
  loop = training.train_loop(
    _step_fn(config, tx, model.apply),
    (params, state, average, count),
    lambda steps: (task.train_inputs, task.train_targets, order(steps)),
    evaluate,
    lambda steps, seconds, done: steps in checkpoints,
    max_steps=max(checkpoints),
    initial=False,
    divergence=None,
  )
  state, done = loop.carry[1], loop.steps
  record = {
    "label": config.label,
    "hyperparams": dict(config.hyperparams),
    "seed": seed,
    "steps": done,
    "loss": losses,
    "ema_loss": ema_losses,
  }
  record.update(runner._rd_diagnostics(state))
  return record


def run(options: runner.StudyOptions) -> dict[str, Any]:
  sizes = mnist.QUICK if options.quick else mnist.FULL
  plan = QUICK if options.quick else FULL
  task = mnist.image_task("mnist", models.mlp(SIZES, "sigmoid"), "mse", sizes)
  configs = configurations(options.quick)
  if options.optimizers:
    configs = [c for c in configs if any(w in c.label for w in options.optimizers)]
  seeds = options.seeds or plan["seeds"]
  rows = []
  for seed in range(seeds):
    for config in configs:
      row = train(task, config, seed, plan["checkpoints"], batch_size=32)
      if options.progress:
        print(f"{config.label} seed={seed}: {row['loss']}")
      rows.append(row)
  return {
    "study": "momentum",
    "kind": "momentum",
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": options.command,
    "machine": runner.machine_info(),
    "task": {
      "name": task.name,
      "model": task.model.name,
      "train_size": int(task.train_inputs.shape[0]),
      "eval_size": int(task.eval_inputs.shape[0]),
    },
    "config": {
      "seeds": seeds,
      "batch_size": 32,
      "checkpoints": list(plan["checkpoints"]),
      "table_steps": list(plan["table_steps"]),
      "ema_decay": EMA_DECAY,
      "quick": options.quick,
    },
    "rows": rows,
  }


def _median(rows, key, step) -> float:
  values = [r[key][str(step)] for r in rows]
  values = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.median(values)) if values else float("nan")


def markdown_table(result: Mapping[str, Any]) -> str:
  """Eval MSE (median over seeds) at the table steps, for the params and their EMA."""
  steps = result["config"]["table_steps"]
  head = ["optimizer"] + [f"eval MSE @ {s}" for s in steps]
  head += [f"EMA({result['config']['ema_decay']:g}) @ {s}" for s in steps] + ["rejected"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, rows in report.by_label(result, "rows").items():
    cells = [label] + [f"{_median(rows, 'loss', s):.4g}" for s in steps]
    cells += [f"{_median(rows, 'ema_loss', s):.4g}" for s in steps]
    rejected = [r.get("num_rejected") for r in rows if r.get("num_rejected") is not None]
    cells.append(str(max(rejected)) if rejected else "–")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
    f"{result['task']['name']}, {result['task']['model']}, batch "
    f"{result['config']['batch_size']}, {result['config']['seeds']} seed(s); mean squared "
    f"error over the {result['task']['eval_size']}-image training subset. Command: "
    f"`{result['command']}`."
  )
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Eval MSE against steps (median over seeds), params solid and their EMA dashed."""
  plt = plotting.pyplot()
  steps = result["config"]["checkpoints"]
  groups = report.by_label(result, "rows")
  fig, ax = plt.subplots(figsize=(7.5, 4.5 + 0.17 * len(groups)))
  colors = plt.get_cmap("tab20").colors
  for i, (label, rows) in enumerate(groups.items()):
    color = colors[(2 * i) % 20 + (2 * i) // 20]
    ax.plot(steps, [_median(rows, "loss", s) for s in steps], marker="o", color=color, label=label)
    ax.plot(steps, [_median(rows, "ema_loss", s) for s in steps], linestyle="--", color=color)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("steps")
  ax.set_ylabel("eval MSE (dashed: EMA of the params)")
  ax.grid(True, alpha=0.3)
  ax.set_title(f"{result['task']['model']}, batch {result['config']['batch_size']}", fontsize=9)
  # The legend below the axes (inside, it hides the curves).
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
  return plotting.save_figure(fig, path)


registry.register(
  "momentum",
  run,
  "SPRING momentum vs optax.trace vs none, saturated sigmoid MLP, per step",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
