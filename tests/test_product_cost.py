"""products="auto" with a matrix-free solver: the choice follows the cost estimate, and its
steps equal the explicit choice's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import rdescent as rd
from rdescent.problem import _product_cost
from rdescent.problem import choose_products
from rdescent.problem import product_flops
from tests import models


def _mlp(sizes, m, dtype=jnp.float32):
  return models.mlp_problem(jax.random.PRNGKey(0), sizes, m=m, dtype=dtype)


@settings(max_examples=15, deadline=None)
@given(
  m=st.integers(1, 64),
  hidden=st.integers(1, 32),
  k=st.integers(1, 64),
  rank=st.integers(0, 50),
  maxiter=st.integers(1, 200),
)
def test_the_choice_is_what_the_estimate_says(m, hidden, k, rank, maxiter):
  params, x, _ = _mlp([3, hidden, k], m)
  solver = rd.solvers.cg(rank=rank, maxiter=maxiter)
  flops = product_flops(models.mlp_apply, params, x, products_per_step=rank + maxiter)
  expected = "jacobian" if flops["jacobian"] <= flops["network"] else "network"
  assert choose_products(models.mlp_apply, params, x, solver=solver) == expected


def test_small_outputs_take_the_jacobian_many_outputs_the_network():
  params, x, _ = _mlp([3, 16, 1], 32)
  assert choose_products(models.mlp_apply, params, x) == "jacobian"
  params, x, _ = _mlp([3, 16, 200], 32)
  assert choose_products(models.mlp_apply, params, x) == "network"


def test_a_jacobian_over_the_memory_budget_is_never_materialised(monkeypatch):
  params, x, _ = _mlp([3, 16, 1], 32)
  size = 32 * (3 * 16 + 16 + 16 + 1) * 4  # m k p float32 numbers
  monkeypatch.setattr(_product_cost, "JACOBIAN_BYTES", size)
  assert choose_products(models.mlp_apply, params, x) == "jacobian"
  monkeypatch.setattr(_product_cost, "JACOBIAN_BYTES", size - 1)
  assert choose_products(models.mlp_apply, params, x) == "network"


def test_the_estimate_counts_materialising_and_products():
  # One dense layer without bias, f = tanh(x W): L = 2 m d k, O = m k (tanh).
  m, d, k, n = 16, 8, 1, 30
  apply_fn = lambda w, x: jnp.tanh(x @ w)
  flops = product_flops(apply_fn, jnp.ones((d, k)), jnp.ones((m, d)), products_per_step=n)
  linear, other, p = 2 * m * d * k, m * k, d * k
  assert flops["network"] == (linear + other) + n * (3 * linear + 2 * other)
  assert flops["jacobian"] == (linear + other) + k * (2 * linear + other) + 4 * n * m * k * p


@pytest.mark.parametrize("sizes", [[3, 16, 1], [3, 16, 200]])
def test_auto_steps_equal_the_explicit_choice(sizes):
  with jax.enable_x64(True):
    params, x, y = _mlp(sizes, 24, jnp.float64)
    chosen = choose_products(models.mlp_apply, params, x)
    directions = []
    for solver in (rd.solvers.cg(tol=1e-12), rd.solvers.cg(tol=1e-12, products=chosen)):
      tx = rd.scale_by_regression_descent(models.mlp_apply, damping=1e-2, solver=solver)
      direction, _ = tx.update(None, tx.init(params), params, batch=(x, y))
      directions.append(models.flat(direction))
    np.testing.assert_array_equal(directions[0], directions[1])
    problem = rd.linearize(models.mlp_apply, params, x, y, loss=rd.losses.get("mse"), solver="cg")
    explicit = rd.linearize(
      models.mlp_apply, params, x, y, loss=rd.losses.get("mse"), solver="cg", products=chosen
    )
    np.testing.assert_array_equal(
      models.flat(problem.solve(1e-2, 1.0).direction),
      models.flat(explicit.solve(1e-2, 1.0).direction),
    )


def test_auto_is_refused_with_forms_the_matrix_free_products_cannot_solve():
  with pytest.raises(ValueError, match="products='auto'.*full system"):
    rd.regression_descent(models.mlp_apply, solver="cg", outputs="per_output")
