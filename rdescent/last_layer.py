"""A closed-form (ridge) last layer, trained jointly with the backbone.

The model is a backbone followed by a linear head,
f(θ, W, b; x) = φ(θ; x) W + b, with features φ of width h and k outputs.
Under squared error the best head for fixed features is a ridge regression.
With the constant feature appended, Φ̃ = [Φ, 1] (m × (h+1)) and the head
H = [W; b] ((h+1) × k), every update keeps running sufficient statistics

    S ← γ S + Φ̃ᵀΦ̃        ((h+1) × (h+1)),      B ← γ B + Φ̃ᵀY        ((h+1) × k),

(γ = `decay`; γ = 1 keeps every batch seen) and sets the head to

    H* = argmin_H  ½ tr Hᵀ(γ S + w Φ̃ᵀΦ̃)H − tr Hᵀ(γ B + w Φ̃ᵀY) + ½ρ‖W‖² + ½μ‖H − H_prev‖²
       = (γ S + w Φ̃ᵀΦ̃ + ρ P + μ I)⁻¹ (γ B + w Φ̃ᵀY + μ H_prev),

by Cholesky, where ρ = `ridge`, P = diag(1, …, 1, 0) leaves the bias
unpenalised, w = `current_weight` and μ = `proximal` (both below). The head
update is H* − H, so that `optax.apply_updates` lands exactly on H*.

The backbone then takes the step that the `backbone` transform makes of the
gradient of the batch loss ½‖Φ(θ) W* + b* − Y‖² (summed) with respect to θ,
at the new head. By the envelope theorem this is the total derivative of the
profiled objective min_H (the objective above) with respect to θ (times 1/w):
no differentiation through the solve is needed. It costs one forward pass and
one vector-Jacobian product of the backbone.

Stale statistics. S and B mix features computed by older backbones. A small
γ forgets them fast but makes the head fit few examples (noisy, and the
system is singular below h+1 examples without ridge); γ = 1 gives the exact
ridge solution for a frozen backbone but trusts features that the backbone
has since moved away from. Two options weight the current batch more:

* `current_weight` w > 1 counts the current batch w times in the solve only
  (the stored statistics stay unweighted): the head tracks the current
  features while older batches still regularise it.
* `proximal` μ > 0 pulls the head toward the previous one. With `decay=0`
  this keeps memory in the head itself rather than in features from old
  backbones: each head solves only the current batch, damped toward the last
  head (a proximal-point step on the head).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.scipy import linalg as jsp_linalg

from rdescent import _validation
from rdescent import dtypes as dtypes_lib
from rdescent import transform as transform_lib

FeaturesFn = Callable[[Any, Any], jax.Array]

_NAME = "closed_form_last_layer"

# Codes of `ClosedFormLastLayerState.status`.
STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_SOLVE_FAILED = 2
STATUS_MESSAGES = {
  STATUS_OK: "ok",
  STATUS_NONFINITE: "non-finite features, targets or statistics; step skipped",
  STATUS_SOLVE_FAILED: "Cholesky factorisation of the head's system failed; step skipped",
}


class ClosedFormLastLayerState(NamedTuple):
  """State of `closed_form_last_layer`.

  Attributes:
    count: number of updates (int32).
    gram: S, the running Φ̃ᵀΦ̃ with the constant feature last, (h+1, h+1).
    cross: B, the running Φ̃ᵀY, (h+1, k).
    backbone_state: the backbone transform's state.
    loss: ½‖Φ W* + b* − Y‖² of the last batch at its new head (summed).
    solve_ok: whether the last Cholesky solve succeeded.
    num_failed: steps skipped so far (non-finite input or failed solve).
    status: code of the last step, see `STATUS_MESSAGES`.
  """

  count: jax.Array  # type: ignore[assignment]  # the optax name; shadows tuple.count
  gram: jax.Array
  cross: jax.Array
  backbone_state: Any
  loss: jax.Array
  solve_ok: jax.Array
  num_failed: jax.Array
  status: jax.Array


def _check_params(params: Any) -> tuple[int, int]:
  """Checks {"backbone": ..., "head": {"kernel": (h, k), "bias": (k,)}}; returns (h, k)."""
  expected = "{'backbone': ..., 'head': {'kernel': (h, k), 'bias': (k,)}}"
  _validation.check_params(params, _NAME)
  if not isinstance(params, Mapping) or set(params.keys()) != {"backbone", "head"}:
    keys = sorted(params.keys()) if isinstance(params, Mapping) else type(params).__name__
    raise ValueError(f"{_NAME}: `params` must be {expected}; got {keys}.")
  head = params["head"]
  if not isinstance(head, Mapping) or set(head.keys()) != {"kernel", "bias"}:
    keys = sorted(head.keys()) if isinstance(head, Mapping) else type(head).__name__
    raise ValueError(f"{_NAME}: `params['head']` must be {{'kernel', 'bias'}}; got {keys}.")
  kernel_shape, bias_shape = jnp.shape(head["kernel"]), jnp.shape(head["bias"])
  if len(kernel_shape) != 2 or bias_shape != kernel_shape[1:]:
    raise ValueError(
      f"{_NAME}: params['head'] must hold kernel (h, k) and bias (k,); got kernel "
      f"{kernel_shape} and bias {bias_shape}."
    )
  return kernel_shape


def prepare_targets(
  targets: Any,
  num_examples: int,
  num_outputs: int,
  dtype: Any,
  num_classes: int | None = None,
) -> jax.Array:
  """Targets as (m, k) floats: integer labels (m,) become one-hot rows.

  Float targets must have shape (m, k), or (m,) when k = 1.
  """
  targets = jnp.asarray(targets)
  if num_classes is not None and num_classes != num_outputs:
    raise ValueError(
      f"{_NAME}: num_classes={num_classes} but params['head']['kernel'] has "
      f"k = {num_outputs} columns."
    )
  if jnp.issubdtype(targets.dtype, jnp.integer):
    if targets.shape != (num_examples,):
      raise ValueError(
        f"{_NAME}: integer targets are class labels and must have shape (m,) = "
        f"({num_examples},); got {targets.shape}."
      )
    return jax.nn.one_hot(targets, num_outputs, dtype=dtype)
  if not jnp.issubdtype(targets.dtype, jnp.floating):
    raise TypeError(f"{_NAME}: targets must be floats or integer labels; got {targets.dtype}.")
  if num_outputs == 1 and targets.shape == (num_examples,):
    targets = targets[:, None]
  if targets.shape != (num_examples, num_outputs):
    raise ValueError(
      f"{_NAME}: targets must have shape (m, k) = ({num_examples}, {num_outputs}) "
      f"(k from params['head']['kernel']), or integer labels of shape (m,); got "
      f"{targets.shape}."
    )
  return targets.astype(dtype)


def augment(features: jax.Array) -> jax.Array:
  """Φ̃ = [Φ, 1]: the constant feature for the bias, (m, h) -> (m, h+1)."""
  return jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)


def solve_head(
  gram: jax.Array,
  cross: jax.Array,
  *,
  ridge: float | jax.Array,
  proximal: float | jax.Array = 0.0,
  previous: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """H* = (S + ρP + μI)⁻¹ (B + μ H_prev) by Cholesky; returns (H*, ok).

  P = diag(1, …, 1, 0) leaves the last (bias) row unpenalised. A jitter of
  ε·mean(diag S) (ε the dtype's machine epsilon) on the bias entry keeps
  the system positive definite when ρ = 0 or no data was seen; it changes H*
  by a relative O(ε).

  Args:
    gram: S, (h+1, h+1), symmetric positive semi-definite.
    cross: B, (h+1, k).
    ridge: ρ ≥ 0.
    proximal: μ ≥ 0.
    previous: H_prev, (h+1, k); needed when μ may be non-zero.

  Returns:
    H*, (h+1, k), and a scalar bool, True when the factor and H* are finite.
  """
  size, dtype = gram.shape[0], gram.dtype
  penalty = jnp.ones(size, dtype).at[-1].set(0.0)
  scale = jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(gram))), jnp.finfo(dtype).tiny)
  guard = jnp.zeros(size, dtype).at[-1].set(jnp.finfo(dtype).eps * scale)
  diagonal = jnp.asarray(ridge, dtype) * penalty + jnp.asarray(proximal, dtype) + guard
  matrix = 0.5 * (gram + gram.T) + jnp.diag(diagonal)
  rhs = cross if previous is None else cross + jnp.asarray(proximal, dtype) * previous
  factor = jsp_linalg.cho_factor(matrix, lower=True)
  solution = jsp_linalg.cho_solve(factor, rhs)
  ok = jnp.all(jnp.isfinite(factor[0])) & jnp.all(jnp.isfinite(solution))
  return solution, ok


def _check_hyperparameters(ridge, decay, current_weight, proximal, num_classes) -> None:
  _validation.check_nonnegative_finite("ridge", ridge)
  _validation.check_nonnegative_finite("proximal", proximal)
  _validation.check_nonnegative_finite("decay", decay)
  if _validation.is_concrete(decay) and float(decay) > 1.0:
    raise ValueError(f"decay must be in [0, 1]; got {decay!r}.")
  _validation.check_positive("current_weight", current_weight)
  if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"num_classes must be a positive int or None; got {num_classes!r}.")


def closed_form_last_layer(
  features_fn: FeaturesFn,
  *,
  backbone: optax.GradientTransformation,
  ridge: float = 1e-3,
  decay: float = 0.99,
  current_weight: float = 1.0,
  proximal: float = 0.0,
  num_classes: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Ridge-regression head in closed form + the backbone's own transform.

  See the module docstring for the equations and the choice of `decay`,
  `current_weight` and `proximal`.

  Args:
    features_fn: `features_fn(backbone_params, inputs) -> (m, h)`.
    backbone: the transform of `params["backbone"]` (e.g. `optax.adam(1e-3)`);
      it receives the envelope gradient, the backbone params and the extra
      arguments `batch=(inputs, targets as (m, k))` and `head=` the new head
      (`rd_backbone` uses them to take a Regression Descent step with the
      head fixed). Use `optax.set_to_zero()` for a frozen backbone.
    ridge: ρ ≥ 0, the penalty ½ρ‖W‖² on the head kernel (the bias is not
      penalised), in the units of the summed loss.
    decay: γ ∈ [0, 1], the weight of the statistics of earlier batches.
    current_weight: w > 0, the weight of the current batch in the solve.
    proximal: μ ≥ 0, the weight of ½μ‖H − H_prev‖² (kernel and bias).
    num_classes: for integer labels, must equal k (checked); by default k is
      read from the head kernel.

  Returns:
    An `optax.GradientTransformationExtraArgs` over params
    `{"backbone": ..., "head": {"kernel": (h, k), "bias": (k,)}}`, called as
    `update(grads, state, params, batch=(inputs, targets))`; `grads` may be
    None and is ignored. Targets are (m, k) floats, or integer labels (m,)
    (ridge regression on one-hot targets). Apply the updates as they are:
    the head update lands exactly on H*, so do not chain a learning rate
    after this transform (the backbone's rate belongs in `backbone`).

  Examples:
    With a frozen backbone, `ridge=0` and `decay=1`, one update puts the
    head on the least-squares fit of the targets on [Φ, 1]:

    >>> import jax, jax.numpy as jnp, optax
    >>> import rdescent as rd
    >>> def features_fn(backbone, x):                       # (m, 4) -> (m, h = 8)
    ...   return jnp.tanh(x @ backbone["kernel"])
    >>> kx, kb, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    >>> x, y = jax.random.normal(kx, (32, 4)), jax.random.normal(ky, (32, 2))
    >>> params = {"backbone": {"kernel": jax.random.normal(kb, (4, 8))},
    ...           "head": {"kernel": jnp.zeros((8, 2)), "bias": jnp.zeros(2)}}
    >>> tx = rd.closed_form_last_layer(
    ...     features_fn, backbone=optax.set_to_zero(), ridge=0.0, decay=1.0)
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)
    >>> design = jnp.concatenate([features_fn(params["backbone"], x), jnp.ones((32, 1))], 1)
    >>> best = jnp.linalg.lstsq(design, y)[0]                # (h + 1, k): kernel; bias
    >>> bool(jnp.allclose(params["head"]["kernel"], best[:-1], atol=1e-3))
    True
    >>> bool(jnp.allclose(params["head"]["bias"], best[-1], atol=1e-3))
    True
  """
  _check_hyperparameters(ridge, decay, current_weight, proximal, num_classes)
  backbone_tx = optax.with_extra_args_support(backbone)

  def init_fn(params):
    num_features, num_outputs = _check_params(params)
    dtype = dtypes_lib.compute_dtype(params["head"])
    size = num_features + 1
    return ClosedFormLastLayerState(
      count=jnp.zeros([], jnp.int32),
      gram=jnp.zeros((size, size), dtype),
      cross=jnp.zeros((size, num_outputs), dtype),
      backbone_state=backbone_tx.init(params["backbone"]),
      loss=jnp.zeros([], dtype),
      solve_ok=jnp.asarray(True),
      num_failed=jnp.zeros([], jnp.int32),
      status=jnp.asarray(STATUS_OK, jnp.int32),
    )

  def update_fn(updates, state, params=None, *, batch=None, **extra_args):
    del updates
    num_features, num_outputs = _check_params(params)
    inputs, targets = _validation.check_batch(batch, _NAME)
    head, backbone_params = params["head"], params["backbone"]
    dtype = state.gram.dtype
    features, features_vjp = jax.vjp(lambda b: features_fn(b, inputs), backbone_params)
    num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if features.shape != (num_examples, num_features):
      raise ValueError(
        f"{_NAME}: features_fn(params['backbone'], inputs) must return (m, h) = "
        f"({num_examples}, {num_features}) (h from params['head']['kernel']); got "
        f"{features.shape}."
      )
    targets = prepare_targets(targets, num_examples, num_outputs, dtype, num_classes)

    # Statistics of the current batch and the head's system.
    design = augment(features.astype(dtype))
    batch_gram, batch_cross = design.T @ design, design.T @ targets
    previous = jnp.concatenate([head["kernel"], head["bias"][None]], axis=0).astype(dtype)
    solution, solve_ok = solve_head(
      decay * state.gram + current_weight * batch_gram,
      decay * state.cross + current_weight * batch_cross,
      ridge=ridge,
      proximal=proximal,
      previous=previous,
    )
    finite = jnp.all(jnp.isfinite(design)) & jnp.all(jnp.isfinite(targets))
    status = jnp.select(
      [~finite, ~solve_ok], [STATUS_NONFINITE, STATUS_SOLVE_FAILED], STATUS_OK
    ).astype(jnp.int32)
    apply = status == STATUS_OK
    solution = jnp.where(apply, solution, previous)
    new_head = {"kernel": solution[:-1], "bias": solution[-1]}

    # Envelope gradient: the batch loss at the new head, head held fixed.
    residual = design @ solution - targets
    cotangent = (residual @ new_head["kernel"].T).astype(features.dtype)
    (backbone_grads,) = features_vjp(cotangent)
    backbone_updates, backbone_state = backbone_tx.update(
      backbone_grads,
      state.backbone_state,
      backbone_params,
      batch=(inputs, targets),
      head=new_head,
      **extra_args,
    )
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), new, old)
    backbone_updates = jax.tree_util.tree_map(
      lambda u: jnp.where(apply, u, jnp.zeros_like(u)), backbone_updates
    )
    loss = 0.5 * jnp.sum(jnp.square(residual))
    head_updates = type(head)(
      kernel=(new_head["kernel"] - previous[:-1]).astype(jnp.result_type(head["kernel"])),
      bias=(new_head["bias"] - previous[-1]).astype(jnp.result_type(head["bias"])),
    )
    new_state = ClosedFormLastLayerState(
      count=optax.safe_increment(state.count),
      gram=keep(decay * state.gram + batch_gram, state.gram),
      cross=keep(decay * state.cross + batch_cross, state.cross),
      backbone_state=keep(backbone_state, state.backbone_state),
      loss=jnp.where(apply, loss, state.loss),
      solve_ok=solve_ok,
      num_failed=state.num_failed + (~apply).astype(jnp.int32),
      status=status,
    )
    return type(params)(backbone=backbone_updates, head=head_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_fixed_head(
  features_fn: FeaturesFn,
  build: Callable[[Callable[[Any, Any], jax.Array]], optax.GradientTransformation],
) -> optax.GradientTransformationExtraArgs:
  """A backbone transform that sees the whole model with the head held fixed.

  `build(apply_fn)` makes a transform of the backbone params for the model
  `apply_fn(backbone, inputs) = features_fn(backbone, inputs) @ W + b`, where
  (W, b) is the head that `closed_form_last_layer` passes to `update` as the
  extra argument `head=` (its new, closed-form head). `build` is called again
  at every trace of `update`, so its `init` must not depend on the head
  (true of every `rdescent` transform).
  """

  def make(head):
    def apply_fn(backbone_params, inputs):
      return features_fn(backbone_params, inputs) @ head["kernel"] + head["bias"]

    return optax.with_extra_args_support(build(apply_fn))

  def init_fn(params):
    return make(None).init(params)

  def update_fn(updates, state, params=None, *, head=None, **extra_args):
    if head is None:
      raise ValueError(
        "with_fixed_head.update needs the head as the extra argument `head=` "
        "({'kernel': (h, k), 'bias': (k,)}); use it as the `backbone` of "
        "closed_form_last_layer, which passes it."
      )
    return make(head).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rd_backbone(
  features_fn: FeaturesFn,
  learning_rate: optax.ScalarOrSchedule = 1.0,
  **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  """Regression Descent on the backbone with the closed-form head held fixed.

  `with_fixed_head(features_fn, lambda f: rd.regression_descent(f,
  learning_rate, **kwargs))`: each step solves the RD regression of the
  residuals of f(θ) = φ(θ; X) W* + b* on its Jacobian with respect to θ only.
  Keyword arguments (`damping`, `outputs`, `gram`, ...) go to
  `regression_descent`; the loss is squared error.

  Examples:
    A tanh backbone 1-16 and a linear head fitting sin(3x); the summed loss
    of the batch at its new head falls over ten steps (with
    Levenberg-Marquardt damping of the backbone's step):

    >>> import jax, jax.numpy as jnp, optax
    >>> import rdescent as rd
    >>> def features_fn(backbone, x):                       # (m, 1) -> (m, 16)
    ...   return jnp.tanh(x @ backbone["kernel"] + backbone["bias"])
    >>> key = jax.random.PRNGKey(0)
    >>> backbone_params = {"kernel": jax.random.normal(key, (1, 16)), "bias": jnp.zeros(16)}
    >>> params = {"backbone": backbone_params,
    ...           "head": {"kernel": jnp.zeros((16, 1)), "bias": jnp.zeros(1)}}
    >>> x = jnp.linspace(-2.0, 2.0, 64)[:, None]
    >>> y = jnp.sin(3.0 * x)
    >>> backbone = rd.last_layer.rd_backbone(
    ...     features_fn, damping=rd.damping.levenberg_marquardt())
    >>> tx = rd.closed_form_last_layer(features_fn, backbone=backbone, ridge=1e-3, decay=0.9)
    >>> state = tx.init(params)
    >>> step = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
    >>> losses = []
    >>> for _ in range(10):
    ...   updates, state = step(params, state)
    ...   params = optax.apply_updates(params, updates)
    ...   losses.append(float(state.loss))
    >>> losses[-1] < 0.5 * losses[0]
    True
  """
  return with_fixed_head(
    features_fn,
    lambda apply_fn: transform_lib.regression_descent(apply_fn, learning_rate, **kwargs),
  )
