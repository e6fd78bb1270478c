"""Scaled metrics (`rdescent.metric`): every form against a dense float64 reference.

With D² the metric's normalised statistic, one step must be
d = (Jᵀ H J + λ D²)⁻¹ Jᵀ g (H = I, g = r for squared error): the RD direction
of J̃ = J D⁻¹ mapped back by D⁻¹.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent import metric as metric_lib

LAMBDA = 0.3
FLOOR = 1e-8


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _mlp(params, x):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]


def _problem(k=2, m=5):
  keys = jax.random.split(jax.random.key(3), 5)
  params = {
    "w1": 2.0 * jax.random.normal(keys[0], (3, 4), jnp.float64),
    "b1": 0.1 * jax.random.normal(keys[1], (4,), jnp.float64),
    "w2": 0.05 * jax.random.normal(keys[2], (4, k), jnp.float64),
    "b2": jnp.zeros((k,), jnp.float64),
  }
  x = jax.random.normal(keys[3], (m, 3), jnp.float64)
  y = jax.random.normal(keys[4], (m, k), jnp.float64)
  return params, x, y


def _jacobian(params, x):
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.jacfwd(lambda v: _mlp(unravel(v), x).reshape(-1))(flat))


def _leaf_sizes(params):
  return [leaf.size for leaf in jax.tree_util.tree_leaves(params)]


def _normalised(column_stat):
  return np.maximum(column_stat, FLOOR * column_stat.mean())


def _marquardt_d2(rows):
  """D² from the rows whose column norms the metric takes (J, or Lᵀ J)."""
  return _normalised(np.sum(rows**2, axis=0))


def _layerwise_d2(params, x, y, seed=0, count=0, loss_factor=None):
  """D² per parameter from the first step's probe v = Jᵀ L z."""
  m, k = y.shape
  q = k if loss_factor is None else loss_factor.shape[-1]
  key = jax.random.fold_in(jax.random.key(seed), count)
  z = np.asarray(jax.random.rademacher(key, (m, q), jnp.float64))
  cot = z if loss_factor is None else np.einsum("ikq,iq->ik", loss_factor, z)
  v = _jacobian(params, x).T @ cot.reshape(-1)
  per_leaf, start = [], 0
  for size in _leaf_sizes(params):
    per_leaf.append(np.full(size, np.sum(v[start : start + size] ** 2) / size))
    start += size
  return _normalised(np.concatenate(per_leaf))


def _step(params, x, y, **options):
  tx = rd.regression_descent(_mlp, 1.0, damping=LAMBDA, **options)
  state = tx.init(params)
  updates, (state, _) = tx.update(None, state, params, batch=(x, y))
  assert int(state.status) == 0, rd.STATUS_MESSAGES[int(state.status)]
  return np.asarray(ravel_pytree(updates)[0]), state


def _reference(jacobian, residual, d2):
  matrix = jacobian.T @ jacobian + LAMBDA * np.diag(d2)
  return -np.linalg.solve(matrix, jacobian.T @ residual)


CG = rd.solvers.cg(rank=0, maxiter=200, tol=1e-13, products="jacobian")
CG_NETWORK = rd.solvers.cg(rank=0, maxiter=200, tol=1e-13, products="network")


@pytest.mark.parametrize(
  "options",
  [
    {"system": "dual"},
    {"system": "primal"},
    {"system": "dual", "gram": "jacobian"},
    {"solver": CG},
    {"solver": CG, "system": "primal"},
    {"examples": "coupled"},
  ],
  ids=["dual", "primal", "dual-jacobian-engine", "cg", "cg-primal", "coupled"],
)
def test_marquardt_step_matches_dense_reference(options):
  params, x, y = _problem()
  jacobian = _jacobian(params, x)
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  expected = _reference(jacobian, residual, _marquardt_d2(jacobian))
  got, state = _step(params, x, y, metric=rd.metric.marquardt(), **options)
  np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
  column_norms = ravel_pytree(state.metric_state.moment)[0]
  np.testing.assert_allclose(column_norms, np.sum(jacobian**2, axis=0), rtol=1e-10)


