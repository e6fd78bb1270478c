"""Data-parallel RD (rdescent.sharding): 4 simulated CPU devices against 1 device.

The multi-device checks run in one subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (this file run as a
script), so that the rest of the suite keeps its single device. The
subprocess writes one JSON record per case; the tests below read them.

To keep the subprocess short, every variant of a model (output mode × Gram
engine) is one jitted program: one compile on one device and one per mesh.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

# The subprocess behind `multi_device` runs once per test run, also under
# pytest-xdist (see the fixture); the group keeps this file's tests together
# where the scheduler honours it.
pytestmark = pytest.mark.xdist_group("sharding")

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_DEVICES = 4
STEP_RTOL = 1e-5  # 1 device vs 4 devices, one step, float32
TRAIN_RTOL = 1e-4  # after 5 float32 steps (differences in summation order compound)
OUTPUTS = ("full", "per_output")
MESHES = ("auto", "explicit")
# K built by every device ("replicated") or in block rows (data_axis="data").
LAYOUTS = ("replicated", "row_blocks")
# (model, system, damping, Gram engines, meshes) of the one-step comparisons.
# The primal p × p system of the small model has cond(JᵀJ + λI) ≈ 3700 at
# λ = 1e-2: float32 rounding alone then moves the direction by ~2e-5 (the
# 1-device float32 step is 1.6e-5 from float64), so a 1e-5 comparison would
# test the conditioning, not the sharding. At λ = 1 the condition number is
# ≈ 44 and the 1e-5 check measures the sharding.
GROUPS = (
  ("mlp", "dual", 1e-2, None, MESHES),
  ("cnn", "dual", 1e-2, None, MESHES),
  ("small", "primal", 1.0, ("auto",), ("explicit",)),
)


def engines() -> list[str]:
  """The Gram engines of `rd.gram.METHODS` (besides "auto")."""
  import rdescent as rd

  return [m for m in rd.gram.METHODS if m != "auto"]


def _group_variants(group) -> list[tuple[str, str, str]]:
  """(outputs, engine, layout) of one group (the primal system has one layout)."""
  group_engines = group[3] if group[3] is not None else tuple(engines())
  layouts = LAYOUTS if group[1] == "dual" else ("replicated",)
  return [
    (outputs, engine, layout)
    for outputs in OUTPUTS
    for engine in group_engines
    for layout in layouts
  ]


def _variant_name(outputs: str, engine: str, layout: str) -> str:
  return f"{outputs}-{engine}" + ("" if layout == "replicated" else "-rows")


def _case_name(model: str, system: str, variant: tuple[str, str, str], mesh: str) -> str:
  """model-outputs-system-engine[-rows]-mesh: the name of one one-step comparison."""
  outputs, engine, layout = variant
  rows = _variant_name(outputs, engine, layout)[len(f"{outputs}-{engine}") :]
  return f"{model}-{outputs}-{system}-{engine}{rows}-{mesh}"


def step_cases() -> list[str]:
  """The names of the one-step comparisons (`_case_name`)."""
  return [
    _case_name(group[0], group[1], variant, mesh)
    for group in GROUPS
    for variant in _group_variants(group)
    for mesh in group[4]
  ]


def row_block_cases() -> list[str]:
  """model-outputs-engine names of the direct `row_block_gram` checks."""
  return [
    f"{model}-{outputs}-{engine}"
    for model in ("mlp", "cnn")
    for outputs in OUTPUTS
    for engine in engines()
  ]


# ----------------------------------------------------------------- subprocess


def _models():
  import jax
  import jax.numpy as jnp

  from tests import models

  def cnn_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
      "conv": {
        "w": jax.random.normal(k1, (3, 3, 1, 3)) / 3.0,
        "b": 0.1 * jax.random.normal(k3, (3,)),
      },
      "dense": {"w": jax.random.normal(k2, (48, 2)) / 7.0, "b": jnp.zeros(2)},
    }

  def cnn_apply(params, x):
    h = jax.lax.conv_general_dilated(
      x, params["conv"]["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + params["conv"]["b"]).reshape(x.shape[0], -1)
    return h @ params["dense"]["w"] + params["dense"]["b"]

  def problem(name, key, m=8):
    kp, kx, ky = jax.random.split(key, 3)
    if name == "cnn":
      params, x = cnn_init(kp), jax.random.normal(kx, (m, 6, 6, 1))
      return cnn_apply, params, x, jax.random.normal(ky, (m, 2))
    sizes = [3, 6, 3] if name == "mlp" else [2, 3, 2]
    m = m if name == "mlp" else 16
    params = models.mlp_init(kp, sizes)
    x = jax.random.normal(kx, (m, sizes[0]))
    return models.mlp_apply, params, x, jax.random.normal(ky, (m, sizes[-1]))

  return problem


def _relative(a, b) -> float:
  import jax

  from tests import models

  a, b = (models.flat(jax.tree_util.tree_map(np.asarray, t)) for t in (a, b))
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _mesh(kind, shape=(NUM_DEVICES,), names=("data",)):
  import jax
  from jax.sharding import AxisType

  axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))


def _spec_axes(spec) -> list:
  """A PartitionSpec as a JSON list (None for unsharded dimensions)."""
  return [list(entry) if isinstance(entry, tuple) else entry for entry in spec]


def _collectives_outside_entry(hlo_text: str) -> list[str]:
  """Collective ops of a compiled module that sit in a computation other than ENTRY.

  RD's solve retries inside a while loop; a collective in its body makes the
  devices rendezvous once per trip (and hung XLA:CPU on repeated calls), so
  the solve runs replicated and every collective must be in ENTRY.
  """
  import re

  found, computation = [], None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?(\S+) .*\{$", line)
    if header:
      computation = "ENTRY" if header.group(1) else header.group(2)
    elif computation != "ENTRY" and re.search(
      r"(all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)[-a-z]*\(", line
    ):
      found.append(f"{computation}: {line.strip()[:120]}")
  return found


def _batch_record(compiled, sharded_x) -> dict:
  """How the batch was laid out: the array's shards and the compiled step's input sharding."""
  return {
    "loop_collectives": _collectives_outside_entry(compiled.as_text()),
    "input_spec": _spec_axes(sharded_x.sharding.spec),
    "shard_rows": sorted(shard.index[0].start or 0 for shard in sharded_x.addressable_shards),
    "shard_sizes": [shard.data.shape[0] for shard in sharded_x.addressable_shards],
    "step_input_spec": _spec_axes(compiled.input_shardings[0][2].spec),
  }


def _group_step(model: str, system: str, damping: float, variants):
  """One jitted function returning the RD steps of all `variants` of `model`."""
  import jax

  import rdescent as rd

  apply_fn, params, x, y = _models()(model, jax.random.PRNGKey(len(model)))
  txs = {
    _variant_name(outputs, engine, layout): rd.scale_by_regression_descent(
      apply_fn,
      damping=damping,
      outputs=outputs,
      system=system,
      gram=engine,
      data_axis="data" if layout == "row_blocks" else None,
    )
    for outputs, engine, layout in variants
  }
  states = {name: tx.init(params) for name, tx in txs.items()}

  @jax.jit
  def step(params, states, x, y):
    return {name: tx.update(None, states[name], params, batch=(x, y)) for name, tx in txs.items()}

  return step, (params, states, x, y)


def _run_group(model, system, damping, variants, meshes) -> dict:
  """Records of one group: every variant on every mesh against one device."""
  import jax

  import rdescent as rd

  step, (params, states, x, y) = _group_step(model, system, damping, variants)
  expected = step(params, states, x, y)
  records = {}
  for mesh_kind in meshes:
    mesh = _mesh(mesh_kind)
    with jax.set_mesh(mesh):
      sharded_x, sharded_y = rd.sharding.shard_batch((x, y), mesh)
      placed = rd.sharding.replicate(params, mesh)
      compiled = step.lower(placed, states, sharded_x, sharded_y).compile()
      got = compiled(placed, states, sharded_x, sharded_y)
    batch_layout = _batch_record(compiled, sharded_x)
    for variant in variants:
      name = _variant_name(*variant)
      (direction, new_state), (want, want_state) = got[name], expected[name]
      records[_case_name(model, system, variant, mesh_kind)] = {
        "direction_rel": _relative(direction, want),
        "loss_rel": abs(float(new_state.loss) / float(want_state.loss) - 1.0),
        "status": int(new_state.status),
        "direction_spec": _spec_axes(jax.tree_util.tree_leaves(direction)[0].sharding.spec),
        **batch_layout,
      }
  return records


def _step_records() -> dict:
  """All one-step records; a group that fails is rerun variant by variant to name the culprit."""
  records = {}
  for model, system, damping, _, meshes in GROUPS:
    group = next(g for g in GROUPS if g[0] == model)
    variants = _group_variants(group)
    try:
      records.update(_run_group(model, system, damping, variants, meshes))
    except Exception:  # pylint: disable=broad-except
      for variant in variants:
        try:
          records.update(_run_group(model, system, damping, [variant], meshes))
        except Exception as error:  # reported per case by the tests
          for mesh_kind in meshes:
            records[_case_name(model, system, variant, mesh_kind)] = {
              "error": f"{type(error).__name__}: {error}"[:2000]
            }
  return records


def _row_block_grams() -> dict:
  """K from `row_block_gram` on 4 devices against `gram_matrix` on one, and its layout."""
  import jax

  import rdescent as rd

  records = {}
  mesh = _mesh("auto")
  for model in ("mlp", "cnn"):
    apply_fn, params, x, _ = _models()(model, jax.random.PRNGKey(11))
    for outputs in OUTPUTS:
      for engine in engines():
        name = f"{model}-{outputs}-{engine}"
        try:
          expected = rd.gram.gram_matrix(apply_fn, params, x, method=engine, outputs=outputs)
          build = jax.jit(
            functools.partial(
              rd.sharding.row_block_gram, apply_fn, axis="data", method=engine, outputs=outputs
            )
          )
          with jax.set_mesh(mesh):
            got = build(rd.sharding.replicate(params, mesh), rd.sharding.shard_batch(x, mesh))
          records[name] = {
            "rel": float(
              np.linalg.norm(np.asarray(got) - np.asarray(expected))
              / np.linalg.norm(np.asarray(expected))
            ),
            "spec": _spec_axes(got.sharding.spec),
            "shape": list(got.shape),
            "shard_shapes": [list(shard.data.shape) for shard in got.addressable_shards],
          }
        except Exception as error:  # reported per case by the tests
          records[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
  return records


def _training(steps: int = 5, m: int = 32) -> dict:
  """5 RD steps (LM damping) on 5 batches of a noisy teacher network, sharded and not."""
  import jax
  import optax

  import rdescent as rd
  from tests import models

  apply_fn, params, x, noise = _models()("mlp", jax.random.PRNGKey(7), m=m * steps)
  # Targets of a teacher network plus noise: the loss falls but stays away from
  # 0, where relative loss differences would only measure float32 cancellation.
  y = apply_fn(models.mlp_init(jax.random.PRNGKey(8), [3, 6, 3]), x) + 0.3 * noise
  tx = rd.regression_descent(
    apply_fn, learning_rate=1.0, damping=rd.damping.levenberg_marquardt(initial=1e-2)
  )

  @jax.jit
  def train_step(params, opt_state, batch):
    updates, opt_state = tx.update(None, opt_state, params, batch=batch)
    return optax.apply_updates(params, updates), opt_state

  def train(params, place):
    opt_state, losses = tx.init(params), []
    for i in range(steps):
      batch = place((x[m * i : m * (i + 1)], y[m * i : m * (i + 1)]))
      params, opt_state = train_step(params, opt_state, batch)
      losses.append(float(opt_state[0].loss))
    return params, losses

  expected, expected_losses = train(params, lambda batch: batch)
  mesh = _mesh("explicit")
  with jax.set_mesh(mesh):
    trained, losses = train(
      rd.sharding.replicate(params, mesh), lambda batch: rd.sharding.shard_batch(batch, mesh)
    )
  return {
    "params_rel": _relative(trained, expected),
    "loss_rel": max(abs(a / b - 1.0) for a, b in zip(losses, expected_losses)),
    "losses": expected_losses,
    "param_specs": [_spec_axes(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(trained)],
  }


def _coupled(mesh_kind: str, steps: int = 3, m: int = 16) -> dict:
  """examples="coupled" (batch normalisation inside apply_fn): 3 LM steps, sharded and not."""
  import jax
  import optax

  import rdescent as rd
  from tests import models

  def bn_apply(params, x):
    return models.batch_norm_mlp_apply(params, x)

  params = models.mlp_init(jax.random.PRNGKey(9), [3, 6, 2])
  x = jax.random.normal(jax.random.PRNGKey(10), (m, 3))
  y = jax.random.normal(jax.random.PRNGKey(11), (m, 2))
  tx = rd.regression_descent(
    bn_apply, 1.0, damping=rd.damping.levenberg_marquardt(initial=1e-2), examples="coupled"
  )

  @jax.jit
  def train(params, batch):
    def body(carry, _):
      params, opt_state = carry
      updates, opt_state = tx.update(None, opt_state, params, batch=batch)
      return (optax.apply_updates(params, updates), opt_state), opt_state[0].status

    (params, _), statuses = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params, statuses

  expected, _ = train(params, (x, y))
  mesh = _mesh(mesh_kind)
  with jax.set_mesh(mesh):
    trained, statuses = train(
      rd.sharding.replicate(params, mesh), rd.sharding.shard_batch((x, y), mesh)
    )
  return {
    "params_rel": _relative(trained, expected),
    "statuses": [int(s) for s in statuses],
  }


def _tensor_parallel(mesh_kind: str) -> dict:
  """2 × 2 mesh: batch over "data", the first layer's units over "model"."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import rdescent as rd

  apply_fn, params, x, y = _models()("mlp", jax.random.PRNGKey(3))
  tx = rd.scale_by_regression_descent(apply_fn, damping=1e-2, gram="jacobian")
  step = _tensor_step(apply_fn)
  state = tx.init(params)
  expected, _ = step(params, state, x, y)
  mesh = _mesh(mesh_kind, (2, 2), ("data", "model"))
  with jax.set_mesh(mesh):
    placed = rd.sharding.replicate(params, mesh)
    placed[0] = {
      "w": jax.device_put(params[0]["w"], NamedSharding(mesh, P(None, "model"))),
      "b": jax.device_put(params[0]["b"], NamedSharding(mesh, P("model"))),
    }
    batch = rd.sharding.shard_batch((x, y), mesh, axis="data")
    direction, new_state = step(placed, state, *batch)
  return {
    "direction_rel": _relative(direction, expected),
    "status": int(new_state.status),
    "input_spec": _spec_axes(batch[0].sharding.spec),
    "kernel_spec": _spec_axes(direction[0]["w"].sharding.spec),
    "bias_spec": _spec_axes(direction[0]["b"].sharding.spec),
  }


