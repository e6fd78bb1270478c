"""MNIST and Fashion-MNIST studies: the paper's SmallCNN, MSE on one-hot targets and cross-entropy.

Data: the original IDX files through `rd.datasets.load_mnist` /
`load_fashion_mnist` (directory from `$RDESCENT_DATA_DIR`), pixels scaled to
[0, 1], targets one-hot. The loss curve is the mean training loss on a fixed
subset of 2048 training images; test accuracy is on the 10000 test images.

Studies: `mnist`, `fashion_mnist` (MSE on one-hot, as in the paper) and
`mnist_ce`, `fashion_mnist_ce` (softmax cross-entropy; RD variants only when
`rdescent` provides `loss="softmax_cross_entropy"`). With the `peers` extra,
somax's exact Gauss-Newton joins each grid (`somax.egn_mse` on the flattened
one-hot outputs, `somax.egn_ce` on the labels; `optimizers.somax_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
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

FULL = {"train": None, "test": None, "eval": 2048, "seeds": 3, "budget": 8.0}
QUICK = {"train": 1024, "test": 256, "eval": 256, "seeds": 1, "budget": 0.3}
LOADERS = {"mnist": rd.datasets.load_mnist, "fashion_mnist": rd.datasets.load_fashion_mnist}


def load_arrays(dataset: str, split: str, limit: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Images as float32 (n, 28, 28) in [0, 1] and one-hot float32 labels (n, 10)."""
  data = LOADERS[dataset](split)
  images, labels = data.images, data.labels
  if limit is not None:
    images, labels = images[:limit], labels[:limit]
  x = jnp.asarray(images, jnp.float32) / 255.0
  y = jax.nn.one_hot(jnp.asarray(labels), 10, dtype=jnp.float32)
  return x, y


def image_task(dataset: str, model: models.Model, loss: str, sizes: dict) -> Task:
  """A classification task on MNIST-like images with a fixed training evaluation subset."""
  train_x, train_y = load_arrays(dataset, "train", sizes["train"])
  test_x, test_y = load_arrays(dataset, "test", sizes["test"])
  eval_index = np.random.default_rng(0).choice(train_x.shape[0], size=sizes["eval"], replace=False)
  return Task(
    name=f"{dataset} ({'MSE on one-hot' if loss == 'mse' else 'softmax cross-entropy'})",
    model=model,
    loss=loss,
    train_inputs=train_x,
    train_targets=train_y,
    eval_inputs=train_x[eval_index],
    eval_targets=train_y[eval_index],
    test_inputs=test_x,
    test_targets=test_y,
    classification=True,
  )


def default_optimizers(loss: str, quick: bool) -> list[OptimizerSpec]:
  rd_ok = loss == "mse" or opt.has_loss(loss)
  if quick:
    specs = opt.adam_grid([1e-3])
    if rd_ok:
      specs += opt.rd_variants(
        loss,
        full_dampings=(1.0,),
        per_output_dampings=(),
        controllers=False,
        full_mode=loss != "mse",
      )
    return specs + opt.somax_variants(loss, quick=True)
  specs = opt.adam_grid([3e-4, 1e-3, 3e-3]) + opt.sgd_grid([1e-2, 3e-2, 1e-1])
  if rd_ok:
    specs += opt.rd_variants(loss, full_dampings=(0.1, 1.0, 10.0), per_output_dampings=())
  return specs + opt.somax_variants(loss)


def make_run(dataset: str, loss: str):
  def run(options: StudyOptions, *, specs: Sequence[OptimizerSpec] | None = None) -> dict[str, Any]:
    sizes = QUICK if options.quick else FULL
    task = image_task(dataset, models.small_cnn(), loss, sizes)
    study = dataset if loss == "mse" else f"{dataset}_ce"
    return run_training_study(
      study,
      task,
      specs if specs is not None else default_optimizers(loss, options.quick),
      options,
      seeds=options.seeds or sizes["seeds"],
      budget=options.budget or sizes["budget"],
      batch_size=32,
      config={"target": "median final loss of the best Adam (learning rate × batch size)"},
      batch_sizes=race_batch_sizes(options, specs),
    )

  return run


for _dataset in LOADERS:
  registry.register(
    _dataset,
    make_run(_dataset, "mse"),
    f"SmallCNN on {_dataset}, MSE on one-hot targets (the paper's setting)",
  )
  registry.register(
    f"{_dataset}_ce",
    make_run(_dataset, "softmax_cross_entropy"),
    f"SmallCNN on {_dataset}, softmax cross-entropy",
  )
