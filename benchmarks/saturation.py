"""Saturation study: a deep sigmoid MLP 784-32-32-32-32-32-10 on MNIST (MSE on one-hot).

Five sigmoid hidden layers make gradients vanish (σ' ≤ 1/4 per layer), the
regime where the paper reports RD's strongest results. With the `peers` extra,
somax's exact Gauss-Newton (`somax.egn_mse` on the flattened outputs) joins the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import mnist
from benchmarks import models
from benchmarks import optimizers as opt
from benchmarks import registry
from benchmarks.runner import OptimizerSpec
from benchmarks.runner import StudyOptions
from benchmarks.runner import race_batch_sizes
from benchmarks.runner import run_training_study

SIZES = [784, 32, 32, 32, 32, 32, 10]


def default_optimizers(quick: bool) -> list[OptimizerSpec]:
  if quick:
    return (
      opt.adam_grid([1e-3])
      + opt.rd_variants("mse", full_dampings=(), per_output_dampings=(), controllers=False)
      + opt.somax_variants("mse", quick=True)
    )
  return (
    opt.adam_grid([1e-3, 3e-3, 1e-2])
    + opt.sgd_grid([1e-1, 3e-1, 1.0])
    + opt.rd_variants("mse", full_dampings=(0.1, 1.0, 10.0), per_output_dampings=())
    + opt.somax_variants("mse")
  )


def run(options: StudyOptions, *, specs: Sequence[OptimizerSpec] | None = None) -> dict[str, Any]:
  sizes = mnist.QUICK if options.quick else mnist.FULL
  task = mnist.image_task("mnist", models.mlp(SIZES, "sigmoid"), "mse", sizes)
  return run_training_study(
    "saturation",
    task,
    specs if specs is not None else default_optimizers(options.quick),
    options,
    seeds=options.seeds or sizes["seeds"],
    budget=options.budget or sizes["budget"],
    batch_size=32,
    config={"target": "median final loss of the best Adam (learning rate × batch size)"},
    batch_sizes=race_batch_sizes(options, specs),
  )


registry.register("saturation", run, "sigmoid MLP 784-32-32-32-32-32-10 on MNIST (MSE)")
