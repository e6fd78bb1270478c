"""Losses in generalized Gauss-Newton form.

A per-example loss ℓ(z, y) on the model outputs z ∈ R^k enters Regression
Descent only through two factors, per example i:

    g_i = ∂ℓ/∂z_i = L_i u_i,         H_i = ∂²ℓ/∂z_i² = L_i L_iᵀ,

with L_i of shape (k, q). The RD direction is then

    d = (Jᵀ H J + λI)⁻¹ Jᵀ g = Jᵀ L (Lᵀ K L + λI)⁻¹ u,        K = J Jᵀ,

one symmetric positive semi-definite (m q) × (m q) system. Squared error is the
case L = I, u = r = z − y (`factor is None` below means L = I). Only the
product L u enters d, so any u with L u = g gives the same direction.

Built-in losses (names accepted by `loss=` and `get`):

* `"mse"`: ½‖z − y‖², L = I, u = z − y.
* `"softmax_cross_entropy"`: −Σ_c y_c log softmax(z)_c; targets one-hot,
  probability rows, or integer labels.
* `"sigmoid_binary_cross_entropy"`: independent Bernoulli outputs, targets in
  [0, 1] with the outputs' shape.
* `"huber"`: Huber's loss with δ = 1 (`huber(delta)` for another δ).

Your own loss: build a `Loss` directly, or use `from_gradient_and_factor`
with a per-example value function (gradient and Hessian factor default to
autodiff). Losses are summed over the batch, never averaged, so that λ means
the same for every loss and batch size.

Examples:
  The softmax cross-entropy factors of one example, and the check
  L u = g = softmax(z) − y:

  >>> import jax, jax.numpy as jnp
  >>> import rdescent as rd
  >>> loss = rd.losses.get("softmax_cross_entropy")
  >>> z = jnp.array([[2.0, 0.0, -1.0]])            # (m, k) = (1, 3) logits
  >>> y = loss.prepare_targets(jnp.array([1]), z)  # integer label -> one-hot (1, 3)
  >>> y.tolist()
  [[0.0, 1.0, 0.0]]
  >>> factors = loss.factors(z, y)
  >>> factors.rhs.shape, factors.factor.shape       # u (m, q), L (m, k, q)
  ((1, 3), (1, 3, 3))
  >>> g = jax.nn.softmax(z) - y
  >>> bool(jnp.allclose(factors.factor[0] @ factors.rhs[0], g[0], atol=1e-6))
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rdescent import _validation


class GaussNewtonFactors(NamedTuple):
  """Per-example factors of a loss at the current outputs.

  Attributes:
    rhs: u, shape (m, q), with g_i = L_i u_i.
    factor: L, shape (m, k, q), with H_i = L_i L_iᵀ; None means L_i = I (q = k).
  """

  rhs: jax.Array
  factor: jax.Array | None


class Loss(NamedTuple):
  """A loss as Regression Descent sees it.

  Attributes:
    name: short name used in error messages.
    value: `value(outputs, targets) -> scalar`, the loss summed over examples;
      outputs have shape (m, k).
    factors: `factors(outputs, targets) -> GaussNewtonFactors`.
    prepare_targets: `prepare_targets(targets, outputs) -> targets` validates
      and converts targets at trace time (e.g. integer labels to one-hot) and
      returns them with shape (m, k).
    squared_error: True for the plain squared error, the only loss the
      per-output mode accepts.
  """

  name: str
  value: Callable[[jax.Array, jax.Array], jax.Array]
  factors: Callable[[jax.Array, jax.Array], GaussNewtonFactors]
  prepare_targets: Callable[[jax.Array, jax.Array], jax.Array]
  squared_error: bool = False


def _same_shape_targets(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  def prepare(targets: jax.Array, outputs: jax.Array) -> jax.Array:
    targets = jnp.asarray(targets)
    if targets.size != outputs.size:
      raise ValueError(
        f"loss={name!r}: targets must have the same shape as the outputs of "
        f"apply_fn; got targets {targets.shape} and outputs "
        f"{outputs.shape} (as (m, k))."
      )
    return targets.reshape(outputs.shape).astype(outputs.dtype)

  return prepare


def _log_floor(dtype: Any) -> float:
  """log of the smallest normal number of `dtype`: where probabilities are clamped."""
  return float(np.log(np.finfo(dtype).tiny))


# ------------------------------------------------------------- squared error


def mean_squared_error() -> Loss:
  """Squared error ℓ = ½‖z − y‖² summed over examples: g = r, H = I."""

  def value(outputs, targets):
    return 0.5 * jnp.sum(jnp.square(outputs - targets))

  def factors(outputs, targets):
    return GaussNewtonFactors(rhs=outputs - targets, factor=None)

  return Loss(
    name="mse",
    value=value,
    factors=factors,
    prepare_targets=_same_shape_targets("mse"),
    squared_error=True,
  )


# ----------------------------------------------------- softmax cross-entropy


def _class_targets(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Integer labels (m,) → one-hot (m, k); one-hot or probability rows kept.

  Out-of-range labels raise when the labels are concrete; under `jax.jit`
  they cannot be seen at trace time and become a row of NaN, so the loss is
  non-finite and the transform skips the step (status "non-finite ...").
  """

  def prepare(targets: jax.Array, outputs: jax.Array) -> jax.Array:
    num_examples, num_classes = outputs.shape
    if num_classes < 2:
      raise ValueError(
        f"loss={name!r} needs apply_fn to return k >= 2 logits per example "
        f"(shape (m, k)); got outputs {outputs.shape}. For one logit use "
        "'sigmoid_binary_cross_entropy'."
      )
    concrete = not isinstance(targets, jax.core.Tracer)
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer):
      if targets.shape == (num_examples, num_classes):
        return targets.astype(outputs.dtype)  # one-hot stored as integers
      if targets.shape not in ((num_examples,), (num_examples, 1)):
        raise ValueError(
          f"loss={name!r}: integer labels must have shape ({num_examples},); "
          f"got targets {targets.shape} for outputs {outputs.shape}."
        )
      labels = targets.reshape(num_examples)
      if concrete:
        bad = np.asarray(labels)
        bad = bad[(bad < 0) | (bad >= num_classes)]
        if bad.size:
          raise ValueError(
            f"loss={name!r}: labels must lie in [0, {num_classes}) for "
            f"{num_classes} logits; got {bad[:5].tolist()}."
          )
      valid = (labels >= 0) & (labels < num_classes)
      one_hot = jax.nn.one_hot(labels, num_classes, dtype=outputs.dtype)
      return jnp.where(valid[:, None], one_hot, jnp.nan)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
      raise TypeError(
        f"loss={name!r}: targets must be integer labels (m,) or float "
        f"one-hot / probability rows (m, k); got dtype {targets.dtype}."
      )
    if targets.shape != (num_examples, num_classes):
      raise ValueError(
        f"loss={name!r}: float targets must be one-hot or probability rows "
        f"of shape {(num_examples, num_classes)} like the outputs; got "
        f"targets {targets.shape}. Integer labels need an integer dtype."
      )
    return targets.astype(outputs.dtype)

  return prepare


