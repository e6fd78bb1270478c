"""Reliability: hostile input gives clear errors, numerical faults never reach the parameters.

Every numerical-fault case checks the same contract: after the jitted step the
parameters and every leaf of the optimizer state are finite, and the state's
`status` says what happened (see `rd.STATUS_MESSAGES`).
"""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rdescent as rd
from rdescent import transform as transform_lib
from tests import models

SIZES = (3, 8, 2)


def _setup(m=6, sizes=SIZES, dtype=jnp.float32, seed=0):
  return models.mlp_problem(jax.random.PRNGKey(seed), sizes, m, dtype)


def _step_fn(tx):
  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  return step


def _all_finite(tree):
  return all(
    bool(jnp.all(jnp.isfinite(leaf)))
    for leaf in jax.tree_util.tree_leaves(tree)
    if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
  )


def _rd_state(state):
  """The RegressionDescentState inside a chain's state."""
  return state[0] if isinstance(state, tuple) else state


# ------------------------------------------------------------- bad input


class TestBadInput:
  def setup_method(self):
    self.params, self.x, self.y = _setup()
    self.tx = rd.regression_descent(models.mlp_apply)
    self.state = self.tx.init(self.params)

  def _update(self, params=None, batch=None, **kwargs):
    return self.tx.update(None, self.state, params, batch=batch, **kwargs)

  def test_missing_batch_and_params(self):
    with pytest.raises(ValueError, match="batch"):
      self._update(self.params)
    with pytest.raises(ValueError, match="params"):
      self._update(None, (self.x, self.y))

  def test_batch_must_be_a_pair(self):
    with pytest.raises(ValueError, match=r"pair \(inputs, targets\).*tuple of length 3"):
      self._update(self.params, (self.x, self.y, self.y))
    with pytest.raises(ValueError, match="pair"):
      self._update(self.params, self.x)

  def test_targets_of_the_wrong_shape(self):
    with pytest.raises(ValueError, match=r"\(6, 3\)"):
      self._update(self.params, (self.x, jnp.zeros((6, 3))))

  def test_integer_inputs_are_refused_unless_allowed(self):
    ints = jnp.ones((6, 3), jnp.int32)
    with pytest.raises(TypeError, match=r"inputs have dtype int32.*integer_inputs=True"):
      self._update(self.params, (ints, self.y))
    tx = rd.regression_descent(models.mlp_apply, integer_inputs=True)
    updates, _ = models.first_update(tx, self.params, (ints, self.y))
    assert _all_finite(updates)

  def test_integer_targets_for_squared_error(self):
    with pytest.raises(TypeError, match=r"`targets` must be floating point.*int32"):
      self._update(self.params, (self.x, jnp.ones((6, 2), jnp.int32)))

  def test_empty_batch(self):
    with pytest.raises(ValueError, match=r"empty \(m = 0"):
      self._update(self.params, (jnp.zeros((0, 3)), jnp.zeros((0, 2))))

  def test_mismatched_dtypes_between_params_and_inputs(self):
    with jax.enable_x64(True):
      x64 = jnp.asarray(self.x, jnp.float64)
      with pytest.raises(TypeError, match=r"float64 but the parameters compute in float32"):
        self._update(self.params, (x64, self.y))

  def test_integer_params(self):
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.int32), self.params)
    with pytest.raises(TypeError, match="floating-point"):
      self.tx.init(params)

  @pytest.mark.parametrize(
    "option, value",
    [
      ("outputs", "rows"),
      ("gram", "dense"),
      ("system", "both"),
      ("loss", "l1"),
    ],
  )
  def test_unknown_option_strings_list_the_valid_ones(self, option, value):
    with pytest.raises(ValueError, match=rf"{option}|{value}") as info:
      rd.regression_descent(models.mlp_apply, **{option: value})
    assert "expected one of" in str(info.value) or "valid" in str(info.value)

  @pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
  def test_bad_constant_damping_and_learning_rate(self, value):
    with pytest.raises(ValueError, match="damping"):
      rd.regression_descent(models.mlp_apply, damping=value)
    with pytest.raises(ValueError, match="learning_rate"):
      rd.regression_descent(models.mlp_apply, learning_rate=value)

  def test_errors_fire_at_trace_time_under_jit(self):
    step = _step_fn(self.tx)
    with pytest.raises(TypeError, match="int32"):
      step(self.params, self.state, jnp.ones((6, 3), jnp.int32), self.y)


