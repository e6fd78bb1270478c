"""The `pinn_suite` study (`benchmarks.pinn_suite`): residuals against hand-derived values and
exact solutions, the project's own Burgers reference, the record of a quick run, and the
DSGNAR-skip path."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import burgers_reference
from benchmarks import dsgnar_peer
from benchmarks import pinn_problems
from benchmarks import pinn_suite
from benchmarks import report
from benchmarks import runner

DSGNAR = os.environ.get(dsgnar_peer.ENV_VAR) or "/work/peers/dsgnar"
BURGERS_NPZ = pathlib.Path(DSGNAR) / "src" / "pinn" / "references" / "burgers.npz"


def _points(n: int, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 2), jnp.float64, -1.0, 1.0)


def test_residuals_against_hand_derived_values():
  """Burgers at u = e^{−t} sin(πx): u_t + u u_x − ν u_xx = e^{−t} s (νπ² − 1) + π e^{−2t} s c."""
  with jax.enable_x64(True):
    u = lambda p: jnp.exp(-p[1]) * jnp.sin(jnp.pi * p[0])
    points = _points(8)
    got = jax.vmap(lambda p: pinn_problems.burgers_residual(u, p, 0.0))(points)
    x, t = points[:, 0], points[:, 1]
    s, c, e = np.sin(np.pi * x), np.cos(np.pi * x), np.exp(-t)
    expected = e * s * (pinn_problems.BURGERS_NU * np.pi**2 - 1) + np.pi * e**2 * s * c
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # The third derivative of KdV's residual: u = x⁴ + t gives 1 + 4x³ η u + 24 μ² x.
    u4 = lambda p: p[0] ** 4 + p[1]
    got = jax.vmap(lambda p: pinn_problems.kdv_residual(u4, p, 0.0))(points)
    expected = 1 + 4 * x**3 * (x**4 + t) + 24 * pinn_problems.KDV_MU**2 * x
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_exact_solutions_have_zero_residual():
  """The standing wave solves the wave problem; a KdV soliton solves KdV; Poisson's u*."""
  with jax.enable_x64(True):
    points = jnp.abs(_points(16, 1))
    wave = lambda p: pinn_problems.wave_exact(p)
    r = jax.vmap(lambda p: pinn_problems.wave_residual(wave, p, 0.0))(points)
    assert float(jnp.max(jnp.abs(r))) < 1e-10
    speed, eta, mu = 0.5, pinn_problems.KDV_ETA, pinn_problems.KDV_MU
    soliton = lambda p: (
      3 * speed / eta / jnp.cosh(jnp.sqrt(speed) / (2 * mu) * (p[0] - speed * p[1])) ** 2
    )
    r = jax.vmap(lambda p: pinn_problems.kdv_residual(soliton, p, 0.0))(points * 0.05)
    assert float(jnp.max(jnp.abs(r))) < 1e-8
    exact = lambda p: jnp.sin(jnp.pi * p[0]) * jnp.sin(jnp.pi * p[1])
    r = jax.vmap(lambda p: pinn_problems.poisson_residual(exact, p, 0.0))(points)
    assert float(jnp.max(jnp.abs(r))) < 1e-10
    # Initial and boundary rows: u − target and u_t − target.
    p = jnp.array([0.3, 0.0])
    assert float(pinn_problems.value_residual(wave, p, wave(p))) == 0.0
    assert abs(float(pinn_problems.time_derivative_residual(wave, p, 0.0))) < 1e-12


def test_problem_rows_are_the_weighted_residuals():
  """½ Σ rows² = ½ Σ_c w_c mean_c r_c²: each row is √(w_c / n_c) r_c."""
  sizes = {"n_pde": 12, "n_ic": 4, "n_bc": 4, "hidden": (5,), "test_x": 8, "test_t": 3}
  with jax.enable_x64(True):
    problem = pinn_problems.make_problem("wave", sizes)
    params = pinn_suite.initial_params(problem, 0, 64)
    rows = problem.apply(params, problem.inputs)
    u = lambda p: problem.net.apply(params, p[None])[0, 0]
    expected = 0.0
    for c in problem.conditions:
      r = jnp.stack([c.residual(u, jnp.asarray(x), t) for x, t in zip(c.points, c.targets)])
      expected += c.weight * jnp.mean(r**2)
    np.testing.assert_allclose(jnp.sum(rows**2), expected, rtol=1e-12)
    assert rows.shape == (12 + 4 + 4 + 4,)
    np.testing.assert_allclose(problem.exact, pinn_problems.wave_exact(problem.test_points))


