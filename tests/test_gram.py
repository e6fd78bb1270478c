"""rdescent/gram.py: the engines behind one `gram_matrix`, their factors and cross blocks.

Every K is compared with a dense float64 J Jᵀ (`models.jacobian_reference`);
the structured engine itself is tested in test_structured_gram.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent import structured_gram
from tests import models


def test_auto_uses_structured_and_handles_models_without_sites():
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, [3, 4, 2])
    x = models.normal(1, (4, 3))
    models.assert_gram_equals_reference(models.mlp_apply, params, x, "full", method="auto")
    traced = structured_gram.trace_model(models.mlp_apply, params, x)
    assert len(traced.covered) == 4
    elementwise = {"s": models.normal(2, (3,))}
    apply_fn = lambda p, x: jnp.sin(x * p["s"])
    assert structured_gram.trace_model(apply_fn, elementwise, x).covered == ()
    models.assert_gram_equals_reference(apply_fn, elementwise, x, "full", method="auto")
    models.assert_gram_equals_reference(apply_fn, elementwise, x, "per_output", method="structured")


# ------------------------------------------------------------------ per-example Jacobians


def _fallback_apply(params, x):
  """A dense layer, a LayerNorm-like scale (a fallback leaf) and a bias: both engines' paths."""
  h = jnp.tanh(x @ params["w"])
  h = (h - h.mean(axis=-1, keepdims=True)) * params["scale"]
  return h @ params["out"] + params["b"]


def _fallback_params():
  return {
    "w": models.normal(0, (3, 4)),
    "scale": models.normal(1, (4,)),
    "out": models.normal(2, (4, 2)),
    "b": models.normal(3, (2,)),
  }


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("sizes", [[3, 4, 2], [1, 2]], ids=["reverse", "forward"])
def test_per_example_jacobian_equals_the_dense_jacobian(sizes, chunk_size):
  """Reverse mode (p ≥ k) and forward mode (p < k), all examples at once or in chunks."""
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, sizes)
    if sizes == [1, 2]:  # p = 4 < k = 6 outputs per example: forward mode
      apply_fn = lambda p, x: jnp.concatenate([models.mlp_apply(p, x)] * 3, axis=-1)
    else:
      apply_fn = models.mlp_apply
    x = models.normal(1, (5, sizes[0]))
    expected = models.jacobian_reference(apply_fn, params, x)
    m, k, _ = expected.shape
    jacobian = rd.gram.per_example_jacobian(
      apply_fn, params, x, num_outputs=k, chunk_size=chunk_size
    )
    assert jax.tree_util.tree_structure(jacobian) == jax.tree_util.tree_structure(params)
    for leaf, param in zip(jax.tree_util.tree_leaves(jacobian), jax.tree_util.tree_leaves(params)):
      assert leaf.shape == (m, k, *param.shape)
    flat_jacobian = rd.gram.flat_jacobian(jacobian, m, k)
    np.testing.assert_allclose(flat_jacobian, expected, rtol=1e-12, atol=1e-12)
    gram = rd.gram.gram_from_jacobian(jacobian)
    np.testing.assert_allclose(
      gram, expected.reshape(m * k, -1) @ expected.reshape(m * k, -1).T, rtol=1e-12, atol=1e-12
    )


def test_structured_fallback_leaves_use_the_per_example_jacobian():
  """The structured engine's fallback gradients are the per-example Jacobian of those leaves."""
  with jax.enable_x64(True):
    params, x = _fallback_params(), models.normal(4, (5, 3))
    forms = {
      path: form for path, form, _ in structured_gram.describe(_fallback_apply, params, x)["leaves"]
    }
    assert forms["['scale']"] == "fallback", forms
    factors = rd.gram.gram_factors(_fallback_apply, params, x, method="structured")
    jacobian = rd.gram.per_example_jacobian(_fallback_apply, params, x, num_outputs=2)
    np.testing.assert_allclose(factors.gradients[-1], jacobian["scale"], rtol=1e-12, atol=1e-12)
    models.assert_gram_equals_reference(_fallback_apply, params, x)


