"""Tests of SPRING momentum (`rd.damping.spring`, `LinearizedProblem.shifted`), dense float64."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import rdescent as rd
from rdescent import transform as transform_lib
from tests import models

FORMS = [("full", "dual"), ("full", "primal"), ("per_output", "dual"), ("per_output", "primal")]
SIZES = [3, 5, 3]  # k = 3 outputs, p = 38
M = 7
MU, DAMPING, ETA = 0.7, 0.05, 0.8


def _problem(seed=1):
  return models.mlp_problem(jax.random.PRNGKey(seed), SIZES, m=M)


def _dense_step(params, x, y, prior, outputs):
  """μ d₀ + the dense ridge direction of the shifted residual r − μ J d₀ (float64)."""
  jacobian = models.dense_jacobian(models.mlp_apply, params, x)
  residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
  shifted = residual - MU * jacobian @ prior
  if outputs == "per_output":
    solved = models.dense_per_output_direction(jacobian, shifted, DAMPING, SIZES[-1])
  else:
    solved = models.dense_ridge_direction(jacobian, shifted, DAMPING)
  return MU * prior + solved


@pytest.mark.parametrize("outputs,system", FORMS)
def test_two_steps_are_the_dense_spring_formula(outputs, system):
  with jax.enable_x64(True):
    params, x, y = _problem()
    tx = rd.scale_by_regression_descent(
      models.mlp_apply,
      damping=rd.damping.spring(rd.damping.constant(DAMPING), momentum=MU),
      outputs=outputs,
      system=system,
      step_size=ETA,
    )
    update = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
    state = tx.init(params)
    prior = np.zeros(models.flat(params).size)
    for _ in range(2):
      direction, state = update(params, state)
      assert int(state.status) == transform_lib.STATUS_OK
      expected = _dense_step(params, x, y, prior, outputs)
      got = models.flat(direction)
      np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
      # The memory is the direction just applied.
      np.testing.assert_array_equal(models.flat(state.damping_state.previous), got)
      params = jax.tree_util.tree_map(lambda p, d: p - ETA * d, params, direction)
      prior = got
    assert np.linalg.norm(prior) > 0


def _softmax_terms(outputs, labels):
  """g = ∂ℓ/∂z and H = ∂²ℓ/∂z² per example for summed softmax cross-entropy."""
  probs = np.asarray(jax.nn.softmax(outputs, axis=1), np.float64)
  onehot = np.eye(outputs.shape[1])[labels]
  hessian = np.einsum("ik,kl->ikl", probs, np.eye(outputs.shape[1])) - np.einsum(
    "ik,il->ikl", probs, probs
  )
  return probs - onehot, hessian


@pytest.mark.parametrize("system", ["dual", "primal"])
def test_shifted_trial_with_loss_factors_is_the_dense_formula(system):
  """Cross-entropy: d = μ d₀ + (JᵀHJ + λI)⁻¹ Jᵀ(g − μ H J d₀), its J d, prediction and loss."""
  with jax.enable_x64(True):
    params, x, _ = _problem()
    labels = jnp.arange(M) % SIZES[-1]
    loss = rd.losses.get("softmax_cross_entropy")
    flat, unravel = ravel_pytree(params)
    prior = np.random.default_rng(0).standard_normal(flat.size) / 10

    @jax.jit
    def trial(params, prior):
      problem = rd.linearize(models.mlp_apply, params, x, labels, loss=loss, system=system)
      return problem.shifted(unravel(prior), MU).solve(DAMPING, ETA)

    got = trial(params, jnp.asarray(prior))
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    outputs = models.mlp_apply(params, x)
    g, h = _softmax_terms(outputs, np.asarray(labels))
    hessian = np.zeros((jacobian.shape[0],) * 2)
    k = SIZES[-1]
    for i in range(M):
      hessian[i * k : (i + 1) * k, i * k : (i + 1) * k] = h[i]
    gauss_newton = jacobian.T @ hessian @ jacobian
    rhs = jacobian.T @ g.reshape(-1) - MU * gauss_newton @ prior
    expected = MU * prior + np.linalg.solve(gauss_newton + DAMPING * np.eye(flat.size), rhs)
    np.testing.assert_allclose(models.flat(got.direction), expected, rtol=1e-8, atol=1e-11)
    change = jacobian @ expected
    np.testing.assert_allclose(np.ravel(got.output_change), change, rtol=1e-8, atol=1e-11)
    w = -ETA * change
    predicted = -(g.reshape(-1) @ w + 0.5 * w @ hessian @ w)
    np.testing.assert_allclose(float(got.predicted_reduction), predicted, rtol=1e-8)
    stepped = unravel(flat - ETA * expected)
    outputs_after = models.mlp_apply(stepped, x)
    onehot = loss.prepare_targets(labels, outputs_after)
    np.testing.assert_allclose(
      float(got.loss_after), float(loss.value(outputs_after, onehot)), rtol=1e-9
    )


@pytest.mark.parametrize("outputs,system", FORMS)
def test_spring_direction_is_the_argmin_pulled_towards_the_prior(outputs, system):
  """d = argmin ‖J d − r‖² + λ‖d − μ d₀‖²: (JᵀJ + λI) d = Jᵀ r + λ μ d₀ (per output: the mean)."""
  with jax.enable_x64(True):
    params, x, y = _problem(seed=2)
    flat, unravel = ravel_pytree(params)
    prior = np.random.default_rng(1).standard_normal(flat.size)

    @jax.jit
    def direction(params, prior):
      problem = rd.linearize(
        models.mlp_apply,
        params,
        x,
        y,
        loss=rd.losses.get("mse"),
        outputs=outputs,
        system=system,
      )
      return problem.shifted(unravel(prior), MU).solve(DAMPING, 1.0).direction

    got = models.flat(direction(params, jnp.asarray(prior)))
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    eye = np.eye(flat.size)
    k = SIZES[-1]
    blocks = [slice(c, None, k) for c in range(k)] if outputs == "per_output" else [slice(None)]
    minimisers = [
      np.linalg.solve(
        jacobian[rows].T @ jacobian[rows] + DAMPING * eye,
        jacobian[rows].T @ residual[rows] + DAMPING * MU * prior,
      )
      for rows in blocks
    ]
    expected = np.mean(minimisers, axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11)

    # ... and it minimises the objective: no random perturbation lowers it.
    def objective(d):
      return sum(
        np.sum((jacobian[rows] @ d - residual[rows]) ** 2) + DAMPING * np.sum((d - MU * prior) ** 2)
        for rows in blocks
      )

    if outputs == "full":
      rng = np.random.default_rng(3)
      for _ in range(5):
        assert objective(got) <= objective(got + 1e-3 * rng.standard_normal(got.size))


def _train(tx, params, x, y, steps, nan_at=None):
  step = jax.jit(lambda p, s, x: tx.update(None, s, p, batch=(x, y)))
  state = tx.init(params)
  updates = []
  for i in range(steps):
    batch_x = x.at[0, 0].set(jnp.nan) if i == nan_at else x
    update, state = step(params, state, batch_x)
    params = optax.apply_updates(params, update)
    updates.append(models.flat(update))
  return params, state, updates


@pytest.mark.parametrize("outputs", ["full", "per_output"])
def test_zero_momentum_is_plain_rd_exactly(outputs):
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=jnp.float32)
  plain = rd.regression_descent(models.mlp_apply, 0.9, damping=1e-2, outputs=outputs)
  zero = rd.regression_descent(
    models.mlp_apply, 0.9, damping=rd.damping.spring(1e-2, momentum=0.0), outputs=outputs
  )
  _, _, expected = _train(plain, params, x, y, 3)
  _, state, got = _train(zero, params, x, y, 3)
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)
  assert isinstance(state[0].damping_state, rd.damping.SpringState)
  # The shorthand at μ = 0 does not wrap: the state is the plain one.
  shorthand = rd.regression_descent(models.mlp_apply, damping=1e-2, momentum=0.0)
  assert shorthand.init(params)[0].damping_state == ()


def test_a_zero_weight_view_solves_the_plain_system():
  with jax.enable_x64(True):
    params, x, y = _problem()

    @jax.jit
    def trials(params):
      problem = rd.linearize(models.mlp_apply, params, x, y, loss=rd.losses.get("mse"))
      prior = jax.tree_util.tree_map(jnp.ones_like, params)
      return problem.solve(DAMPING, ETA), problem.shifted(prior, 0.0).solve(DAMPING, ETA)

    plain, view = trials(params)
    for a, b in zip(jax.tree_util.tree_leaves(view), jax.tree_util.tree_leaves(plain)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_momentum_shorthand_is_the_wrapper_inside_the_cap():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=jnp.float32)
  shorthand = rd.regression_descent(models.mlp_apply, damping=1e-2, momentum=0.5)
  wrapped = rd.regression_descent(models.mlp_apply, damping=rd.damping.spring(1e-2, 0.5))
  _, _, expected = _train(wrapped, params, x, y, 3)
  _, state, got = _train(shorthand, params, x, y, 3)
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a, b)
  capped = rd.regression_descent(
    models.mlp_apply, damping=1e-2, momentum=0.5, max_logit_change=jnp.pi
  )
  cap_state = capped.init(params)[0].damping_state
  assert isinstance(cap_state, rd.damping.CapLogitChangeState)
  assert isinstance(cap_state.inner, rd.damping.SpringState)


def test_levenberg_marquardt_inside_judges_the_full_step():
  """LM judges d = μ d₀ + (solved part), not the solved part alone.

  A memory d₀ in the null space of J is invisible to the batch's linear model
  (it predicts no change) and is kept at every λ (as λ grows the step tends to
  μ d₀, not to 0), yet it moves the nonlinear loss: with a large one every
  trial is worse than the model says, so LM grows λ and finally refuses the
  step, and the memory is reset. A memory along the plain direction is taken.
  """
  with jax.enable_x64(True):
    params, x, y = _problem()
    flat, unravel = ravel_pytree(params)
    jacobian = models.dense_jacobian(models.mlp_apply, params, x)
    null_direction = np.linalg.svd(jacobian)[2][jacobian.shape[0]]  # J v = 0, ‖v‖ = 1
    lm = rd.damping.levenberg_marquardt(initial=1e-3)
    controller = rd.damping.spring(lm, momentum=MU)

    @jax.jit
    def run(params, prior):
      problem = rd.linearize(models.mlp_apply, params, x, y, loss=rd.losses.get("mse"))
      state = controller.init(params)._replace(previous=unravel(prior))
      plain = lm.step(problem, lm.init(params), 0, 1.0)
      return problem.loss, controller.step(problem, state, 0, 1.0), plain

    loss, bad, plain = run(params, jnp.asarray(10.0 * null_direction))
    assert bool(plain.accepted)  # plain LM takes a step on this batch
    assert not bool(bad.accepted)  # the full SPRING step with that memory is refused
    assert float(bad.state.inner.damping) > 1e3  # after growing λ
    assert not np.any(models.flat(bad.direction))
    assert not np.any(models.flat(bad.state.previous))  # memory reset

    prior = models.flat(plain.direction)
    loss, good, _ = run(params, jnp.asarray(prior))
    assert bool(good.accepted)
    trial = good.trial
    d = models.flat(good.direction)
    # The accepted trial is the full step: its loss is the loss at θ − d ...
    assert float(trial.loss_after) < float(loss)
    np.testing.assert_allclose(
      float(trial.loss_after),
      0.5 * float(jnp.sum((models.mlp_apply(unravel(flat - d), x) - y) ** 2)),
      rtol=1e-10,
    )
    # ... with d the dense SPRING direction at the λ LM chose.
    residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
    expected = MU * prior + models.dense_ridge_direction(
      jacobian, residual - MU * jacobian @ prior, float(trial.damping)
    )
    np.testing.assert_allclose(d, expected, rtol=1e-8, atol=1e-11)
    np.testing.assert_array_equal(models.flat(good.state.previous), d)


def test_memory_is_reset_after_a_rejected_and_after_a_failed_step():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=jnp.float32)
  tx = rd.regression_descent(models.mlp_apply, damping=1e-2, momentum=0.9)
  # A failed step (NaN batch) after a good one: nothing applied, memory zero and finite.
  _, state, updates = _train(tx, params, x, y, 2, nan_at=1)
  rd_state = state[0]
  assert int(rd_state.status) == transform_lib.STATUS_NONFINITE_LOSS
  assert not np.any(updates[1])
  previous = models.flat(rd_state.damping_state.previous)
  assert np.all(np.isfinite(previous)) and not np.any(previous)
  # A rejected step: backtracking inside finds no admissible length (max_steps=1
  # with an Armijo constant no step can meet), so the step is refused.
  strict = rd.damping.backtracking(1e-2, max_steps=1, armijo=1e6)
  tx = rd.regression_descent(models.mlp_apply, damping=rd.damping.spring(strict, 0.9))
  _, state, updates = _train(tx, params, x, y, 1)
  assert int(state[0].status) == transform_lib.STATUS_REJECTED
  assert not np.any(models.flat(state[0].damping_state.previous))
  # ... while an accepted step is remembered.
  tx = rd.regression_descent(models.mlp_apply, damping=rd.damping.spring(1e-2, 0.9))
  _, state, updates = _train(tx, params, x, y, 1)
  np.testing.assert_array_equal(models.flat(state[0].damping_state.previous), -updates[0])


def test_next_batch_ratio_undo_restores_the_params_and_resets_the_memory():
  params, x, y = models.mlp_problem(jax.random.PRNGKey(0), SIZES, m=M, dtype=jnp.float32)
  controller = rd.damping.spring(rd.damping.next_batch_ratio(), 0.9)
  assert controller.undoes_steps
  with pytest.raises(ValueError, match="next_batch_ratio"):
    rd.regression_descent(models.mlp_apply, damping=controller, max_logit_change=1.0)
  tx = rd.regression_descent(models.mlp_apply, 0.5, damping=controller)
  step = jax.jit(lambda p, s, y: tx.update(None, s, p, batch=(x, y)))
  state = tx.init(params)
  update, state = step(params, state, y)
  assert np.any(models.flat(state[0].damping_state.previous))
  moved = optax.apply_updates(params, update)
  # A batch whose loss is far larger: the previous step is undone.
  update, state = step(moved, state, y + 100.0)
  assert int(state[0].status) == transform_lib.STATUS_REJECTED
  np.testing.assert_allclose(
    models.flat(optax.apply_updates(moved, update)), models.flat(params), atol=1e-6
  )
  assert not np.any(models.flat(state[0].damping_state.previous))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", [0.5]])
def test_momentum_outside_the_unit_interval_is_refused(bad):
  with pytest.raises(ValueError, match="momentum"):
    rd.damping.spring(1e-3, momentum=bad)
  with pytest.raises(ValueError, match="momentum"):
    rd.regression_descent(models.mlp_apply, momentum=bad)
  with pytest.raises(ValueError, match="momentum"):
    rd.scale_by_regression_descent(models.mlp_apply, momentum=bad)


def test_momentum_study_quick_writes_json_table_and_plot(tmp_path):
  """`python -m benchmarks run momentum --quick` (a smoke test; the study is not in `run all`)."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHONPATH=str(repo))
  command = [sys.executable, "-m", "benchmarks", "run", "momentum", "--quick", "--no-progress"]
  done = subprocess.run(
    [*command, "--out", str(tmp_path)],
    cwd=repo,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((tmp_path / "momentum.json").read_text())
  assert result["study"] == "momentum" and result["kind"] == "momentum"
  labels = {row["label"] for row in result["rows"]}
  assert any("SPRING" in label for label in labels) and any("adam" in label for label in labels)
  for row in result["rows"]:
    assert row["steps"] == result["config"]["checkpoints"][-1]
    assert all(np.isfinite(v) for v in row["loss"].values())
  assert (tmp_path / "momentum.png").stat().st_size > 0
  assert "eval MSE @" in done.stdout