# ------------------------------------------------- numerical faults (jitted)


CONTROLLERS = {
  "constant": lambda: 1e-3,
  "levenberg_marquardt": rd.damping.levenberg_marquardt,
  "next_batch_ratio": rd.damping.next_batch_ratio,
  "residual_proportional": rd.damping.residual_proportional,
  "gcv": rd.damping.gcv,
}


@functools.cache
def _controller_step(controller):
  """(tx, jitted step) of one controller, shared by the tests that take the same step."""
  tx = rd.regression_descent(models.mlp_apply, damping=CONTROLLERS[controller]())
  return tx, _step_fn(tx)


@pytest.mark.parametrize("controller", sorted(CONTROLLERS))
@pytest.mark.parametrize("fault", ["nan_inputs", "inf_targets"])
def test_non_finite_batch_leaves_params_unchanged_and_is_reported(controller, fault):
  params, x, y = _setup()
  if fault == "nan_inputs":
    x = x.at[2, 1].set(jnp.nan)
  else:
    y = y.at[0, 0].set(jnp.inf)
  tx, step = _controller_step(controller)  # one compile for both faults
  state = tx.init(params)
  new_params, new_state = step(params, state, x, y)
  for new, old in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(new, old)
  rd_state = _rd_state(new_state)
  assert int(rd_state.status) == transform_lib.STATUS_NONFINITE_LOSS
  assert not bool(rd_state.accepted) and int(rd_state.num_rejected) == 1
  assert _all_finite(new_state)


def test_recovery_after_a_bad_batch_grows_lm_damping_then_trains():
  params, x, y = _setup()
  tx = rd.regression_descent(models.mlp_apply, damping=rd.damping.levenberg_marquardt(1e-3))
  step = _step_fn(tx)
  state = tx.init(params)
  params_bad, state_bad = step(params, state, x.at[0, 0].set(jnp.nan), y)
  assert float(_rd_state(state_bad).damping_state.damping) > 1e-3
  params_good, state_good = step(params_bad, state_bad, x, y)
  assert int(_rd_state(state_good).status) == transform_lib.STATUS_OK
  assert float(_rd_state(state_good).loss) > 0 and _all_finite(params_good)


@pytest.mark.parametrize("scale", [1e6, 1e30])
def test_huge_inputs_never_write_non_finite_values(scale):
  params, x, y = _setup()
  tx, step = _controller_step("levenberg_marquardt")
  new_params, state = step(params, tx.init(params), x * scale, y)
  assert _all_finite(new_params) and _all_finite(state)
  status = int(_rd_state(state).status)
  assert status in transform_lib.STATUS_MESSAGES
  if status != transform_lib.STATUS_OK:
    assert int(_rd_state(state).num_rejected) == 1


def test_linear_overflow_is_reported_not_applied():
  params = {"w": jnp.ones((3, 1)), "b": jnp.zeros(1)}
  apply_fn = lambda p, x: x @ p["w"] + p["b"]
  x = jnp.full((4, 3), 1e30, jnp.float32)
  tx = rd.regression_descent(apply_fn)
  new_params, state = _step_fn(tx)(params, tx.init(params), x, jnp.zeros((4, 1)))
  np.testing.assert_array_equal(new_params["w"], params["w"])
  assert int(_rd_state(state).status) != transform_lib.STATUS_OK
  assert _all_finite(state)


def test_rank_deficient_dual_system_with_zero_damping_is_recovered_by_jitter():
  # 40 examples, 3 + 1 parameters: K (40 × 40) has rank 4 and λ = 0.
  params = {"w": jnp.array([[0.5], [-1.0], [2.0]]), "b": jnp.zeros(1)}
  apply_fn = lambda p, x: x @ p["w"] + p["b"]
  x = jax.random.normal(jax.random.PRNGKey(1), (40, 3))
  y = x @ jnp.array([[1.0], [2.0], [3.0]]) + 0.5
  tx = rd.regression_descent(apply_fn, damping=0.0, system="dual")
  new_params, state = _step_fn(tx)(params, tx.init(params), x, y)
  assert _all_finite(new_params) and _all_finite(state)
  assert int(_rd_state(state).status) == transform_lib.STATUS_OK
  residual = apply_fn(new_params, x) - y
  assert float(jnp.linalg.norm(residual)) < 0.05 * float(jnp.linalg.norm(apply_fn(params, x) - y))