@functools.cache
def _tensor_step(apply_fn):
  """The jitted step of the tensor-parallel cases (one trace, compiled per mesh)."""
  import jax

  import rdescent as rd

  tx = rd.scale_by_regression_descent(apply_fn, damping=1e-2, gram="jacobian")
  return jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y)))


def _lapack_calls(hlo_text: str) -> list[list]:
  """[target, result shape] of every LAPACK custom call of a compiled module."""
  import re

  calls = []
  for line in hlo_text.splitlines():
    target = re.search(r'custom_call_target="(lapack_[a-z]+)', line)
    if target:
      shape = re.search(r"= \(?[a-z0-9]+\[([0-9,]*)\]", line)
      calls.append([target.group(1), [int(d) for d in shape.group(1).split(",") if d]])
  return calls


def _per_output_repeated(calls: int = 20, m: int = 64) -> dict:
  """Per-output steps (k = 10 Cholesky solves, GCV eigendecompositions) called repeatedly.

  Batched LAPACK kernels wait on the thread pool that runs the devices'
  programs; with several CPU devices they must run one matrix at a time
  (`rdescent._batch_linalg`), or the step hangs after a call or two.
  """
  import jax

  import rdescent as rd
  from tests import models

  kp, kx, ky = jax.random.split(jax.random.PRNGKey(5), 3)
  params = models.mlp_init(kp, [8, 16, 10])
  x, y = jax.random.normal(kx, (m, 8)), jax.random.normal(ky, (m, 10))
  txs = [
    rd.scale_by_regression_descent(
      models.mlp_apply, damping=damping, outputs="per_output", system="dual"
    )
    for damping in (1e-3, rd.damping.gcv())
  ]
  states = [tx.init(params) for tx in txs]
  step = jax.jit(
    lambda p, s, x, y: [tx.update(None, si, p, batch=(x, y)) for tx, si in zip(txs, s)]
  )
  mesh = _mesh("explicit")
  with jax.set_mesh(mesh):
    args = (rd.sharding.replicate(params, mesh), states, *rd.sharding.shard_batch((x, y), mesh))
    compiled = step.lower(*args).compile()
    for _ in range(calls):
      out = jax.block_until_ready(compiled(*args))
  return {
    "calls": calls,
    "lapack": _lapack_calls(compiled.as_text()),
    "status": [int(state.status) for _, state in out],
  }


