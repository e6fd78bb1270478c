"""Regression Descent as Optax gradient transformations.

Each step solves a regression in the row space of the batch Jacobian instead of
taking a gradient step. For a batch of m examples with k outputs, residuals
r = f(θ; X) − Y (length m k, example-major) and Jacobian J (m k × p):

    K = J Jᵀ,        α = (K + λI)⁻¹ r,        d = Jᵀ α,        θ ← θ − η d.

`d` is also the ridge-regression solution argmin_δ ‖J δ − r‖² + λ‖δ‖²; with
λ → 0 and η = 1 one step solves a linear least-squares problem exactly, and
with λ → ∞, d → Jᵀr / λ, the gradient of ½‖r‖² scaled by 1/λ. See
`rdescent.problem` for the per-output and generalized Gauss-Newton forms.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rdescent import _mesh
from rdescent import _validation
from rdescent import damping as damping_lib
from rdescent import dtypes as dtypes_lib
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import problem as problem_lib

ApplyFn = Callable[[Any, Any], jax.Array]

# Codes of `RegressionDescentState.status`.
STATUS_OK = 0
STATUS_NONFINITE_LOSS = 1
STATUS_SOLVE_FAILED = 2
STATUS_NONFINITE_DIRECTION = 3
STATUS_REJECTED = 4
STATUS_MESSAGES = {
    STATUS_OK: "ok",
    STATUS_NONFINITE_LOSS: "non-finite outputs, targets or loss; step skipped",
    STATUS_SOLVE_FAILED: "Cholesky factorisation failed; step skipped",
    STATUS_NONFINITE_DIRECTION: "non-finite direction; step skipped",
    STATUS_REJECTED: "step rejected by the damping controller",
}


class RegressionDescentState(NamedTuple):
  """State of `scale_by_regression_descent`.

  Attributes:
    count: number of updates taken (int32).
    damping: λ used by the last step (before any step: the controller's
      starting value).
    damping_state: the damping controller's own state.
    loss: the summed loss of the last batch before the step.
    residual_norm: ‖u‖ of the last batch before the step (‖r‖ for squared
      error).
    accepted: whether the last step was applied.
    solve_ok: whether the last Cholesky solve was healthy.
    num_rejected: steps not applied so far (controller rejections and
      numerical failures).
    status: code of the last step, see `STATUS_MESSAGES`.
    step_scale: s ∈ (0, 1], the factor `max_logit_change` applied to the last
      direction (1 when the option is off or nothing was applied).
    logit_change_spread: η s σ, the first-order logit-change spread of the
      last applied step (see `max_logit_change`); 0 when the option is off or
      nothing was applied.
  """

  count: jax.Array
  damping: jax.Array
  damping_state: Any
  loss: jax.Array
  residual_norm: jax.Array
  accepted: jax.Array
  solve_ok: jax.Array
  num_rejected: jax.Array
  status: jax.Array
  step_scale: jax.Array | float = 1.0
  logit_change_spread: jax.Array | float = 0.0


def _scaled_outputs(apply_fn: ApplyFn, output_scale: Any) -> ApplyFn:
  """(params, inputs) ↦ α apply_fn(params, inputs), α = `output_scale`."""

  def scaled(params, inputs):
    outputs = apply_fn(params, inputs)
    return (jnp.asarray(output_scale, outputs.dtype) * outputs).astype(outputs.dtype)

  return scaled


def _refuse_step_memory(damping_state: Any) -> None:
  """`max_logit_change` with `next_batch_ratio` (its undo would not match)."""
  if isinstance(damping_state, damping_lib.NextBatchRatioState):
    raise ValueError(
        "max_logit_change cannot be combined with damping="
        "rdescent.damping.next_batch_ratio(): that controller undoes a rejected "
        "step by the uncapped amount. Use another controller, or "
        "max_logit_change=None."
    )


def scale_by_regression_descent(
    apply_fn: ApplyFn,
    *,
    damping: Any = 1e-3,
    loss: str | losses_lib.Loss = "mse",
    outputs: str = "full",
    gram: str = "auto",
    system: str = "auto",
    chunk_size: int | None = None,
    step_size: optax.ScalarOrSchedule = 1.0,
    integer_inputs: bool = False,
    output_scale: float = 1.0,
    max_logit_change: float | None = None,
    data_axis: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The Regression Descent direction d = Jᵀ (K + λI)⁻¹ r (gradient sign).

  Compose with `optax.scale_by_learning_rate` (or use `regression_descent`)
  to get the descent step θ ← θ − η d.

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs` of shape (m,) or (m, k)
      (trailing axes are flattened into k). Examples must be independent.
    damping: λ ≥ 0: a float, an optax schedule of the step count, or a
      controller from `rdescent.damping`.
    loss: `"mse"` (½‖r‖² summed), `"softmax_cross_entropy"` (targets one-hot
      or integer labels), `"sigmoid_binary_cross_entropy"`, `"huber"`, or an
      `rdescent.losses.Loss` (see `rdescent.losses` for the math).
    outputs: `"full"`: one (m k) × (m k) system with K = J Jᵀ (example-major).
      `"per_output"`: the paper's reference form, one m × m system per output
      c, α_c = (K_c + λI)⁻¹ r_c, d = (1/k) Σ_c J_cᵀ α_c (squared error only).
    gram: engine for K, `"auto"` or `"jacobian"` (see `rdescent.gram`).
    system: `"dual"` solves the m k (or m) sized system above, `"primal"` the
      equivalent p × p system (JᵀJ + λI) d = Jᵀ r; `"auto"` picks the smaller.
    chunk_size: examples differentiated at once when Jacobians are
      materialised (bounds memory; None: the whole batch).
    step_size: the η (float or schedule of the step count) that the chain
      applies after this transform, θ ← θ − η d; `regression_descent` passes
      its learning rate. Only damping controllers that predict or undo a step
      use it (`levenberg_marquardt`, `next_batch_ratio`); it does not scale d.
    integer_inputs: allow integer input arrays (token ids for an embedding).
      By default inputs must be floating point with the parameters' dtype, so
      that a model never silently computes with integer or mixed-precision
      data.
    output_scale: α > 0; the model's outputs are α f(θ; X), so the residual
      is r = α f(θ; X) − Y (and K scales by α²). Large α puts the network in
      the lazy (kernel) regime, where it moves its outputs far while its
      parameters, hence its features, barely move: the analyses of
      Gauss-Newton for under-parameterised networks (Riemannian / lazy
      training) show linear convergence of RD/GN there, at the price of
      feature learning and of initial outputs of size α. It helps when the
      network is (near) its linearisation's capacity, e.g. small models
      fitting smooth targets, or to make the early steps less aggressive in
      parameter space; α = 1 (the default) is the plain model. The loss sees
      α f, so predictions must be made with α f too.
    max_logit_change: B > 0 or None (off). Caps each step so that the
      first-order change of the outputs, Δz = −η J d, has a per-example
      spread max_c Δz_ic − min_c Δz_ic of at most B for every example i: d is
      multiplied by s = min(1, B / (η σ)) (`rdescent.problem.cap_logit_change`,
      one JVP per step). Softmax only sees logit differences, so this is the
      trust region of a cross-entropy step; B = π is the suggested value (the
      "ghosts of softmax" bound). The scale and the predicted spread are in
      the state (`step_scale`, `logit_change_spread`). Only regular steps
      are capped (not a controller's undo); controllers that judge a step
      (`levenberg_marquardt`, a line search) judge it before the cap, and
      `next_batch_ratio` is refused, because its undo would not match the
      capped step. With k = 1 the spread is 0 and nothing is capped.
    data_axis: None, or the name of the mesh axis the batch's examples are
      split over (data parallelism, see `rdescent.sharding`). With a name,
      the dual system's K is built in block rows: each device computes the
      Gram factors of its own examples, all-gathers the others' and
      assembles K[own examples, all examples] (`rdescent.sharding.
      row_block_gram`), so the K work is split over the devices and K's rows
      are all-gathered for the replicated solve. With None (the default)
      every device builds all of K from the all-gathered inputs (less
      traffic, n times the K work). Needs a mesh context (`jax.set_mesh`,
      or arrays on a mesh with Explicit axes); without one the step is
      computed as on one device. The primal system is not affected.

  Precision: the Gram matrix, the solve and the state are computed in the
  parameters' dtype, but at least float32: bfloat16/float16 parameters are
  upcast for the step and the direction is cast back to each leaf's dtype.

  Returns:
    An `optax.GradientTransformationExtraArgs`; its `update` must be called as
    `update(updates, state, params, batch=(inputs, targets))`, where
    `updates` (the gradients) may be None and is ignored.
  """
  name = "scale_by_regression_descent"
  loss_obj = losses_lib.get(loss)
  _validation.check_option("outputs", outputs, gram_lib.OUTPUT_MODES)
  _validation.check_option("gram", gram, gram_lib.METHODS)
  _validation.check_option("system", system, problem_lib.SYSTEMS)
  if outputs == "per_output" and not loss_obj.squared_error:
    raise ValueError(
        f"outputs='per_output' supports only the squared error loss ('mse'); "
        f"got loss={loss_obj.name!r}. Use outputs='full' for other losses."
    )
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
  _validation.check_positive("output_scale", output_scale)
  if max_logit_change is not None:
    _validation.check_positive("max_logit_change", max_logit_change)
  if data_axis is not None and not isinstance(data_axis, str):
    raise ValueError(f"data_axis must be a mesh axis name (str) or None; got {data_axis!r}.")
  if not (_validation.is_concrete(output_scale) and output_scale == 1.0):
    apply_fn = _scaled_outputs(apply_fn, output_scale)
  controller = damping_lib.as_controller(damping)

  def init_fn(params):
    _validation.check_params(params, name)
    params = dtypes_lib.upcast(params)
    dtype = dtypes_lib.compute_dtype(params)
    count = jnp.zeros([], jnp.int32)
    if max_logit_change is not None:
      _refuse_step_memory(controller.init(params))
    return RegressionDescentState(
        count=count,
        damping=jnp.asarray(controller.current(controller.init(params), count), dtype),
        damping_state=controller.init(params),
        loss=jnp.zeros([], dtype),
        residual_norm=jnp.zeros([], dtype),
        accepted=jnp.asarray(True),
        solve_ok=jnp.asarray(True),
        num_rejected=jnp.zeros([], jnp.int32),
        status=jnp.asarray(STATUS_OK, jnp.int32),
        step_scale=jnp.ones([], dtype),
        logit_change_spread=jnp.zeros([], dtype),
    )

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del updates, extra_args
    _validation.check_params(params, name)
    inputs, targets = _validation.check_batch(batch, name)
    storage_params, params = params, dtypes_lib.upcast(params)
    _validation.check_input_dtypes(
        inputs, dtypes_lib.compute_dtype(params), name, integer_inputs=integer_inputs
    )
    if loss_obj.squared_error:
      _validation.check_floating("targets", targets, name)
    problem = problem_lib.LinearizedProblem(
        apply_fn, params, inputs, targets, loss=loss_obj, outputs=outputs,
        gram=gram, system=system, chunk_size=chunk_size, data_axis=data_axis, name=name,
    )
    eta = step_size(state.count) if callable(step_size) else step_size
    step = controller.step(problem, state.damping_state, state.count, eta)
    if max_logit_change is not None:
      _refuse_step_memory(state.damping_state)
      capped, step_scale, spread = problem_lib.cap_logit_change(
          problem, step.direction, eta, max_logit_change
      )
      # An undo (rejected step) passes unchanged.
      step = step._replace(direction=jax.tree_util.tree_map(
          lambda c, d: jnp.where(step.accepted, c, d), capped, step.direction))

    finite_loss = jnp.isfinite(problem.loss) & _validation.all_finite(problem.factors.rhs)
    finite_direction = _validation.all_finite(step.direction)
    status = jnp.select(
        [~finite_loss, ~step.solve_ok, ~finite_direction, ~step.accepted],
        [STATUS_NONFINITE_LOSS, STATUS_SOLVE_FAILED, STATUS_NONFINITE_DIRECTION,
         STATUS_REJECTED],
        STATUS_OK,
    ).astype(jnp.int32)
    apply = status == STATUS_OK
    # A rejecting controller's direction is its correction (zero or an undo).
    keep = apply | (status == STATUS_REJECTED)
    direction = jax.tree_util.tree_map(
        lambda d, p: jnp.where(keep, d, jnp.zeros_like(d)).astype(jnp.asarray(p).dtype),
        step.direction, storage_params,
    )
    # Numerical failures: the controller learns of them through `fail`.
    failed = ~keep
    damping_state = jax.tree_util.tree_map(
        lambda bad, good: jnp.where(failed, bad, good),
        controller.fail(state.damping_state), step.state,
    )
    # Nothing non-finite enters the state: a failed step keeps the last
    # finite diagnostics (its `status` says why).
    dtype = state.loss.dtype
    used_damping = jnp.asarray(step.damping, state.damping.dtype)
    used_damping = jnp.where(
        failed | ~jnp.isfinite(used_damping),
        jnp.asarray(controller.current(damping_state, state.count), state.damping.dtype),
        used_damping,
    )
    residual_norm = jnp.linalg.norm(problem.factors.rhs)
    new_state = RegressionDescentState(
        count=optax.safe_increment(state.count),
        damping=used_damping,
        damping_state=damping_state,
        loss=jnp.where(finite_loss, jnp.asarray(problem.loss, dtype), state.loss),
        residual_norm=jnp.where(
            finite_loss, jnp.asarray(residual_norm, dtype), state.residual_norm
        ),
        accepted=apply,
        solve_ok=jnp.asarray(step.solve_ok),
        num_rejected=state.num_rejected + (~apply).astype(jnp.int32),
        status=status,
    )
    if max_logit_change is not None:
      new_state = new_state._replace(
          step_scale=jnp.where(apply, step_scale, 1.0).astype(dtype),
          logit_change_spread=jnp.where(apply, spread, 0.0).astype(dtype),
      )
    else:
      new_state = new_state._replace(
          step_scale=jnp.ones([], dtype), logit_change_spread=jnp.zeros([], dtype)
      )
    return direction, new_state

  # Under a mesh with Explicit axes the step runs with Auto axes (rdescent.sharding).
  return optax.GradientTransformationExtraArgs(
      init_fn, _mesh.auto_axes_update(update_fn)
  )


def regression_descent(
    apply_fn: ApplyFn,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    damping: Any = 1e-3,
    loss: str | losses_lib.Loss = "mse",
    outputs: str = "full",
    gram: str = "auto",
    system: str = "auto",
    chunk_size: int | None = None,
    integer_inputs: bool = False,
    output_scale: float = 1.0,
    max_logit_change: float | None = None,
    data_axis: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Regression Descent: θ ← θ − η Jᵀ (J Jᵀ + λI)⁻¹ r.

  `chain(scale_by_regression_descent(...), scale_by_learning_rate(η))`; see
  `scale_by_regression_descent` for the arguments.

  Example:

    >>> tx = rd.regression_descent(apply_fn, learning_rate=1.0, damping=1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
  """
  _validation.check_nonnegative_finite("learning_rate", learning_rate)
  return optax.chain(
      scale_by_regression_descent(
          apply_fn, damping=damping, loss=loss, outputs=outputs, gram=gram,
          system=system, chunk_size=chunk_size, step_size=learning_rate,
          integer_inputs=integer_inputs, output_scale=output_scale,
          max_logit_change=max_logit_change, data_axis=data_axis,
      ),
      optax.scale_by_learning_rate(learning_rate),
  )
