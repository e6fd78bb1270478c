"""Lorenz96 study: learn x(t) → x(t + 0.05) with an MLP 40-128-128-40.

Data: `rd.datasets.lorenz96_dataset` (N = 40, F = 8, RK4, dt = 0.01, spin-up
onto the attractor, lead 5 steps), generated in the process, standardised.
Training pairs and test pairs come from different random trajectories. With
k = 40 outputs the grid also holds RD's output-sketched system
(`outputs="sketched"`, `sketched_variants`). With
the `peers` extra, somax's exact Gauss-Newton (`somax.egn_mse` on the flattened
40 outputs: 32 × 40 = 1280 rows a batch) joins the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import rdescent as rd
from benchmarks import models
from benchmarks import optimizers as opt
from benchmarks import registry
from benchmarks.runner import OptimizerSpec
from benchmarks.runner import StudyOptions
from benchmarks.runner import Task
from benchmarks.runner import race_batch_sizes
from benchmarks.runner import run_training_study

FULL = {"train": 8192, "test": 2048, "eval": 2048, "hidden": 128, "seeds": 3, "budget": 8.0}
QUICK = {"train": 512, "test": 256, "eval": 256, "hidden": 16, "seeds": 1, "budget": 0.3}


def make_task(train: int, test: int, eval_size: int, hidden: int) -> Task:
  """Lorenz96 pairs (N = 40, F = 8) and the MLP 40-h-h-40 (tanh)."""
  data = rd.datasets.lorenz96_dataset(train, seed=0)
  held_out = rd.datasets.lorenz96_dataset(test, seed=1)
  # Standardise the test pairs with the training statistics.
  scale = lambda v: ((v * held_out.std + held_out.mean) - data.mean) / data.std
  eval_index = np.random.default_rng(0).choice(train, size=eval_size, replace=False)
  return Task(
    name="Lorenz96 N=40 F=8, x(t) -> x(t+0.05)",
    model=models.mlp([40, hidden, hidden, 40], "tanh"),
    loss="mse",
    train_inputs=data.inputs,
    train_targets=data.targets,
    eval_inputs=data.inputs[eval_index],
    eval_targets=data.targets[eval_index],
    test_inputs=scale(held_out.inputs),
    test_targets=scale(held_out.targets),
  )


def default_optimizers(quick: bool) -> list[OptimizerSpec]:
  if quick:
    return (
      opt.adam_grid([1e-3])
      + opt.sgd_grid([1e-2])
      + opt.rd_variants("mse", full_dampings=(1e-3,), per_output_dampings=(), controllers=False)
      + opt.somax_variants("mse", quick=True)
    )
  return (
    opt.adam_grid([3e-4, 1e-3, 3e-3, 1e-2])
    + opt.sgd_grid([1e-2, 3e-2, 1e-1, 3e-1])
    + opt.rd_variants("mse", full_dampings=(1e-3, 1e-1), per_output_dampings=(1e-3,))
    + sketched_variants()
    + opt.somax_variants("mse")
  )


def sketched_variants() -> list[OptimizerSpec]:
  """`outputs="sketched"` with s = 4 and 8 of the k = 40 outputs (m s = 128, 256 rows), λ = 0.3.

  From a 5 s pilot (one seed): s = 4 at λ = 0.03, 0.3 and 1 ended within 2% of each other,
  step 1.5 diverged; s = 2 was cheaper per step but ended higher.
  """
  return [
    opt.rd_spec(f"rd sketched s={s} λ=0.3", damping=0.3, outputs="sketched", sketch_size=s)
    for s in (4, 8)
  ]


def run(
  options: StudyOptions, *, specs: Sequence[OptimizerSpec] | None = None, study: str = "lorenz96"
) -> dict[str, Any]:
  sizes = QUICK if options.quick else FULL
  task = make_task(sizes["train"], sizes["test"], sizes["eval"], sizes["hidden"])
  return run_training_study(
    study,
    task,
    specs if specs is not None else default_optimizers(options.quick),
    options,
    seeds=options.seeds or sizes["seeds"],
    budget=options.budget or sizes["budget"],
    batch_size=32,
    config={
      "target": "median final loss of the best Adam (learning rate × batch size)",
      "data": "generated, no files",
    },
    batch_sizes=race_batch_sizes(options, specs),
  )


registry.register("lorenz96", run, "MLP 40-128-128-40 on Lorenz96 (N=40, F=8), x(t) -> x(t+0.05)")