def _run_all() -> dict:
  import jax

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  results = _step_records()
  results.update({f"rowgram-{name}": record for name, record in _row_block_grams().items()})
  for name, fn in (
    [("training", _training)]
    + [(f"tensor-{k}", functools.partial(_tensor_parallel, k)) for k in MESHES]
    + [("per-output-repeated", _per_output_repeated)]
    + [(f"coupled-{k}", functools.partial(_coupled, k)) for k in MESHES]
  ):
    try:
      results[name] = fn()
    except Exception as error:  # reported per case by the tests
      results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
  return results


def _multi_device_results() -> dict:
  # Optimisation level 0 of the CPU backend halves the compile time; both the
  # 1-device and the 4-device programs are compiled with it.
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES} "
    "--xla_backend_optimization_level=0",
    JAX_PLATFORMS="cpu",
  )
  done = subprocess.run(
    [sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def multi_device(tmp_path_factory, worker_id):
  """The subprocess's records, computed once per test run.

  Under pytest-xdist the workers share a base temporary directory: the first
  worker to ask runs the subprocess (holding a lock file) and writes the
  records there; the others wait for them and read them.
  """
  if worker_id == "master":
    return _multi_device_results()
  shared = tmp_path_factory.getbasetemp().parent
  results, lock = shared / "multi_device.json", shared / "multi_device.lock"
  try:
    os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    deadline = time.monotonic() + 900
    while not results.exists():
      if time.monotonic() > deadline:
        pytest.fail("the multi-device subprocess of another worker did not finish")
      time.sleep(1.0)
    return json.loads(results.read_text())
  records = _multi_device_results()
  partial = shared / "multi_device.json.partial"
  partial.write_text(json.dumps(records))
  partial.replace(results)
  return records


def _record(results, name):
  record = results[name]
  assert "error" not in record, record["error"]
  return record


def _assert_batch_split(record, devices=NUM_DEVICES, m=None):
  """The batch is split along its example axis: one block of m/n rows per device."""
  assert record["input_spec"][0] == "data", record
  sizes = record["shard_sizes"]
  assert len(sizes) == devices and len(set(sizes)) == 1, record
  assert record["shard_rows"] == [i * sizes[0] for i in range(devices)], record


@pytest.mark.parametrize("case", step_cases())
def test_four_device_step_equals_one_device_step(multi_device, case):
  record = _record(multi_device, case)
  assert record["status"] == 0
  _assert_batch_split(record)
  # The compiled sharded step received the batch split over "data" (not gathered first).
  assert record["step_input_spec"][0] == "data", record
  assert record["loop_collectives"] == [], record
  # Replicated parameters give a replicated direction.
  assert all(axis is None for axis in record["direction_spec"]), record
  assert record["direction_rel"] <= STEP_RTOL, record
  assert record["loss_rel"] <= STEP_RTOL, record


def test_sharded_training_run_matches_unsharded(multi_device):
  record = _record(multi_device, "training")
  assert record["losses"][-1] < record["losses"][0], record
  assert record["params_rel"] <= TRAIN_RTOL, record
  assert record["loss_rel"] <= TRAIN_RTOL, record
  # The parameters stay replicated (nothing sharded over "data").
  assert all(axis is None for spec in record["param_specs"] for axis in spec), record


@pytest.mark.parametrize("mesh_kind", MESHES)
def test_coupled_examples_step_on_a_mesh_equals_one_device(multi_device, mesh_kind):
  record = _record(multi_device, f"coupled-{mesh_kind}")
  assert record["statuses"] == [0, 0, 0], record
  assert record["params_rel"] <= TRAIN_RTOL, record


@pytest.mark.parametrize("case", row_block_cases())
def test_row_block_gram_gives_each_device_its_block_row(multi_device, case):
  record = _record(multi_device, f"rowgram-{case}")
  assert record["rel"] <= STEP_RTOL, record
  # K's rows (per output: the rows of every K_c) are split over "data": each
  # of the 4 devices holds the block row of its own examples.
  full = "-full-" in case
  assert record["spec"][0 if full else 1] == "data", record
  rows = record["shape"][0 if full else 1]
  expected_shard = list(record["shape"])
  expected_shard[0 if full else 1] = rows // NUM_DEVICES
  assert record["shard_shapes"] == [expected_shard] * NUM_DEVICES, record


@pytest.mark.parametrize("mesh_kind", MESHES)
def test_parameter_sharded_over_a_model_axis(multi_device, mesh_kind):
  record = _record(multi_device, f"tensor-{mesh_kind}")
  assert record["status"] == 0
  assert record["input_spec"][0] == "data", record
  assert record["direction_rel"] <= STEP_RTOL, record
  # The direction keeps the parameter's model-parallel layout.
  assert record["kernel_spec"] == [None, "model"], record
  assert record["bias_spec"] == ["model"], record


# ----------------------------------------------------------------- in process


def test_data_axis_is_checked_and_a_one_device_mesh_changes_nothing():
  import jax

  import rdescent as rd
  from tests import models

  apply_fn, params, x, y = _models()("mlp", jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="data_axis"):
    rd.scale_by_regression_descent(apply_fn, data_axis=0)
  plain = rd.scale_by_regression_descent(apply_fn, damping=1e-2)
  rows = rd.scale_by_regression_descent(apply_fn, damping=1e-2, data_axis="data")
  wrong = rd.scale_by_regression_descent(apply_fn, damping=1e-2, data_axis="batch")
  step = lambda tx: jax.jit(lambda p, s, x, y: tx.update(None, s, p, batch=(x, y))[0])
  expected = step(plain)(params, plain.init(params), x, y)
  mesh = jax.make_mesh((1,), ("data",))
  with jax.set_mesh(mesh):
    batch = rd.sharding.shard_batch((x, y), mesh)
    got = step(rows)(rd.sharding.replicate(params, mesh), rows.init(params), *batch)
    with pytest.raises(ValueError, match="data_axis='batch' is not an axis"):
      step(wrong)(params, wrong.init(params), *batch)
  np.testing.assert_allclose(models.flat(got), models.flat(expected), rtol=1e-6, atol=1e-7)


def test_shard_batch_and_replicate_on_a_one_device_mesh():
  import jax
  import jax.numpy as jnp

  import rdescent as rd

  mesh = jax.make_mesh((1,), ("data",))
  x, y = jnp.ones((6, 2)), jnp.zeros((6,))
  sx, sy = rd.sharding.shard_batch((x, y), mesh)
  assert sx.sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(sx, x)
  params = rd.sharding.replicate({"w": jnp.ones(3)}, mesh)
  assert params["w"].sharding.spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="not an axis of the mesh"):
    rd.sharding.shard_batch((x, y), mesh, axis="batch")
  with pytest.raises(ValueError, match="leading example axis"):
    rd.sharding.shard_batch(jnp.float32(1.0), mesh)


def test_repeated_per_output_steps_use_unbatched_lapack(multi_device):
  record = _record(multi_device, "per-output-repeated")
  assert record["status"] == [0, 0], record
  targets = {target for target, _ in record["lapack"]}
  # Cholesky factor, triangular solves and the GCV eigendecomposition are there ...
  assert any("potrf" in t for t in targets) and any("syevd" in t for t in targets), record
  # ... each on one matrix (rank ≤ 2 results): no batched kernel waits on the pool.
  assert all(len(shape) <= 2 for _, shape in record["lapack"]), record


if __name__ == "__main__":
  print(json.dumps(_run_all()))