@pytest.mark.parametrize(
  "options",
  [
    {"system": "dual", "gram": "structured"},
    {"system": "dual", "gram": "jacobian"},
    {"system": "primal"},
    {"solver": CG_NETWORK},
    {"solver": CG},
    {"examples": "coupled"},
  ],
  ids=["dual-structured", "dual-jacobian-engine", "primal", "cg-network", "cg-jacobian", "coupled"],
)
def test_layerwise_step_matches_dense_reference(options):
  params, x, y = _problem()
  jacobian = _jacobian(params, x)
  residual = np.asarray(_mlp(params, x) - y).reshape(-1)
  expected = _reference(jacobian, residual, _layerwise_d2(params, x, y))
  got, _ = _step(params, x, y, metric=rd.metric.layerwise(decay=0.9), **options)
  np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["marquardt", "layerwise"])
def test_per_output_step_matches_dense_reference(name):
  params, x, y = _problem(k=3)
  jacobian = _jacobian(params, x)
  d2 = _marquardt_d2(jacobian) if name == "marquardt" else _layerwise_d2(params, x, y)
  residual = np.asarray(_mlp(params, x) - y)
  k = y.shape[1]
  rows = jacobian.reshape(y.shape[0], k, -1)
  expected = np.mean(
    [_reference(rows[:, c], residual[:, c], d2) for c in range(k)],
    axis=0,
  )
  got, _ = _step(params, x, y, metric=name, outputs="per_output")
  np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["marquardt", "layerwise"])
def test_cross_entropy_metric_is_that_of_the_gauss_newton_rows(name):
  params, x, _ = _problem(k=3)
  labels = jnp.array([0, 2, 1, 1, 0])
  logits = np.asarray(_mlp(params, x))
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  hessian = np.stack([np.diag(p) - np.outer(p, p) for p in probs])
  gradient = probs - np.eye(3)[np.asarray(labels)]
  jacobian = _jacobian(params, x)
  m, k = logits.shape
  blocks = jacobian.reshape(m, k, -1)
  ggn = np.einsum("ikp,ikl,ilq->pq", blocks, hessian, blocks)
  factors = rd.losses.get("softmax_cross_entropy").factors(
    jnp.asarray(logits), jnp.asarray(np.eye(3)[np.asarray(labels)])
  )
  loss_factor = np.asarray(factors.factor)
  if name == "marquardt":
    d2 = _normalised(np.diag(ggn))
  else:
    d2 = _layerwise_d2(params, x, logits, loss_factor=loss_factor)
  expected = -np.linalg.solve(ggn + LAMBDA * np.diag(d2), np.einsum("ikp,ik->p", blocks, gradient))
  got, _ = _step(params, x, labels, metric=name, loss="softmax_cross_entropy")
  np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)


def test_running_statistics_over_steps():
  """marquardt keeps the max of the column norms; layerwise a bias-corrected average."""
  params, x, y = _problem()
  x2 = 3.0 * x[::-1]
  decay = 0.5
  for name, metric in [
    ("marquardt", rd.metric.marquardt()),
    ("layerwise", rd.metric.layerwise(decay=decay)),
  ]:
    tx = rd.regression_descent(_mlp, 0.0, damping=LAMBDA, metric=metric)  # η = 0: θ stays
    state = tx.init(params)
    for batch_x in (x, x2):
      _, state = tx.update(None, state, params, batch=(batch_x, y))
    moment = ravel_pytree(state[0].metric_state.moment)[0]
    if name == "marquardt":
      expected = np.maximum(
        np.sum(_jacobian(params, x) ** 2, 0), np.sum(_jacobian(params, x2) ** 2, 0)
      )
      np.testing.assert_allclose(moment, expected, rtol=1e-10)
    else:
      stats = []
      for count, batch_x in enumerate((x, x2)):
        key = jax.random.fold_in(jax.random.key(0), count)
        z = jax.random.rademacher(key, y.shape, jnp.float64)
        v = _jacobian(params, batch_x).T @ np.asarray(z).reshape(-1)
        stats.append(
          [
            np.sum(piece**2) / piece.size
            for piece in np.split(v, np.cumsum(_leaf_sizes(params))[:-1])
          ]
        )
      expected = decay * (1 - decay) * np.asarray(stats[0]) + (1 - decay) * np.asarray(stats[1])
      np.testing.assert_allclose(moment, expected, rtol=1e-10)
      assert int(state[0].metric_state.count) == 2