def test_controllers_stay_bounded_at_an_exact_solution():
  # An over-parameterised linear model started at an exact fit, r ≈ 0, for 300 steps.
  apply_fn = lambda p, x: x @ p["w"] + p["b"]
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
  y = jax.random.normal(jax.random.PRNGKey(4), (4, 1))
  design = np.concatenate([np.asarray(x, np.float64), np.ones((4, 1))], axis=1)
  exact = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)[0]
  params = {"w": jnp.asarray(exact[:5], jnp.float32), "b": jnp.asarray(exact[5], jnp.float32)}
  for name, make in CONTROLLERS.items():
    tx = rd.regression_descent(apply_fn, damping=make())
    step = _step_fn(tx)
    state = tx.init(params)
    p = params

    def body(carry, _, step=step):
      p, state = carry
      return step(p, state, x, y), None

    (p, state), _ = jax.lax.scan(body, (p, state), None, length=300)
    damping = float(_rd_state(state).damping)
    assert np.isfinite(damping) and 0 <= damping < 1e13, name
    assert _all_finite(p) and _all_finite(state), name
    assert float(jnp.max(jnp.abs(apply_fn(p, x) - y))) < 1e-3, name


# ------------------------------------------------------------- precision


def test_float64_with_x64_matches_the_dense_reference():
  with jax.enable_x64(True):
    params, x, y = _setup(dtype=jnp.float64)
    tx = rd.scale_by_regression_descent(models.mlp_apply, damping=1e-2)
    direction, state = models.first_update(tx, params, (x, y))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(direction))
    assert state.loss.dtype == jnp.float64
    jac = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y, np.float64).ravel()
    np.testing.assert_allclose(
      models.flat(direction), models.dense_ridge_direction(jac, residual, 1e-2), rtol=1e-9
    )


def test_bfloat16_params_compute_in_float32_and_train():
  params32, x, y = _setup(m=16, sizes=(3, 16, 2))
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params32)
  tx = rd.regression_descent(models.mlp_apply, damping=rd.damping.levenberg_marquardt())
  state = tx.init(params)
  assert _rd_state(state).loss.dtype == jnp.float32
  assert _rd_state(state).damping.dtype == jnp.float32
  step = _step_fn(tx)
  first = None
  for _ in range(10):
    params, state = step(params, state, x, y)
    first = float(_rd_state(state).loss) if first is None else first
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
  last = float(0.5 * jnp.sum(jnp.square(models.mlp_apply(params, x) - y)))
  assert _all_finite(params) and last < 0.5 * first


def test_bfloat16_direction_is_the_float32_direction_rounded():
  params32, x, y = _setup()
  params16 = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params32)
  upcast = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params16)
  tx = rd.scale_by_regression_descent(models.mlp_apply, damping=1e-2)
  d16, _ = tx.update(None, tx.init(params16), params16, batch=(x, y))
  d32, _ = tx.update(None, tx.init(upcast), upcast, batch=(x, y))
  for a, b in zip(jax.tree_util.tree_leaves(d16), jax.tree_util.tree_leaves(d32)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, b.astype(jnp.bfloat16))


# ---------------------------------------------------------- determinism


@pytest.mark.parametrize("outputs", ["full", "per_output"])
def test_same_inputs_give_bitwise_identical_steps(outputs):
  params, x, y = _setup()
  tx = rd.regression_descent(
    models.mlp_apply, outputs=outputs, damping=rd.damping.levenberg_marquardt()
  )
  step = _step_fn(tx)
  a = step(params, tx.init(params), x, y)
  b = step(params, tx.init(params), x, y)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------- checkpoints


@pytest.mark.parametrize("controller", ["levenberg_marquardt", "next_batch_ratio"])
def test_orbax_checkpoint_resume_is_bitwise_identical(tmp_path, controller):
  ocp = pytest.importorskip("orbax.checkpoint")
  params, _, _ = _setup(m=24)
  xs = jax.random.normal(jax.random.PRNGKey(5), (6, 8, 3))
  ys = jnp.sin(xs[..., :2])
  tx = optax.chain(
    rd.scale_by_regression_descent(models.mlp_apply, damping=CONTROLLERS[controller]()),
    optax.scale_by_learning_rate(0.5),
  )
  step = _step_fn(tx)

  def run(params, state, batches):
    for i in batches:
      params, state = step(params, state, xs[i], ys[i])
    return params, state

  straight = run(params, tx.init(params), range(6))
  middle = run(params, tx.init(params), range(3))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": middle[0], "opt_state": middle[1]})
  checkpointer.wait_until_finished()
  abstract = jax.tree_util.tree_map(
    ocp.utils.to_shape_dtype_struct, {"params": middle[0], "opt_state": middle[1]}
  )
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  resumed = run(restored["params"], restored["opt_state"], range(3, 6))
  assert jax.tree_util.tree_structure(resumed) == jax.tree_util.tree_structure(straight)
  for u, v in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
    np.testing.assert_array_equal(u, v)


