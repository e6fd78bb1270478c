"""The shared benchmark runner: one training run, one study, JSON results.

Protocol (docs/benchmarks.md, "Protocol"), the same for every optimizer of a study:

* same process, same data, same data order (a permutation per epoch drawn
  from the seed), same initial parameters (drawn from the seed);
* the training step is compiled before the clock starts (`jit(...).lower(...)
  .compile()`); compile time is reported separately;
* the clock counts only training steps (each step is waited for with
  `block_until_ready`); evaluations stop the clock (`training.train_loop`, the
  loop that every study shares);
* the loss curve is the mean loss on a fixed evaluation subset of the training
  set, evaluated at steps 1, 2, 4, 8, ... and every `budget / eval_points`
  seconds of training; time-to-target is read off that curve afterwards;
* a run stops at the wall-clock `budget` (seconds of training) or at
  `max_steps`, or when the loss becomes non-finite (diverged).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import models as models_lib
from benchmarks import training

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Task:
  """A learning problem shared by all optimizers of a study.

  Attributes:
    name: short description (data and model).
    model: the `models.Model`.
    loss: `"mse"` (targets same shape as outputs) or `"softmax_cross_entropy"`
      (one-hot targets).
    train_inputs, train_targets: the training set (leading axis n).
    eval_inputs, eval_targets: the fixed subset whose mean loss is the curve.
    test_inputs, test_targets: held-out data; accuracy is reported when
      `classification` (targets one-hot), else the test loss.
  """

  name: str
  model: models_lib.Model
  loss: str
  train_inputs: jax.Array
  train_targets: jax.Array
  eval_inputs: jax.Array
  eval_targets: jax.Array
  test_inputs: jax.Array
  test_targets: jax.Array
  classification: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """An optimizer configuration of a study.

  Attributes:
    label: unique name in tables and plots, e.g. `"adam lr=1e-3"`.
    family: `"sgd"`, `"adam"`, `"rd"`, ... (what `--optimizers` selects).
    build: `build(task) -> optax.GradientTransformation` (a stepper when `uses_step`).
    hyperparams: the settings, for the JSON and the table.
    uses_batch: True for Regression Descent style transforms, updated as
      `update(None, state, params, batch=(x, y))`; False for gradient methods,
      updated with the gradient of the mean loss of the batch.
    batch_size: overrides the study's batch size (batch-size study).
    uses_value_fn: True for transforms with a line search on the batch loss
      (`optax.lbfgs`), updated as `update(grad, state, params, value=,
      grad=, value_fn=)`; on a full batch the value and gradient that the
      line search already computed are reused (`optax.value_and_grad_from_state`).
    uses_step: True for peers that apply their own update (somax, in the
      `peers` extra): `build(task)` returns an object with `init(params) ->
      state` and `step(params, state, x, y) -> (params, state)`, called with
      the batch as the task holds it (`optimizers.somax_spec` adapts it).
  """

  label: str
  family: str
  build: Callable[[Task], Any]
  hyperparams: Mapping[str, Any]
  uses_batch: bool = False
  batch_size: int | None = None
  uses_value_fn: bool = False
  uses_step: bool = False


@dataclasses.dataclass
class StudyOptions:
  """What the command line asks of a study."""

  optimizers: Sequence[str] | None = None
  seeds: int | None = None
  budget: float | None = None
  quick: bool = False
  out_dir: pathlib.Path = RESULTS_DIR
  progress: bool = True
  command: str = ""
  batch_sizes: Sequence[int] | None = None  # the races' batch-size grid (`--batch-sizes`)
  dsgnar: str | None = None  # a DSGNAR checkout for the PINN suite's peer (`--dsgnar`)


# The batch-size grid of the races (each optimizer picks its best batch size as well as its
# learning rate or λ), and the reduced grid of their `--quick` runs.
RACE_BATCH_SIZES = (32, 128, 256)
QUICK_RACE_BATCH_SIZES = (32, 128)


def race_batch_sizes(
  options: StudyOptions, specs: Sequence[OptimizerSpec] | None = None
) -> tuple[int, ...] | None:
  """The batch sizes a race runs every optimizer at: `--batch-sizes`, else the race grid
  (`QUICK_RACE_BATCH_SIZES` with `--quick`); a caller's own `specs` (the demo) run at the
  study's batch size unless `--batch-sizes` is given (None)."""
  if options.batch_sizes:
    return tuple(options.batch_sizes)
  if specs is not None:
    return None
  return QUICK_RACE_BATCH_SIZES if options.quick else RACE_BATCH_SIZES


