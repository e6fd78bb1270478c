"""The structured Gram engine (rdescent/structured_gram.py, rdescent/_structured_trace.py).

K from the structured engine against a dense float64 J Jᵀ (`models.jacobian_reference`):
it must equal it for every model, and pick the cheap form for each parameter leaf.
"""

from __future__ import annotations

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rdescent as rd
from rdescent import structured_gram
from tests import models

OUTPUT_MODES = ("full", "per_output")


def _forms(apply_fn, params, x, outputs="full"):
  return {
    path: form
    for path, form, _ in structured_gram.describe(apply_fn, params, x, outputs=outputs)["leaves"]
  }


# ------------------------------------------------------------------ MLPs


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("sizes", [[3, 6, 5, 1], [3, 6, 5, 4]], ids=["k1", "k4"])
def test_mlp_structured_equals_dense_gram(activation, sizes):
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, sizes)
    x = models.normal(1, (5, sizes[0]))
    apply_fn = lambda p, x: models.mlp_apply(p, x, activation)
    models.assert_gram_equals_reference(apply_fn, params, x)


def test_mlp_uses_dense_and_bias_forms_only():
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, [3, 6, 5, 2])
    x = models.normal(1, (4, 3))
    assert set(_forms(models.mlp_apply, params, x).values()) == {"dense", "bias"}


def test_scalar_output_model_has_k_equal_one():
  with jax.enable_x64(True):
    params = models.numpy_mlp_init(0, [3, 4, 1])
    x = models.normal(1, (6, 3))
    apply_fn = lambda p, x: models.mlp_apply(p, x)[:, 0]
    models.assert_gram_equals_reference(apply_fn, params, x)


def test_no_m_k_p_array_for_dense_layers():
  """No intermediate of the structured engine reaches m·k·|W| for any weight W.

  The largest arrays it needs are the cotangents (m, k, width), the layer
  inputs (m, d_in) and K itself ((m k)²); all are far below m·k·|W|.
  """
  sizes, m = [64, 48, 32, 6], 5
  k = sizes[-1]
  params = models.numpy_mlp_init(0, sizes, jnp.float32)
  x = jnp.ones((m, sizes[0]))
  jaxpr = jax.make_jaxpr(lambda p, x: rd.gram_matrix(models.mlp_apply, p, x, method="structured"))(
    params, x
  )

  def largest(jaxpr):
    found = [int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars]
    found += [largest(sub) for sub in jax.extend.core.subjaxprs(jaxpr)]
    return max(found)

  smallest_weight = min(s * t for s, t in zip(sizes[:-1], sizes[1:]))
  needed = max(m * k * max(sizes[1:]), m * sizes[0], (m * k) ** 2)
  assert largest(jaxpr.jaxpr) <= needed < m * k * smallest_weight


# ------------------------------------------------------------------ CNN, residual, norm


def test_small_cnn_with_max_pool():
  with jax.enable_x64(True):
    params = models.small_cnn_init(0)
    x = models.normal(1, (3, 28, 28, 1))
    models.assert_gram_equals_reference(models.small_cnn_apply, params, x)
    for outputs in OUTPUT_MODES:
      forms = _forms(models.small_cnn_apply, params, x, outputs)
      assert forms["['dense']['kernel']"] == "dense"
      assert forms["['conv']['kernel']"] == "materialised"


