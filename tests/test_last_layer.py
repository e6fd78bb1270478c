"""The closed-form last layer against dense float64 references."""

from __future__ import annotations

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import last_layer
from tests import models


def features_fn(backbone, x):
  """A small tanh MLP whose last layer is the feature layer."""
  return jnp.tanh(models.mlp_apply(backbone, x))


def _params(key, sizes, num_outputs, dtype=jnp.float64):
  kb, kh = jax.random.split(key)
  head = {
    "kernel": 0.1 * jax.random.normal(kh, (sizes[-1], num_outputs), dtype),
    "bias": jnp.zeros((num_outputs,), dtype),
  }
  return {"backbone": models.mlp_init(kb, sizes, dtype), "head": head}


def _data(key, n, d, k, dtype=jnp.float64):
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (n, d), dtype)
  y = jnp.sin(x @ jax.random.normal(ky, (d, k), dtype)) + 0.5
  return x, y


def _augment(features):
  features = np.asarray(features, np.float64)
  return np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)


def _penalty(size, ridge):
  return ridge * np.diag(np.r_[np.ones(size - 1), 0.0])


def _head(params):
  return np.concatenate(
    [np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])[None]], axis=0
  )


def _stream(tx, params, x, y, batch_size):
  """Applies `tx` to consecutive batches; returns the final params and state."""
  step = jax.jit(lambda p, s, xb, yb: tx.update(None, s, p, batch=(xb, yb)))
  state = tx.init(params)
  for start in range(0, x.shape[0], batch_size):
    updates, state = step(
      params, state, x[start : start + batch_size], y[start : start + batch_size]
    )
    params = optax.apply_updates(params, updates)
  return params, state


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
  batch_size=st.integers(1, 6),
  num_batches=st.integers(1, 4),
  width=st.integers(1, 5),
  num_outputs=st.integers(1, 3),
  ridge=st.sampled_from([1e-3, 0.5, 3.0]),
)
def test_frozen_backbone_streaming_equals_ridge_on_all_data(
  batch_size, num_batches, width, num_outputs, ridge
):
  with jax.enable_x64(True):
    params = _params(jax.random.PRNGKey(0), [2, 4, width], num_outputs)
    x, y = _data(jax.random.PRNGKey(1), batch_size * num_batches, 2, num_outputs)
    tx = rd.closed_form_last_layer(
      features_fn, backbone=optax.set_to_zero(), ridge=ridge, decay=1.0
    )
    final, state = _stream(tx, params, x, y, batch_size)
    design = _augment(features_fn(params["backbone"], x))
    expected = np.linalg.solve(
      design.T @ design + _penalty(width + 1, ridge), design.T @ np.asarray(y)
    )
    np.testing.assert_allclose(_head(final), expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_equal(final["backbone"], params["backbone"])
    assert int(state.status) == 0 and int(state.num_failed) == 0
    np.testing.assert_allclose(state.gram, design.T @ design, rtol=1e-12)


def test_bias_is_not_penalised():
  with jax.enable_x64(True):
    params = _params(jax.random.PRNGKey(2), [2, 3], 1)
    x, y = _data(jax.random.PRNGKey(3), 12, 2, 1)
    y = y + 100.0  # a large offset: only an unpenalised bias absorbs it
    tx = rd.closed_form_last_layer(features_fn, backbone=optax.set_to_zero(), ridge=1e6, decay=1.0)
    final, _ = _stream(tx, params, x, y, 4)
    np.testing.assert_allclose(final["head"]["bias"], [np.mean(y)], rtol=1e-4)
    assert np.max(np.abs(final["head"]["kernel"])) < 1e-3


def test_decay_current_weight_and_proximal_match_their_formula():
  with jax.enable_x64(True):
    params = _params(jax.random.PRNGKey(4), [3, 5], 2)
    x, y = _data(jax.random.PRNGKey(5), 12, 3, 2)
    decay, weight, proximal, ridge = 0.7, 3.0, 0.4, 0.2
    tx = rd.closed_form_last_layer(
      features_fn,
      backbone=optax.set_to_zero(),
      ridge=ridge,
      decay=decay,
      current_weight=weight,
      proximal=proximal,
    )
    step = jax.jit(lambda p, s, xb, yb: tx.update(None, s, p, batch=(xb, yb)))
    updates, state = step(params, tx.init(params), x[:6], y[:6])
    first = optax.apply_updates(params, updates)
    updates, state = step(first, state, x[6:], y[6:])
    final = optax.apply_updates(first, updates)

    a1, a2 = (_augment(features_fn(params["backbone"], xb)) for xb in (x[:6], x[6:]))
    y1, y2 = np.asarray(y[:6]), np.asarray(y[6:])
    system = lambda gram: gram + _penalty(6, ridge) + proximal * np.eye(6)
    h1 = np.linalg.solve(system(weight * a1.T @ a1), weight * a1.T @ y1 + proximal * _head(params))
    h2 = np.linalg.solve(
      system(decay * a1.T @ a1 + weight * a2.T @ a2),
      decay * a1.T @ y1 + weight * a2.T @ y2 + proximal * h1,
    )
    np.testing.assert_allclose(_head(first), h1, rtol=1e-10)
    np.testing.assert_allclose(_head(final), h2, rtol=1e-10)
    # Stored statistics are unweighted.
    np.testing.assert_allclose(state.gram, decay * a1.T @ a1 + a2.T @ a2, rtol=1e-12)
    np.testing.assert_allclose(state.cross, decay * a1.T @ y1 + a2.T @ y2, rtol=1e-12)
    np.testing.assert_allclose(state.loss, 0.5 * np.sum((a2 @ h2 - y2) ** 2), rtol=1e-10)


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_backbone_gradient_is_the_total_derivative_of_the_profiled_objective(weight):
  """Envelope theorem: d/dθ min_H Q(H, θ) = ∂Q/∂θ at H*, checked through the solve."""
  with jax.enable_x64(True):
    params = _params(jax.random.PRNGKey(6), [3, 4, 5], 2)
    x, y = _data(jax.random.PRNGKey(7), 14, 3, 2)
    decay, ridge, proximal = 0.8, 0.3, 0.2
    tx = rd.closed_form_last_layer(
      features_fn,
      backbone=optax.identity(),
      ridge=ridge,
      decay=decay,
      current_weight=weight,
      proximal=proximal,
    )
    step = jax.jit(lambda p, s, xb, yb: tx.update(None, s, p, batch=(xb, yb)))
    updates, state = step(params, tx.init(params), x[:6], y[:6])  # earlier statistics
    params = optax.apply_updates(params, updates)
    updates, _ = step(params, state, x[6:], y[6:])

    penalty = jnp.asarray(_penalty(6, ridge) + proximal * np.eye(6))
    previous = jnp.asarray(_head(params))

    def profiled(backbone):
      design = jnp.concatenate([features_fn(backbone, x[6:]), jnp.ones((8, 1))], axis=1)
      gram = decay * state.gram + weight * design.T @ design
      cross = decay * state.cross + weight * design.T @ y[6:]
      head = jnp.linalg.solve(gram + penalty, cross + proximal * previous)  # differentiated
      quadratic = 0.5 * jnp.trace(head.T @ (gram + penalty) @ head)
      return quadratic - jnp.trace(head.T @ (cross + proximal * previous))

    expected = jax.jit(jax.grad(profiled))(params["backbone"])
    np.testing.assert_allclose(
      models.flat(updates["backbone"]), models.flat(expected) / weight, rtol=1e-9, atol=1e-12
    )


def test_rd_backbone_is_the_ridge_direction_of_the_model_with_the_new_head():
  with jax.enable_x64(True):
    params = _params(jax.random.PRNGKey(8), [2, 3, 4], 2)
    x, y = _data(jax.random.PRNGKey(9), 7, 2, 2)
    damping, learning_rate = 0.3, 0.5
    tx = rd.closed_form_last_layer(
      features_fn,
      backbone=last_layer.rd_backbone(features_fn, learning_rate, damping=damping),
      ridge=0.1,
      decay=0.9,
    )
    updates, state = models.first_update(tx, params, (x, y))
    head = optax.apply_updates(params, updates)["head"]
    apply_fn = lambda backbone, inputs: (
      features_fn(backbone, inputs) @ head["kernel"] + head["bias"]
    )
    jacobian = models.dense_jacobian(apply_fn, params["backbone"], x)
    residual = np.asarray(apply_fn(params["backbone"], x) - y).reshape(-1)
    expected = -learning_rate * models.dense_ridge_direction(jacobian, residual, damping)
    np.testing.assert_allclose(models.flat(updates["backbone"]), expected, rtol=1e-9, atol=1e-12)
    rd_state = state.backbone_state[0]
    assert int(rd_state.status) == 0
    np.testing.assert_allclose(rd_state.loss, state.loss, rtol=1e-10)


def test_trainable_backbone_beats_joint_gradient_training():
  """1D curve fit, same Adam on the backbone: closed-form head vs head trained by Adam too."""
  key = jax.random.PRNGKey(10)
  x = jnp.linspace(-2.0, 2.0, 256)[:, None]
  y = jnp.sin(3.0 * x) + 0.3 * x**2
  params = _params(key, [1, 16, 16], 1, jnp.float32)
  apply_fn = lambda p, inputs: (
    features_fn(p["backbone"], inputs) @ p["head"]["kernel"] + p["head"]["bias"]
  )
  full_loss = jax.jit(lambda p: jnp.mean(jnp.square(apply_fn(p, x) - y)))
  order = np.random.default_rng(0).permutation(256 * 4) % 256
  batches = order.reshape(-1, 32)[:24]

  closed = rd.closed_form_last_layer(features_fn, backbone=optax.adam(1e-2), ridge=1e-3, decay=0.9)
  adam = optax.adam(1e-2)
  closed_step = jax.jit(lambda p, s, i: closed.update(None, s, p, batch=(x[i], y[i])))

  @jax.jit
  def adam_step(p, s, i):
    grads = jax.grad(lambda q: 0.5 * jnp.sum(jnp.square(apply_fn(q, x[i]) - y[i])))(p)
    return adam.update(grads, s, p)

  results = {}
  for name, tx, step in (("closed", closed, closed_step), ("adam", adam, adam_step)):
    p, s = params, tx.init(params)
    for index in batches:
      updates, s = step(p, s, index)
      p = optax.apply_updates(p, updates)
    results[name] = float(full_loss(p))
  assert results["closed"] < 0.5 * results["adam"], results


def test_integer_labels_equal_one_hot_targets():
  params = _params(jax.random.PRNGKey(11), [3, 6], 4, jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(12), (10, 3))
  labels = jnp.arange(10) % 4
  tx = rd.closed_form_last_layer(features_fn, backbone=optax.sgd(0.1), num_classes=4)
  step = jax.jit(lambda s, targets: tx.update(None, s, params, batch=(x, targets)))
  state = tx.init(params)
  from_labels, _ = step(state, labels)
  from_one_hot, _ = step(state, jax.nn.one_hot(labels, 4))
  chex.assert_trees_all_close(from_labels, from_one_hot, rtol=1e-6)


def test_jit_traces_once_and_nonfinite_features_skip_the_step():
  params = _params(jax.random.PRNGKey(13), [2, 3], 1, jnp.float32)
  x, y = _data(jax.random.PRNGKey(14), 8, 2, 1, jnp.float32)
  tx = rd.closed_form_last_layer(features_fn, backbone=optax.adam(1e-2))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, xb):
    return tx.update(None, s, p, batch=(xb, y))

  state = tx.init(params)
  updates, state = step(params, state, x)
  params = optax.apply_updates(params, updates)
  updates, bad = step(params, state, x.at[0, 0].set(jnp.nan))
  assert int(bad.status) == last_layer.STATUS_NONFINITE and int(bad.num_failed) == 1
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(updates))
  chex.assert_trees_all_equal(
    (bad.gram, bad.cross, bad.backbone_state, bad.loss),
    (state.gram, state.cross, state.backbone_state, state.loss),
  )
  assert last_layer.STATUS_MESSAGES[int(bad.status)].startswith("non-finite")


