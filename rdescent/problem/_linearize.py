"""`linearize`: the only code that knows which form of the RD system is solved.

A form is three independent choices, composed (`_form.Form`):

* the output map (`outputs=`): `"full"`, `"per_output"`, `"sketched"`
  (`_output_maps`);
* the side (`system=`): `"dual"` or `"primal"`, `"auto"` the smaller
  (`_sides`);
* the products (`products=`): `"matrix"` (the system matrix formed from K or
  J, for dense solvers), `"network"` (JVPs and VJPs through the model) or
  `"jacobian"` (J materialised once per step) (`_products`).

`FORMS` lists the output maps each kind of products supports; `SystemArrays`
(`_arrays`) builds every K and J the forms need.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rdescent import _validation
from rdescent import gram as gram_lib
from rdescent import losses as losses_lib
from rdescent import metric as metric_lib
from rdescent import solvers as solvers_lib
from rdescent.problem import _columns
from rdescent.problem import _coupling
from rdescent.problem import _output_maps
from rdescent.problem import _sides
from rdescent.problem._arrays import SystemArrays
from rdescent.problem._batch import ApplyFn
from rdescent.problem._batch import Batch
from rdescent.problem._form import Form
from rdescent.problem._product_cost import CANDIDATES
from rdescent.problem._product_cost import choose_products
from rdescent.problem._products import FlatJacobian
from rdescent.problem._products import JacobianBlocks
from rdescent.problem._products import NetworkProducts
from rdescent.problem._products import ScaledProducts
from rdescent.problem._protocol import LinearizedProblem
from rdescent.problem._sketch import checked_sketch

SYSTEMS = ("auto", "dual", "primal")
OUTPUT_MODES = ("full", "per_output", "sketched")
PRODUCTS = ("auto", "matrix", "network", "jacobian")

# products -> the output maps it supports. The matrix-free products solve one
# system of the full outputs (a per-output batch of k systems, or a sketch,
# needs the matrix).
FORMS: dict[str, tuple[str, ...]] = {
  "matrix": OUTPUT_MODES,
  "network": ("full",),
  "jacobian": ("full",),
}


def resolve_products(products: str, solver: solvers_lib.Solver) -> str:
  """`products="auto"`: the solver's preference (`Solver.products`), else the matrix.

  A solver whose preference is `"auto"` (`cg()`'s default) leaves `"auto"`:
  `linearize` chooses per batch from a cost estimate (`choose_products`).
  """
  if products != "auto":
    return products
  if solver.products is not None:
    return solver.products
  return "matrix" if "matrix" in solver.accepts else "network"


def check_form(
  outputs: str, products: str, solver: solvers_lib.Solver, name: str
) -> tuple[str, str | None]:
  """Checks the choices against `FORMS` and the solver's operator kinds, once.

  Returns:
    (products resolved, the operator kind the solver is handed; None when
    `"auto"` is left to the per-batch cost estimate, `choose_products`).
  """
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  _validation.check_option("products", products, PRODUCTS)
  products = resolve_products(products, solver)
  if products == "auto":
    if outputs != "full":
      raise ValueError(
        f"{name}: products='auto' (solver={solver.name!r}) chooses 'network' or 'jacobian', "
        f"which solve the full system only; got outputs={outputs!r} (use outputs='full', or "
        "a dense solver such as 'cholesky')."
      )
    if not any(solvers_lib.PRODUCT_KINDS[c] in solver.accepts for c in CANDIDATES):
      solvers_lib.check_accepts(solver, "function", name=name)
    return products, None
  if outputs not in FORMS[products]:
    raise ValueError(
      f"{name}: products={products!r} (solver={solver.name!r}) solves the full system "
      f"only; got outputs={outputs!r} (use outputs='full', or a dense solver such as "
      "'cholesky')."
    )
  kind = solvers_lib.PRODUCT_KINDS[products]
  solvers_lib.check_accepts(solver, kind, name=name)
  return products, kind


def linearize(
  apply_fn: ApplyFn,
  params: Any,
  inputs: Any,
  targets: jax.Array,
  *,
  loss: losses_lib.Loss,
  outputs: str = "full",
  gram: str = "auto",
  system: str = "auto",
  chunk_size: int | None = None,
  data_axis: str | None = None,
  solver: solvers_lib.Solver | str = "cholesky",
  products: str = "auto",
  sketch_size: int | None = None,
  sketch_key: jax.Array | None = None,
  examples: str = "independent",
  metric: metric_lib.Metric | None = None,
  metric_state: metric_lib.MetricState | None = None,
  metric_key: jax.Array | None = None,
  row_sketch: int | None = None,
  row_key: jax.Array | None = None,
  column_sketch: int | None = None,
  column_key: jax.Array | None = None,
  name: str = "scale_by_regression_descent",
) -> LinearizedProblem:
  """Builds the RD system of one batch in the form the options ask for.

  Evaluates the model and its VJP once, the loss and its Gauss-Newton
  factors, and what the form is made of: K (dual; `rdescent.gram`), the
  per-example Jacobian (primal, or `products="jacobian"`), or a
  linearisation of the batch function (`products="network"`).

  Args:
    apply_fn: `apply_fn(params, inputs) -> outputs`, (m,) or (m, k).
    params: θ.
    inputs: X, a pytree with a leading example axis of size m.
    targets: Y.
    loss: an `rdescent.losses.Loss`.
    outputs: `"full"`, `"per_output"` or `"sketched"` (needs `sketch_size`
      and `sketch_key`).
    gram: the Gram engine, `"auto"`, `"structured"` or `"jacobian"`.
    system: `"dual"`, `"primal"` or `"auto"` (the smaller: primal when
      p < m q, or p < m per output).
    chunk_size: examples differentiated at once where Jacobians are
      materialised (None: all).
    data_axis: None, or the mesh axis the examples are split over (K built
      in block rows, `rdescent.sharding.row_block_gram`).
    solver: an `rdescent.solvers.Solver` or its name.
    products: where the system's products come from: `"matrix"` (the
      matrix formed, for dense solvers), `"network"` (a JVP and a VJP
      through the model per product), `"jacobian"` (J materialised once),
      or `"auto"` (the solver's preference: `"matrix"` for dense solvers,
      `Solver.products` for `cg`; cg's own `"auto"` chooses `"jacobian"` or
      `"network"` for this batch from a cost estimate, `choose_products`).
    sketch_size: s, 1 ≤ s ≤ q, the sketch's size (`outputs="sketched"`).
    sketch_key: the PRNG key of the sketch S (`output_sketch`).
    examples: `"independent"`: `apply_fn` maps each example on its own; the
      Gram engines rely on it, and `examples_consistent` checks it (one
      extra forward pass, each example alone). `"coupled"`: J is the
      Jacobian of the whole-batch function (`rdescent._jacobian.
      batch_jacobian`); `inputs` may be None, m is then the outputs'
      leading axis; `gram`, `chunk_size` and `data_axis` do not apply.
    metric: None (λI), or an `rdescent.metric.Metric`: the system of
      J̃ = J D⁻¹ is solved and the step is d = D⁻¹ d̃ (see that module).
    metric_state: the metric's state before this batch (`rdescent.metric.
      init` at the first step); the problem's `metric_state` is the state
      after it.
    metric_key: the PRNG key of this step's probe (`metric.kind ==
      "layerwise"`).
    row_sketch: None, or s: the regression is solved on s examples drawn
      without replacement from the m of the batch (`row_key`), and every trial
      is judged on the whole batch: its loss after the step and its predicted
      reduction use all m examples (one JVP and one forward pass of the batch
      per trial). With s ≥ m the whole batch. Independent examples only.
    row_key: the PRNG key of the rows' draw.
    column_sketch: None, or c: the regression is solved on c of the p
      parameter coordinates drawn without replacement (`column_key`), as the
      problem of g(z) = f(θ + S z) at z = 0, and the step is d = S d_z
      (`rdescent.problem._columns`); its trials are f's. With c ≥ p all of
      them. Composes with `row_sketch` and `metric=marquardt()`.
    column_key: the PRNG key of the columns' draw.
    name: the transform's name, for error messages.

  Returns:
    A `LinearizedProblem`.

  Examples:
    >>> import jax.numpy as jnp, rdescent as rd
    >>> from rdescent.problem import linearize
    >>> apply_fn = lambda w, x: x @ w
    >>> x, y = jnp.eye(3)[:2], jnp.array([1.0, 2.0])
    >>> problem = linearize(apply_fn, jnp.zeros(3), x, y, loss=rd.losses.get("mse"),
    ...                     system="dual")
    >>> problem.system, problem.matrix.shape
    ('dual', (2, 2))
    >>> trial = problem.solve(0.0, 1.0)
    >>> trial.direction, trial.loss_after
    (Array([-1., -2.,  0.], dtype=float32), Array(0., dtype=float32))
  """
  solver = solvers_lib.get(solver)
  products, _ = check_form(outputs, products, solver, name)
  check_metric(metric, products, name)
  if products == "auto" and metric is not None and metric.per_parameter:
    products = "jacobian"  # the metric's column norms need J: the products reuse it
  elif products == "auto":
    products = choose_products(apply_fn, params, inputs, solver=solver, examples=examples)
  _validation.check_option("system", system, SYSTEMS)
  _validation.check_option("examples", examples, gram_lib.EXAMPLES)
  coupled = examples == "coupled"
  # The form of a row or column sketch's own problem: these options, as given.
  sketched_form: dict[str, Any] = {
    "loss": loss,
    "outputs": outputs,
    "gram": gram,
    "system": system,
    "chunk_size": chunk_size,
    "solver": solver,
    "products": products,
    "sketch_size": sketch_size,
    "sketch_key": sketch_key,
    "metric": metric,
    "metric_key": metric_key,
    "name": name,
  }
  num_params = sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
  if column_sketch is not None and column_sketch < num_params:
    check_column_sketch(column_sketch, data_axis, metric, name)
    if column_key is None:
      raise ValueError(
        f"{name}: column_sketch={column_sketch} needs column_key (the columns' draw)."
      )
    columns = _columns.draw_columns(column_key, params, column_sketch)
    if metric is not None and metric_state is None:
      metric_state = metric_lib.init(metric, params)
    inner = linearize(
      _columns.subspace_model(apply_fn, params, columns),
      _columns.subspace_origin(params, columns),
      inputs,
      targets,
      examples=examples,
      metric_state=(
        None if metric_state is None else _columns.gather_metric_state(metric_state, columns)
      ),
      row_sketch=row_sketch,
      row_key=row_key,
      **sketched_form,
    )
    new_metric_state = (
      None
      if metric_state is None
      else _columns.scatter_metric_state(metric_state, inner.metric_state, columns)
    )
    whole = _judge_batch(apply_fn, params, inputs, targets, loss)
    return _columns.ColumnSketch(inner, whole, columns, new_metric_state)
  total = None if coupled else jax.tree_util.tree_leaves(inputs)[0].shape[0]
  if row_sketch is not None and total is not None and row_sketch < total:
    check_row_sketch(row_sketch, examples, data_axis, name)
    if row_key is None:
      raise ValueError(f"{name}: row_sketch={row_sketch} needs row_key (the rows' draw).")
    rows = jax.random.choice(row_key, total, (row_sketch,), replace=False)
    whole = _judge_batch(apply_fn, params, inputs, targets, loss)
    sketched = linearize(
      apply_fn,
      params,
      jax.tree_util.tree_map(lambda leaf: leaf[rows], inputs),
      jnp.asarray(targets)[rows],
      metric_state=metric_state,
      **sketched_form,
    )
    assert isinstance(sketched, Form)
    return sketched.judged_on(whole)
  raw_outputs, vjp = jax.vjp(lambda p: apply_fn(p, inputs), params)
  if coupled:
    num_examples = raw_outputs.shape[0] if raw_outputs.ndim else 0
  else:
    num_examples = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  _validation.check_outputs(raw_outputs, num_examples, name)
  flat_outputs = raw_outputs.reshape(num_examples, -1)
  if coupled and jnp.shape(targets)[0] != num_examples:
    raise ValueError(
      f"{name}: targets must have the outputs' {num_examples} rows on their leading axis "
      f"(examples='coupled'); got targets of shape {jnp.shape(targets)}."
    )
  if coupled:
    consistent = jnp.asarray(True)
  else:
    _coupling.check_single_example(apply_fn, params, inputs, raw_outputs.shape, name)
    consistent = _coupling.examples_consistent(apply_fn, params, inputs, flat_outputs, chunk_size)
  batch = _batch(apply_fn, params, inputs, targets, loss, raw_outputs, vjp, consistent)
  factors = batch.factors
  num_outputs = flat_outputs.shape[1]
  num_residuals = factors.rhs.shape[1]

  outputs_map: Any
  if outputs == "sketched":
    sketch = checked_sketch(sketch_size, sketch_key, num_residuals, flat_outputs.dtype, name)
    outputs_map = _output_maps.SketchedOutputs(batch, sketch)
    dual_size = num_examples * sketch.shape[1]
  elif outputs == "per_output":
    outputs_map = _output_maps.PerOutput(batch)
    dual_size = num_examples
  else:
    outputs_map = _output_maps.FullOutputs(batch)
    dual_size = num_examples * num_residuals
  if system == "auto":
    system = "primal" if num_params < dual_size else "dual"

  arrays = SystemArrays(
    apply_fn,
    params,
    inputs,
    num_examples=num_examples,
    num_outputs=num_outputs,
    method=gram,
    chunk_size=chunk_size,
    data_axis=data_axis,
    coupled=coupled,
  )
  scales, new_metric_state, metric_ok = None, None, jnp.asarray(True)
  if metric is not None:
    scales, new_metric_state, metric_ok = _metric_scales(
      metric, metric_state, metric_key, batch, arrays, params, name
    )
    arrays = arrays.scale_by(scales)
  scaled = (
    (lambda source: source) if scales is None else (lambda source: ScaledProducts(source, scales))
  )

  side: Any
  if products == "matrix" and system == "dual":
    gram_matrix = arrays.gram(outputs_map)
    side = _sides.Dual(
      outputs_map,
      scaled(NetworkProducts(batch)),
      matrix=outputs_map.dual_matrix(gram_matrix),
      gram=gram_matrix if outputs_map.gram_holds_outputs else None,
    )
  elif products == "matrix":
    jacobian = arrays.flat_jacobian()
    side = _sides.Primal(
      outputs_map, FlatJacobian(jacobian, params), params, rows=outputs_map.rows(jacobian)
    )
  else:
    if products == "jacobian":
      blocks = arrays.unscaled_jacobian_blocks()
      source: Any = scaled(JacobianBlocks(blocks, params, num_examples))
    else:
      _, linearized = jax.linearize(lambda p: apply_fn(p, inputs), params)
      source = scaled(NetworkProducts(batch, linearized))
    side = (
      _sides.Dual(outputs_map, source)
      if system == "dual"
      else _sides.Primal(outputs_map, source, params)
    )
  form = Form(
    batch,
    outputs_map,
    side,
    solver,
    scales=scales,
    metric_state=new_metric_state,
    metric_ok=metric_ok,
  )
  form._prepare(solver)
  return form


def _check_sketch_size(option: str, size: Any, what: str, name: str) -> None:
  """A sketch's size: a positive Python int (a shape, static)."""
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(
      f"{name}: {option} must be None or a positive int ({what} each step's regression is "
      f"solved on; a shape, static); got {option}={size!r}."
    )


def check_row_sketch(row_sketch: Any, examples: str, data_axis: Any, name: str) -> None:
  """`row_sketch`: None or a positive Python int, with independent examples and no mesh axis."""
  if row_sketch is None:
    return
  _check_sketch_size("row_sketch", row_sketch, "the examples", name)
  if examples == "coupled":
    raise ValueError(
      f"{name}: row_sketch draws examples of the batch, which examples='coupled' does not "
      "have (one residual function of the whole batch); use examples='independent'."
    )
  if data_axis is not None:
    raise ValueError(
      f"{name}: row_sketch with data_axis={data_axis!r} is not supported (the drawn rows "
      "would cross the mesh's example split); use data_axis=None."
    )


def check_column_sketch(column_sketch: Any, data_axis: Any, metric: Any, name: str) -> None:
  """`column_sketch`: None or a positive Python int; no mesh axis, no per-leaf metric."""
  if column_sketch is None:
    return
  _check_sketch_size("column_sketch", column_sketch, "the parameter coordinates", name)
  if data_axis is not None:
    raise ValueError(
      f"{name}: column_sketch with data_axis={data_axis!r} is not supported; use data_axis=None."
    )
  if metric is not None and not metric.per_parameter:
    raise ValueError(
      f"{name}: column_sketch with metric={metric.kind!r} is not supported: a per-leaf metric "
      "has no scale for the drawn coordinates (one flat leaf); use rd.metric.marquardt() or "
      "no metric."
    )


def _judge_batch(
  apply_fn: ApplyFn, params: Any, inputs: Any, targets: jax.Array, loss: losses_lib.Loss
) -> Batch:
  """The whole batch that a row-sketched problem's trials are judged on."""
  raw_outputs, vjp = jax.vjp(lambda p: apply_fn(p, inputs), params)
  return _batch(apply_fn, params, inputs, targets, loss, raw_outputs, vjp, jnp.asarray(True))


def _batch(
  apply_fn: ApplyFn,
  params: Any,
  inputs: Any,
  targets: jax.Array,
  loss: losses_lib.Loss,
  raw_outputs: jax.Array,
  vjp: Any,
  consistent: jax.Array,
) -> Batch:
  """The `Batch` of a forward pass (its outputs and VJP): targets prepared, loss and factors."""
  flat_outputs = raw_outputs.reshape(raw_outputs.shape[0], -1)
  prepared = loss.prepare_targets(targets, flat_outputs)
  return Batch(
    apply_fn=apply_fn,
    params=params,
    inputs=inputs,
    vjp=vjp,
    output_shape=raw_outputs.shape,
    output_dtype=raw_outputs.dtype,
    outputs=flat_outputs,
    targets=prepared,
    loss_fn=loss,
    loss=loss.value(flat_outputs, prepared),
    factors=loss.factors(flat_outputs, prepared),
    examples_consistent=consistent,
  )


def check_metric(metric: metric_lib.Metric | None, products: str, name: str) -> None:
  """A per-parameter metric needs J's columns: refuses products through the network."""
  if metric is not None and metric.per_parameter and products == "network":
    raise ValueError(
      f"{name}: metric={metric.kind!r} scales each parameter by J's column norms, which "
      "products='network' never forms; use products='jacobian' (J materialised once per "
      "step), a dense solver, or rd.metric.layerwise()."
    )


def _metric_scales(
  metric: metric_lib.Metric,
  state: metric_lib.MetricState | None,
  key: jax.Array | None,
  batch: Batch,
  arrays: SystemArrays,
  params: Any,
  name: str,
) -> tuple[Any, metric_lib.MetricState, jax.Array]:
  """This batch's statistic, the metric's next state, and its scales w = D⁻¹."""
  if state is None:
    state = metric_lib.init(metric, params)
  if metric.per_parameter:
    statistic = metric_lib.column_statistic(
      arrays.unscaled_jacobian_blocks(), params, batch.loss_factor
    )
  else:
    if key is None:
      raise ValueError(f"{name}: metric={metric.kind!r} needs metric_key (its probe's key).")
    residual = batch.loss_residual
    probe = jax.random.rademacher(key, residual.shape, residual.dtype)
    statistic = metric_lib.probe_statistic(batch.vjp_direction(batch.factor_times(probe)))
  new_state = metric_lib.update(metric, state, statistic)
  scales, healthy = metric_lib.scales(metric, new_state, params)
  return scales, new_state, healthy