def test_marquardt_makes_lm_scale_invariant():
  """Rescaling one input feature by 1e3 leaves the Marquardt-scaled LM path unchanged in f."""
  params, x, y = _problem()
  scale = jnp.array([1e3, 1.0, 1.0])
  scaled_params = {**params, "w1": params["w1"] / scale[:, None]}
  losses = []
  for p, inputs in [(params, x), (scaled_params, x * scale)]:
    tx = rd.regression_descent(
      _mlp,
      1.0,
      damping=rd.damping.levenberg_marquardt(initial=1e-2),
      metric=rd.metric.marquardt(floor=1e-30),
    )
    state = tx.init(p)
    for _ in range(5):
      updates, state = tx.update(None, state, p, batch=(inputs, y))
      p = optax.apply_updates(p, updates)
    losses.append(float(state[0].loss))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_gram_with_scales_is_that_of_the_scaled_jacobian():
  params, x, _ = _problem()
  scales = {
    "w1": jnp.asarray(2.0),
    "b1": jnp.asarray(0.5),
    "w2": jnp.asarray(3.0),
    "b2": jnp.asarray(1.5),
  }
  w = np.concatenate(
    [np.full(leaf.size, float(scales[name])) for name, leaf in sorted(params.items())]
  )
  jacobian = _jacobian(params, x) * w
  for method in ("structured", "jacobian"):
    got = rd.gram.gram_matrix(_mlp, params, x, method=method, scales=scales)
    np.testing.assert_allclose(got, jacobian @ jacobian.T, rtol=1e-10)


def test_structured_engine_refuses_per_parameter_scales():
  params, x, _ = _problem()
  scales = jax.tree_util.tree_map(jnp.ones_like, params)
  with pytest.raises(ValueError, match="one scale per leaf"):
    rd.gram.gram_matrix(_mlp, params, x, method="structured", scales=scales)
  # "auto" takes the jacobian engine for them
  got = rd.gram.gram_matrix(_mlp, params, x, scales=scales)
  np.testing.assert_allclose(got, rd.gram.gram_matrix(_mlp, params, x), rtol=1e-10)


@pytest.mark.parametrize(
  ("metric", "match"),
  [
    ("diagonal", "metric must be None"),
    (3, "metric must be None"),
  ],
)
def test_bad_metric_option(metric, match):
  with pytest.raises(ValueError, match=match):
    rd.regression_descent(_mlp, 1.0, metric=metric)


@pytest.mark.parametrize(
  ("make", "match"),
  [
    (lambda: rd.metric.layerwise(decay=1.0), r"decay must be a float in \[0, 1\)"),
    (lambda: rd.metric.layerwise(decay=-0.1), "decay"),
    (lambda: rd.metric.layerwise(floor=0.0), r"floor must be a float in \(0, 1\]"),
    (lambda: rd.metric.marquardt(floor=float("nan")), "floor"),
    (lambda: rd.metric.layerwise(seed=1.5), "seed must be an int"),
  ],
)
def test_bad_metric_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_marquardt_refuses_network_products():
  with pytest.raises(ValueError, match="products='network' never forms"):
    rd.regression_descent(_mlp, 1.0, metric="marquardt", solver=CG_NETWORK)


def test_non_finite_scale_skips_the_step():
  """J = ∞ at θ = 0 for f = x √θ: finite loss, no scale: status 12, nothing applied."""
  apply_fn = lambda p, x: x * jnp.sqrt(p)
  params, x, y = jnp.zeros(1), jnp.ones((4, 1)), jnp.ones((4, 1))
  for metric in ("marquardt", "layerwise"):
    tx = rd.scale_by_regression_descent(apply_fn, damping=1.0, metric=metric)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(None, state, params, batch=(x, y))
    assert int(new_state.status) == rd.STATUS_BAD_METRIC
    assert not bool(new_state.accepted)
    np.testing.assert_array_equal(updates, 0.0)
    for leaf in jax.tree_util.tree_leaves(new_state.metric_state):
      assert bool(jnp.all(jnp.isfinite(leaf)))
    np.testing.assert_array_equal(new_state.metric_state.moment, state.metric_state.moment)


def test_scales_are_the_statistic_floored():
  params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
  state = metric_lib.MetricState(
    {"a": jnp.array([4.0, 0.0, 2.0]), "b": jnp.asarray(2.0)}, jnp.asarray(1, jnp.int32)
  )
  scales, healthy = metric_lib.scales(rd.metric.marquardt(floor=0.01), state, params)
  assert bool(healthy)
  d2 = np.array([4.0, 0.02, 2.0, 2.0])  # the statistic, at least 0.01 × its mean (2)
  np.testing.assert_allclose(ravel_pytree(scales)[0], 1 / np.sqrt(d2), rtol=1e-12)
