"""Tests of `rdescent.problem`: the four system forms and their `Trial`s, against dense float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent.problem import output_sketch
from tests import models

FORMS = [("full", "dual"), ("full", "primal"), ("per_output", "dual"), ("per_output", "primal")]


def _transform_direction(apply_fn, params, x, y, **kwargs):
  tx = rd.scale_by_regression_descent(apply_fn, **kwargs)
  return models.first_update(tx, params, (x, y))


def _softmax_terms(outputs, labels):
  """g = ∂ℓ/∂z and H = ∂²ℓ/∂z² per example for summed softmax cross-entropy."""
  probs = np.asarray(jax.nn.softmax(outputs, axis=1), np.float64)
  onehot = np.eye(outputs.shape[1])[labels]
  hessian = np.einsum("ik,kl->ikl", probs, np.eye(outputs.shape[1])) - np.einsum(
    "ik,il->ikl", probs, probs
  )
  return probs - onehot, hessian


CASES = [(outputs, system, "mse") for outputs, system in FORMS] + [
  ("full", "dual", "softmax_cross_entropy"),
  ("full", "primal", "softmax_cross_entropy"),
  ("sketched", "dual", "mse"),
  ("sketched", "primal", "softmax_cross_entropy"),
]


def _sketch_options(outputs):
  if outputs != "sketched":
    return {}
  return {"sketch_size": 2, "sketch_key": jax.random.key(4)}


@pytest.mark.parametrize("outputs,system,loss_name", CASES)
def test_trials_carry_the_dense_output_change_prediction_and_loss(outputs, system, loss_name):
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(1), [3, 5, 3], m=7)
    loss = rd.losses.get(loss_name)
    targets = jnp.arange(7) % 3 if loss_name != "mse" else y
    eta, damping = 0.7, 0.05

    @jax.jit
    def trials(params, x, targets):
      problem = rd.linearize(
        models.mlp_apply,
        params,
        x,
        targets,
        loss=loss,
        outputs=outputs,
        system=system,
        **_sketch_options(outputs),
      )
      trial = problem.solve(damping, eta)
      return (
        trial,
        problem.scale(trial, 0.5),
        problem.null_trial(damping, eta),
        problem.gradient_norm(),
        problem.loss,
      )

    trial, half, null, gradient_norm, loss_value = trials(params, x, targets)
    assert trial.direction is not None and bool(trial.solve_ok) and bool(trial.healthy)
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    outputs_value = np.asarray(models.mlp_apply(params, x), np.float64)
    d = models.flat(trial.direction)
    change = (jacobian @ d).reshape(7, 3)
    np.testing.assert_allclose(trial.output_change, change, rtol=1e-9, atol=1e-12)
    if loss_name == "mse":
      residual = (outputs_value - np.asarray(y)).reshape(-1)
      predicted = 0.5 * residual @ residual - 0.5 * np.sum(
        (residual - eta * change.reshape(-1)) ** 2
      )
      gradient = jacobian.T @ residual
    else:
      g, hessian = _softmax_terms(outputs_value, np.arange(7) % 3)
      dz = -eta * change
      predicted = -(np.sum(g * dz) + 0.5 * np.einsum("ik,ikl,il->", dz, hessian, dz))
      gradient = jacobian.T @ g.reshape(-1)
    np.testing.assert_allclose(trial.predicted_reduction, predicted, rtol=1e-9)
    np.testing.assert_allclose(gradient_norm, np.linalg.norm(gradient), rtol=1e-9)
    stepped = jax.tree_util.tree_map(lambda p, v: p - eta * v, params, trial.direction)
    outputs_after = models.mlp_apply(stepped, x)
    np.testing.assert_allclose(
      trial.loss_after,
      loss.value(outputs_after, loss.prepare_targets(targets, outputs_after)),
      rtol=1e-12,
    )
    # scale: s d, s J d, and the prediction and loss of the shorter step.
    np.testing.assert_allclose(models.flat(half.direction), 0.5 * d, rtol=1e-12)
    np.testing.assert_allclose(half.output_change, 0.5 * change, rtol=1e-9, atol=1e-12)
    assert float(half.predicted_reduction) < float(trial.predicted_reduction) or predicted <= 0
    # the null trial: no step, no predicted decrease, the loss where it is.
    assert np.all(models.flat(null.direction) == 0) and float(null.predicted_reduction) == 0
    np.testing.assert_allclose(null.loss_after, loss_value)


@pytest.mark.parametrize("outputs,system", FORMS)
def test_every_form_solves_its_dense_system(outputs, system):
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(2), [3, 4, 2], m=5)
    problem = jax.jit(
      lambda p: rd.linearize(
        models.mlp_apply, p, x, y, loss=rd.losses.get("mse"), outputs=outputs, system=system
      ).solve(0.1, 1.0)
    )(params)
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    if outputs == "full":
      expected = models.dense_ridge_direction(jacobian, residual, 0.1)
    else:
      expected = models.dense_per_output_direction(jacobian, residual, 0.1, 2)
    np.testing.assert_allclose(models.flat(problem.direction), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("system", ["dual", "primal"])
def test_sketched_form_solves_the_dense_sketched_regression(system, loss_name):
  # d = argmin_δ ‖Sᵀ(u + Lᵀ J δ)‖² + λ‖δ‖² per example, F = L S: d = Jᵀ F (Fᵀ K F + λI)⁻¹ Sᵀu.
  with jax.enable_x64(True):
    m, k, size, damping = 6, 4, 3, 0.05
    params, x, y = models.mlp_problem(jax.random.PRNGKey(5), [3, 5, k], m=m)
    loss = rd.losses.get(loss_name)
    targets = y if loss_name == "mse" else jnp.arange(m) % k
    key = jax.random.key(7)
    trial = jax.jit(
      lambda p: rd.linearize(
        models.mlp_apply,
        p,
        x,
        targets,
        loss=loss,
        outputs="sketched",
        system=system,
        sketch_size=size,
        sketch_key=key,
      ).solve(damping, 1.0)
    )(params)
    outputs = models.mlp_apply(params, x)
    factors = loss.factors(outputs, loss.prepare_targets(targets, outputs))
    q = factors.rhs.shape[1]
    sketch = np.asarray(output_sketch(key, q, size, jnp.float64))
    factor = np.broadcast_to(np.eye(k), (m, k, q)) if factors.factor is None else factors.factor
    big_f = np.zeros((m * k, m * size))
    for i in range(m):
      big_f[i * k : (i + 1) * k, i * size : (i + 1) * size] = np.asarray(factor[i]) @ sketch
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    lifted = big_f.T @ jacobian
    rhs = (np.asarray(factors.rhs) @ sketch).reshape(-1)
    expected = lifted.T @ np.linalg.solve(lifted @ lifted.T + damping * np.eye(m * size), rhs)
    np.testing.assert_allclose(models.flat(trial.direction), expected, rtol=1e-8, atol=1e-12)


def test_sketch_of_full_size_is_the_full_form_and_sizes_are_checked():
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(6), [3, 5, 4], m=5)
    full, _ = _transform_direction(models.mlp_apply, params, x, y, damping=0.1)
    sketched, state = _transform_direction(
      models.mlp_apply, params, x, y, damping=0.1, outputs="sketched", sketch_size=4
    )
    np.testing.assert_allclose(models.flat(sketched), models.flat(full), rtol=1e-8)
    assert rd.STATUS_MESSAGES[int(state.status)] == "ok"
    # Unbiased sketches: the mean direction of many sketches at large λ is the full one's.
    sketch_keys = jax.random.split(jax.random.key(0), 400)

    def direction(key):
      problem = rd.linearize(
        models.mlp_apply,
        params,
        x,
        y,
        loss=rd.losses.get("mse"),
        outputs="sketched",
        sketch_size=1,
        sketch_key=key,
      )
      return ravel_pytree(problem.solve(1e6, 1.0).direction)[0]

    mean = np.mean(np.asarray(jax.jit(jax.vmap(direction))(sketch_keys)), axis=0)
    exact = models.flat(
      rd.linearize(models.mlp_apply, params, x, y, loss=rd.losses.get("mse"))
      .solve(1e6, 1.0)
      .direction
    )
    assert np.linalg.norm(mean - exact) < 0.2 * np.linalg.norm(exact)
    with pytest.raises(ValueError, match="sketch_size"):
      _transform_direction(models.mlp_apply, params, x, y, outputs="sketched", sketch_size=5)
  with pytest.raises(ValueError, match="sketch_size"):
    rd.scale_by_regression_descent(models.mlp_apply, outputs="sketched")
  with pytest.raises(ValueError, match="sketch_size"):
    rd.scale_by_regression_descent(models.mlp_apply, sketch_size=2)
  with pytest.raises(ValueError, match="sketch_size"):
    rd.scale_by_regression_descent(models.mlp_apply, outputs="sketched", sketch_size=0)


def test_primal_and_dual_agree_and_auto_picks_the_smaller_system():
  with jax.enable_x64(True):
    params, x, y = models.mlp_problem(jax.random.PRNGKey(3), [2, 3, 2], m=20)  # p = 17 < m k = 40
    for outputs in ("full", "per_output"):
      dual, _ = _transform_direction(
        models.mlp_apply, params, x, y, damping=0.1, outputs=outputs, system="dual"
      )
      primal, _ = _transform_direction(
        models.mlp_apply, params, x, y, damping=0.1, outputs=outputs, system="primal"
      )
      np.testing.assert_allclose(models.flat(dual), models.flat(primal), rtol=1e-9)
    problem = rd.linearize(
      models.mlp_apply,
      params,
      x,
      y,
      loss=rd.losses.get("mse"),
      outputs="full",
      gram="auto",
      system="auto",
      chunk_size=None,
    )
    assert problem.system == "primal" and problem.matrix.shape == (17, 17)
    problem = rd.linearize(
      models.mlp_apply,
      params,
      x[:4],
      y[:4],
      loss=rd.losses.get("mse"),
      outputs="full",
      gram="auto",
      system="auto",
      chunk_size=None,
    )
    assert problem.system == "dual" and problem.matrix.shape == (8, 8)