# ------------------------------------------------------ property tests


@hypothesis.settings(max_examples=5, deadline=None)  # each example compiles anew
@hypothesis.given(
  m=st.integers(1, 6),
  k=st.integers(1, 3),
  width=st.integers(1, 6),
  log_damping=st.floats(-6, 2),
  outputs=st.sampled_from(["full", "per_output"]),
  system=st.sampled_from(["dual", "primal"]),
)
def test_direction_solves_its_regularised_system(m, k, width, log_damping, outputs, system):
  damping = 10.0**log_damping
  with jax.enable_x64(True):
    params, x, y = _setup(m=m, sizes=(2, width, k), dtype=jnp.float64, seed=m * 7 + k)
    tx = rd.scale_by_regression_descent(
      models.mlp_apply, damping=damping, outputs=outputs, system=system
    )
    direction, state = models.first_update(tx, params, (x, y))
    assert int(state.status) == transform_lib.STATUS_OK
    jac = models.dense_jacobian(models.mlp_apply, params, x)
    residual = np.asarray(models.mlp_apply(params, x) - y, np.float64).ravel()
    d = models.flat(direction)
    if outputs == "full":
      lhs = jac.T @ jac @ d + damping * d
      np.testing.assert_allclose(lhs, jac.T @ residual, rtol=1e-7, atol=1e-9)
    else:
      expected = models.dense_per_output_direction(jac, residual, damping, k)
      np.testing.assert_allclose(d, expected, rtol=1e-7, atol=1e-10)


@hypothesis.settings(max_examples=6, deadline=None)  # each example compiles anew
@hypothesis.given(
  m=st.integers(1, 8),
  log_damping=st.floats(-8, 3),
  dtype=st.sampled_from(["float32", "bfloat16"]),
  clip=st.floats(0.01, 10.0),
)
def test_chained_updates_are_finite_and_respect_the_chain(m, log_damping, dtype, clip):
  params, x, y = _setup(m=m)
  params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
  tx = optax.chain(
    rd.scale_by_regression_descent(models.mlp_apply, damping=10.0**log_damping),
    optax.clip_by_global_norm(clip),
    optax.scale_by_learning_rate(1.0),
  )
  updates, state = models.first_update(tx, params, (x, y))
  assert _all_finite(updates) and _all_finite(state)
  norm = float(optax.tree.norm(jax.tree_util.tree_map(lambda u: u.astype(jnp.float32), updates)))
  assert norm <= clip * 1.01 + 1e-6


def test_every_state_can_be_donated_to_jit():
  """No two leaves of an initial state share a buffer (donation would fail)."""
  params, x, y = _setup(m=4)
  controllers = [
    1e-3,
    rd.damping.next_batch_ratio(),
    rd.damping.levenberg_marquardt(),
    rd.damping.residual_proportional(),
    rd.damping.gradient_proportional(),
    rd.damping.gcv(),
    rd.damping.backtracking(rd.damping.constant(1e-3)),
  ]
  for damping in controllers:
    tx = rd.regression_descent(models.mlp_apply, 1.0, damping=damping)
    state = tx.init(params)
    leaves = jax.tree_util.tree_leaves(state)
    assert len({id(leaf) for leaf in leaves}) == len(leaves), damping
  # The controller whose state once shared a buffer, donated for real.
  tx = rd.regression_descent(models.mlp_apply, 1.0, damping=rd.damping.next_batch_ratio())

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  new_params, _ = step(jax.tree_util.tree_map(jnp.copy, params), tx.init(params))
  assert _all_finite(new_params)


# ------------------------------------------- issue 27: never "ok" on a wrecked step


def _status_of(state):
  inner = state.inner_state if hasattr(state, "inner_state") else state
  return int(_rd_state(inner).status)