def softmax_cross_entropy(*, rows: str = "per_class") -> Loss:
  """Softmax cross-entropy ℓ = −Σ_c y_c log p_c, p = softmax(z), summed.

  Targets: integer labels (m,), or rows y_i of shape (k,) with Σ_c y_ic = 1
  (one-hot or soft labels; the factors below assume that sum). Per example,

      g = p − y,     H = diag(p) − p pᵀ = L Lᵀ,   L = diag(√p) − p √pᵀ  (k × k),
      u = (p − y) / √p,

  since L u = (p − y) − p Σ_c (p_c − y_c) = p − y. H has rank k − 1 (its null
  vector is 1, the softmax's shift invariance), so the system is PSD, not PD,
  before damping; u is the minimum-norm solution of L u = g
  (‖u‖² = (1 − p_y)/p_y for a one-hot y). Probabilities are computed as
  exp(log_softmax) and clamped below at the dtype's smallest normal number
  (log p ≥ log tiny, about −87 in float32), which keeps √p and u finite; the
  factors are exact for every class with p_c above that floor, i.e. unless a
  logit gap exceeds about 87 (float32) or 708 (float64).

  `rows="per_example"` gives the system one row per example instead of k (m
  rows instead of m k; a reduced Gauss-Newton model): each example's logit
  change is restricted to its gradient direction ĝ = g/‖g‖, Δz_i = t_i ĝ_i,
  along which the loss is ℓ_i + ‖g_i‖ t_i + ½ h_i t_i² with the curvature
  h_i = ĝ_iᵀ H_i ĝ_i. In factor form

      L_i = √h_i ĝ_i  (k × 1),     u_i = ‖g_i‖ / √h_i,

  so L_i u_i = g_i still (the step's first-order term is the true gradient)
  and L_i L_iᵀ = h_i ĝ_i ĝ_iᵀ is H_i restricted to ĝ_i. K's system then has
  size m, a k² smaller solve, and J d costs the same. h_i and ‖g_i‖ are
  floored at the dtype's smallest normal number (an example already fitted
  to rounding contributes u_i ≈ 0).

  Args:
    rows: `"per_class"` (k rows per example, the exact Gauss-Newton model) or
      `"per_example"` (one row per example, see above).

  Returns:
    A `Loss` named `"softmax_cross_entropy"` (or
    `"softmax_cross_entropy_per_example"`).

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> import jax
    >>> loss = rd.losses.softmax_cross_entropy(rows="per_example")
    >>> z, y = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[0.0, 1.0, 0.0]])
    >>> rhs, factor = loss.factors(z, y)
    >>> rhs.shape, factor.shape                          # one row for the example
    ((1, 1), (1, 3, 1))
    >>> g = jax.nn.softmax(z) - y
    >>> bool(jnp.allclose(factor[0] @ rhs[0], g[0], atol=1e-6))   # L u = g
    True
  """
  rows = _validation.check_option("rows", rows, ("per_class", "per_example"))
  if rows == "per_example":
    return _per_example_softmax_cross_entropy()
  name = "softmax_cross_entropy"

  def value(outputs, targets):
    return -jnp.sum(targets * jax.nn.log_softmax(outputs, axis=-1))

  def factors(outputs, targets):
    log_p = jnp.maximum(jax.nn.log_softmax(outputs, axis=-1), _log_floor(outputs.dtype))
    p = jnp.exp(log_p)
    sqrt_p = jnp.exp(0.5 * log_p)
    eye = jnp.eye(outputs.shape[-1], dtype=outputs.dtype)
    factor = sqrt_p[:, :, None] * eye - p[:, :, None] * sqrt_p[:, None, :]
    rhs = sqrt_p - targets * jnp.exp(-0.5 * log_p)  # (p − y)/√p, no division
    return GaussNewtonFactors(rhs=rhs, factor=factor)

  return Loss(name=name, value=value, factors=factors, prepare_targets=_class_targets(name))