def with_batch_sizes(
  specs: Sequence[OptimizerSpec], batch_sizes: Sequence[int] | None
) -> list[OptimizerSpec]:
  """Each spec at each batch size of the grid: the optimizer's configurations become the grid
  learning rate (or λ) × batch size, from which a race takes each family's best.

  A spec that fixes its own batch size (`spec.batch_size`, the batch-size study) is kept as it
  is. With two or more sizes the copies are labelled `"<label> m=<size>"`; with one size the
  label stays.
  """
  if not batch_sizes:
    return list(specs)
  sizes = list(dict.fromkeys(int(m) for m in batch_sizes))
  if any(m < 1 for m in sizes):
    raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}.")
  grid = []
  for spec in specs:
    if spec.batch_size is not None:
      grid.append(spec)
      continue
    for m in sizes:
      label = spec.label if len(sizes) == 1 else f"{spec.label} m={m}"
      hyperparams = {**spec.hyperparams, "batch_size": m}
      grid.append(dataclasses.replace(spec, label=label, hyperparams=hyperparams, batch_size=m))
  return grid


def mean_loss(loss: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """The reported loss: mean squared error over all entries, or mean cross-entropy."""
  outputs = outputs.reshape(outputs.shape[0], -1)
  targets = targets.reshape(outputs.shape)
  if loss == "mse":
    return jnp.mean(jnp.square(outputs - targets))
  if loss == "softmax_cross_entropy":
    return jnp.mean(optax.softmax_cross_entropy(outputs, targets))
  raise ValueError(f"loss={loss!r}; expected 'mse' or 'softmax_cross_entropy'.")


Spec = TypeVar("Spec")  # an `OptimizerSpec`, or any configuration with a family and a label


def select(specs: Sequence[Spec], wanted: Sequence[str] | None) -> list[Spec]:
  """The specs whose family or label is in `wanted` (all when None)."""
  if not wanted:
    return list(specs)
  wanted = [w.strip() for w in wanted if w.strip()]
  chosen = [s for s in specs if s.family in wanted or s.label in wanted]
  return chosen


class BatchOrder:
  """Mini-batch indices: a fresh permutation of the n examples each epoch, from the seed."""

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    if batch_size > num_examples:
      raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples.")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.per_epoch = num_examples // batch_size
    self._epoch = -1
    self._perm = None

  def __call__(self, step: int) -> np.ndarray:
    epoch, position = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm = rng.permutation(self.num_examples).astype(np.int32)
      self._epoch = epoch
    start = position * self.batch_size
    return self._perm[start : start + self.batch_size]


def _make_step(
  task: Task, spec: OptimizerSpec, tx: optax.GradientTransformation, full_batch: bool = False
):
  apply_fn = task.model.apply

  def loss_fn(params, x, y):
    return mean_loss(task.loss, apply_fn(params, x), y)

  def step(params, opt_state, inputs, targets, indices):
    x = jnp.take(inputs, indices, axis=0)
    y = jnp.take(targets, indices, axis=0)
    if spec.uses_step:  # the peer computes and applies its own update
      return tx.step(params, opt_state, x, y)
    if spec.uses_batch:
      updates, opt_state = tx.update(None, opt_state, params, batch=(x, y))
    elif spec.uses_value_fn:
      value_fn = lambda p: loss_fn(p, x, y)
      if full_batch:  # the same loss every step: reuse the line search's last evaluation
        value, grads = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
      else:
        value, grads = jax.value_and_grad(value_fn)(params)
      updates, opt_state = tx.update(
        grads, opt_state, params, value=value, grad=grads, value_fn=value_fn
      )
    else:
      grads = jax.grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


class Evaluator:
  """Jitted evaluation of one task (compiled once, outside the clock)."""

  def __init__(self, task: Task):
    self.task = task
    apply_fn = task.model.apply
    self._loss = jax.jit(lambda p, x, y: mean_loss(task.loss, apply_fn(p, x), y))
    self._correct = jax.jit(
      lambda p, x, y: jnp.sum(jnp.argmax(apply_fn(p, x), -1) == jnp.argmax(y, -1))
    )

  def curve_loss(self, params) -> float:
    return float(self._loss(params, self.task.eval_inputs, self.task.eval_targets))

  def test_metrics(self, params, chunk: int = 2000) -> dict[str, float]:
    x, y = self.task.test_inputs, self.task.test_targets
    n = x.shape[0]
    starts = range(0, n - n % chunk or n, chunk) if n >= chunk else [0]
    size = chunk if n >= chunk else n
    loss = correct = count = 0.0
    for start in starts:
      xs, ys = x[start : start + size], y[start : start + size]
      loss += float(self._loss(params, xs, ys)) * xs.shape[0]
      if self.task.classification:
        correct += float(self._correct(params, xs, ys))
      count += xs.shape[0]
    metrics = {"test_loss": loss / count}
    if self.task.classification:
      metrics["test_accuracy"] = correct / count
    return metrics

  def curve_accuracy(self, params) -> float | None:
    if not self.task.classification:
      return None
    x, y = self.task.test_inputs[:2000], self.task.test_targets[:2000]
    return float(self._correct(params, x, y)) / x.shape[0]


def _rd_diagnostics(opt_state) -> dict[str, Any]:
  """λ and rejected steps from the first state that has them (RD transforms)."""
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "num_rejected")):
    if hasattr(leaf, "num_rejected") and hasattr(leaf, "damping"):
      return {"final_damping": float(leaf.damping), "num_rejected": int(leaf.num_rejected)}
  return {}