@pytest.mark.parametrize("solver", ["eigh", "cg", "cholesky"])
def test_damping_below_the_grams_resolution_never_writes_a_wrecked_step(solver):
  """λ = 1e-12 against K of scale 1e2 in float32 (measured: eigh moved |θ| to 8e25 with 'ok')."""
  params, x, y = _setup(m=32, sizes=(3, 16, 2))
  tx = rd.regression_descent(models.mlp_apply, 1.0, damping=1e-12, solver=solver)
  step, state = _step_fn(tx), tx.init(params)
  for _ in range(4):
    new_params, state = step(params, state, x, y)
    assert _all_finite(new_params) and _all_finite(state)
    size = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(new_params))
    assert size < 1e3, (solver, size)  # measured before: 8e25 (eigh), 1.8e5 (cg)
    params = new_params
  if solver != "cholesky":  # its jitter retries repair the solve
    assert _status_of(state) == transform_lib.STATUS_SOLVE_FAILED


@pytest.mark.parametrize(
  "kwargs, code",
  [
    (dict(learning_rate=lambda count: jnp.nan), transform_lib.STATUS_NONFINITE_LEARNING_RATE),
    (dict(damping=lambda count: jnp.nan), transform_lib.STATUS_NONFINITE_DAMPING),
  ],
)
def test_a_non_finite_schedule_is_named_and_never_written(kwargs, code):
  params, x, y = _setup()
  tx = rd.regression_descent(models.mlp_apply, **kwargs)
  updates, state = models.first_update(tx, params, (x, y))
  assert _status_of(state) == code and "step skipped" in rd.STATUS_MESSAGES[code]
  assert all(bool(jnp.all(u == 0)) for u in jax.tree_util.tree_leaves(updates))
  assert _all_finite(state) and _all_finite(tx.init(params))


_INJECTED = dict(learning_rate=1.0, damping=1e-3, momentum=0.5)


@functools.cache
def _injected_step():
  tx = optax.inject_hyperparams(rd.regression_descent, static_args=("apply_fn",))(
    apply_fn=models.mlp_apply, **_INJECTED
  )
  return tx, _step_fn(tx)


@pytest.mark.parametrize(
  "name, value, code",
  [
    ("learning_rate", jnp.nan, transform_lib.STATUS_NONFINITE_LEARNING_RATE),
    ("damping", jnp.inf, transform_lib.STATUS_NONFINITE_DAMPING),
    ("momentum", jnp.nan, transform_lib.STATUS_NONFINITE_MOMENTUM),
  ],
)
def test_a_non_finite_injected_hyperparameter_is_named_and_never_written(name, value, code):
  params, x, y = _setup()
  injected = dict(_INJECTED)
  tx, step = _injected_step()  # the hyperparameters are state: one compile for the three
  state = tx.init(params)
  state.hyperparams[name] = jnp.asarray(value, jnp.float32)
  new_params, state = step(params, state, x, y)
  assert _status_of(state) == code
  assert _all_finite(new_params) and _all_finite(state.inner_state)
  chex_equal = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), new_params, params)
  assert all(jax.tree_util.tree_leaves(chex_equal))
  state.hyperparams[name] = jnp.asarray(injected[name], jnp.float32)  # recovers
  _, state = step(params, state, x, y)
  assert _status_of(state) == transform_lib.STATUS_OK


@pytest.mark.parametrize(
  "damping", [1e-3, rd.damping.next_batch_ratio(), rd.damping.levenberg_marquardt()]
)
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_a_state_from_other_params_asks_for_init_again(damping, momentum):
  params, x, y = _setup()
  tx = rd.regression_descent(models.mlp_apply, damping=damping, momentum=momentum)
  other_shapes, _, _ = _setup(sizes=(3, 5, 2))
  for other in (other_shapes, {"wrapped": params}):
    state = tx.init(other)
    if jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(tx.init(params)):
      if all(
        np.shape(a) == np.shape(b)
        for a, b in zip(
          jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(tx.init(params))
        )
      ):
        continue  # nothing in this state depends on the params (constant λ, no momentum)
    with pytest.raises(ValueError, match=r"tx\.init\(params\)"):
      tx.update(None, state, params, batch=(x, y))


def test_readable_errors_name_the_argument_and_the_fix():
  params, x, y = _setup()
  pair = lambda p, inputs: (models.mlp_apply(p, inputs), models.mlp_apply(p, inputs))
  tx = rd.regression_descent(pair)
  with pytest.raises(TypeError, match=r"apply_fn.*one array.*got a tuple of 2"):
    jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
  with pytest.raises(ValueError, match=r"learning_rate.*string '0.1'.*learning_rate=0.1"):
    rd.regression_descent(models.mlp_apply, "0.1")


