"""rdescent/gram.py: the engines behind one `gram_matrix`, their factors and cross blocks.

Every K is compared with a dense float64 J Jᵀ (`models.jacobian_reference`);
the structured engine itself is tested in test_structured_gram.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent import structured_gram
from tests import models


def test_auto_handles_models_with_and_without_sites():
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, [3, 4, 2])
    x = models.normal(1, (4, 3))
    models.assert_gram_equals_reference(models.mlp_apply, params, x, "full", method="auto")
    traced = structured_gram.trace_model(models.mlp_apply, params, x)
    assert len(traced.covered) == 4
    elementwise = {"s": models.normal(2, (3,))}
    apply_fn = lambda p, x: jnp.sin(x * p["s"])
    assert structured_gram.trace_model(apply_fn, elementwise, x).covered == ()
    assert rd.gram.choose_method(apply_fn, elementwise, x) == "jacobian"
    models.assert_gram_equals_reference(apply_fn, elementwise, x, "full", method="auto")
    models.assert_gram_equals_reference(apply_fn, elementwise, x, "per_output", method="structured")


# ------------------------------------------------------------------ choosing the engine


class _TransformerBlock(nn.Module):
  """Embedding, LayerNorm, 4-head self-attention, LayerNorm, MLP, mean over positions, head.

  Vocabulary 64, width 32, 8 outputs: 10,856 parameters, the issue's block.
  """

  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    kw = dict(param_dtype=self.dtype, dtype=self.dtype)
    x = nn.Embed(64, 32, **kw)(tokens)
    y = nn.LayerNorm(**kw)(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=4, **kw)(y, y)
    h = nn.Dense(64, **kw)(nn.LayerNorm(**kw)(x))
    x = x + nn.Dense(32, **kw)(nn.gelu(h))
    return nn.Dense(8, **kw)(x.mean(axis=1))


def _transformer(num_examples, dtype=jnp.float32):
  model = _TransformerBlock(dtype)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (num_examples, 16)), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
  return (lambda p, x: model.apply({"params": p}, x)), params, tokens


def test_auto_picks_structured_for_a_wide_mlp_and_jacobian_for_a_transformer_block():
  """By the engines' flop estimates (not by whether a layer is recognised).

  The wide MLP's structured estimate is hundreds of times below the jacobian
  engine's; in the transformer block every weight is shared over the 16
  positions (materialised) and the embedding and norm scales fall back, so
  both engines do the same 2 (m k)² p assembly and the estimates are within
  a few per cent, short of the factor `STRUCTURED_ADVANTAGE` that the
  structured engine must win by.
  """
  wide = models.numpy_mlp_init(0, [784, 256, 256, 10], jnp.float32)
  x = jnp.ones((128, 784), jnp.float32)
  flops = rd.gram.engine_flops(models.mlp_apply, wide, x)
  assert flops["jacobian"] > 100 * flops["structured"]
  assert rd.gram.choose_method(models.mlp_apply, wide, x) == "structured"
  apply_fn, params, tokens = _transformer(32)
  assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)) == 10_856
  for outputs in ("full", "per_output"):
    flops = rd.gram.engine_flops(apply_fn, params, tokens, outputs=outputs)
    assert 0.5 < flops["structured"] / flops["jacobian"] < 2, (outputs, flops)
    assert rd.gram.choose_method(apply_fn, params, tokens, outputs=outputs) == "jacobian"
  forms = {form for _, form, _ in structured_gram.describe(apply_fn, params, tokens)["leaves"]}
  assert forms <= {"materialised", "fallback", "dense", "bias"}


def test_transformer_block_both_engines_equal_the_dense_reference():
  with jax.enable_x64(True):
    apply_fn, params, tokens = _transformer(6, jnp.float64)
    for method in ("structured", "jacobian", "auto"):
      models.assert_gram_equals_reference(apply_fn, params, tokens, method=method)


def _compiled_flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_engine_flop_estimates_agree_with_xla_cost_analysis(model):
  """Each engine's estimate is within a factor of two of XLA's count for its compiled program."""
  if model == "mlp":
    apply_fn, params = models.mlp_apply, models.numpy_mlp_init(0, [64, 48, 48, 6], jnp.float32)
    x = jnp.ones((16, 64), jnp.float32)
  elif model == "cnn":
    with jax.enable_x64(True):
      params = models.small_cnn_init(0, channels=4)
    apply_fn = models.small_cnn_apply
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jnp.ones((8, 28, 28, 1), jnp.float32)
  else:
    apply_fn, params, x = _transformer(8)
  estimates = rd.gram.engine_flops(apply_fn, params, x)
  for method in ("structured", "jacobian"):
    counted = _compiled_flops(
      lambda p, x, method=method: rd.gram_matrix(apply_fn, p, x, method=method), params, x
    )
    assert 0.5 < estimates[method] / counted < 2, (method, estimates[method], counted)


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
    with pytest.raises(ValueError, match="outputs='diagonal' is not a valid option"):
      rd.gram.engine_flops(_fallback_apply, params, x, outputs="diagonal")


def test_cross_gram_refuses_factors_of_different_engines():
  """Factors of two engines (auto may pick either for a batch) would mix silently in zip."""
  with jax.enable_x64(True):
    params, x = _fallback_params(), models.normal(8, (4, 3))
    structured = rd.gram.gram_factors(_fallback_apply, params, x, method="structured")
    jacobian = rd.gram.gram_factors(_fallback_apply, params, x[:2], method="jacobian")
    with pytest.raises(ValueError, match="same model, engine and outputs"):
      rd.gram.cross_gram(jacobian, structured)


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
