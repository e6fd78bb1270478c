"""The peers of the `fit_1d` study (`benchmarks.peers`, the `peers` extra).

Skipped without optimistix, jaxopt, somax or scipy (`pip install -e ".[peers]"`).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

for _name in ("optimistix", "jaxopt", "somax", "scipy"):
  pytest.importorskip(_name)

from benchmarks import full_batch_fit  # noqa: E402
from benchmarks import peers  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import runner  # noqa: E402


def test_residual_vector_is_the_runner_mse():
  task = full_batch_fit.fit_1d_task(16, 4)
  params = task.model.init(jax.random.PRNGKey(0))
  residual, theta = peers.residual_vector(task, params)
  expected = runner.mean_loss(
    "mse", task.model.apply(params, task.train_inputs), task.train_targets
  )
  np.testing.assert_allclose(peers.mse(residual, theta), float(expected), rtol=1e-6)
  assert "number of residuals is less" in peers.scipy_lm_refusal(residual, theta)


def test_summarize_medians_best_within_budget_and_time_to_target():
  points = [
    {"max_steps": 10, "seed": 0, "seconds": 0.1, "steps": 10, "mse": 1e-3},
    {"max_steps": 10, "seed": 1, "seconds": 0.2, "steps": 10, "mse": 1e-4},
    {"max_steps": 100, "seed": 0, "seconds": 1.0, "steps": 100, "mse": 1e-10},
    {"max_steps": 100, "seed": 1, "seconds": 9.0, "steps": 100, "mse": 1e-8},
  ]
  summary = peers.summarize({"points": points}, budget=6.0, target=1e-9)
  assert [r["max_steps"] for r in summary["rows"]] == [10, 100]
  assert summary["rows"][1]["seconds"] == 5.0
  # seed 0: best 1e-10 (1 s), reached at 1 s; seed 1: best within 6 s is 1e-4, never reached.
  assert summary["best_mse_within_budget"] == pytest.approx((1e-10 + 1e-4) / 2)
  assert summary["time_to_target"] is None and summary["reached"] == 1


def test_fit_1d_quick_races_the_peers_and_writes_json(tmp_path):
  options = runner.StudyOptions(quick=True, progress=False, command="test")
  result = full_batch_fit.run_fit_1d(options)
  saved = json.loads(runner.save(result, tmp_path).read_text())
  assert {run["family"] for run in saved["runs"]} == {"rd", "adam", "lbfgs", "somax"}
  assert saved["config"]["peer_target_loss"] == 1e-9
  record = saved["peers"]
  assert all(record["available"].values())
  labels = {r["label"] for r in record["whole_solves"]}
  assert labels == {"optimistix LM", "jaxopt LM (cg)", "jaxopt LM (cholesky)", "scipy trf"}
  for solve in record["whole_solves"]:
    assert solve["points"]
    for point in solve["points"]:
      assert point["seconds"] > 0 and point["steps"] > 0 and np.isfinite(point["mse"])
      assert point["max_steps"] in peers.QUICK_MAX_STEPS
  assert record["scipy_lm"]["refused"] and "residuals" in record["scipy_lm"]["message"]
  table = report.markdown_table(saved)
  assert "Peers that ran: optimistix LM, jaxopt LM (cg), jaxopt LM (cholesky), scipy trf" in table
  assert "time to 1e-09 s (reached)" in table and "refused" in table and "Target:" in table
  assert report.plot_study(saved, tmp_path / "fit_1d.png").stat().st_size > 0


def test_demo_specs_race_no_peers():
  task_specs = [full_batch_fit.fit_1d_optimizers(True)[0]]
  options = runner.StudyOptions(quick=True, progress=False, budget=0.05)
  result = full_batch_fit.run_fit_1d(options, specs=task_specs)
  assert "peers" not in result
  assert "No peers raced" in full_batch_fit.fit_1d_table(result)


def test_refine_bisects_the_max_steps_that_first_reaches_the_target():
  """A fake whole-solve peer whose final MSE is 10^(−max_steps/10): 1e-9 from 90 steps on."""

  def prepare(residual, theta0, max_steps):
    def solve(theta):
      return theta * 10.0 ** (-max_steps / 20), max_steps, "max_steps"

    return solve

  peer = peers.Peer("fake", "fake", {}, prepare)
  residual = lambda theta: theta
  starts = [jax.numpy.ones(3)]
  record = peers.sweep(peer, residual, starts, max_steps=(10, 30, 100, 300), budget=6.0)
  assert [p["max_steps"] for p in record["points"]] == [10, 30, 100, 300]
  record = peers.refine(peer, residual, starts, record, target=1e-9, budget=6.0, iterations=4)
  refined = [p["max_steps"] for p in record["points"] if p.get("refined")]
  assert refined == [65, 82, 91, 86]
  summary = peers.summarize(record, budget=6.0, target=1e-9)
  assert summary["reached"] == 1 and [r["max_steps"] for r in summary["rows"]] == [10, 30, 100, 300]
  reached = [p["seconds"] for p in record["points"] if p["max_steps"] in (91, 100, 300)]
  assert summary["time_to_target"] == min(reached)