def _conv_variants_apply(params, x):
  """Strided SAME conv, grouped conv, NCHW layout, bias broadcast over positions."""
  y = (
    jax.lax.conv_general_dilated(
      x, params["k1"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + params["b1"]
  )
  y = jnp.tanh(y)
  y = jax.lax.conv_general_dilated(
    jnp.transpose(y, (0, 3, 1, 2)),
    params["k2"],
    (1, 1),
    ((1, 0), (0, 1)),
    rhs_dilation=(1, 2),
    feature_group_count=2,
    dimension_numbers=("NCHW", "OIHW", "NCHW"),
  )
  return y.reshape(y.shape[0], -1) @ params["w"]


def test_convolution_variants():
  with jax.enable_x64(True):
    params = {
      "k1": models.normal(0, (3, 3, 2, 4)),
      "b1": models.normal(1, (4,)),
      "k2": models.normal(2, (6, 2, 2, 2)),
      "w": models.normal(3, (6 * 4 * 3, 3)) / 8,
    }
    x = models.normal(4, (3, 7, 7, 2))
    models.assert_gram_equals_reference(_conv_variants_apply, params, x)


def _conv(x, kernel, spec=("NHWC", "HWIO", "NHWC"), **kw):
  kw.setdefault("window_strides", (1,) * (kernel.ndim - 2))
  kw.setdefault("padding", "VALID")
  return jax.lax.conv_general_dilated(x, kernel, dimension_numbers=spec, **kw)


def _more_conv_variants_apply(params, x):
  """Input dilation with negative padding, several images per example, 1-D and 3-D convs."""
  m = x.shape[0]
  y = _conv(x, params["k1"], padding=((1, -1), (0, 2)), lhs_dilation=(2, 1))  # (m, 5, 7, 3)
  y = jnp.tanh(y + params["b1"])
  images = y.reshape(m * 5, 7, 3)  # 5 one-dimensional images per example
  z = _conv(images, params["k2"], ("NWC", "WIO", "NWC"), window_strides=(2,), rhs_dilation=(2,))
  z = jnp.tanh(z).reshape(m, 5, 3, 4)  # one 3-D image of 1 channel per example
  w = _conv(z[..., None], params["k3"], ("NDHWC", "DHWIO", "NDHWC"))  # (m, 4, 2, 3, 2)
  return w.reshape(m, -1) @ params["w"]


def _more_conv_params():
  return {
    "k1": models.normal(0, (3, 2, 2, 3)),
    "b1": models.normal(1, (3,)),
    "k2": models.normal(2, (2, 3, 4)),
    "k3": models.normal(3, (2, 2, 2, 1, 2)),
    "w": models.normal(4, (4 * 2 * 3 * 2, 3)) / 4,
  }


@pytest.mark.parametrize("patches", ["slices", "conv_patches"])
def test_more_convolution_variants(patches, monkeypatch):
  """Kernel gradients from patches: by strided slices, or lax.conv_general_dilated_patches."""
  if patches == "conv_patches":
    monkeypatch.setattr(structured_gram, "_PATCH_SLICES", 0)
  with jax.enable_x64(True):
    params, x = _more_conv_params(), models.normal(5, (3, 4, 6, 2))
    models.assert_gram_equals_reference(_more_conv_variants_apply, params, x)
    forms = _forms(_more_conv_variants_apply, params, x)
    assert forms["['k1']"] == forms["['k2']"] == forms["['k3']"] == "materialised"
  monkeypatch.undo()
  with jax.enable_x64(True):  # the variants of test_convolution_variants on the other path
    test_convolution_variants()


def _batch_groups_apply(params, x):
  """Two images per example, one per batch group (batch_group_count=2): (m, 2, 4, 4, 3).

  Batch group g is the g-th block of m images, so the images go group-major.
  """
  images = jnp.swapaxes(jnp.tanh(x), 0, 1).reshape(x.shape[0] * 2, 4, 4, 3)
  y = _conv(images, params["k"], batch_group_count=2)  # (m, 3, 3, 4)
  return y.reshape(x.shape[0], -1) @ params["w"]


def test_conv_with_batch_groups_uses_the_site_vjp():
  """batch_group_count > 1 is outside the patch form: its gradients come from the site's VJP."""
  with jax.enable_x64(True):
    params = {"k": models.normal(0, (2, 2, 3, 4)), "w": models.normal(1, (3 * 3 * 4, 2))}
    x = models.normal(2, (3, 2, 4, 4, 3))
    models.assert_gram_equals_reference(_batch_groups_apply, params, x)
    assert _forms(_batch_groups_apply, params, x)["['k']"] == "materialised"


def _conv_biases_apply(params, x):
  """A conv + bias over its features (fused), then one over rows of the same size (not fused)."""
  y = jnp.tanh(_conv(x, params["k1"], padding="SAME") + params["b1"])  # (m, 4, 4, 4)
  y = _conv(y, params["k2"], padding="SAME") + params["rows"][:, None, None]  # along H, not O
  return jnp.tanh(y).reshape(x.shape[0], -1) @ params["w"]


def test_conv_bias_gradients_share_the_kernel_einsum_only_when_broadcast_over_features():
  with jax.enable_x64(True):
    params = {
      "k1": models.normal(0, (3, 3, 2, 4)),
      "b1": models.normal(1, (4,)),
      "k2": models.normal(2, (3, 3, 4, 4)),
      "rows": models.normal(3, (4,)),
      "w": models.normal(4, (64, 2)) / 4,
    }
    x = models.normal(5, (3, 4, 4, 2))
    models.assert_gram_equals_reference(_conv_biases_apply, params, x)
    traced = structured_gram.trace_model(_conv_biases_apply, params, x)
    pairs = structured_gram._conv_biases(traced, structured_gram.plan(traced, 3, False))
    assert pairs == {1: 0}  # k1 -> b1 (leaves in key order: b1, k1, k2, rows, w); not k2 -> rows


def _conv_pairs_apply(params, x):
  """A grouped conv with two output positions and many input features per group."""
  y = _conv(x, params["k"], feature_group_count=2)  # (m, 1, 2, 6)
  return jnp.tanh(y).reshape(x.shape[0], -1) @ params["w"]


def test_conv_position_pair_form():
  """Few output positions, many patch features: the position-pair sum beats materialising."""
  with jax.enable_x64(True):
    params = {"k": models.normal(0, (3, 3, 2, 6)), "w": models.normal(1, (12, 2))}
    x = models.normal(2, (4, 3, 4, 4))
    models.assert_gram_equals_reference(_conv_pairs_apply, params, x)
    assert _forms(_conv_pairs_apply, params, x, "full")["['k']"] == "position_pair"


# ------------------------------------------------------------------ max-pool


def _pool_apply(window, strides, padding):
  """Conv, max-pool (lax.reduce_window) over tied values with different tangents, dense.

  Columns 2j and 2j + 1 of the pooled image hold the same numbers, from two
  kernels with equal values: every window that spans both has a tie whose
  two elements depend on different parameters, and one kernel also reaches
  the outputs directly, so K depends on which of them the derivative takes
  (the first in window order, as JAX's rule does).
  """

  if not isinstance(padding, str):
    padding = ((0, 0), *padding, (0, 0))

  def apply_fn(params, x):
    left, right = _conv(x, params["left"]), _conv(x, params["right"])
    h = jnp.stack([left, right], axis=3).reshape(*left.shape[:2], -1, left.shape[-1])
    h = jax.lax.reduce_window(
      jnp.tanh(h), -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), padding
    )
    direct = jnp.tanh(right).reshape(x.shape[0], -1) @ params["v"]  # tells the two kernels apart
    return h.reshape(h.shape[0], -1) @ params["w"][: h[0].size] + direct

  return apply_fn


@pytest.mark.parametrize(
  "window,strides,padding",
  [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 1), "SAME"), ((2, 3), (1, 2), ((1, 0), (0, 1)))],
  ids=["tiled", "overlapping", "padded"],
)
def test_max_pool_with_ties(window, strides, padding):
  with jax.enable_x64(True):
    kernel = models.normal(0, (2, 2, 1, 2))
    params = {
      "left": kernel,
      "right": kernel + 0.0,
      "w": models.normal(1, (200, 3)) / 8,
      "v": models.normal(3, (32, 3)) / 8,
    }
    x = models.normal(2, (3, 5, 5, 1))
    apply_fn = _pool_apply(window, strides, padding)
    models.assert_gram_equals_reference(apply_fn, params, x)