def test_burgers_reference_cole_hopf_agrees_with_the_spectral_solver():
  x = np.linspace(-1.0, 1.0, 48, endpoint=False)
  t = np.array([0.0, 0.25, 0.5, 1.0])
  spectral = burgers_reference.spectral(x, t, modes=512)
  xs, ts = np.meshgrid(x, t, indexing="ij")
  cole_hopf = burgers_reference.cole_hopf(xs, ts)
  np.testing.assert_allclose(cole_hopf[:, 0], -np.sin(np.pi * x), atol=1e-14)
  assert np.linalg.norm(spectral - cole_hopf) / np.linalg.norm(cole_hopf) < 1e-9
  # Odd in x and zero at x = 0 and x = −1 (the periodic / Dirichlet ends) for all t.
  ends = burgers_reference.cole_hopf(np.array([0.0, -1.0]), np.array([0.7, 0.7]))
  np.testing.assert_allclose(ends, 0.0, atol=1e-13)
  both = burgers_reference.cole_hopf(np.array([0.3, -0.3]), np.array([0.5, 0.5]))
  np.testing.assert_allclose(both[0], -both[1], rtol=1e-13)


@pytest.mark.skipif(not BURGERS_NPZ.is_file(), reason="no DSGNAR checkout (RDESCENT_DSGNAR_PATH)")
def test_burgers_reference_agrees_with_dsgnar_reference():
  data = np.load(BURGERS_NPZ)
  coords, solution = data["coords"][::37], data["solution"][::37, 0]
  ours = burgers_reference.cole_hopf(coords[:, 0], coords[:, 1])
  assert np.linalg.norm(ours - solution) / np.linalg.norm(solution) < 1e-11


def test_dsgnar_batch_size_and_checkout():
  assert dsgnar_peer.batch_size([2048, 256, 256]) == 256
  assert dsgnar_peer.batch_size([900, 120]) == 60
  with pytest.raises(ValueError, match="multiple of 4"):
    dsgnar_peer.batch_size([30, 7])
  with pytest.raises(SystemExit, match="src/pinn"):
    dsgnar_peer.checkout("/nonexistent/dsgnar")


def test_quick_study_records_every_threshold_and_skips_dsgnar(tmp_path, monkeypatch):
  """`--quick` on Burgers alone (RD's sweep of one setting, Adam), no DSGNAR path: the
  record's shape, the table and the plot."""
  monkeypatch.delenv(dsgnar_peer.ENV_VAR, raising=False)
  monkeypatch.setattr(pinn_suite, "QUICK", {"burgers": pinn_suite.QUICK["burgers"]})
  monkeypatch.setattr(pinn_suite, "RD_VARIANTS_BY_PROBLEM", {"burgers": ("cholesky",)})
  options = runner.StudyOptions(
    quick=True, progress=False, command="test", optimizers=("rd", "adam", "dsgnar")
  )
  result = pinn_suite.run(options)
  saved = json.loads(runner.save(result, tmp_path).read_text())
  assert saved["study"] == "pinn_suite" and saved["config"]["dsgnar"] is None
  assert any(line.startswith("dsgnar: no checkout") for line in saved["skipped"])
  assert [p["name"] for p in saved["problems"]] == ["burgers"]
  assert saved["problems"][0]["points"] == {"pde": 32, "ic": 8}
  assert [(r["label"], r["bits"]) for r in saved["sweep"]] == [("rd + lm (cholesky)", 64)]
  runs = {(r["family"], r["bits"]) for r in saved["runs"]}
  assert runs == {("rd", 64), ("rd", 32), ("adam", 64), ("adam", 32)}
  for run in saved["runs"]:
    assert set(run["time_to"]) == {"0.001", "1e-05", "1e-06", "1e-07", "1e-10"}
    assert run["steps"] > 0 and run["final_rel_l2"] is not None
    assert len(run["curve"]["seconds"]) == len(run["curve"]["rel_l2"]) > 1
  table = report.markdown_table(saved)
  assert "s to 1e-10" in table and "Skipped: dsgnar: no checkout" in table
  assert "Burgers float64 ≤ 1e-10" in table and "no DSGNAR run" in table
  assert report.plot_study(saved, tmp_path / "pinn_suite.png").stat().st_size > 0
