"""One common test for every RD variant, as optax's common optimizer test does.

`VARIANTS` lists every damping controller, every wrapper, every output/system
form and every solver (each with the defaults of the others, plus the
combinations that exercise a wrapper over a judge). Every variant goes
through the same checks:

* jit with the state donated, several steps;
* a NaN batch: nothing applied, parameters untouched, the state finite and
  saying why;
* the exact-fit bound: started at an exact solution (r = 0), λ stays finite
  and bounded and the parameters stay put for a hundred steps;
* `optax.inject_hyperparams`: the learning rate is a state entry that scales
  the step;
* float64 (x64): the first step is the dense float64 reference direction at
  the reported λ, scaled by a factor in (0, 1] (what a line search or a cap
  may apply);
* bfloat16 parameters: computed in float32, the update cast back, finite.

Adding a controller, a wrapper or a solver means adding one line here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import transform as transform_lib
from rdescent.problem import output_sketch
from tests import models

SIZES = (3, 6, 2)  # k = 2 outputs, p = 38 parameters
M = 6  # examples: the dual system is m k = 12 < p, the primal 38

# name -> (keyword arguments of rd.regression_descent; a function, so that each
# call builds fresh controllers).
VARIANTS = {
  # every controller, full mode, dual system, Cholesky
  "constant": lambda: dict(damping=1e-3),
  "schedule": lambda: dict(damping=optax.exponential_decay(1e-2, 50, 0.5)),
  "next_batch_ratio": lambda: dict(damping=rd.damping.next_batch_ratio()),
  "levenberg_marquardt": lambda: dict(damping=rd.damping.levenberg_marquardt()),
  "residual_proportional": lambda: dict(damping=rd.damping.residual_proportional()),
  "gradient_proportional": lambda: dict(damping=rd.damping.gradient_proportional()),
  "gcv": lambda: dict(damping=rd.damping.gcv()),
  "per_example": lambda: dict(damping=rd.damping.per_example(1e-3)),
  # wrappers
  "backtracking": lambda: dict(damping=rd.damping.backtracking(rd.damping.constant(1e-3))),
  "cap_logit_change": lambda: dict(
    damping=rd.damping.cap_logit_change(rd.damping.levenberg_marquardt(), bound=0.05)
  ),
  "backtracking(cap_logit_change)": lambda: dict(
    damping=rd.damping.backtracking(
      rd.damping.cap_logit_change(rd.damping.constant(1e-3), bound=0.05)
    )
  ),
  "max_logit_change": lambda: dict(damping=1e-3, max_logit_change=0.05),
  "spring": lambda: dict(damping=rd.damping.spring(rd.damping.constant(1e-3), 0.9)),
  "spring/levenberg_marquardt": lambda: dict(
    damping=rd.damping.spring(rd.damping.levenberg_marquardt(), 0.9)
  ),
  "momentum": lambda: dict(damping=1e-3, momentum=0.5),
  "per_output/dual/spring(backtracking)": lambda: dict(
    damping=rd.damping.spring(rd.damping.backtracking(rd.damping.constant(1e-3)), 0.9),
    outputs="per_output",
    system="dual",
  ),
  "full/primal/spring": lambda: dict(
    damping=rd.damping.spring(rd.damping.constant(1e-3), 0.9), system="primal"
  ),
  # every output/system form, with a fixed λ and with a judge
  "full/primal": lambda: dict(damping=1e-3, system="primal"),
  "per_output/dual": lambda: dict(damping=1e-3, outputs="per_output", system="dual"),
  "per_output/primal": lambda: dict(damping=1e-3, outputs="per_output", system="primal"),
  "full/primal/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), system="primal"
  ),
  "per_output/dual/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), outputs="per_output", system="dual"
  ),
  "per_output/primal/gcv": lambda: dict(
    damping=rd.damping.gcv(), outputs="per_output", system="primal"
  ),
  "sketched/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), outputs="sketched", sketch_size=1
  ),
  # any residual function (J of the whole-batch function)
  "coupled/primal/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), system="primal", examples="coupled"
  ),
  # every solver
  "solver=eigh": lambda: dict(damping=1e-3, solver=rd.solvers.eigh()),
  "solver=eigh/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), solver="eigh"
  ),
  "solver=cholesky(no jitter)": lambda: dict(
    damping=1e-3, solver=rd.solvers.cholesky(max_jitter_tries=0)
  ),
  # matrix-free; a tight tolerance for the float64 reference (float32: √ε by default)
  "solver=cg/levenberg_marquardt": lambda: dict(
    damping=rd.damping.levenberg_marquardt(), solver=rd.solvers.cg(tol=1e-13, maxiter=300)
  ),
}

NAMES = sorted(VARIANTS)


def _problem(dtype=jnp.float32, seed=0):
  return models.mlp_problem(jax.random.PRNGKey(seed), SIZES, m=M, dtype=dtype)


def _tx(name, learning_rate=1.0):
  return rd.regression_descent(models.mlp_apply, learning_rate, **VARIANTS[name]())


def _train_step(tx, donate=False):
  def step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


@functools.cache
def _compiled(name):
  """One transform and jitted step (state donated) per variant and process.

  The donation, NaN-batch and exact-fit checks share it: one compile per variant
  and shape instead of one per check. A caller that still needs its inputs after
  a call passes copies (`_copy`), as donated buffers are consumed.
  """
  tx = _tx(name)
  return tx, _train_step(tx, donate=True)


def _copy(tree):
  return jax.tree_util.tree_map(jnp.copy, tree)


def _finite(tree):
  return all(
    bool(jnp.all(jnp.isfinite(leaf)))
    for leaf in jax.tree_util.tree_leaves(tree)
    if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
  )


@pytest.mark.parametrize("name", NAMES)
def test_jit_with_donated_state(name):
  params, x, y = _problem()
  tx, step = _compiled(name)
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state, x, y)
  assert int(state[0].count) == 3
  assert _finite(params) and _finite(state)
  assert int(state[0].status) in (transform_lib.STATUS_OK, transform_lib.STATUS_REJECTED)


@pytest.mark.parametrize("name", NAMES)
def test_nan_batch_applies_nothing_and_says_why(name):
  params, x, y = _problem()
  tx, step = _compiled(name)
  state = tx.init(params)
  new_params, new_state = step(_copy(params), state, x.at[1, 2].set(jnp.nan), y)
  for new, old in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(new, old)
  rd_state = new_state[0]
  assert int(rd_state.status) == transform_lib.STATUS_NONFINITE_LOSS
  assert not bool(rd_state.accepted) and int(rd_state.num_rejected) == 1
  assert _finite(new_state)
  # ... and a good batch after it is taken.
  _, after = step(_copy(new_params), _copy(new_state), x, y)
  assert int(after[0].status) in (transform_lib.STATUS_OK, transform_lib.STATUS_REJECTED)


@pytest.mark.parametrize("name", NAMES)
def test_damping_is_bounded_at_an_exact_fit(name):
  params, x, _ = _problem()
  y = jax.jit(models.mlp_apply)(params, x)  # r = 0 at the start
  tx, step = _compiled(name)
  # A hundred calls of the shared compiled step (no compile of its own).
  final, state = _copy(params), tx.init(params)
  dampings, statuses = [], []
  for _ in range(100):
    final, state = step(final, state, x, y)
    dampings.append(float(state[0].damping))  # read now: the next call consumes the state
    statuses.append(int(state[0].status))
  dampings, statuses = np.asarray(dampings), np.asarray(statuses)
  assert np.all(np.isfinite(dampings)) and np.all(dampings >= 0) and np.all(dampings < 1e13)
  # r = 0: a zero direction says so (STATUS_ZERO_STEP), never "ok".
  assert set(np.unique(statuses)) <= {
    transform_lib.STATUS_OK,
    transform_lib.STATUS_REJECTED,
    transform_lib.STATUS_ZERO_STEP,
  }
  assert _finite(state)
  np.testing.assert_allclose(models.flat(final), models.flat(params), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_learning_rate(name):
  params, x, y = _problem()
  tx = optax.inject_hyperparams(
    rd.regression_descent, static_args=("apply_fn", "damping", "sketch_size")
  )(apply_fn=models.mlp_apply, learning_rate=0.5, **VARIANTS[name]())
  state = tx.init(params)
  update = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))
  np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.5)
  state.hyperparams["learning_rate"] = jnp.asarray(0.25)
  injected, _ = update(params, state)
  # The injected value reaches the step (and the controllers, as η): the update
  # is the one of the transform built with that learning rate.
  expected, _ = models.first_update(_tx(name, learning_rate=0.25), params, (x, y))
  assert _finite(injected)
  np.testing.assert_allclose(models.flat(injected), models.flat(expected), rtol=1e-5, atol=1e-7)


def _dense_reference(name, params, x, y, damping):
  """The float64 reference direction, and the condition number of its solve."""
  kwargs = VARIANTS[name]()
  jacobian = models.dense_jacobian(models.mlp_apply, params, x)
  residual = np.asarray(models.mlp_apply(params, x) - y).reshape(-1)
  if kwargs.get("outputs") == "per_output":
    k = SIZES[-1]
    values = np.concatenate(
      [np.linalg.eigvalsh(jacobian[c::k] @ jacobian[c::k].T) for c in range(k)]
    )
    direction = models.dense_per_output_direction(jacobian, residual, damping, k)
  elif kwargs.get("outputs") == "sketched":
    # The first step's sketch, S ⊗ I_m applied to J and r (example-major rows).
    key = jax.random.fold_in(jax.random.key(kwargs.get("sketch_seed", 0)), 0)
    sketch = np.asarray(output_sketch(key, SIZES[-1], kwargs["sketch_size"], jnp.float64))
    lifted = np.kron(np.eye(M), sketch.T) @ jacobian
    values = np.linalg.eigvalsh(lifted @ lifted.T)
    direction = models.dense_ridge_direction(
      lifted, np.kron(np.eye(M), sketch.T) @ residual, damping
    )
  else:
    values = np.linalg.eigvalsh(jacobian @ jacobian.T)
    direction = models.dense_ridge_direction(jacobian, residual, damping)
  # The references solve the p × p systems, singular here (p > m): κ = (s_max + λ) / λ.
  return direction, (values.max() + damping) / damping


@pytest.mark.parametrize("name", NAMES)
def test_float64_first_step_is_the_dense_reference(name):
  with jax.enable_x64(True):
    params, x, y = _problem(dtype=jnp.float64)
    tx = rd.scale_by_regression_descent(models.mlp_apply, **VARIANTS[name]())
    direction, state = models.first_update(tx, params, (x, y))
    assert state.loss.dtype == jnp.float64 and state.damping.dtype == jnp.float64
    assert int(state.status) == transform_lib.STATUS_OK
    got = models.flat(direction)
    expected, condition = _dense_reference(name, params, x, y, float(state.damping))
    # A backward-stable solve is accurate to about κ ε (GCV may pick a tiny λ).
    rtol = max(1e-7, 100 * condition * np.finfo(np.float64).eps)
    factor = got @ expected / (expected @ expected)
    assert 0 < factor <= 1 + rtol, (factor, rtol)
    np.testing.assert_allclose(got, factor * expected, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_params(name):
  params32, x, y = _problem()
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params32)
  tx = _tx(name)
  state = tx.init(params)
  assert state[0].loss.dtype == jnp.float32 and state[0].damping.dtype == jnp.float32
  step = _train_step(tx)
  for _ in range(3):
    params, state = step(params, state, x, y)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
  assert _finite(params) and _finite(state)
  assert int(state[0].status) in (transform_lib.STATUS_OK, transform_lib.STATUS_REJECTED)


def test_the_list_covers_every_public_controller_and_solver():
  controllers = {
    "constant",
    "schedule",
    "next_batch_ratio",
    "levenberg_marquardt",
    "residual_proportional",
    "gradient_proportional",
    "gcv",
    "per_example",
    "backtracking",
    "cap_logit_change",
    "spring",
  }
  public = {
    name
    for name in rd.damping.__all__
    if name[0].islower()
    and callable(getattr(rd.damping, name))
    and isinstance(getattr(rd.damping, name).__annotations__.get("return"), str)
    and "DampingController" in getattr(rd.damping, name).__annotations__["return"]
  }
  public.discard("as_controller")  # a conversion, not a controller
  assert public <= controllers, public - controllers
  assert controllers <= set(NAMES)
  for solver in rd.solvers.SOLVERS:
    assert any(solver in name for name in NAMES), solver
