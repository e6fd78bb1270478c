"""`termination=rd.termination(...)`: the MINPACK-style tests of rdescent/_termination.py.

Small least-squares problems as plain residual vectors (`examples="coupled"`),
mostly in float64: the status turns to `STATUS_CONVERGED` near the minimum and
not before, a `lax.while_loop` stops on it, and bad tolerances are refused when
the transform is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import _termination
from rdescent import transform as transform_lib

OK, ZERO, CONVERGED = transform_lib.STATUS_OK, transform_lib.STATUS_ZERO_STEP, rd.STATUS_CONVERGED


def _rosenbrock(x, inputs):
  del inputs
  return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _linear_data(dtype):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(20, 3))
  b = rng.normal(size=20)  # not in the range of a: the residual at the optimum is not zero
  return jnp.asarray(a, dtype), jnp.asarray(b, dtype), np.linalg.lstsq(a, b, rcond=None)[0]


def _run(tx, x0, targets, steps):
  """A scan of `steps` updates: the iterates before each step, loss, status, converged_by."""

  @jax.jit
  def run(x0):
    def body(carry, _):
      x, state = carry
      updates, state = tx.update(None, state, x, batch=(None, targets))
      rd_state = state[0]
      return (optax.apply_updates(x, updates), state), (
        x,
        rd_state.loss,
        rd_state.status,
        rd_state.converged_by,
      )

    (x, _), trace = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return x, trace

  return run(x0)


def _lm(residuals, **options):
  return rd.regression_descent(
    residuals, damping=rd.damping.levenberg_marquardt(), examples="coupled", **options
  )


def test_rosenbrock_converges_near_the_minimum_and_not_before():
  with jax.enable_x64(True):
    tx = _lm(_rosenbrock, termination=rd.termination())
    x, (iterates, losses, status, converged_by) = _run(tx, jnp.array([-1.2, 1.0]), jnp.zeros(2), 30)
    status, converged_by = np.asarray(status), np.asarray(converged_by)
    first = int(np.argmax(status == CONVERGED))
    assert status[first] == CONVERGED and first > 5
    # Before: every step ok; the iterate is still far from (1, 1) in √ε terms.
    assert np.all(status[:first] == OK)
    assert np.all(converged_by[:first] == 0)
    errors = np.max(np.abs(np.asarray(iterates) - 1.0), axis=1)
    assert np.all(errors[:first] > 1e-7)
    # At the first converged step: the iterate is at (1, 1) to √ε, and it stays converged.
    assert errors[first] < 1e-6
    assert np.all(status[first:] == CONVERGED)
    assert np.all(converged_by[first:] & _termination.XTOL)
    np.testing.assert_allclose(np.asarray(x), 1.0, rtol=0, atol=1e-12)
    # At r = 0 exactly the zero direction reports "converged" (ftol and xtol), not code 6.
    assert float(losses[-1]) == 0.0 and converged_by[-1] == _termination.FTOL | _termination.XTOL
    assert rd.STATUS_MESSAGES[CONVERGED].startswith("converged")


def test_without_termination_nothing_changes():
  with jax.enable_x64(True):
    tx = _lm(_rosenbrock)
    _, (_, _, status, converged_by) = _run(tx, jnp.array([-1.2, 1.0]), jnp.zeros(2), 30)
    assert set(np.asarray(status).tolist()) <= {OK, ZERO}
    assert np.all(np.asarray(converged_by) == 0)


def test_linear_least_squares_with_a_nonzero_residual_converges_by_ftol():
  with jax.enable_x64(True):
    a, b, solution = _linear_data(jnp.float64)

    def residuals(x, inputs):
      del inputs
      return a @ x

    tx = _lm(residuals, termination=rd.termination(xtol=0.0))
    x, (iterates, losses, status, converged_by) = _run(tx, jnp.zeros(3), b, 8)
    status, converged_by = np.asarray(status), np.asarray(converged_by)
    first = int(np.argmax(status == CONVERGED))
    assert status[first] == CONVERGED and converged_by[first] == _termination.FTOL
    assert first >= 1 and np.all(status[:first] == OK)
    # ftol is a test on the cost (MINPACK's): before the converged step the cost is
    # above the optimum by more than ftol (√ε) relative, at it by less, with a
    # residual far from zero; the converged step is applied and lands on the solution.
    optimum = 0.5 * float(np.sum((np.asarray(a) @ solution - np.asarray(b)) ** 2))
    gaps = np.asarray(losses) / optimum - 1.0
    ftol = float(np.sqrt(np.finfo(np.float64).eps))
    assert np.all(gaps[:first] > ftol) and gaps[first] <= ftol and optimum > 1.0
    np.testing.assert_allclose(np.asarray(iterates[first + 1]), solution, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(np.asarray(x), solution, rtol=1e-9, atol=1e-9)


def test_gtol_fires_on_a_small_gradient_and_only_then():
  with jax.enable_x64(True):
    a, b, solution = _linear_data(jnp.float64)

    def residuals(x, inputs):
      del inputs
      return a @ x

    tx = _lm(residuals, termination=rd.termination(ftol=0.0, xtol=0.0, gtol=1e-6))
    _, (iterates, _, status, converged_by) = _run(tx, jnp.zeros(3), b, 6)
    status, converged_by = np.asarray(status), np.asarray(converged_by)
    gradient_norms = [
      float(np.linalg.norm(np.asarray(a).T @ (np.asarray(a) @ np.asarray(x) - np.asarray(b))))
      for x in iterates
    ]
    for code, mask, norm in zip(status, converged_by, gradient_norms):
      assert bool(mask & _termination.GTOL) == (norm <= 1e-6), (mask, norm)
      assert (code == CONVERGED) == (mask != 0)
    assert np.any(converged_by & _termination.GTOL)
    assert not converged_by[0]


def test_a_while_loop_stops_on_converged():
  with jax.enable_x64(True):
    tx = _lm(_rosenbrock, termination=rd.termination())
    targets = jnp.zeros(2)

    @jax.jit
    def solve(x):
      def cond(carry):
        _, state = carry
        return (state[0].count < 200) & (state[0].status != rd.STATUS_CONVERGED)

      def body(carry):
        x, state = carry
        updates, state = tx.update(None, state, x, batch=(None, targets))
        return optax.apply_updates(x, updates), state

      return jax.lax.while_loop(cond, body, (x, tx.init(x)))

    x, state = solve(jnp.array([-1.2, 1.0]))
    assert int(state[0].status) == rd.STATUS_CONVERGED
    assert 5 < int(state[0].count) < 40
    assert _termination.names(int(state[0].converged_by))
    np.testing.assert_allclose(np.asarray(x), 1.0, atol=1e-9)


def test_float32_defaults_follow_the_dtype():
  tx = _lm(_rosenbrock, termination=rd.termination())
  x, (iterates, _, status, _) = _run(tx, jnp.array([-1.2, 1.0]), jnp.zeros(2), 40)
  status = np.asarray(status)
  assert CONVERGED in status
  first = int(np.argmax(status == CONVERGED))
  assert first > 5
  assert np.max(np.abs(np.asarray(iterates[first]) - 1.0)) < 1e-3  # √ε of float32: 3.5e-4
  assert np.max(np.abs(np.asarray(iterates[first - 1]) - 1.0)) > 1e-4


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    ({"ftol": -1e-8}, "ftol"),
    ({"ftol": 1.0}, "ftol"),
    ({"ftol": float("nan")}, "ftol"),
    ({"ftol": "1e-8"}, "ftol"),
    ({"xtol": float("inf")}, "xtol"),
    ({"xtol": True}, "xtol"),
    ({"gtol": -1.0}, "gtol"),
    ({"gtol": None}, "gtol"),
    ({"gtol": float("inf")}, "gtol"),
  ],
)
def test_bad_tolerances_are_refused_by_name(kwargs, name):
  with pytest.raises(ValueError, match=name):
    rd.termination(**kwargs)


def test_bad_termination_option_is_refused_when_the_transform_is_built():
  with pytest.raises(ValueError, match="termination"):
    _lm(_rosenbrock, termination={"ftol": 1e-8})
  with pytest.raises(ValueError, match="xtol"):
    _lm(_rosenbrock, termination=rd.Termination(ftol=None, xtol=-1.0))