def _primitives(jaxpr):
  names = {e.primitive.name for e in jaxpr.eqns}
  for sub in jax.extend.core.subjaxprs(jaxpr):
    names |= _primitives(sub)
  return names


def _flax_pool_apply(params, x):
  h = jax.nn.relu(_conv(x, params["k"]) + params["b"])
  h = nn.max_pool(h, (3, 3), (2, 2), padding="SAME")  # lax.reduce_window max
  return h.reshape(h.shape[0], -1) @ params["w"]


def test_max_pool_cotangents_avoid_select_and_scatter():
  """The structured engine's k per-example VJPs through a max-pool are masks, not scatters."""
  with jax.enable_x64(True):
    params = {
      "k": models.normal(0, (3, 3, 1, 2)),
      "b": models.normal(1, (2,)),
      "w": models.normal(2, (2 * 5 * 5, 4)) / 8,
    }
    x = models.normal(3, (3, 11, 11, 1))
    models.assert_gram_equals_reference(_flax_pool_apply, params, x)
    gram = lambda method: (
      jax.make_jaxpr(lambda p, x: rd.gram_matrix(_flax_pool_apply, p, x, method=method))(
        params, x
      ).jaxpr
    )
    assert "select_and_scatter_add" in _primitives(gram("jacobian"))
    assert not {"select_and_scatter_add", "select_and_gather_add"} & _primitives(gram("structured"))


