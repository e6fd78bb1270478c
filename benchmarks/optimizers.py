"""Optimizer configurations of the studies: baselines' grids and the RD variants.

Baselines train on the mean loss of the batch (SGD with momentum 0.9, Adam),
each over a small learning-rate grid. RD variants use the summed loss of
`rdescent` (λ as in docs/guide/damping.md: each step solves (K + λI) α = r with
K the Gram matrix of that summed loss). Damping controllers and losses that
other parts of the package provide are included only when present, and so are
the peer libraries of the `peers` extra (`somax`: exact Gauss-Newton).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import rdescent as rd
from benchmarks.runner import OptimizerSpec
from benchmarks.runner import Task


def _fmt(value: float) -> str:
  return f"{value:g}"


def adam_grid(learning_rates: Sequence[float]) -> list[OptimizerSpec]:
  """Adam (β = 0.9, 0.999) at each learning rate."""
  return [
    OptimizerSpec(
      f"adam lr={_fmt(lr)}", "adam", lambda task, lr=lr: optax.adam(lr), {"learning_rate": lr}
    )
    for lr in learning_rates
  ]


def sgd_grid(learning_rates: Sequence[float], momentum: float = 0.9) -> list[OptimizerSpec]:
  """SGD with heavy-ball momentum at each learning rate."""
  return [
    OptimizerSpec(
      f"sgd lr={_fmt(lr)}",
      "sgd",
      lambda task, lr=lr: optax.sgd(lr, momentum=momentum),
      {"learning_rate": lr, "momentum": momentum},
    )
    for lr in learning_rates
  ]


def lbfgs_spec(label: str = "lbfgs", **kwargs: Any) -> OptimizerSpec:
  """`optax.lbfgs(**kwargs)` (memory 10, zoom line search by default) on the mean batch loss."""
  return OptimizerSpec(
    label, "lbfgs", lambda task: optax.lbfgs(**kwargs), dict(kwargs), uses_value_fn=True
  )


def has_somax() -> bool:
  """Whether the peer `somax` (`python-somax`, the `peers` extra) is importable."""
  return importlib.util.find_spec("somax") is not None


class SomaxStepper:
  """A somax method (`init(params)`, `step(params, batch, state, rng)`) in the runner's
  `uses_step` protocol: `init(params)`, `step(params, state, x, y) -> (params, state)`.

  `targets` maps the task's targets to what the method reads as `batch["y"]`;
  the key for `rng` is folded from somax's own step count (the EGN methods do
  not draw from it).
  """

  def __init__(self, method: Any, targets: Any):
    self.method = method
    self.targets = targets

  def init(self, params: Any) -> Any:
    return self.method.init(params)

  def step(self, params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
    rng = jax.random.fold_in(jax.random.PRNGKey(0), state.step)
    params, state, _ = self.method.step(params, {"x": x, "y": self.targets(y)}, state, rng)
    return params, state


def somax_spec(
  loss: str,
  *,
  damping: float = 1.0,
  damping_policy: str = "const",
  learning_rate: float = 1.0,
  label: str | None = None,
) -> OptimizerSpec:
  """somax's exact Gauss-Newton (EGN): `somax.egn_mse` for `loss="mse"`, `somax.egn_ce`
  for `"softmax_cross_entropy"` (family `"somax"`; needs the `peers` extra).

  Both solve the damped Gauss-Newton system of the mean batch loss in the row
  space of the batch Jacobian by a dense Cholesky (`row_cholesky`), then step
  θ ← θ − η s with s = (G + λ I)⁻¹ g, G the Gauss-Newton matrix and g the
  gradient of the mean loss (½ mean squared residual for egn_mse, the mean
  cross-entropy for egn_ce); the row system is (J Jᵀ + B λ I) u = r.
  `damping_policy` is somax's `lam_policy`: `"const"` (λ fixed, somax's
  default, λ = 1) or `"trust_region"` (Levenberg-Marquardt: λ × 1.5 when the
  gain ratio ρ < 0.25, × 0.5 when ρ > 0.75; the step is always taken).

  Adaptations, in `SomaxStepper`:

  * egn_mse reads one output per example (its row operator reshapes the
    residuals to (B,), so (B, k) outputs with k > 1 fail); the model's (B, k)
    outputs and targets are flattened to B k scalar rows, which makes its
    step exactly the Gauss-Newton step of ½ the mean over all B k entries,
    the loss the runner reports up to the factor ½ (λ in those units);
  * egn_ce reads integer labels (one-hot targets break it): the task's
    one-hot targets are passed as their argmax.
  """
  method = {"mse": "egn_mse", "softmax_cross_entropy": "egn_ce"}.get(loss)
  if method is None:
    raise ValueError(f"somax_spec: no somax EGN method for loss={loss!r}.")

  def build(task: Task) -> SomaxStepper:
    import somax

    if task.loss != loss:
      raise ValueError(f"somax_spec({loss!r}) on a task with loss={task.loss!r}.")
    apply_fn = task.model.apply
    options = {"lam0": damping, "lam_policy": damping_policy, "learning_rate": learning_rate}
    if loss == "mse":
      predict = lambda p, x: apply_fn(p, x).reshape(-1)
      return SomaxStepper(somax.egn_mse(predict_fn=predict, **options), lambda y: y.reshape(-1))
    to_labels = lambda y: jnp.argmax(y.reshape(y.shape[0], -1), axis=-1)
    return SomaxStepper(somax.egn_ce(predict_fn=apply_fn, **options), to_labels)

  if label is None:
    rule = (
      f"λ={_fmt(damping)}" if damping_policy == "const" else f"{damping_policy}(λ0={_fmt(damping)})"
    )
    step = "" if learning_rate == 1.0 else f" step {_fmt(learning_rate)}"
    label = f"somax {method} {rule}{step}"
  hyperparams = {
    "method": method,
    "damping": damping,
    "damping_policy": damping_policy,
    "learning_rate": learning_rate,
  }
  return OptimizerSpec(label, "somax", build, hyperparams, uses_step=True)


def somax_variants(loss: str, *, quick: bool = False) -> list[OptimizerSpec]:
  """The somax grid of a study, empty without the `peers` extra: somax's defaults (λ = 1
  constant, step 1) and, unless `quick`, one more constant λ: 0.1 for MSE, 10 for
  cross-entropy (from a pilot on MNIST's SmallCNN, batch 32, 20 steps: on MSE λ = 0.1 ended
  lower than λ = 1; on cross-entropy λ = 1 fell and rose back to chance, λ = 10 fell steadily).
  """
  if not has_somax():
    return []
  specs = [somax_spec(loss)]
  if not quick:
    specs.append(somax_spec(loss, damping=0.1 if loss == "mse" else 10.0))
  return specs


def has_loss(name: str) -> bool:
  """Whether `rdescent` accepts `loss=name`."""
  try:
    rd.losses.get(name)
  except ValueError:
    return False
  return True


def has_structured_gram() -> bool:
  return "structured" in getattr(rd.gram, "METHODS", ())


def rd_spec(
  label: str,
  *,
  damping: Any = 1e-5,
  learning_rate: float = 1.0,
  outputs: str = "per_output",
  gram: str = "auto",
  batch_size: int | None = None,
  describe: Any = None,
  max_logit_change: float | None = None,
  loss: str | None = None,
  **options: Any,
) -> OptimizerSpec:
  """A Regression Descent configuration; the loss comes from the task unless `loss` is given.

  `options` go to `rd.regression_descent` as they are (e.g. `momentum=0.9`).
  """

  def build(task: Task):
    return rd.regression_descent(
      task.model.apply,
      learning_rate=learning_rate,
      damping=_make_damping(damping),
      loss=task.loss if loss is None else loss,
      outputs=outputs,
      gram=gram,
      max_logit_change=max_logit_change,
      **options,
    )

  hyperparams = {
    "learning_rate": learning_rate,
    "outputs": outputs,
    "gram": gram,
    "damping": describe if describe is not None else damping,
  }
  if max_logit_change is not None:
    hyperparams["max_logit_change"] = max_logit_change
  if loss is not None:
    hyperparams["loss"] = loss
  hyperparams.update(options)
  return OptimizerSpec(label, "rd", build, hyperparams, uses_batch=True, batch_size=batch_size)


def _make_damping(damping: Any) -> Any:
  """A float stays a float; ("name", kwargs) builds `rd.damping.name(**kwargs)`;
  ("backtracking_name", kwargs) wraps that in `rd.damping.backtracking`."""
  if isinstance(damping, tuple):
    name, kwargs = damping
    if name.startswith("backtracking_"):
      return rd.damping.backtracking(_make_damping((name[len("backtracking_") :], kwargs)))
    return getattr(rd.damping, name)(**kwargs)
  return damping


# Controllers tried when they exist, with the arguments docs/guide/damping.md lists for them.
CONTROLLERS: tuple[tuple[str, dict[str, Any]], ...] = (
  ("next_batch_ratio", {"initial": 1e-5}),
  ("levenberg_marquardt", {"initial": 1e-3}),
  ("residual_proportional", {"mu": 1.0, "delta": 1.0}),
  ("gradient_proportional", {"mu": 1.0}),
  ("gcv", {}),
)


def available_controllers() -> list[tuple[str, dict[str, Any]]]:
  """The damping controllers of `CONTROLLERS` that `rdescent.damping` provides."""
  return [(name, kwargs) for name, kwargs in CONTROLLERS if hasattr(rd.damping, name)]


def rd_variants(
  loss: str,
  *,
  full_dampings: Sequence[float] = (1e-3, 1e-1),
  per_output_dampings: Sequence[float] = (1e-3,),
  controllers: bool = True,
  full_mode: bool = True,
) -> list[OptimizerSpec]:
  """The RD grid of a study.

  * `rd paper`: the paper's setting, per-output, λ = 1e-5, step 1 (MSE only);
  * per-output at the other λ of `per_output_dampings` (MSE only);
  * full mode at each λ of `full_dampings` (any loss);
  * each available damping controller, full mode (per-output for the paper's
    `next_batch_ratio` rule on MSE);
  * for cross-entropy, full mode with the logit-change cap B = π
    (`max_logit_change`, the option meant for that loss) at the middle λ of
    `full_dampings` and with `gradient_proportional`.
  """
  specs = []
  mse = loss == "mse"
  if mse:
    specs.append(rd_spec("rd paper (per-output λ=1e-5)", damping=1e-5, outputs="per_output"))
    specs += [
      rd_spec(f"rd per-output λ={_fmt(lam)}", damping=lam, outputs="per_output")
      for lam in per_output_dampings
    ]
  if full_mode:
    specs += [
      rd_spec(f"rd full λ={_fmt(lam)}", damping=lam, outputs="full") for lam in full_dampings
    ]
  if controllers:
    for name, kwargs in available_controllers():
      outputs = "per_output" if (mse and name == "next_batch_ratio") else "full"
      if not full_mode and outputs == "full":
        continue
      args = ", ".join(f"{k}={_fmt(v)}" for k, v in kwargs.items())
      specs.append(
        rd_spec(
          f"rd {outputs} {name}({args})",
          damping=(name, kwargs),
          outputs=outputs,
          describe=f"{name}({args})",
        )
      )
  if mse and controllers:  # full grids only (the quick smoke runs keep their size)
    # The best per-output setting of issue 18's race (step 3 undoes part of the
    # 1/k average), and SPRING momentum inside the regression (momentum study).
    specs.append(
      rd_spec("rd per-output λ=0.3 step 3", damping=0.3, outputs="per_output", learning_rate=3.0)
    )
    if full_mode:
      specs.append(
        rd_spec(
          "rd full λ=0.3 spring μ=0.9 step 0.1",
          damping=0.3,
          outputs="full",
          learning_rate=0.1,
          momentum=0.9,
        )
      )
  if loss == "softmax_cross_entropy" and full_mode and controllers:
    # Cross-entropy with one system row per example (m rows instead of m k).
    specs.append(
      rd_spec(
        "rd full levenberg_marquardt(initial=0.001) rows per example",
        damping=("levenberg_marquardt", {"initial": 1e-3}),
        outputs="full",
        describe="levenberg_marquardt(initial=0.001)",
        loss="softmax_cross_entropy_per_example",
      )
    )
  if loss == "softmax_cross_entropy" and full_mode and controllers:
    # λ per example (λ = m λ̄) with SPRING μ = 0.5: the setting of the cross-entropy diagnosis
    # (benchmarks/ce_diagnosis.py, docs/guide/losses.md) that kept up with Adam per step.
    if hasattr(rd.damping, "per_example"):
      specs.append(
        rd_spec(
          "rd full per_example(1) spring μ=0.5",
          damping=("per_example", {"damping": 1.0}),
          outputs="full",
          describe="per_example(damping=1)",
          momentum=0.5,
        )
      )
  if loss == "softmax_cross_entropy" and full_mode and full_dampings:
    lam = full_dampings[len(full_dampings) // 2]
    specs.append(
      rd_spec(f"rd full λ={_fmt(lam)} cap π", damping=lam, outputs="full", max_logit_change=math.pi)
    )
    if controllers and hasattr(rd.damping, "gradient_proportional"):
      specs.append(
        rd_spec(
          "rd full gradient_proportional(mu=1) cap π",
          damping=("gradient_proportional", {"mu": 1.0}),
          outputs="full",
          describe="gradient_proportional(mu=1)",
          max_logit_change=math.pi,
        )
      )
  return specs