def test_clear_errors():
  params = _params(jax.random.PRNGKey(15), [2, 3], 2, jnp.float32)
  x, y = _data(jax.random.PRNGKey(16), 5, 2, 2, jnp.float32)
  tx = rd.closed_form_last_layer(features_fn, backbone=optax.adam(1e-2))
  state = tx.init(params)
  cases = [
    (dict(params=None, batch=(x, y)), "needs the current parameters"),
    (dict(params=params, batch=None), "needs the batch"),
    (dict(params={"backbone": params["backbone"]}, batch=(x, y)), "'head'"),
    (
      dict(params={**params, "head": {"kernel": params["head"]["kernel"]}}, batch=(x, y)),
      "params['head']",
    ),
    (
      dict(
        params={**params, "head": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(3)}}, batch=(x, y)
      ),
      "kernel (h, k) and bias (k,); got kernel (3, 2) and bias (3,)",
    ),
    (
      dict(
        params={**params, "head": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}}, batch=(x, y)
      ),
      "(m, h) = (5, 4)",
    ),
    (dict(params=params, batch=(x, y[:, :1])), "(m, k) = (5, 2)"),
    (dict(params=params, batch=(x, jnp.zeros((5, 2), jnp.int32))), "shape (m,) = (5,)"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError) as error:
      tx.update(None, state, kwargs["params"], batch=kwargs["batch"])
    assert message in str(error.value), (message, str(error.value))
  with pytest.raises(ValueError, match="num_classes=3"):
    rd.closed_form_last_layer(features_fn, backbone=optax.sgd(0.1), num_classes=3).update(
      None, state, params, batch=(x, jnp.zeros(5, jnp.int32))
    )
  for bad in (dict(ridge=-1.0), dict(decay=1.5), dict(current_weight=0.0), dict(proximal=-1.0)):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
      rd.closed_form_last_layer(features_fn, backbone=optax.sgd(0.1), **bad)
  fixed = last_layer.rd_backbone(features_fn, damping=1e-2)
  with pytest.raises(ValueError, match="head="):
    fixed.update(None, fixed.init(params["backbone"]), params["backbone"], batch=(x, y))
