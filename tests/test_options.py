"""The transform's options as one value (`rdescent._options`) and the solvers' operator kinds.

Every option is declared once (`Options`), checked once when the transform is
built, and forwarded by `regression_descent` without restating the list; the
choice of products (`products=`) is refused there when the solver does not
accept its operator kind.
"""

from __future__ import annotations

import inspect

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import problem as problem_lib
from rdescent.transform import Options
from tests import models


@pytest.mark.parametrize("factory", [rd.regression_descent, rd.scale_by_regression_descent])
def test_both_factories_show_every_option_with_its_default(factory):
  parameters = inspect.signature(factory).parameters
  for field in Options._fields:
    assert parameters[field].kind is inspect.Parameter.KEYWORD_ONLY, field
    assert parameters[field].default == Options._field_defaults[field], field
  assert list(parameters)[0] == "apply_fn"


def test_an_unknown_option_is_refused_by_name():
  with pytest.raises(TypeError, match="dampin.*its options are"):
    rd.regression_descent(models.mlp_apply, dampin=1e-3)
  with pytest.raises(TypeError, match="dampin"):
    rd.scale_by_regression_descent(models.mlp_apply, dampin=1e-3)


def test_inject_hyperparams_sees_options_by_name():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), [3, 4, 2], m=5, dtype=jnp.float32)
  tx = optax.inject_hyperparams(rd.regression_descent, static_args=("apply_fn",))(
    apply_fn=models.mlp_apply, learning_rate=0.5, damping=1e-2
  )
  state = tx.init(params)
  assert float(state.hyperparams["damping"]) == pytest.approx(1e-2)
  _, state = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))(params, state)
  assert float(state.inner_state[0].damping) == pytest.approx(1e-2)


def test_solvers_declare_the_operator_kinds_they_accept():
  assert rd.solvers.cholesky().accepts == ("matrix",)
  assert rd.solvers.eigh().accepts == ("matrix",)
  assert rd.solvers.cg().accepts == ("function", "factored")
  assert set(rd.solvers.PRODUCT_KINDS.values()) == set(rd.solvers.OPERATOR_KINDS)
  with pytest.raises(ValueError, match="'cholesky' accepts matrix operators.*'jacobian'"):
    rd.solvers.check_accepts(rd.solvers.cholesky(), "factored")
  operator = rd.solvers.LinearOperator(lambda v: v, 3, jnp.float32)
  assert rd.solvers.operator_kind(operator) == "function"
  assert rd.solvers.operator_kind(jnp.eye(3)) == "matrix"


def test_products_are_refused_at_construction_where_the_solver_or_form_cannot_take_them():
  with pytest.raises(ValueError, match="solver='cholesky' accepts matrix"):
    rd.regression_descent(models.mlp_apply, products="jacobian")
  with pytest.raises(ValueError, match="solver='cg' accepts function or factored"):
    rd.regression_descent(models.mlp_apply, solver="cg", products="matrix")
  with pytest.raises(ValueError, match="outputs='full'"):
    rd.regression_descent(models.mlp_apply, solver="cg", products="jacobian", outputs="per_output")
  with pytest.raises(ValueError, match="products"):
    rd.regression_descent(models.mlp_apply, products="dense")
  with pytest.raises(ValueError, match="gcv"):
    rd.regression_descent(models.mlp_apply, damping=rd.damping.gcv(), solver="cg")


def test_products_option_is_the_cg_products_shorthand():
  """`products="jacobian"` on the transform gives the step of `cg(products="jacobian")`."""
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(1), [3, 5, 2], m=6)
    solver = rd.solvers.cg(tol=1e-13, maxiter=300)
    by_option, _ = models.first_update(
      rd.scale_by_regression_descent(models.mlp_apply, solver=solver, products="jacobian"),
      params,
      (x, y),
    )
    by_solver, _ = models.first_update(
      rd.scale_by_regression_descent(
        models.mlp_apply, solver=rd.solvers.cg(tol=1e-13, maxiter=300, products="jacobian")
      ),
      params,
      (x, y),
    )
    np.testing.assert_array_equal(models.flat(by_option), models.flat(by_solver))
    problem = rd.linearize(
      models.mlp_apply, params, x, y, loss=rd.losses.get("mse"), solver=solver, products="jacobian"
    )
    assert problem.matrix is None


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(
  m=st.integers(2, 5),
  k=st.integers(1, 3),
  width=st.integers(1, 4),
  form=st.sampled_from(
    [
      (outputs, system, products)
      for products, maps in problem_lib.FORMS.items()
      for outputs in maps
      for system in ("dual", "primal")
    ]
  ),
)
def test_every_form_of_the_table_solves_the_dense_float64_regression(m, k, width, form):
  """Each (output map, side, products) of `FORMS` against the dense ridge (or per-output) step."""
  outputs, system, products = form
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(m * 7 + k), [2, width, k], m=m)
    solver = "cholesky" if products == "matrix" else rd.solvers.cg(tol=1e-14, maxiter=500)
    sketch = {"sketch_size": k, "sketch_key": jax.random.key(0)} if outputs == "sketched" else {}
    damping = 0.3
    trial = jax.jit(
      lambda params: rd.linearize(
        models.mlp_apply,
        params,
        x,
        y,
        loss=rd.losses.get("mse"),
        outputs=outputs,
        system=system,
        solver=solver,
        products=products,
        **sketch,
      ).solve(damping, 1.0)
    )(params)
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    if outputs == "per_output":
      expected = models.dense_per_output_direction(jacobian, residual, damping, k)
    else:  # a sketch of full size (s = q) has S Sᵀ = I: the full regression
      expected = models.dense_ridge_direction(jacobian, residual, damping)
    np.testing.assert_allclose(models.flat(trial.direction), expected, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(
      np.asarray(trial.output_change).reshape(-1), jacobian @ expected, rtol=1e-7, atol=1e-10
    )
