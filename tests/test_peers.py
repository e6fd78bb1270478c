"""Peer baselines of the benchmarks (the `peers` extra): somax's exact Gauss-Newton.

Skipped without `somax` (`pip install -e ".[peers]"`); CI does not install the extra.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

pytest.importorskip("somax")

from benchmarks import models  # noqa: E402
from benchmarks import optimizers as opt  # noqa: E402
from benchmarks import runner  # noqa: E402


def _task(loss: str, m: int = 48, k: int = 3) -> runner.Task:
  """An MLP 4-8-k on m random inputs: smooth regression targets, or one-hot classes."""
  x = jax.random.normal(jax.random.PRNGKey(1), (m, 4))
  if loss == "mse":
    y = jnp.sin(x[:, :k]) + 0.5 * x[:, 1:2]
  else:
    y = jax.nn.one_hot(jnp.argmax(x[:, :k], -1), k)
  return runner.Task(
    name=f"tiny {loss}",
    model=models.mlp([4, 8, k], "tanh"),
    loss=loss,
    train_inputs=x,
    train_targets=y,
    eval_inputs=x,
    eval_targets=y,
    test_inputs=x,
    test_targets=y,
    classification=loss != "mse",
  )


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_somax_spec_lowers_the_loss_in_a_few_steps(loss):
  task = _task(loss)
  spec = opt.somax_spec(loss)
  assert spec.family == "somax" and spec.uses_step
  assert spec.label == f"somax egn_{'mse' if loss == 'mse' else 'ce'} λ=1"
  tx = spec.build(task)
  params = task.model.init(jax.random.PRNGKey(0))
  state = tx.init(params)
  step = runner._make_step(task, spec, tx, full_batch=True)
  indices = np.arange(task.train_inputs.shape[0], dtype=np.int32)
  evaluator = runner.Evaluator(task)
  before = evaluator.curve_loss(params)
  for _ in range(5):
    params, state = step(params, state, task.train_inputs, task.train_targets, indices)
  after = evaluator.curve_loss(params)
  assert np.isfinite(after) and after < 0.7 * before, (before, after)


def test_somax_egn_mse_on_flattened_outputs_is_the_dense_gauss_newton_step():
  """k = 3 outputs as m k scalar rows: θ − (JᵀJ/n + λI)⁻¹ Jᵀr/n, J the n × p Jacobian, n = m k."""
  task = _task("mse", m=12)
  lam = 0.1
  tx = opt.somax_spec("mse", damping=lam).build(task)
  params = task.model.init(jax.random.PRNGKey(0))
  new_params, _ = jax.jit(tx.step)(params, tx.init(params), task.train_inputs, task.train_targets)
  flat, unravel = ravel_pytree(params)
  f = lambda w: task.model.apply(unravel(w), task.train_inputs).reshape(-1)
  jac = jax.jacobian(f)(flat)
  r = f(flat) - task.train_targets.reshape(-1)
  n = r.shape[0]
  d = jnp.linalg.solve(jac.T @ jac / n + lam * jnp.eye(flat.size), jac.T @ r / n)
  np.testing.assert_allclose(ravel_pytree(new_params)[0], flat - d, atol=1e-5)


def test_train_run_records_somax_runs():
  task = _task("softmax_cross_entropy")
  spec = opt.somax_spec("softmax_cross_entropy", damping=10.0)
  record = runner.train_run(task, spec, 0, budget=5.0, batch_size=16, max_steps=4, progress=False)
  assert record["family"] == "somax" and record["steps"] == 4 and not record["diverged"]
  assert np.isfinite(record["final_loss"]) and record["final_loss"] < record["curve"]["loss"][0]
  assert record["hyperparams"] == {
    "method": "egn_ce",
    "damping": 10.0,
    "damping_policy": "const",
    "learning_rate": 1.0,
  }


def test_somax_variants_follow_the_extra(monkeypatch):
  assert [s.label for s in opt.somax_variants("mse")] == [
    "somax egn_mse λ=1",
    "somax egn_mse λ=0.1",
  ]
  assert [s.label for s in opt.somax_variants("softmax_cross_entropy", quick=True)] == [
    "somax egn_ce λ=1"
  ]
  monkeypatch.setattr(opt, "has_somax", lambda: False)
  assert opt.somax_variants("mse") == []
  with pytest.raises(ValueError, match="no somax EGN method"):
    opt.somax_spec("huber")