def _residual_apply(params, x):
  h = x @ params["w0"] + params["b0"]
  r = h + jnp.tanh(h @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
  return jax.nn.relu(r) @ params["w3"] + params["b3"]


def test_residual_block():
  with jax.enable_x64(True):
    keys = iter(range(10))
    params = {
      "w0": models.normal(next(keys), (3, 5)),
      "b0": models.normal(next(keys), (5,)),
      "w1": models.normal(next(keys), (5, 4)),
      "b1": models.normal(next(keys), (4,)),
      "w2": models.normal(next(keys), (4, 5)),
      "b2": models.normal(next(keys), (5,)),
      "w3": models.normal(next(keys), (5, 3)),
      "b3": models.normal(next(keys), (3,)),
    }
    x = models.normal(20, (4, 3))
    models.assert_gram_equals_reference(_residual_apply, params, x)
    assert "fallback" not in _forms(_residual_apply, params, x).values()


class _NormNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, param_dtype=jnp.float64)(x)
    x = nn.LayerNorm(param_dtype=jnp.float64)(nn.relu(x))
    return nn.Dense(3, param_dtype=jnp.float64)(x)


def test_layer_norm_scale_falls_back_and_stays_exact():
  with jax.enable_x64(True):
    model = _NormNet()
    x = models.normal(0, (5, 4))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    models.assert_gram_equals_reference(apply_fn, params, x)
    forms = _forms(apply_fn, params, x)
    assert forms["['LayerNorm_0']['scale']"] == "fallback"
    assert forms["['LayerNorm_0']['bias']"] == "bias"
    assert forms["['Dense_0']['kernel']"] == "dense"


# ------------------------------------------------------------------ Flax linen / NNX


class _LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), strides=2, padding="SAME", param_dtype=jnp.float64)(x)
    x = nn.gelu(x).reshape(x.shape[0], -1)
    return nn.Dense(3, param_dtype=jnp.float64)(nn.Dense(8, param_dtype=jnp.float64)(x))


def test_flax_linen_model():
  with jax.enable_x64(True):
    model = _LinenCNN()
    x = models.normal(0, (3, 6, 6, 2))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    models.assert_gram_equals_reference(apply_fn, params, x)


class _NNXNet(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 6, param_dtype=jnp.float64, rngs=rngs)
    self.norm = nnx.LayerNorm(6, param_dtype=jnp.float64, rngs=rngs)
    self.l2 = nnx.Linear(6, 2, param_dtype=jnp.float64, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.norm(jax.nn.sigmoid(self.l1(x))))


def test_flax_nnx_state():
  with jax.enable_x64(True):
    graphdef, state = nnx.split(_NNXNet(nnx.Rngs(0)))
    apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
    x = models.normal(1, (5, 4))
    models.assert_gram_equals_reference(apply_fn, state, x)
    assert "fallback" in _forms(apply_fn, state, x).values()  # the norm scale


# ------------------------------------------------------------------ unusual uses of parameters


def _sequence_apply(params, x):
  """Weights shared over positions: (m, T, d) @ W, then a per-head einsum with batch dims."""
  h = jnp.tanh(x @ params["w"] + params["b"])  # (m, T, h)
  heads = h.reshape(*h.shape[:2], 2, -1)  # (m, T, 2, h/2)
  y = jnp.einsum("mthd,hde->mhte", heads, params["per_head"])  # dot_general batch dims
  return y.reshape(y.shape[0], -1) @ params["out"]


