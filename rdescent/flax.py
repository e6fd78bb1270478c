"""Flax models as Regression Descent `apply_fn`s (linen and NNX).

Regression Descent needs `apply_fn(params, inputs) -> outputs` of shape (m,)
or (m, k), a pure function of the trainable parameters in which every example
is independent of the others: RD differentiates it per example (K = J Jᵀ with
J the (m k) × p Jacobian) and may call it several times per step (damping
controllers re-evaluate the loss). Hence, inside RD a model must run
*deterministically and without mutable state*:

* batch normalisation uses its running averages (linen
  `use_running_average=True`, NNX `model.eval()`), because batch statistics
  couple the examples and would be updated by every evaluation;
* dropout is off (linen `deterministic=True`, NNX `model.eval()`).

Non-trainable collections (running averages) are read as constants. A model
that tries to write state inside RD (batch statistics, RNG counters of
dropout, any other variable) raises `MutableStateError` when it is traced.

This module needs Flax, an optional dependency: `pip install "rdescent[flax]"`.
It is named like the `flax` package; import it explicitly as
`import rdescent.flax` (it is not imported by `import rdescent`, which keeps
that import free of Flax's start-up cost).

Examples:
  Linen: `tx` is built on `linen_apply_fn`, and a step is `apply_gradients`
  because `flax.training.train_state.TrainState.apply_gradients` does not
  forward `batch=` to the transformation. A tanh MLP fitted to 16 points:

  >>> import jax
  >>> import jax.numpy as jnp
  >>> from flax import linen
  >>> from flax.training.train_state import TrainState
  >>> import rdescent as rd
  >>> import rdescent.flax
  >>> inputs = jnp.linspace(-1.0, 1.0, 16)[:, None]       # (m, 1), m = 16
  >>> targets = jnp.sin(3.0 * inputs)                      # (m, 1)
  >>> model = linen.Sequential([linen.Dense(8), jnp.tanh, linen.Dense(1)])
  >>> params = model.init(jax.random.key(0), inputs)["params"]
  >>> tx = rd.regression_descent(
  ...     rdescent.flax.linen_apply_fn(model), damping=rd.damping.levenberg_marquardt())
  >>> state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  >>> step = jax.jit(lambda state, batch: rdescent.flax.apply_gradients(state, batch=batch))
  >>> for _ in range(20):
  ...   state = step(state, (inputs, targets))
  >>> def loss(params):
  ...   return float(jnp.sum((model.apply({"params": params}, inputs) - targets) ** 2))
  >>> int(state.step), loss(state.params) < loss(params) / 10
  (20, True)

  NNX: `nnx.Optimizer.update` forwards its keyword arguments to `tx.update`
  and passes the pure `nnx.State` of the `wrt` variables as `params`, which is
  what `nnx_apply_fn` expects:

  >>> from flax import nnx
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.hidden = nnx.Linear(1, 8, rngs=rngs)
  ...     self.out = nnx.Linear(8, 1, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.out(jnp.tanh(self.hidden(x)))
  >>> model = MLP(nnx.Rngs(0))
  >>> tx = rd.regression_descent(
  ...     rdescent.flax.nnx_apply_fn(model), damping=rd.damping.levenberg_marquardt())
  >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  >>> @nnx.jit
  ... def train_step(model, optimizer, batch):
  ...   optimizer.update(model, None, batch=batch)
  >>> before = float(jnp.sum((model(inputs) - targets) ** 2))
  >>> for _ in range(20):
  ...   train_step(model, optimizer, (inputs, targets))
  >>> float(jnp.sum((model(inputs) - targets) ** 2)) < before / 10
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
  import flax.errors as flax_errors
  import flax.nnx as nnx
  from flax import linen
except ModuleNotFoundError as error:  # only a missing Flax, not an error inside it
  if (error.name or "").split(".")[0] != "flax":
    raise
  raise ImportError(
    "rdescent.flax needs Flax, an optional dependency of rdescent that is not "
    'installed: pip install "rdescent[flax]" (or pip install flax).'
  ) from error
import jax
import optax

ApplyFn = Callable[[Any, Any], jax.Array]

_HOW_TO_FIX = (
  "Regression Descent needs a deterministic model without mutable state: "
  "every example must be independent and evaluating the model must not "
  "change it. Run batch normalisation with its running averages and turn "
  "dropout off (linen: use_running_average=True, deterministic=True; "
  "NNX: call model.eval() before rdescent.flax.nnx_apply_fn(model))."
)

_LINEN_STATE_ERRORS = (
  flax_errors.ModifyScopeVariableError,
  flax_errors.ScopeCollectionNotFound,
  flax_errors.InvalidRngError,
)


class MutableStateError(ValueError):
  """A Flax model tried to update its state (or draw random numbers) inside RD."""


# ------------------------------------------------------------------ linen


def linen_apply_fn(
  model: linen.Module,
  variables: Any = None,
  *,
  method: Callable[..., Any] | str | None = None,
  **apply_kwargs: Any,
) -> ApplyFn:
  """`apply_fn(params, inputs) = model.apply({"params": params, ...}, inputs)`.

  Args:
    model: a linen module whose (`method`) call maps a batch of inputs with m
      examples to outputs of shape (m,) or (m, k).
    variables: the model's other collections (e.g. `{"batch_stats": ...}`),
      read-only constants; a `"params"` entry in it is ignored (the params
      come from the optimizer). None: the model has only parameters.
    method: passed to `model.apply` (None: `__call__`).
    **apply_kwargs: further keyword arguments of the call, e.g.
      `train=False`.

  Returns:
    `apply_fn(params, inputs)`; it raises `MutableStateError` when the model
    updates a collection (batch statistics in training mode), reads a
    collection that was not given, or asks for an RNG (dropout that is not
    deterministic).
  """
  if not isinstance(model, linen.Module):
    raise TypeError(
      f"linen_apply_fn: `model` must be a flax.linen.Module; got "
      f"{type(model).__name__}. For NNX modules use nnx_apply_fn."
    )
  collections = {name: value for name, value in dict(variables or {}).items() if name != "params"}

  def apply_fn(params, inputs):
    try:
      return model.apply({"params": params, **collections}, inputs, method=method, **apply_kwargs)
    except _LINEN_STATE_ERRORS as error:
      raise MutableStateError(
        f"{type(model).__name__}.apply inside Regression Descent failed: "
        f"{error}\n{_HOW_TO_FIX} Pass non-trainable collections as "
        "linen_apply_fn(model, variables={'batch_stats': ...})."
      ) from error

  return apply_fn


def apply_gradients(state: Any, *, batch: Any, grads: Any = None, **extra_args: Any) -> Any:
  """One optimizer step of a `flax.training.train_state.TrainState` with a batch.

  The same as `state.apply_gradients(grads=grads)`, except that `batch` (and
  any `extra_args`) reach `state.tx.update`, as Regression Descent needs:
  `updates, opt_state = tx.update(grads, opt_state, params, batch=batch)`,
  then `params = optax.apply_updates(params, updates)` and `step + 1`.

  Args:
    state: a `TrainState` (anything with `step`, `params`, `tx`, `opt_state`
      and `replace`).
    batch: `(inputs, targets)` with m examples on the leading axis.
    grads: the gradients, for transformations chained with RD that use them;
      RD itself ignores them (None is fine).
    **extra_args: further keyword arguments of `tx.update`.

  Returns:
    The new state (jit-able; call it inside `jax.jit`).
  """
  updates, opt_state = state.tx.update(
    grads, state.opt_state, state.params, batch=batch, **extra_args
  )
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


# -------------------------------------------------------------------- NNX


def _flat_variables(module: nnx.Module) -> dict[tuple[Any, ...], Any]:
  """{path: array} of every variable of `module`."""
  return dict(nnx.to_flat_state(nnx.as_pure(nnx.state(module))))


def nnx_apply_fn(
  model: nnx.Module,
  *,
  wrt: Any = nnx.Param,
  method: str = "__call__",
) -> ApplyFn:
  """`apply_fn(state, inputs)` for an NNX module, as `nnx.Optimizer` calls it.

  The module is split once, `graphdef, trainable, rest = nnx.split(model,
  wrt, ...)`; `apply_fn` merges `graphdef` with the `state` it is given (the
  pure `nnx.State` of the `wrt` variables, as `nnx.Optimizer.update` passes
  it) and with `rest` (all other variables, constants as they were at this
  call), then calls `method`. The module's structure and flags (`model.eval()`
  / `model.train()`) are those at this call.

  Args:
    model: an NNX module mapping inputs with m examples to (m,) or (m, k).
    wrt: the trainable variables, the same filter as `nnx.Optimizer(...,
      wrt=...)`.
    method: name of the module's method to call.

  Returns:
    `apply_fn(state, inputs)`; it raises `MutableStateError` when the call
    writes any variable (batch statistics, dropout RNG counters, ...).
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(
      f"nnx_apply_fn: `model` must be a flax.nnx.Module; got "
      f"{type(model).__name__}. For linen modules use linen_apply_fn."
    )
  if not callable(getattr(model, method, None)):
    raise ValueError(f"nnx_apply_fn: {type(model).__name__} has no method {method!r}.")
  graphdef, _, *others = nnx.split(model, wrt, ...)  # (graphdef, trainable, rest)
  rest = nnx.as_pure(others[0])

  def apply_fn(state, inputs):
    module = nnx.merge(graphdef, state, rest)
    before = _flat_variables(module)
    outputs = getattr(module, method)(inputs)
    after = _flat_variables(module)
    changed = sorted(
      "/".join(map(str, path))
      for path in before.keys() | after.keys()
      if before.get(path) is not after.get(path)
    )
    if changed:
      raise MutableStateError(
        f"{type(model).__name__}.{method} changed its variables "
        f"{', '.join(changed)} inside Regression Descent.\n{_HOW_TO_FIX}"
      )
    return outputs

  return apply_fn
