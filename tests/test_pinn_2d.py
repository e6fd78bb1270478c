"""The `poisson_2d` study (`benchmarks.pinn_2d`): the PDE residual and the quick study."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import pinn_2d
from benchmarks import report
from benchmarks import runner


def test_laplacian_of_the_exact_solution():
  """Δ sin(πx) sin(πy) = −2π² sin(πx) sin(πy) at random points (forward-over-reverse)."""
  with jax.enable_x64(True):
    points = jax.random.uniform(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    laplacian = jax.vmap(lambda p: pinn_2d.laplacian(pinn_2d.exact_solution, p))(points)
    expected = -2 * np.pi**2 * pinn_2d.exact_solution(points)
    np.testing.assert_allclose(laplacian, expected, rtol=1e-12, atol=1e-12)


def test_residual_of_the_exact_solution_is_zero_and_the_network_laplacian_is_the_hessian_trace():
  with jax.enable_x64(True):
    problem = pinn_2d.make_problem(grid=5, edge=4, hidden=6, test=8)
    assert problem.inputs.shape == (25 + 16, 3) and problem.inputs.dtype == jnp.float64
    assert float(problem.inputs[:, 2].sum()) == 16  # the boundary flags
    exact = jax.vmap(
      lambda row: pinn_2d.pde_residual(pinn_2d.exact_solution, row, problem.boundary_weight)
    )(problem.inputs)
    assert float(jnp.max(jnp.abs(exact))) < 1e-12
    # The network's residual: −tr(∇²u_θ) − f inside, w u_θ on the boundary.
    params = pinn_2d.init_params(problem, 0)
    u = lambda p: problem.net.apply(params, p[None])[0, 0]
    residual = problem.apply(params, problem.inputs)
    interior, boundary = problem.inputs[:25, :2], problem.inputs[25:, :2]
    trace = jax.vmap(lambda p: jnp.trace(jax.hessian(u)(p)))(interior)
    np.testing.assert_allclose(residual[:25], -trace - pinn_2d.forcing(interior), rtol=1e-10)
    np.testing.assert_allclose(
      residual[25:], problem.boundary_weight * jax.vmap(u)(boundary), rtol=1e-12
    )
    assert problem.boundary_weight == np.sqrt(25 / 16)


def test_quick_study_writes_json_table_and_plot(tmp_path):
  options = runner.StudyOptions(quick=True, progress=False, command="test")
  result = pinn_2d.run(options)
  path = runner.save(result, tmp_path)
  saved = json.loads(path.read_text())
  assert saved["study"] == "poisson_2d" and saved["kind"] == "pinn_2d"
  assert saved["config"]["target_rel_l2"] == 1e-7 and saved["task"]["dtype"] == "float64"
  families = {run["family"] for run in saved["runs"]}
  assert families == {"rd", "adam", "lbfgs"}
  for run in saved["runs"]:
    curve = run["curve"]
    assert {"seconds", "step", "rel_l2", "loss"} <= set(curve)
    assert len(curve["seconds"]) == len(curve["step"]) == len(curve["rel_l2"]) > 1
    assert run["steps"] > 0 and run["ms_per_step"] > 0 and "time_to_target" in run
    assert run["final_rel_l2"] is not None
  # RD + LM reduces the error (both solvers), and cg's first step is cholesky's.
  for run in saved["runs"]:
    if run["family"] == "rd":
      assert run["final_rel_l2"] < 1e-2 * run["curve"]["rel_l2"][0], run["label"]
      assert run["solver"]["iterations"]
  assert saved["checks"]["first_step_cg_vs_cholesky"] < 1e-6
  assert saved["checks"]["exact_residual_max"] < 1e-12
  assert saved["step_breakdown"]["jacobian_ms"] > 0
  table = report.markdown_table(saved)
  assert "time to 1e-07 s (reached)" in table and "ms/step" in table
  assert "Published (Dangel et al. 2024" in table and "Target: relative L2" in table
  assert report.plot_study(saved, tmp_path / "poisson_2d.png").stat().st_size > 0


def test_quick_scale_study_records_memory_and_its_targets(tmp_path):
  options = runner.StudyOptions(
    quick=True,
    progress=False,
    command="test",
    budget=0.1,
    optimizers=(pinn_2d.CG_JACOBIAN_LABEL,),  # the baselines run in the poisson_2d test
  )
  result = pinn_2d.run_scale(options)
  saved = json.loads(runner.save(result, tmp_path).read_text())
  assert saved["study"] == "poisson_2d_scale" and saved["config"]["target_rel_l2"] == 1e-6
  assert [run["label"] for run in saved["runs"]] == [pinn_2d.CG_JACOBIAN_LABEL]
  for run in saved["runs"]:
    assert run["steps"] > 0 and run["process_peak_bytes"] > 0
    assert run["step_memory_bytes"] is None or run["step_memory_bytes"] > 0
  parts = saved["step_breakdown"]
  assert parts["jacobian_product_ms"] > 0 and "normal_matrix_and_cholesky_ms" not in parts
  table = report.markdown_table(saved)
  assert "peak RSS GB" in table and "Targets: " in table and "target 100×" in table
