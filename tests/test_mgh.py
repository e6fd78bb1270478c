"""The MGH problem set (benchmarks.mgh): scipy's lm reaches the paper's f* on each problem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("scipy")

from benchmarks import mgh  # noqa: E402

# Local minima that scipy's lm reaches from the standard start but that the paper
# does not print (it gives f* = 0 for the trigonometric function, any n).
UNPUBLISHED_LOCAL = {"trigonometric": 2.79506e-5}
# A start from which lm reaches the paper's f* = 0 instead (checks the formula).
TRIGONOMETRIC_START = (0.2065, 0.1167, 0.0405, 0.2164, 0.1576)
TRIGONOMETRIC_START += (0.0931, 0.1458, 0.2668, 0.2802, 0.1073)


def test_problem_set_is_well_formed():
  assert len(mgh.PROBLEMS) >= 18
  with jax.enable_x64(True):
    for name, problem in mgh.PROBLEMS.items():
      assert problem.name == name
      assert problem.num_residuals >= problem.num_params, name
      x0 = jnp.asarray(problem.start, jnp.float64)
      r = jax.eval_shape(problem.residuals, x0)
      assert r.shape == (problem.num_residuals,), name
      assert r.dtype == jnp.float64, name
      jacobian = jax.eval_shape(jax.jacfwd(problem.residuals), x0)
      assert jacobian.shape == (problem.num_residuals, problem.num_params), name
      assert problem.published, name
  # float32 inputs stay float32 (constants follow x's dtype).
  r32 = mgh.PROBLEMS["osborne_2"].residuals(jnp.asarray(mgh.PROBLEMS["osborne_2"].start))
  assert r32.dtype == jnp.float32


def test_scipy_lm_reaches_the_published_optimum():
  rows = mgh.check_table()
  print()
  for row in rows:
    published = " / ".join(f"{p:.6g}" for p in row["published"])
    print(f"{row['name']:28s} m={row['m']:3d} n={row['n']:3d} f={row['f']:.9g} paper {published}")
  failures = []
  for row in rows:
    if row["name"] in UNPUBLISHED_LOCAL:
      ok = mgh.digits_agree(row["f"], UNPUBLISHED_LOCAL[row["name"]])
    else:
      ok = row["agrees"]
    if not ok:
      failures.append((row["name"], row["f"], row["published"]))
  assert not failures, failures


def test_trigonometric_reaches_zero_from_another_start():
  problem = mgh.PROBLEMS["trigonometric"]._replace(start=TRIGONOMETRIC_START)
  cost, _, _, _ = mgh.scipy_reference(problem)
  assert 2.0 * cost < 1e-10


def test_known_minimisers():
  """f at the paper's minimisers (independent of any solver)."""
  points = {
    "rosenbrock": (1.0, 1.0),
    "freudenstein_roth": (5.0, 4.0),
    "powell_badly_scaled": (1.098159e-5, 9.106146),
    "brown_badly_scaled": (1e6, 2e-6),
    "beale": (3.0, 0.5),
    "helical_valley": (1.0, 0.0, 0.0),
    "gulf_research": (50.0, 25.0, 1.5),
    "box_3d": (1.0, 10.0, 1.0),
    "wood": (1.0, 1.0, 1.0, 1.0),
    "biggs_exp6": (1.0, 10.0, 1.0, 5.0, 4.0, 3.0),
    "extended_rosenbrock": (1.0,) * 10,
    "variably_dimensioned": (1.0,) * 10,
    "brown_almost_linear": (1.0,) * 10,
  }
  with jax.enable_x64(True):
    for name, x in points.items():
      r = mgh.PROBLEMS[name].residuals(jnp.asarray(x, jnp.float64))
      f = float(jnp.sum(r**2))
      assert f < 1e-8, (name, f)
    # f = 1 at (0, …, 0, n + 1) (brown almost-linear's other minimum)
    x = jnp.zeros(10, jnp.float64).at[-1].set(11.0)
    assert np.isclose(float(jnp.sum(mgh.PROBLEMS["brown_almost_linear"].residuals(x) ** 2)), 1.0)


def test_least_squares_study_quick(tmp_path):
  from benchmarks import least_squares
  from benchmarks import runner

  result = least_squares.run(runner.StudyOptions(quick=True, progress=False, out_dir=tmp_path))
  assert [row["problem"] for row in result["rows"]] == list(least_squares.QUICK_PROBLEMS)
  for row in result["rows"]:
    assert row["rd_reached_scipy_lm"], row
    assert row["rd"]["steps"] <= least_squares.MAX_STEPS
    assert row["scipy_trf"]["cost"] < 1e-20
  table = least_squares.markdown_table(result)
  assert "RD reached scipy-lm's cost on 3 of 3 problems" in table
  assert least_squares.plot(result, tmp_path / "least_squares.png").stat().st_size > 0
  runner.save(result, tmp_path)