def _round(values: Sequence[float | None], digits: int = 5) -> list[float | None]:
  """`training.rounded` of each value, a value that is not finite kept as NaN (null in the JSON)."""
  return [
    training.rounded(v, digits) if v is None or np.isfinite(v) else float("nan") for v in values
  ]


def train_run(
  task: Task,
  spec: OptimizerSpec,
  seed: int,
  *,
  budget: float,
  batch_size: int,
  max_steps: int | None = None,
  eval_points: int = 60,
  evaluator: Evaluator | None = None,
  compiled_cache: dict | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains `task.model` with `spec` from the seed's initialisation; returns the run record."""
  evaluator = evaluator or Evaluator(task)
  batch_size = spec.batch_size or batch_size
  order = BatchOrder(task.train_inputs.shape[0], batch_size, seed)
  params = task.model.init(jax.random.PRNGKey(seed))
  cache = compiled_cache if compiled_cache is not None else {}
  key = (spec.label, batch_size)
  tx = spec.build(task)
  # One buffer per leaf: a state whose leaves share an array cannot be donated.
  opt_state = jax.tree_util.tree_map(jnp.copy, tx.init(params))
  if key not in cache:
    start = time.perf_counter()
    step = _make_step(task, spec, tx, full_batch=batch_size == task.train_inputs.shape[0])
    compiled = step.lower(
      params, opt_state, task.train_inputs, task.train_targets, order(0)
    ).compile()
    cache[key] = (compiled, time.perf_counter() - start)
  compiled, compile_seconds = cache[key]

  curve = {"step": [], "seconds": [], "loss": [], "accuracy": []}

  def evaluate(carry: tuple, steps: int, seconds: float) -> float:
    loss = evaluator.curve_loss(carry[0])
    curve["step"].append(steps)
    curve["seconds"].append(seconds)
    curve["loss"].append(loss)
    curve["accuracy"].append(evaluator.curve_accuracy(carry[0]))
    return loss

  loop = training.train_loop(
    compiled,
    (params, opt_state),
    lambda steps: (task.train_inputs, task.train_targets, order(steps)),
    evaluate,
    training.EvaluationSchedule(budget / eval_points).due,
    budget=budget,
    max_steps=max_steps,
    floor=1e-12,
    progress=f"{spec.label} seed={seed}" if progress else None,
  )
  (params, opt_state), diverged = loop.carry, loop.diverged
  record = {
    "label": spec.label,
    "family": spec.family,
    "hyperparams": dict(spec.hyperparams),
    "seed": seed,
    "batch_size": batch_size,
    "compile_seconds": round(compile_seconds, 4),
    "steps": loop.steps,
    "train_seconds": round(loop.seconds, 4),
    "eval_seconds": round(loop.eval_seconds, 4),
    "seconds_per_step": loop.seconds / max(loop.steps, 1),
    "final_loss": _round(curve["loss"][-1:])[0] if not diverged else float("nan"),
    "diverged": diverged,
    "curve": {
      "step": curve["step"],
      "seconds": _round(curve["seconds"]),
      "loss": _round(curve["loss"]),
    },
  }
  if task.classification:
    record["curve"]["accuracy"] = _round(curve["accuracy"], 4)
  if not diverged:
    record.update(evaluator.test_metrics(params))
  record.update(_rd_diagnostics(opt_state))
  return record


def machine_info() -> dict[str, Any]:
  """The machine and software the results were measured on."""
  device = jax.devices()[0]
  return {
    "platform": platform.platform(),
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device": getattr(device, "device_kind", str(device)),
    "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
  }


def run_training_study(
  study: str,
  task: Task,
  specs: Sequence[OptimizerSpec],
  options: StudyOptions,
  *,
  seeds: int,
  budget: float,
  batch_size: int,
  max_steps: int | None = None,
  config: Mapping[str, Any] | None = None,
  batch_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
  """Runs every spec on every seed (seed-major, so that machine load affects all alike).

  `batch_sizes`: a grid that every spec runs at (`with_batch_sizes`; `--optimizers` selects
  among the specs before the grid is applied); None: each spec at its own or `batch_size`.
  """
  specs = select(specs, options.optimizers)
  if not specs:
    raise SystemExit(f"{study}: no optimizer matches --optimizers {','.join(options.optimizers)}.")
  specs = with_batch_sizes(specs, batch_sizes)
  evaluator = Evaluator(task)
  cache: dict = {}
  runs = []
  for seed in range(seeds):
    for spec in specs:
      runs.append(
        train_run(
          task,
          spec,
          seed,
          budget=budget,
          batch_size=batch_size,
          max_steps=max_steps,
          evaluator=evaluator,
          compiled_cache=cache,
          progress=options.progress,
        )
      )
  params = task.model.init(jax.random.PRNGKey(0))
  result = {
    "study": study,
    "kind": "training",
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": options.command,
    "machine": machine_info(),
    "task": {
      "name": task.name,
      "model": task.model.name,
      "num_params": models_lib.num_params(params),
      "loss": task.loss,
      "train_size": int(task.train_inputs.shape[0]),
      "eval_size": int(task.eval_inputs.shape[0]),
      "test_size": int(task.test_inputs.shape[0]),
    },
    "config": {
      "seeds": seeds,
      "budget_seconds": budget,
      "batch_size": batch_size,
      "batch_sizes": list(batch_sizes) if batch_sizes else None,
      "max_steps": max_steps,
      "quick": options.quick,
      **(config or {}),
    },
    "optimizers": [
      {"label": s.label, "family": s.family, "hyperparams": dict(s.hyperparams)} for s in specs
    ],
    "runs": runs,
  }
  return result


def save(result: Mapping[str, Any], out_dir: pathlib.Path, name: str | None = None) -> pathlib.Path:
  """Writes `<out_dir>/<study>.json` (NaN written as null)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{name or result['study']}.json"

  def clean(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
      return None
    if isinstance(obj, dict):
      return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
      return clean(obj.item())
    return obj

  path.write_text(json.dumps(clean(result), indent=1) + "\n")
  return path


def load(path: os.PathLike) -> dict[str, Any]:
  return json.loads(pathlib.Path(path).read_text())


def command_line() -> str:
  """The command that is running, for the JSON."""
  return "python -m benchmarks " + " ".join(sys.argv[1:]) if sys.argv else ""