# ------------------------------------------------------------------ factors and cross blocks


@pytest.mark.parametrize("outputs", ["full", "per_output"])
@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_cross_gram_of_two_example_sets_is_that_block_of_k(method, outputs):
  with jax.enable_x64(True):
    params, x = _fallback_params(), models.normal(5, (5, 3))
    k = 2
    gram = np.asarray(
      rd.gram.gram_matrix(_fallback_apply, params, x, method=method, outputs=outputs)
    )
    factors = lambda x: rd.gram.gram_factors(
      _fallback_apply, params, x, method=method, outputs=outputs
    )
    every, rows = factors(x), factors(x[1:3])
    assert isinstance(every, rd.gram.GramFactors)
    assert every.reference.shape == (5, k, 0) and every.reference.dtype == jnp.float64
    np.testing.assert_allclose(
      rd.gram.cross_gram(every, every, outputs=outputs), gram, rtol=1e-12, atol=1e-12
    )
    block = np.asarray(rd.gram.cross_gram(rows, every, outputs=outputs))
    expected = gram[k : 3 * k] if outputs == "full" else gram[:, 1:3]
    assert block.shape == expected.shape
    np.testing.assert_allclose(block, expected, rtol=1e-12, atol=1e-12)


def test_jacobian_factors_hold_one_gradient_block_per_leaf():
  with jax.enable_x64(True):
    params, x = _fallback_params(), models.normal(6, (4, 3))
    jacobian = rd.gram.per_example_jacobian(_fallback_apply, params, x, num_outputs=2)
    factors = rd.gram.jacobian_factors(jacobian)
    assert factors.sources == () and factors.position_pairs == ()
    assert [g.shape for g in factors.gradients] == [
      (4, 2, leaf.size) for leaf in jax.tree_util.tree_leaves(params)
    ]
    assert factors.reference.shape == (4, 2, 0)


def test_bad_method_or_outputs_name_the_argument():
  with jax.enable_x64(True):
    params, x = _fallback_params(), models.normal(7, (3, 3))
    with pytest.raises(ValueError, match="method='dense' is not a valid option"):
      rd.gram.gram_matrix(_fallback_apply, params, x, method="dense")
    with pytest.raises(ValueError, match="outputs='diagonal' is not a valid option"):
      rd.gram.gram_factors(_fallback_apply, params, x, outputs="diagonal")
    factors = rd.gram.gram_factors(_fallback_apply, params, x)
    with pytest.raises(ValueError, match="outputs='both' is not a valid option"):
      rd.gram.cross_gram(factors, factors, outputs="both")


# ------------------------------------------------------------------ end to end


def _first_direction(tx, params, x, y):
  """The direction of one jitted `tx.update` from `tx.init(params)`, the batch as arguments."""
  step = jax.jit(lambda p, x, y: tx.update(None, tx.init(p), p, batch=(x, y))[0])
  return step(params, x, y)


@pytest.mark.parametrize(
  "outputs,loss", [("full", "mse"), ("per_output", "mse"), ("full", "softmax_cross_entropy")]
)
def test_regression_descent_same_update_with_both_engines(outputs, loss):
  with jax.enable_x64(True):
    params = models.small_cnn_init(3, channels=2)
    x = models.normal(4, (3, 28, 28, 1))
    y = jax.nn.one_hot(jnp.arange(3), 10, dtype=jnp.float64)
    updates = {}
    for gram in ("structured", "jacobian"):
      tx = rd.regression_descent(
        models.small_cnn_apply,
        learning_rate=0.5,
        damping=1e-2,
        outputs=outputs,
        loss=loss,
        gram=gram,
        system="dual",
      )
      updates[gram] = _first_direction(tx, params, x, y)
    flat = {g: np.asarray(ravel_pytree(u)[0]) for g, u in updates.items()}
    np.testing.assert_allclose(
      flat["structured"], flat["jacobian"], rtol=1e-9, atol=1e-12 * np.max(np.abs(flat["jacobian"]))
    )
    new = optax.apply_updates(params, updates["structured"])
    assert np.isfinite(np.asarray(ravel_pytree(new)[0])).all()
