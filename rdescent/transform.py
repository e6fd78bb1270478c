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

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rdescent import _health
from rdescent import _mesh
from rdescent import _options as options_lib
from rdescent import _precision
from rdescent import _termination
from rdescent import _validation
from rdescent import damping as damping_lib
from rdescent import dtypes as dtypes_lib
from rdescent import losses as losses_lib
from rdescent import metric as metric_lib
from rdescent import problem as problem_lib
from rdescent._options import Options as Options

ApplyFn = Callable[[Any, Any], jax.Array]

# Codes of `RegressionDescentState.status`.
STATUS_OK = 0
STATUS_NONFINITE_LOSS = 1
STATUS_SOLVE_FAILED = 2
STATUS_NONFINITE_DIRECTION = 3
STATUS_REJECTED = 4
STATUS_COUPLED_EXAMPLES = 5
STATUS_ZERO_STEP = 6
STATUS_NONFINITE_LEARNING_RATE = 7
STATUS_NONFINITE_DAMPING = 8
STATUS_NONFINITE_MOMENTUM = 9
STATUS_LABELS_OUT_OF_RANGE = 10
STATUS_CONVERGED = 11
STATUS_BAD_METRIC = 12
STATUS_MESSAGES = {
  STATUS_OK: "ok",
  STATUS_NONFINITE_LOSS: "non-finite outputs, targets or loss; step skipped",
  STATUS_SOLVE_FAILED: "linear solve failed; step skipped",
  STATUS_NONFINITE_DIRECTION: "non-finite direction; step skipped",
  STATUS_REJECTED: "step rejected by the damping controller; nothing applied (or a step undone)",
  STATUS_COUPLED_EXAMPLES: (
    "examples are coupled: single examples' outputs differ from the batch call's (batch "
    "statistics, residuals that mix examples); step skipped; pass examples='coupled'"
  ),
  STATUS_ZERO_STEP: (
    "zero direction: nothing to apply (an exact fit, r = 0, or a stationary point where "
    "the step underflows; termination=rd.termination() reports 'converged' instead)"
  ),
  STATUS_NONFINITE_LEARNING_RATE: "non-finite learning rate (schedule or injected); step skipped",
  STATUS_NONFINITE_DAMPING: "non-finite damping λ (schedule or injected); step skipped",
  STATUS_NONFINITE_MOMENTUM: "non-finite momentum (injected); step skipped",
  STATUS_LABELS_OUT_OF_RANGE: (
    "integer labels outside [0, k) for k logits (cross-entropy targets); step skipped"
  ),
  STATUS_CONVERGED: (
    "converged: a termination test passed (state.converged_by says which); the step was applied"
  ),
  STATUS_BAD_METRIC: (
    "the metric's scale is non-finite or not positive (metric=); step skipped, metric kept"
  ),
}
# Statuses of a step skipped for a hyperparameter: they say nothing about λ.
_HYPERPARAMETER_STATUSES = (
  STATUS_NONFINITE_LEARNING_RATE,
  STATUS_NONFINITE_DAMPING,
  STATUS_NONFINITE_MOMENTUM,
)


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
    solve_ok: whether the last linear solve was healthy.
    num_rejected: steps not applied so far (controller rejections and
      numerical failures).
    status: code of the last step, see `STATUS_MESSAGES`.
    solve_iterations: iterations of the last step's solve, for an iterative
      solver (`solver="cg"`; 0 for direct solvers).
    solve_residual: that solve's relative residual ‖b − (A + λI) x‖ / ‖b‖
      (0 for direct solvers); above the solver's `tol` when it stopped at
      `maxiter`: the step is still judged by the controller.
    converged_by: with `termination=`, the termination tests the last step
      passed, a bit mask (int32) of `rdescent.termination` tests: 1 ftol,
      2 xtol, 4 gtol; 0 when the status is not `STATUS_CONVERGED`.
    precision: an `rdescent.PrecisionState`: the precision the next step
      runs in (`bits`, 32 or 64), the update that first ran in float64
      after float32 ones (`switched_at`, −1 before) and the switch rule's
      count of stalled float32 steps (`precision=`; without it, the compute
      dtype's bits, fixed).
    metric_state: with `metric=`, the metric's `rdescent.metric.MetricState`
      (its running statistic); None without one.

  The logit cap's scale and spread (`max_logit_change`) live in the state of
  its wrapper, `damping_state` (an `rdescent.damping.CapLogitChangeState`);
  so does SPRING's previous direction (`momentum`, an
  `rdescent.damping.SpringState`, inside the cap's state when both are on).
  """

  count: jax.Array  # type: ignore[assignment]  # the optax name; shadows tuple.count
  damping: jax.Array
  damping_state: Any
  loss: jax.Array
  residual_norm: jax.Array
  accepted: jax.Array
  solve_ok: jax.Array
  num_rejected: jax.Array
  status: jax.Array
  solve_iterations: jax.Array
  solve_residual: jax.Array
  converged_by: jax.Array
  precision: _precision.PrecisionState
  metric_state: Any = None


def _scaled_outputs(apply_fn: ApplyFn, output_scale: Any) -> ApplyFn:
  """(params, inputs) ↦ α apply_fn(params, inputs), α = `output_scale`."""

  def scaled(params, inputs):
    outputs = apply_fn(params, inputs)
    return (jnp.asarray(output_scale, outputs.dtype) * outputs).astype(outputs.dtype)

  return scaled


def scale_by_regression_descent(
  apply_fn: ApplyFn, *, step_size: optax.ScalarOrSchedule = 1.0, **options: Any
) -> optax.GradientTransformationExtraArgs:
  """The Regression Descent direction d = Jᵀ (K + λI)⁻¹ r (gradient sign).

  Compose with `optax.scale_by_learning_rate` (or use `regression_descent`)
  to get the descent step θ ← θ − η d.

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs` of shape (m,) or (m, k)
      (trailing axes are flattened into k). Examples must be independent
      unless `examples="coupled"`.
    step_size: the η (float or schedule of the step count) that the chain
      applies after this transform, θ ← θ − η d; `regression_descent` passes
      its learning rate. Only damping controllers that predict or undo a step
      use it (`levenberg_marquardt`, `next_batch_ratio`); it does not scale d.
    **options: the keyword options below, one `rdescent.transform.Options`
      (each checked when the transform is built).

  Keyword Args:
    damping (float | optax.Schedule | rdescent.damping.DampingController): λ ≥ 0: a float, an
      optax schedule of the step count, or a controller from `rdescent.damping`.
    loss (str | rdescent.losses.Loss): `"mse"` (½‖r‖² summed), `"softmax_cross_entropy"` (targets
      one-hot or integer labels), `"sigmoid_binary_cross_entropy"`, `"huber"`, or an
      `rdescent.losses.Loss` (see `rdescent.losses` for the math).
    outputs (str): `"full"`: one (m k) × (m k) system with K = J Jᵀ (example-major).
      `"per_output"`: the paper's reference form, one m × m system per output c, α_c = (K_c + λI)⁻¹
      r_c, d = (1/k) Σ_c J_cᵀ α_c (squared error only). `"sketched"`: for many outputs, the full
      system of a random s-dimensional projection of each example's residual (s = `sketch_size`), an
      (m s) × (m s) system: α = (Sᵀ K S + λI)⁻¹ Sᵀr, d = Jᵀ S α, with a new S (q × s, orthonormal
      columns scaled by √(q/s), so E[S Sᵀ] = I) every step; with loss factors, F = L S replaces S
      (see `rdescent.problem`). s = q is the full form.
    gram (str): engine for K, `"auto"` or `"jacobian"` (see `rdescent.gram`).
    system (str): `"dual"` solves the m k (or m) sized system above, `"primal"` the equivalent p ×
      p system (JᵀJ + λI) d = Jᵀ r; `"auto"` picks the smaller.
    chunk_size (int | None): examples differentiated at once when Jacobians are materialised
      (bounds memory; None: the whole batch).
    integer_inputs (bool): allow integer input arrays (token ids for an embedding). By default
      inputs must be floating point with the parameters' dtype, so that a model never silently
      computes with integer or mixed-precision data.
    output_scale (float): α > 0; the model's outputs are α f(θ; X), so the residual is r = α f(θ;
      X) − Y (and K scales by α²). Large α puts the network in the lazy (kernel) regime, where it
      moves its outputs far while its parameters, hence its features, barely move: the analyses of
      Gauss-Newton for under-parameterised networks (Riemannian / lazy training) show linear
      convergence of RD/GN there, at the price of feature learning and of initial outputs of size α.
      It helps when the network is (near) its linearisation's capacity, e.g. small models fitting
      smooth targets, or to make the early steps less aggressive in parameter space; α = 1 (the
      default) is the plain model. The loss sees α f, so predictions must be made with α f too.
    max_logit_change (float | None): B > 0 or None (off). A shorthand for
      `damping=rdescent.damping.cap_logit_change(damping, bound=B)`: caps each step so that the
      first-order change of the outputs, Δz = −η J d, has a per-example spread max_c Δz_ic − min_c
      Δz_ic of at most B. Softmax only sees logit differences, so this is the trust region of a
      cross-entropy step; B = π is the suggested value. The scale and the predicted spread are in
      the wrapper's state, `state.damping_state` (`step_scale`, `logit_change_spread`). The cap is
      outermost: controllers that judge a step (`levenberg_marquardt`, `backtracking`) judge it
      before the cap; wrap the controller yourself for another order. `next_batch_ratio` is refused
      (a ValueError here), because its undo would not match the capped step.
    data_axis (str | None): None, or the name of the mesh axis the batch's examples are split over
      (data parallelism, see `rdescent.sharding`). With a name, the dual system's K is built in
      block rows: each device computes the Gram factors of its own examples, all-gathers the others'
      and assembles K[own examples, all examples] (`rdescent.sharding. row_block_gram`), so the K
      work is split over the devices and K's rows are all-gathered for the replicated solve. With
      None (the default) every device builds all of K from the all-gathered inputs (less traffic, n
      times the K work). Needs a mesh context (`jax.set_mesh`, or arrays on a mesh with Explicit
      axes); without one the step is computed as on one device. The primal system is not affected.
    solver (str | rdescent.solvers.Solver): how the damped system is solved: `"cholesky"` (the
      default, `rdescent.solvers.cholesky()`: a Cholesky factorisation with bounded jitter retries),
      `"eigh"`, `"cg"` (`rdescent.solvers.cg()`: matrix-free Nyström-preconditioned conjugate
      gradients; K and JᵀJ are never formed, every product with J or Jᵀ is a JVP or VJP of the
      linearised batch function, or a matrix-vector product with J materialised once per step,
      whichever a cost estimate says is cheaper (see `products`); `outputs="full"` only, and not
      with a controller that needs the matrix, `gcv`), or an `rdescent.solvers.Solver`.
    products (str): where the products with J of the system come from: `"auto"` (the default: the
      solver's own choice: the matrix for `"cholesky"` and `"eigh"`, `cg(products=...)`'s for
      `"cg"`, by default chosen when the step is traced: `"jacobian"` when J's m k p numbers fit
      in 1 GiB and its estimated flops, materialising J then 4 m k p per product, are at most the
      network's, a JVP and a VJP per product over ℓ + maxiter products, `"network"` otherwise;
      `rdescent.problem.choose_products`), `"matrix"` (K or JᵀJ formed, for dense solvers),
      `"network"` (every product a JVP or VJP through the model) or `"jacobian"` (J, m k × p,
      materialised once per step; each product two matrix-vector products). A solver refuses a kind
      it does not accept (`rdescent.solvers.Solver.accepts`) when the transform is built.
    momentum (float): μ ∈ [0, 1) (default 0: off). A shorthand for
      `damping=rdescent.damping.spring(damping, momentum=μ)`: SPRING momentum inside the regression,
      d_t = μ d_{t−1} + Jᵀ (K + λI)⁻¹ (r − μ J d_{t−1}) = argmin_d ‖J d − r‖² + λ‖d − μ d_{t−1}‖²
      (one extra J d_{t−1} product per step; see `rdescent.damping.spring`). It wraps the controller
      innermost, so a judge (`levenberg_marquardt`, `backtracking`) judges the full SPRING step, and
      the logit cap (`max_logit_change`) wraps it.
    sketch_size (int | None): s with `outputs="sketched"` (1 ≤ s ≤ q, q = k for squared error;
      checked when the step is traced); None otherwise.
    sketch_seed (int): the seed of the sketches: step t uses `fold_in(key(sketch_seed), t)`, so
      runs are reproducible and the state needs no key.
    examples (str): `"independent"` (the default): `apply_fn` maps each example on its own, as the
      Gram engines assume. Each step checks it, at one extra forward pass: the outputs of the
      examples evaluated alone must match the batch call's (to √ε relative); otherwise the step is
      skipped with status `STATUS_COUPLED_EXAMPLES` and the parameters are untouched. An `apply_fn`
      whose output for one example does not have one example's shape is refused when the step is
      traced. `"coupled"`: any residual function of the batch (batch statistics in training mode,
      residuals that mix examples, or a plain residual vector `apply_fn(params, None) -> (m,)` with
      `batch=(None, targets)`): J is the Jacobian of θ ↦ apply_fn(θ, inputs), by `jax.jacrev` or
      `jax.jacfwd` (m k p numbers); `gram`, `chunk_size` and `data_axis` do not apply (under a mesh
      it is computed replicated, as on one device).
    metric (rdescent.metric.Metric | str | None): None (the default: λI in raw parameter
      coordinates), `rd.metric.marquardt()` (D² ∝ the running max of J's squared column norms, per
      parameter, MINPACK's scaling; J is materialised, for full-batch least squares) or
      `rd.metric.layerwise(decay=0.99)` (one scale per parameter leaf from a running average of a
      one-VJP probe of ‖J_ℓ‖²; keeps the structured Gram; for mini-batches); the strings
      `"marquardt"`, `"layerwise"` give the defaults. The regression is solved for J̃ = J D⁻¹
      and the step is D⁻¹ d̃, the direction of (JᵀJ + λD²) d = Jᵀr; λ is then relative to the
      curvature (re-tune it). A scale that is non-finite or not positive skips the step with
      `STATUS_BAD_METRIC` (12). See `rdescent.metric`.
    row_sketch (int | None): None (the default: every example of the batch) or s: each step
      solves the regression on s examples drawn without replacement from the batch (seeded by
      `sketch_seed`, a new draw every step), and judges every trial on the whole batch (the
      controller's loss, its predicted and actual reductions: one JVP and one forward pass of
      the batch per trial); a sketched Gauss-Newton step for many residuals: an s-row system
      instead of an m-row one. Independent examples only; not with `momentum` or `data_axis`.
    column_sketch (int | None): None (the default: every parameter) or c: each step solves the
      regression on c of the p parameter coordinates drawn without replacement (seeded by
      `sketch_seed`, a new draw every step): the system of J's c drawn columns (c × c on the
      primal side instead of p × p), whose step moves those coordinates only; every trial is
      the true problem's (J d, the predicted reduction, the loss after the step). With
      `row_sketch` too, a doubly sketched Gauss-Newton step. Composes with LM and
      `metric="marquardt"`; not with `momentum`, `data_axis` or a per-leaf metric. See
      `rdescent.problem._columns` for its cost.
    termination (rdescent.Termination | None): None (the default: no tests) or
      `rdescent.termination(ftol=, xtol=, gtol=)`: MINPACK-style tests on every step that applies
      something (or has a zero direction), on the step's batch; meant for full-batch least
      squares. ftol: the actual and the predicted relative reductions of the loss both ≤ ftol
      (and their ratio ≤ 2); xtol: ‖η d‖ ≤ xtol (xtol + ‖θ‖); gtol: ‖Jᵀ g‖ ≤ gtol (off by
      default); ftol and xtol default to √ε of the compute dtype. A step that passes one is still
      applied, with status `STATUS_CONVERGED` (11) instead of "ok" (0) or "zero direction" (6),
      and `state.converged_by` says which tests passed (bits 1 ftol, 2 xtol, 4 gtol); a loop
      stops on it. Rejected and skipped steps keep their own status.
    precision (rdescent.PrecisionSwitch | None): None (the default: every step in the
      parameters' dtype) or `rdescent.precision_switch(rtol=, patience=)`: train in float32 and
      finish in float64, with x64 on and float64 parameters (both checked when the step is
      traced). Each step is the float32 step of the problem cast to float32 (parameters, floating
      inputs and targets, the controller's state), its direction and state cast back, until
      `patience` float32 steps in a row decrease the loss by at most rtol times itself (default
      64 ε₃₂; rejected or skipped steps count); from the next step on every step is the float64
      one. One `lax.cond` on `state.precision.bits` picks the branch (jit- and vmap-able);
      `state.precision.switched_at` is the first float64 update. Termination tests judge float64
      steps only. See `rdescent._precision`.

  Precision: the Gram matrix, the solve and the state are computed in the
  parameters' dtype, but at least float32: bfloat16/float16 parameters are
  upcast for the step and the direction is cast back to each leaf's dtype.

  Returns:
    An `optax.GradientTransformationExtraArgs`; its `update` must be called as
    `update(updates, state, params, batch=(inputs, targets))`, where
    `updates` (the gradients) may be None and is ignored.
  """
  name = "scale_by_regression_descent"
  resolved = options_lib.check(options_lib.make(name, options))
  opts, loss_obj, controller = resolved.options, resolved.loss, resolved.controller
  metric = resolved.metric
  if not (_validation.is_concrete(opts.output_scale) and opts.output_scale == 1.0):
    apply_fn = _scaled_outputs(apply_fn, opts.output_scale)

  def init_fn(params):
    _validation.check_params(params, name)
    params = dtypes_lib.upcast(params)
    dtype = dtypes_lib.compute_dtype(params)
    _precision.check_params(opts.precision, dtype, name)
    count = jnp.zeros([], jnp.int32)
    damping_state = controller.init(params)
    return RegressionDescentState(
      count=count,
      # A copy: the state's leaves get distinct buffers (so it can be donated).
      damping=_health.finite_or_zero(jnp.array(controller.current(damping_state, count), dtype)),
      damping_state=damping_state,
      loss=jnp.zeros([], dtype),
      residual_norm=jnp.zeros([], dtype),
      accepted=jnp.asarray(True),
      solve_ok=jnp.asarray(True),
      num_rejected=jnp.zeros([], jnp.int32),
      status=jnp.asarray(STATUS_OK, jnp.int32),
      solve_iterations=jnp.zeros([], jnp.int32),
      solve_residual=jnp.zeros([], dtype),
      converged_by=jnp.zeros([], jnp.int32),
      precision=_precision.init(opts.precision, dtype),
      metric_state=None if metric is None else metric_lib.init(metric, params),
    )

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del updates, extra_args
    _validation.check_params(params, name)
    _validation.check_state(state, jax.eval_shape(init_fn, params), name)
    inputs, targets = _validation.check_batch(batch, name, coupled=opts.examples == "coupled")
    storage_params, params = params, dtypes_lib.upcast(params)
    _validation.check_input_dtypes(
      inputs, dtypes_lib.compute_dtype(params), name, integer_inputs=opts.integer_inputs
    )
    if loss_obj.squared_error:
      _validation.check_floating("targets", targets, name)
    if opts.precision is None:
      return step_fn(state, params, storage_params, inputs, targets, opts.termination)

    # precision=: the float32 step of the cast problem until the switch rule fires
    # (rdescent._precision), then the float64 step; one lax.cond on the state's flag.
    switch = opts.precision

    def low(_):
      low_state, low_params, low_storage, low_inputs, low_targets = _precision.lower(
        (state, params, storage_params, inputs, targets)
      )
      direction, new_state = step_fn(
        low_state, low_params, low_storage, low_inputs, low_targets, None
      )
      new_state = new_state._replace(
        precision=_precision.after_low_step(
          switch, state.precision, state.count, low_state.loss, new_state.loss
        )
      )
      return _precision.like(direction, storage_params), _precision.like(new_state, state)

    def high(_):
      return step_fn(state, params, storage_params, inputs, targets, opts.termination)

    return jax.lax.cond(state.precision.bits == 32, low, high, None)

  def step_fn(state, params, storage_params, inputs, targets, termination):
    """One update of `params` (already upcast; `storage_params` as given) on the batch."""
    problem = problem_lib.linearize(
      apply_fn,
      params,
      inputs,
      targets,
      loss=loss_obj,
      outputs=opts.outputs,
      gram=opts.gram,
      system=opts.system,
      chunk_size=opts.chunk_size,
      data_axis=opts.data_axis,
      solver=resolved.solver,
      products=resolved.products,
      sketch_size=opts.sketch_size,
      sketch_key=options_lib.sketch_key(opts, state.count),
      examples=opts.examples,
      metric=metric,
      metric_state=state.metric_state,
      metric_key=options_lib.metric_key(metric, state.count),
      row_sketch=opts.row_sketch,
      row_key=options_lib.row_key(opts, state.count),
      column_sketch=opts.column_sketch,
      column_key=options_lib.column_key(opts, state.count),
      name=name,
    )
    eta = step_size(state.count) if callable(step_size) else step_size
    if opts.precision is not None and dtypes_lib.compute_dtype(params) == _precision.LOW:
      eta = _precision.lower(eta)  # a float64 schedule's value, in the float32 step
    finite_hyperparameters = (
      (_health.is_finite(eta), STATUS_NONFINITE_LEARNING_RATE),
      (
        _health.is_finite(controller.current(state.damping_state, state.count)),
        STATUS_NONFINITE_DAMPING,
      ),
      (_health.is_finite(opts.momentum), STATUS_NONFINITE_MOMENTUM),
      (
        losses_lib.labels_in_range(
          loss_obj, targets, lambda: jax.eval_shape(apply_fn, params, inputs).shape[-1]
        ),
        STATUS_LABELS_OUT_OF_RANGE,
      ),
    )
    step = controller.step(problem, state.damping_state, state.count, eta)
    status = _status(problem, step, finite_hyperparameters)
    converged_by = jnp.zeros([], jnp.int32)
    if termination is not None:
      status, converged_by = _converged(termination, status, problem, step, params, eta)
    new_state = _next_state(state, problem, step, status, controller, converged_by)
    if metric is not None:  # a batch whose statistic gave no scale keeps the old one
      new_state = new_state._replace(
        metric_state=jax.tree_util.tree_map(
          lambda new, old: jnp.where(problem.metric_ok, new, old),
          problem.metric_state,
          state.metric_state,
        )
      )
    return _applied_direction(step, status, storage_params), _health.keep_finite(new_state, state)

  # Under a mesh with Explicit axes the step runs with Auto axes (rdescent._mesh).
  return optax.GradientTransformationExtraArgs(init_fn, _mesh.auto_axes_update(update_fn))


def _finite_loss(problem: problem_lib.LinearizedProblem) -> jax.Array:
  return jnp.isfinite(problem.loss) & _validation.all_finite(problem.factors.rhs)


def _status(
  problem: problem_lib.LinearizedProblem,
  step: damping_lib.DampingStep,
  finite_hyperparameters: Any = (),
) -> jax.Array:
  """The step's code in `STATUS_MESSAGES` (the first problem found).

  `finite_hyperparameters`: pairs (finite, code), checked first.
  """
  finite_direction = _validation.all_finite(step.direction)
  zero_direction = jnp.all(
    jnp.stack([jnp.all(leaf == 0) for leaf in jax.tree_util.tree_leaves(step.direction)])
  )
  return jnp.select(
    [~finite for finite, _ in finite_hyperparameters]
    + [
      ~_finite_loss(problem),
      ~problem.metric_ok,
      ~problem.examples_consistent,
      ~step.solve_ok,
      ~finite_direction,
      ~step.accepted,
      zero_direction,
    ],
    [code for _, code in finite_hyperparameters]
    + [
      STATUS_NONFINITE_LOSS,
      STATUS_BAD_METRIC,
      STATUS_COUPLED_EXAMPLES,
      STATUS_SOLVE_FAILED,
      STATUS_NONFINITE_DIRECTION,
      STATUS_REJECTED,
      STATUS_ZERO_STEP,
    ],
    STATUS_OK,
  ).astype(jnp.int32)


def _converged(
  tolerances: _termination.Termination,
  status: jax.Array,
  problem: problem_lib.LinearizedProblem,
  step: damping_lib.DampingStep,
  params: Any,
  step_size: Any,
) -> tuple[jax.Array, jax.Array]:
  """(status, converged_by): "ok" or "zero direction" becomes `STATUS_CONVERGED`
  when a termination test passes (`rdescent._termination`); other statuses stay."""
  mask = _termination.passed_tests(tolerances, problem, step.trial, params, step_size)
  testable = (status == STATUS_OK) | (status == STATUS_ZERO_STEP)
  converged = testable & (mask != 0)
  return (
    jnp.where(converged, STATUS_CONVERGED, status).astype(jnp.int32),
    jnp.where(converged, mask, 0).astype(jnp.int32),
  )


def _applied_direction(step: damping_lib.DampingStep, status: jax.Array, params: Any) -> Any:
  """The direction the transform returns: the step's, or zeros after a numerical failure.

  A rejecting controller's direction is its correction (zero or an undo) and
  passes; each leaf is cast to its parameter's dtype.
  """
  keep = jnp.isin(
    status, jnp.asarray([STATUS_OK, STATUS_CONVERGED, STATUS_REJECTED, STATUS_ZERO_STEP])
  )
  return jax.tree_util.tree_map(
    lambda d, p: jnp.where(keep, d, jnp.zeros_like(d)).astype(jnp.asarray(p).dtype),
    step.direction,
    params,
  )


def _next_state(
  state: RegressionDescentState,
  problem: problem_lib.LinearizedProblem,
  step: damping_lib.DampingStep,
  status: jax.Array,
  controller: damping_lib.DampingController,
  converged_by: jax.Array,
) -> RegressionDescentState:
  """The state after one update; nothing non-finite enters it.

  After a numerical failure the controller learns of it through `fail`
  (applied to its state before the step), and the diagnostics keep their
  last finite values (`status` says why).
  """
  applied = (status == STATUS_OK) | (status == STATUS_CONVERGED)
  failed = ~(applied | (status == STATUS_REJECTED) | (status == STATUS_ZERO_STEP))
  coupled = (status == STATUS_COUPLED_EXAMPLES) | jnp.isin(
    status, jnp.asarray(_HYPERPARAMETER_STATUSES)
  )
  # A coupled batch (or a skip for a hyperparameter) says nothing about λ: the
  # controller's state is kept.
  damping_state = jax.tree_util.tree_map(
    lambda old, bad, good: jnp.where(coupled, old, jnp.where(failed, bad, good)),
    state.damping_state,
    controller.fail(state.damping_state),
    step.state,
  )
  dtype = state.loss.dtype
  used_damping = jnp.asarray(step.damping, state.damping.dtype)
  used_damping = jnp.where(
    failed | ~jnp.isfinite(used_damping),
    jnp.asarray(controller.current(damping_state, state.count), state.damping.dtype),
    used_damping,
  )
  finite_loss = _finite_loss(problem)
  return RegressionDescentState(
    count=optax.safe_increment(state.count),
    damping=used_damping,
    damping_state=damping_state,
    loss=jnp.where(finite_loss, jnp.asarray(problem.loss, dtype), state.loss),
    residual_norm=jnp.where(
      finite_loss, jnp.asarray(problem.residual_norm, dtype), state.residual_norm
    ),
    accepted=applied,
    solve_ok=jnp.asarray(step.solve_ok),
    num_rejected=state.num_rejected + (~applied).astype(jnp.int32),
    status=status,
    solve_iterations=jnp.asarray(step.trial.solve_iterations, jnp.int32),
    solve_residual=jnp.where(
      jnp.isfinite(step.trial.solve_residual),
      jnp.asarray(step.trial.solve_residual, dtype),
      state.solve_residual,
    ),
    converged_by=converged_by,
    precision=state.precision,
    metric_state=state.metric_state,
  )


def regression_descent(
  apply_fn: ApplyFn, learning_rate: optax.ScalarOrSchedule = 1.0, **options: Any
) -> optax.GradientTransformationExtraArgs:
  """Regression Descent: θ ← θ − η Jᵀ (J Jᵀ + λI)⁻¹ r.

  `chain(scale_by_regression_descent(...), scale_by_learning_rate(η))`; see
  `scale_by_regression_descent` for the keyword options (`**options`, one
  `rdescent.transform.Options`, forwarded as they are).

  Examples:
    One step fits a linear model exactly (λ → 0, η = 1):


    >>> import jax.numpy as jnp, optax, rdescent as rd
    >>> apply_fn = lambda w, x: x @ w                      # (m, 3) -> (m,)
    >>> x = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    >>> y = jnp.array([1.0, -1.0])
    >>> params = jnp.zeros(3)
    >>> tx = rd.regression_descent(apply_fn, learning_rate=1.0, damping=1e-9)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(None, state, params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> jnp.round(apply_fn(params, x), 4), rd.STATUS_MESSAGES[int(state[0].status)]
    (Array([ 1., -1.], dtype=float32), 'ok')
  """
  _validation.check_nonnegative_finite("learning_rate", learning_rate)
  return optax.chain(
    scale_by_regression_descent(apply_fn, step_size=learning_rate, **options),
    optax.scale_by_learning_rate(_health.finite_or_zero(learning_rate)),
  )


_APPLY_FN = inspect.Parameter("apply_fn", inspect.Parameter.POSITIONAL_OR_KEYWORD)
options_lib.signature(
  scale_by_regression_descent,
  [_APPLY_FN, inspect.Parameter("step_size", inspect.Parameter.KEYWORD_ONLY, default=1.0)],
)
options_lib.signature(
  regression_descent,
  [
    _APPLY_FN,
    inspect.Parameter("learning_rate", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1.0),
  ],
)
