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

from rdescent import _validation
from rdescent import damping as damping_lib
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


def _float_dtype(params: Any) -> jnp.dtype:
  dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(params)]
  return jnp.result_type(*dtypes) if dtypes else jnp.float32


def _all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


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
) -> optax.GradientTransformationExtraArgs:
  """The Regression Descent direction d = Jᵀ (K + λI)⁻¹ r (gradient sign).

  Compose with `optax.scale_by_learning_rate` (or use `regression_descent`)
  to get the descent step θ ← θ − η d.

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs` of shape (m,) or (m, k)
      (trailing axes are flattened into k). Examples must be independent.
    damping: λ ≥ 0: a float, an optax schedule of the step count, or a
      controller from `rdescent.damping`.
    loss: `"mse"` (½‖r‖² summed) or an `rdescent.losses.Loss`.
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
  controller = damping_lib.as_controller(damping)

  def init_fn(params):
    dtype = _float_dtype(params)
    count = jnp.zeros([], jnp.int32)
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
    )

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del updates, extra_args
    _validation.check_params(params, name)
    inputs, targets = _validation.check_batch(batch, name)
    problem = problem_lib.LinearizedProblem(
        apply_fn, params, inputs, targets, loss=loss_obj, outputs=outputs,
        gram=gram, system=system, chunk_size=chunk_size, name=name,
    )
    eta = step_size(state.count) if callable(step_size) else step_size
    step = controller.step(problem, state.damping_state, state.count, eta)

    finite_loss = jnp.isfinite(problem.loss) & _all_finite(problem.factors.rhs)
    finite_direction = _all_finite(step.direction)
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
        step.direction, params,
    )
    # Numerical failures: the controller learns of them through `fail`.
    failed = ~keep
    damping_state = jax.tree_util.tree_map(
        lambda bad, good: jnp.where(failed, bad, good),
        controller.fail(state.damping_state), step.state,
    )
    dtype = state.loss.dtype
    new_state = RegressionDescentState(
        count=optax.safe_increment(state.count),
        damping=jnp.asarray(step.damping, state.damping.dtype),
        damping_state=damping_state,
        loss=jnp.asarray(problem.loss, dtype),
        residual_norm=jnp.asarray(jnp.linalg.norm(problem.factors.rhs), dtype),
        accepted=apply,
        solve_ok=jnp.asarray(step.solve_ok),
        num_rejected=state.num_rejected + (~apply).astype(jnp.int32),
        status=status,
    )
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
      ),
      optax.scale_by_learning_rate(learning_rate),
  )
