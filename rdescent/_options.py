"""The options of Regression Descent: declared once, checked once.

`Options` is the one list of the keyword options of
`rdescent.scale_by_regression_descent` and `rdescent.regression_descent`
(their defaults included; the meaning of each is documented on
`scale_by_regression_descent`). `check` validates a value of it when the
transform is built and resolves what the step needs (`Resolved`): the loss and
solver objects, the damping controller with its wrappers, and how the
system's products are made. Both factories take the options as keywords and
carry a signature made from `Options` (`signature`), so `help`, `inspect` and
`optax.inject_hyperparams` see every option by name.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _precision
from rdescent import _termination
from rdescent import _validation
from rdescent import damping as damping_lib
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import metric as metric_lib
from rdescent import problem as problem_lib
from rdescent import solvers as solvers_lib
from rdescent.damping import _spring as spring_lib


class Options(NamedTuple):
  """The keyword options of `scale_by_regression_descent` (documented there)."""

  damping: Any = 1e-3
  loss: str | losses_lib.Loss = "mse"
  outputs: str = "full"
  gram: str = "auto"
  system: str = "auto"
  chunk_size: int | None = None
  integer_inputs: bool = False
  output_scale: float = 1.0
  max_logit_change: float | None = None
  data_axis: str | None = None
  solver: str | solvers_lib.Solver = "cholesky"
  products: str = "auto"
  momentum: float = 0.0
  sketch_size: int | None = None
  sketch_seed: int = 0
  examples: str = "independent"
  termination: _termination.Termination | None = None
  precision: _precision.PrecisionSwitch | None = None
  metric: str | metric_lib.Metric | None = None
  row_sketch: int | None = None
  column_sketch: int | None = None


class Resolved(NamedTuple):
  """What the step needs from checked `Options`.

  Attributes:
    options: the options as given.
    loss: the `rdescent.losses.Loss`.
    solver: the `rdescent.solvers.Solver`.
    controller: the damping controller, with SPRING and the logit cap
      wrapped around it as `momentum` and `max_logit_change` ask.
    products: how the system's products are made (`"matrix"`, `"network"`
      or `"jacobian"`; `"auto"` resolved for the solver, or left `"auto"`
      where the solver's preference is chosen per batch from a cost
      estimate, `rdescent.problem.choose_products`: `cg()`'s default).
  """

  options: Options
  loss: losses_lib.Loss
  solver: solvers_lib.Solver
  controller: damping_lib.DampingController
  products: str
  metric: metric_lib.Metric | None = None


def make(name: str, options: dict[str, Any]) -> Options:
  """`Options(**options)`, with unknown keywords refused by name."""
  unknown = sorted(set(options) - set(Options._fields))
  if unknown:
    raise TypeError(
      f"{name}() got unexpected keyword argument(s) {unknown}; its options are "
      f"{list(Options._fields)}."
    )
  return Options(**options)


def check(options: Options) -> Resolved:
  """Checks every option at once (trace time, before any step) and resolves them."""
  loss = losses_lib.get(options.loss)
  outputs = options.outputs
  _validation.check_option("gram", options.gram, gram_lib.METHODS)
  _validation.check_option("system", options.system, problem_lib.SYSTEMS)
  _validation.check_option("examples", options.examples, gram_lib.EXAMPLES)
  solver = solvers_lib.get(options.solver)
  products, _ = problem_lib.check_form(
    outputs, options.products, solver, "scale_by_regression_descent"
  )
  if outputs == "per_output" and not loss.squared_error:
    raise ValueError(
      f"outputs='per_output' supports only the squared error loss ('mse'); "
      f"got loss={loss.name!r}. Use outputs='full' for other losses."
    )
  chunk_size = options.chunk_size
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
  _validation.check_positive("output_scale", options.output_scale)
  data_axis = options.data_axis
  if data_axis is not None and not isinstance(data_axis, str):
    raise ValueError(f"data_axis must be a mesh axis name (str) or None; got {data_axis!r}.")
  if options.examples == "coupled" and data_axis is not None:
    raise ValueError(
      f"data_axis={data_axis!r} builds K in block rows of independent examples; with "
      "examples='coupled' J is the batch function's, computed replicated: pass data_axis=None."
    )
  _check_sketch(outputs, options.sketch_size, options.sketch_seed)
  _termination.check(options.termination)
  _precision.check(options.precision)
  metric = metric_lib.check(options.metric)
  problem_lib.check_metric(metric, products, "scale_by_regression_descent")
  problem_lib.check_row_sketch(
    options.row_sketch, options.examples, data_axis, "scale_by_regression_descent"
  )
  problem_lib.check_column_sketch(
    options.column_sketch, data_axis, metric, "scale_by_regression_descent"
  )
  for option, why in (
    ("row_sketch", "SPRING's shifted system is not judged on the whole batch"),
    ("column_sketch", "SPRING's prior leaves the drawn subspace"),
  ):
    size = getattr(options, option)
    if size is not None and not spring_lib.is_zero(options.momentum):
      raise ValueError(
        f"{option}={size} with momentum={options.momentum!r} is not supported ({why}); "
        "use momentum=0."
      )
  controller = damping_lib.as_controller(options.damping)
  spring_lib.check_momentum(options.momentum)
  if not spring_lib.is_zero(options.momentum):
    controller = damping_lib.spring(controller, momentum=options.momentum)
  if options.max_logit_change is not None:
    _validation.check_positive("max_logit_change", options.max_logit_change)
    controller = damping_lib.cap_logit_change(controller, bound=options.max_logit_change)
  if products != "matrix" and controller.needs_matrix:
    raise ValueError(
      f"damping: this controller needs the system matrix (gcv scores λ from one "
      f"eigendecomposition of K), which solver={solver.name!r} with products={products!r} "
      "never forms; use a dense solver ('cholesky', 'eigh') with it, or another controller "
      "with 'cg'."
    )
  return Resolved(options, loss, solver, controller, products, metric)


def _check_sketch(outputs: str, sketch_size: Any, sketch_seed: Any) -> None:
  """Checks of `sketch_size` / `sketch_seed` (s ≤ q is checked in the step)."""
  if outputs != "sketched":
    if sketch_size is not None:
      raise ValueError(
        f"sketch_size applies only to outputs='sketched'; got sketch_size={sketch_size!r} "
        f"with outputs={outputs!r}."
      )
    return
  if isinstance(sketch_size, bool) or not isinstance(sketch_size, int) or sketch_size < 1:
    raise ValueError(
      f"outputs='sketched' needs sketch_size, a Python int with 1 <= sketch_size <= q (the "
      f"residual size per example; it is a shape, so with optax.inject_hyperparams list "
      f"'sketch_size' in static_args); got sketch_size={sketch_size!r}."
    )
  integer_seed = isinstance(sketch_seed, int) or (
    hasattr(sketch_seed, "dtype") and jnp.issubdtype(sketch_seed.dtype, jnp.integer)
  )
  if isinstance(sketch_seed, bool) or not integer_seed:
    raise ValueError(f"sketch_seed must be an int; got {sketch_seed!r}.")


def signature(factory: Callable[..., Any], leading: list[inspect.Parameter]) -> Callable[..., Any]:
  """Gives `factory` (which takes `**options`) the signature `leading` + the `Options`.

  `inspect.signature`, `help` and `optax.inject_hyperparams` (which binds
  arguments by name) then see every option as a keyword-only parameter
  with its default.
  """
  hints = typing.get_type_hints(Options)
  options = [
    inspect.Parameter(
      field,
      inspect.Parameter.KEYWORD_ONLY,
      default=Options._field_defaults[field],
      annotation=hints[field],
    )
    for field in Options._fields
  ]
  factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*leading, *options], return_annotation=inspect.signature(factory).return_annotation
  )
  return factory


def metric_key(metric: metric_lib.Metric | None, count: jax.Array) -> jax.Array | None:
  """The step's probe key, `fold_in(key(metric.seed), count)` (None unless layerwise)."""
  if metric is None or metric.per_parameter:
    return None
  return jax.random.fold_in(jax.random.key(metric.seed), count)


def _draw_key(size: int | None, seed: int, stream: int, count: jax.Array) -> jax.Array | None:
  """Step `count`'s key on `sketch_seed`'s stream `stream` (None when `size` is None)."""
  if size is None:
    return None
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), count)


def row_key(options: Options, count: jax.Array) -> jax.Array | None:
  """The step's row draw, from `sketch_seed` on a stream of its own (None without row_sketch)."""
  return _draw_key(options.row_sketch, options.sketch_seed, 0x5EED, count)


def column_key(options: Options, count: jax.Array) -> jax.Array | None:
  """The step's column draw, from `sketch_seed` on a stream of its own (None without it)."""
  return _draw_key(options.column_sketch, options.sketch_seed, 0xC01, count)


def sketch_key(options: Options, count: jax.Array) -> jax.Array | None:
  """The step's sketch key, `fold_in(key(sketch_seed), count)` (None unless sketched)."""
  if options.outputs != "sketched":
    return None
  return jax.random.fold_in(jax.random.key(options.sketch_seed), count)