def test_labels_out_of_range_under_jit_are_named():
  params, x, _ = _setup(sizes=(3, 8, 3))
  tx = rd.regression_descent(models.mlp_apply, loss="softmax_cross_entropy")
  step = _step_fn(tx)
  labels = jnp.array([0, 1, 2, 3, 0, 1])  # 3 is out of range for 3 logits
  new_params, state = step(params, tx.init(params), x, labels)
  assert _status_of(state) == transform_lib.STATUS_LABELS_OUT_OF_RANGE
  assert "labels" in rd.STATUS_MESSAGES[_status_of(state)] and _all_finite(new_params)
  _, state = step(params, tx.init(params), x, labels % 3)
  assert _status_of(state) == transform_lib.STATUS_OK


def test_jax_grad_through_an_update_with_the_default_solver():
  """Reverse mode through a step: the Cholesky solve's own rule; it agrees with eigh's."""
  params, x, y = _setup()

  def loss_after_step(scale, solver):
    tx = rd.regression_descent(models.mlp_apply, 1.0, damping=1e-2, solver=solver)
    scaled = jax.tree_util.tree_map(lambda p: p * scale, params)
    updates, _ = tx.update(None, tx.init(scaled), scaled, batch=(x, y))
    moved = optax.apply_updates(scaled, updates)
    return jnp.sum((models.mlp_apply(moved, x) - y) ** 2)

  # Jitted: one compile per solver is about three times cheaper than reverse mode op by op.
  grad = jax.jit(jax.grad(loss_after_step), static_argnums=1)
  cholesky = grad(1.0, "cholesky")
  eigh = grad(1.0, "eigh")
  assert np.isfinite(float(cholesky))
  np.testing.assert_allclose(cholesky, eigh, rtol=1e-3)


def test_multisteps_needs_gradients_and_then_steps_every_k_batches():
  """optax.MultiSteps accumulates `updates`: with RD pass zeros (RD ignores them)."""
  params, x, y = _setup()
  tx = optax.MultiSteps(rd.regression_descent(models.mlp_apply), every_k_schedule=2)
  state = tx.init(params)
  with pytest.raises((ValueError, TypeError)):
    tx.update(None, state, params, batch=(x, y))
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  update = jax.jit(lambda p, s: tx.update(zeros, s, p, batch=(x, y)))
  first, state = update(params, state)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree_util.tree_leaves(first))
  second, state = update(params, state)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree_util.tree_leaves(second))
  assert _all_finite(second)


@hypothesis.settings(max_examples=5, deadline=None)  # each example compiles anew; < 60 s
@hypothesis.given(
  log_damping=st.floats(-30, 6),
  solver=st.sampled_from(["cholesky", "eigh", "cg"]),
  dtype=st.sampled_from(["float32", "float64", "bfloat16"]),
  m=st.integers(1, 12),
  momentum=st.sampled_from([0.0, 0.5]),
  learning_rate=st.sampled_from([1.0, 0.3]),
  scale=st.sampled_from([1.0, 30.0]),
)
def test_any_update_leaves_finite_params_and_ok_means_applied(
  log_damping, solver, dtype, m, momentum, learning_rate, scale
):
  """The invariant of issue 27: finite parameters after any update; status 0 ⇒ applied, finite."""
  with jax.enable_x64(dtype == "float64"):
    params, x, y = _setup(m=m, dtype=jnp.float64 if dtype == "float64" else jnp.float32)
    params = jax.tree_util.tree_map(lambda p: (scale * p).astype(dtype), params)
    x, y = x.astype(dtype), (scale * y).astype(dtype)
    tx = rd.regression_descent(
      models.mlp_apply,
      learning_rate,
      damping=10.0**log_damping,
      solver=solver,
      momentum=momentum,
    )
    step, state = _step_fn(tx), tx.init(params)
    for _ in range(2):
      new_params, state = step(params, state, x, y)
      assert _all_finite(new_params) and _all_finite(state)
      moved = any(
        bool(jnp.any(a != b))
        for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(params))
      )
      rd_state = _rd_state(state)
      if int(rd_state.status) == transform_lib.STATUS_OK:
        assert bool(rd_state.accepted) and moved
      else:
        assert not bool(rd_state.accepted)
      params = new_params
