"""Batch-size study: RD's time-to-target on MNIST (SmallCNN, MSE) for m in {16, ..., 256}.

RD runs in the paper's setting (per-output, λ = 1e-5, step 1) at each batch
size; Adam (lr 1e-3, batch 32) sets the target (its median final loss).
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
from benchmarks.runner import run_training_study

BATCH_SIZES = (16, 32, 64, 128, 256)


def default_optimizers(quick: bool) -> list[OptimizerSpec]:
  sizes = (16, 32) if quick else BATCH_SIZES
  return opt.adam_grid([1e-3]) + [
    opt.rd_spec(f"rd paper m={m}", damping=1e-5, outputs="per_output", batch_size=m) for m in sizes
  ]


def run(options: StudyOptions, *, specs: Sequence[OptimizerSpec] | None = None) -> dict[str, Any]:
  sizes = mnist.QUICK if options.quick else mnist.FULL
  task = mnist.image_task("mnist", models.small_cnn(), "mse", sizes)
  return run_training_study(
    "batch_size",
    task,
    specs if specs is not None else default_optimizers(options.quick),
    options,
    seeds=options.seeds or sizes["seeds"],
    budget=options.budget or sizes["budget"],
    batch_size=32,
    config={"target": "median final loss of Adam lr=1e-3, batch 32"},
  )


registry.register("batch_size", run, "RD (paper setting) time-to-target against batch size, MNIST")