def _per_example_softmax_cross_entropy() -> Loss:
  """Softmax cross-entropy with one Gauss-Newton row per example (see above)."""
  exact = softmax_cross_entropy()
  name = "softmax_cross_entropy_per_example"

  def factors(outputs, targets):
    tiny = jnp.finfo(outputs.dtype).tiny
    p = jax.nn.softmax(outputs, axis=-1)
    gradient = p - targets
    norm = jnp.sqrt(jnp.sum(jnp.square(gradient), axis=-1, keepdims=True))
    direction = gradient / jnp.maximum(norm, tiny)
    # h = ĝᵀ (diag(p) − p pᵀ) ĝ = Σ_c p_c ĝ_c² − (Σ_c p_c ĝ_c)² ≥ 0.
    curvature = jnp.sum(p * jnp.square(direction), axis=-1, keepdims=True) - jnp.square(
      jnp.sum(p * direction, axis=-1, keepdims=True)
    )
    root = jnp.sqrt(jnp.maximum(curvature, tiny))
    return GaussNewtonFactors(rhs=norm / root, factor=(root * direction)[:, :, None])

  return exact._replace(name=name, factors=factors)


# ----------------------------------------------- sigmoid binary cross-entropy


def _binary_targets(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  same_shape = _same_shape_targets(name)

  def prepare(targets: jax.Array, outputs: jax.Array) -> jax.Array:
    targets = jnp.asarray(targets)
    if not (jnp.issubdtype(targets.dtype, jnp.number) or targets.dtype == jnp.bool_):
      raise TypeError(
        f"loss={name!r}: targets must be numbers in [0, 1]; got dtype {targets.dtype}."
      )
    return same_shape(targets, outputs)

  return prepare


def sigmoid_binary_cross_entropy() -> Loss:
  """Binary cross-entropy on logits, each output an independent Bernoulli.

  ℓ = Σ softplus(z) − y z = −y log σ(z) − (1 − y) log(1 − σ(z)), summed over
  examples and outputs; targets y ∈ [0, 1] with the outputs' shape. With
  h = σ(z)(1 − σ(z)), per output

      g = σ(z) − y,    H = h (diagonal),    L = diag(√h),    u = (σ(z) − y)/√h.

  h is computed as exp(log σ(z) + log σ(−z)) and clamped below at the dtype's
  smallest normal number, so √h and u stay finite (exact unless |z| exceeds
  about 87 in float32).
  """
  name = "sigmoid_binary_cross_entropy"

  def value(outputs, targets):
    return jnp.sum(jax.nn.softplus(outputs) - targets * outputs)

  def factors(outputs, targets):
    log_h = jax.nn.log_sigmoid(outputs) + jax.nn.log_sigmoid(-outputs)
    log_h = jnp.maximum(log_h, _log_floor(outputs.dtype))
    sqrt_h = jnp.exp(0.5 * log_h)
    rhs = (jax.nn.sigmoid(outputs) - targets) * jnp.exp(-0.5 * log_h)
    factor = sqrt_h[:, :, None] * jnp.eye(outputs.shape[-1], dtype=outputs.dtype)
    return GaussNewtonFactors(rhs=rhs, factor=factor)

  return Loss(name=name, value=value, factors=factors, prepare_targets=_binary_targets(name))


# ---------------------------------------------------------------------- Huber


def huber(delta: float = 1.0) -> Loss:
  """Huber's loss with threshold δ on r = z − y, summed over examples and outputs.

      ℓ(r) = ½ r²            if |r| ≤ δ,       g = r,
             δ (|r| − ½ δ)   otherwise,        g = δ sign(r).

  Its exact Hessian is 1 in the quadratic zone and 0 outside, which has no
  factor with g = L u (g ≠ 0 where H = 0), so the linear zone cannot enter the
  dual system with that H. We use Huber's iteratively-reweighted-least-squares
  weight instead, the curvature of the quadratic that touches ℓ at r and lies
  above it everywhere:

      H = w = min(1, δ/|r|),     L = √w,     u = g/√w = sign(r) √(min(r², δ|r|)).

  In the quadratic zone this is the exact Gauss-Newton factor (the same step
  as `"mse"`); outside it the curvature is δ/|r| (→ 0 like the true Hessian
  as |r| grows) and a full step on the linearised model never increases the
  Huber loss of that model (majorisation), instead of an unbounded step
  along a zero-curvature direction.
  """
  if not (isinstance(delta, (int, float)) and np.isfinite(delta) and delta > 0):
    raise ValueError(f"huber: delta must be a finite number > 0; got {delta!r}.")
  name = "huber"

  def value(outputs, targets):
    abs_r = jnp.abs(outputs - targets)
    return jnp.sum(jnp.where(abs_r <= delta, 0.5 * abs_r**2, delta * (abs_r - 0.5 * delta)))

  def factors(outputs, targets):
    r = outputs - targets
    abs_r = jnp.abs(r)
    outside = abs_r > delta
    weight = jnp.where(outside, delta / jnp.where(outside, abs_r, 1.0), 1.0)
    rhs = jnp.sign(r) * jnp.sqrt(jnp.minimum(r * r, delta * abs_r))
    factor = jnp.sqrt(weight)[:, :, None] * jnp.eye(outputs.shape[-1], dtype=outputs.dtype)
    return GaussNewtonFactors(rhs=rhs, factor=factor)

  return Loss(name=name, value=value, factors=factors, prepare_targets=_same_shape_targets(name))


# ---------------------------------------------------------------- your own


def hessian_factor(hessian: jax.Array) -> jax.Array:
  """L with L Lᵀ = H⁺ (H's positive part), from `eigh`: L = V diag(√max(s, 0)).

  Args:
    hessian: H, shape (k, k), symmetric.

  Returns:
    L, shape (k, k).
  """
  values, vectors = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
  return vectors * jnp.sqrt(jnp.maximum(values, 0.0))


def from_gradient_and_factor(
  name: str,
  value_fn: Callable[[jax.Array, jax.Array], jax.Array],
  *,
  gradient_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
  factor_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
  prepare_targets: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Loss:
  """A `Loss` from a per-example loss, its gradient and a factor of its Hessian.

  All three functions take one example, z of shape (k,) and y of shape (k,)
  (as returned by `prepare_targets`), and are vmapped over the batch:

      value_fn(z, y) -> ℓ (scalar),   gradient_fn(z, y) -> g = ∂ℓ/∂z (k,),
      factor_fn(z, y) -> L (k, q) with L Lᵀ = ∂²ℓ/∂z², or a PSD substitute.

  The right-hand side is the minimum-norm u with L u = g, u = L⁺ g (by
  `jnp.linalg.pinv`); g must lie in the range of L (true for convex losses
  whose gradient vanishes along the Hessian's null space, e.g. the softmax
  shift). Defaults: `gradient_fn = jax.grad(value_fn)`; `factor_fn` the
  `hessian_factor` of `jax.hessian(value_fn)` (its positive part when the loss
  is not convex in z). `prepare_targets(targets, outputs)` defaults to
  "same shape as the outputs". For efficiency or exact control of u, build a
  `Loss` directly instead (see the built-ins).

  Examples:
    A weighted squared error on k = 2 outputs, used for one RD step of a
    linear model:

    >>> import jax.numpy as jnp, optax
    >>> import rdescent as rd
    >>> weights = jnp.array([1.0, 10.0])
    >>> loss = rd.losses.from_gradient_and_factor(
    ...     "weighted_mse", lambda z, y: 0.5 * jnp.sum(weights * (z - y) ** 2),
    ...     factor_fn=lambda z, y: jnp.diag(jnp.sqrt(weights)))
    >>> float(loss.value(jnp.ones((3, 2)), jnp.zeros((3, 2))))  # 3 × ½ (1 + 10)
    16.5
    >>> apply_fn = lambda params, x: x @ params                  # (m, 4) -> (m, 2)
    >>> params = jnp.zeros((4, 2))
    >>> x, y = jnp.eye(4), jnp.arange(8.0).reshape(4, 2)
    >>> tx = rd.regression_descent(apply_fn, loss=loss, damping=1e-6)
    >>> updates, state = tx.update(None, tx.init(params), params, batch=(x, y))
    >>> params = optax.apply_updates(params, updates)            # one step fits y
    >>> bool(jnp.allclose(apply_fn(params, x), y, atol=1e-3))
    True
  """
  gradient_fn = gradient_fn or jax.grad(value_fn)
  factor_fn = factor_fn or (lambda z, y: hessian_factor(jax.hessian(value_fn)(z, y)))

  def value(outputs, targets):
    return jnp.sum(jax.vmap(value_fn)(outputs, targets))

  def factors(outputs, targets):
    gradient = jax.vmap(gradient_fn)(outputs, targets)
    factor = jax.vmap(factor_fn)(outputs, targets)
    if factor.ndim != 3 or factor.shape[1] != outputs.shape[1]:
      raise ValueError(
        f"loss={name!r}: factor_fn must return L of shape (k, q) with "
        f"k = {outputs.shape[1]}; got {factor.shape[1:]} per example."
      )
    rhs = jnp.einsum("iqk,ik->iq", jnp.linalg.pinv(factor), gradient)
    return GaussNewtonFactors(rhs=rhs, factor=factor)

  return Loss(
    name=name,
    value=value,
    factors=factors,
    prepare_targets=prepare_targets or _same_shape_targets(name),
  )


# ------------------------------------------------------------------ registry


_BUILTIN: dict[str, Callable[[], Loss]] = {
  "mse": mean_squared_error,
  "softmax_cross_entropy": softmax_cross_entropy,
  "softmax_cross_entropy_per_example": _per_example_softmax_cross_entropy,
  "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
  "huber": huber,
}


def register(name: str, factory: Callable[[], Loss]) -> None:
  """Makes `loss=name` resolve to `factory()` (used by the built-in losses)."""
  _BUILTIN[name] = factory


def get(loss: Any) -> Loss:
  """Resolves a loss given by name or as a `Loss`."""
  if isinstance(loss, Loss):
    return loss
  if isinstance(loss, str) and loss in _BUILTIN:
    return _BUILTIN[loss]()
  raise ValueError(
    f"loss={loss!r} is not a valid option; expected one of "
    f"{', '.join(repr(n) for n in _BUILTIN)} or an rdescent.losses.Loss."
  )


def labels_in_range(loss: Loss, targets: Any, num_classes: Callable[[], int]) -> jax.Array:
  """Scalar bool, inside jit too: integer class labels lie in [0, k).

  Concrete labels out of range are refused when the targets are prepared; under
  `jax.jit` they are data, so the transform checks them with this in the step
  and skips it with a status that names the labels. True for any loss other
  than the softmax cross-entropies, and for one-hot or probability targets.

  Args:
    loss: the `Loss`.
    targets: the batch's targets.
    num_classes: returns k, the logits per example (called only for labels).
  """
  if not loss.name.startswith("softmax_cross_entropy") or not hasattr(targets, "dtype"):
    return jnp.asarray(True)
  if not jnp.issubdtype(targets.dtype, jnp.integer) or targets.ndim not in (1, 2):
    return jnp.asarray(True)
  if targets.ndim == 2 and targets.shape[1] != 1:
    return jnp.asarray(True)  # one-hot rows stored as integers
  classes = num_classes()
  return jnp.all((targets >= 0) & (targets < classes))