def _sequence_params(positions, features, width):
  return {
    "w": models.normal(0, (features, width)),
    "b": models.normal(1, (width,)),
    "per_head": models.normal(2, (2, width // 2, 3)),
    "out": models.normal(3, (positions * 6, 2)) / 4,
  }


# The position-pair sum costs ~T² (n + k² o) per example pair, materialised
# gradients ~k² n o (+ k T n o / m): pairs win for T² < n, lose for T² ≫ n.
@pytest.mark.parametrize("positions,width", [(2, 8), (12, 2)], ids=["pairs", "materialised"])
def test_weights_shared_over_positions(positions, width):
  with jax.enable_x64(True):
    params = _sequence_params(positions, 6, width)
    x = models.normal(4, (3, positions, 6))
    models.assert_gram_equals_reference(_sequence_apply, params, x)
    for outputs in OUTPUT_MODES:
      form = _forms(_sequence_apply, params, x, outputs)["['w']"]
      assert form == ("position_pair" if positions == 2 else "materialised"), outputs


def _unusual_apply(params, x):
  """Tied and transposed weights, parameter on the left, a scaled weight, an inner jit."""
  layer = jax.jit(lambda x, w, b: jnp.tanh(x @ w + b))
  h = layer(x, params["w"], params["b"])  # inside a jit call: inlined
  h = jnp.tanh(h @ params["w"].T[:, :3].T.T)  # slice of a view: fallback
  h = (params["left"] @ h.T).T  # parameter as the left operand
  h = h @ (2.0 * params["scaled"])  # scaled: fallback
  tied = h @ params["tied"] + jnp.tanh(h) @ params["tied"]  # used twice: materialised
  return tied + params["direct"]  # bias on the output


def test_unusual_parameter_uses():
  with jax.enable_x64(True):
    params = {
      "w": models.normal(0, (4, 4)),
      "b": models.normal(1, (4,)),
      "left": models.normal(2, (5, 3)),
      "scaled": models.normal(3, (5, 5)),
      "tied": models.normal(4, (5, 5)),
      "direct": models.normal(5, (5,)),
    }
    x = models.normal(6, (4, 4))
    models.assert_gram_equals_reference(_unusual_apply, params, x)
    forms = _forms(_unusual_apply, params, x)
    assert forms == {
      "['b']": "bias",
      "['direct']": "bias",
      "['left']": "dense",
      "['scaled']": "fallback",
      "['tied']": "materialised",
      "['w']": "fallback",
    }


def test_sliced_or_returned_parameters_fall_back():
  with jax.enable_x64(True):
    params = {"w": models.normal(0, (3, 2)), "offset": models.normal(1, (4, 2))}
    apply_fn = lambda p, x: (x @ p["w"]) * p["offset"][None, 0] + p["offset"][:1] ** 2
    x = models.normal(2, (4, 3))
    models.assert_gram_equals_reference(apply_fn, params, x, "full")
    assert _forms(apply_fn, params, x)["['offset']"] == "fallback"
    constant = lambda p, x: jnp.broadcast_to(p["c"], (x.shape[0], 2))
    params = {"c": models.normal(3, (2,))}
    assert _forms(constant, params, x) == {"['c']": "fallback"}
    models.assert_gram_equals_reference(constant, params, x, "per_output")


def test_structured_under_jit_with_chunks_in_float32():
  params = models.numpy_mlp_init(0, [3, 8, 3], jnp.float32)
  x = models.normal(1, (6, 3), jnp.float32)
  run = jax.jit(
    lambda p, x: rd.gram_matrix(models.mlp_apply, p, x, method="structured", chunk_size=4)
  )
  gram = run(params, x)
  expected = jax.jit(lambda p, x: rd.gram_matrix(models.mlp_apply, p, x, method="jacobian"))(
    params, x
  )
  assert gram.dtype == jnp.float32
  np.testing.assert_allclose(gram, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ properties


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
@hypothesis.given(
  widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
  num_inputs=st.integers(1, 4),
  num_outputs=st.integers(1, 3),
  num_examples=st.integers(1, 5),
)
def test_property_random_mlps(widths, num_inputs, num_outputs, num_examples):
  with jax.enable_x64(True):
    sizes = [num_inputs, *widths, num_outputs]
    params = models.numpy_mlp_init(sum(sizes), sizes)
    x = models.normal(num_examples, (num_examples, num_inputs))
    models.assert_gram_equals_reference(models.mlp_apply, params, x)


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(
  positions=st.integers(1, 4),
  features=st.integers(1, 9),
  half_width=st.integers(1, 3),
  num_examples=st.integers(1, 4),
)
def test_property_weights_shared_over_positions(positions, features, half_width, num_examples):
  """Whichever form the cost model picks for the shared weights, K equals J Jᵀ."""
  with jax.enable_x64(True):
    params = _sequence_params(positions, features, 2 * half_width)
    x = models.normal(num_examples, (num_examples, positions, features))
    models.assert_gram_equals_reference(_sequence_apply, params, x)
