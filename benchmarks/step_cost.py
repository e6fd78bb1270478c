"""Step-cost study: one RD step against its floor and against an Adam step, per model.

    python -m benchmarks run step_cost --out DIR      # DIR/step_cost.json and step_cost.png
    python -m benchmarks run step_cost --quick --out DIR   # tiny models, 2 calls: a smoke test

(`--seeds N` sets the number of timed rounds, at least 15.)

For each model (random inputs and targets of the right shapes: the cost of a
step does not depend on the data) it times the parts below, each its own
jitted function, compiled before the clock starts (compile seconds recorded
separately) and called once to warm up; then `time_parts` calls them in
interleaved rounds, each call alone and waited for (`block_until_ready`), and
reports the median per part:

* `rd_full`: `rd.regression_descent(apply_fn, 1.0, damping=1e-3)`, update +
  `optax.apply_updates` (full mode, constant λ);
* `rd_per_output`: the same with `outputs="per_output"`;
* `rd_lm`: full mode with `damping=rd.damping.levenberg_marquardt()`, from the
  initial state (the λ it starts from, the λ of the accepted solve, which
  shows whether solves were rejected, and the controller's next λ are recorded);
* `gram_structured`, `gram_jacobian`: `rd.gram_matrix(apply_fn, params, x,
  method=...)` alone, K of shape (m k, m k); `auto_choice` is the engine whose
  traced program `method="auto"` gives (timed on its own when it matches
  neither);
* `cholesky`: a plain `jax.scipy.linalg.cho_factor` / `cho_solve` of an
  (m k) × (m k) SPD matrix and one right-hand side;
* `forward`: one `apply_fn(params, x)`;
* `coupling_check`: the default's per-step check that the examples are
  independent (`rdescent.problem.examples_consistent`: each example evaluated
  alone against the batch call's outputs), part of every RD step above;
* `adam`: `optax.adam(1e-3)` on `jax.value_and_grad` of the summed squared
  error, update + `optax.apply_updates`.

The floor of a full-mode step is what its arithmetic needs:

    floor = min(Gram structured, Gram jacobian) + Cholesky + 3 forward passes

(the step's VJPs for the residual and the cotangents, and Jᵀα, each cost about
a forward pass).
"""

from __future__ import annotations

import os
import pathlib
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import lorenz96
from benchmarks import models
from benchmarks import plotting
from benchmarks import registry
from benchmarks import saturation
from benchmarks.runner import StudyOptions
from benchmarks.runner import machine_info
from rdescent import problem as problem_lib

FULL_REPEATS = 21
QUICK_REPEATS = 2
SLOW_CALL_S = 1.0
SLOW_SAMPLES = 3
SLICE_S = 0.01  # a fast function is called this long in each round (at least once a round)
RD_DAMPING = 1e-3
ADAM_LEARNING_RATE = 1e-3
ENGINES = ("structured", "jacobian")
THREAD_VARIABLES = ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Measurements of one model, in the order they are timed (and the JSON keys).
PARTS = (
  "rd_full",
  "rd_per_output",
  "rd_lm",
  "gram_structured",
  "gram_jacobian",
  "cholesky",
  "forward",
  "adam",
)


class Case(NamedTuple):
  """One model of the study: `apply(params, x) -> (m, k)` at batch size m.

  Attributes:
    name: the table's row label (model and batch).
    apply: `apply_fn(params, inputs) -> (m, k)`.
    params: the parameter pytree.
    inputs: a batch, leading axis m.
    targets: (m, k) targets.
    integer_inputs: the inputs are token ids (passed to RD as `integer_inputs`).
  """

  name: str
  apply: Callable[[Any, Any], jax.Array]
  params: Any
  inputs: jax.Array
  targets: jax.Array
  integer_inputs: bool = False


# ---------------------------------------------------------------- models


def _one_hot_targets(key: jax.Array, m: int, k: int) -> jax.Array:
  return jax.nn.one_hot(jax.random.randint(key, (m,), 0, k), k, dtype=jnp.float32)


def _mlp_case(
  name: str, sizes: list[int], activation: str, m: int, images: bool, seed: int
) -> Case:
  """An MLP case: inputs uniform in [0, 1] with one-hot targets (images), else normal."""
  model = models.mlp(sizes, activation)
  key = jax.random.PRNGKey(seed)
  kx, ky = jax.random.split(jax.random.fold_in(key, 1))
  if images:
    x = jax.random.uniform(kx, (m, sizes[0]))
    y = _one_hot_targets(ky, m, sizes[-1])
  else:
    x = jax.random.normal(kx, (m, sizes[0]))
    y = jax.random.normal(ky, (m, sizes[-1]))
  return Case(f"{name} {'-'.join(map(str, sizes))}, m = {m}", model.apply, model.init(key), x, y)


def _cnn_case(m: int, channels: int, side: int) -> Case:
  model = models.small_cnn(channels=channels, side=side)
  key = jax.random.PRNGKey(3)
  kx, ky = jax.random.split(jax.random.fold_in(key, 1))
  x = jax.random.uniform(kx, (m, side, side, 1))
  return Case(
    f"SmallCNN conv 1→{channels} on {side}×{side}×1, m = {m}",
    model.apply,
    model.init(key),
    x,
    _one_hot_targets(ky, m, 10),
  )


def transformer_case(
  m: int, sequence: int, vocab: int, width: int, heads: int, hidden: int, outputs: int
) -> Case:
  """A one-block Flax linen transformer on token ids (m, sequence) -> (m, outputs).

  Embed(vocab, width) → x + MHA(LayerNorm(x)) (`heads` heads) → x +
  MLP(LayerNorm(x)) (width → hidden → width, GELU) → mean over the sequence →
  Dense(outputs). At (64, 32, 4, 64, 8): 10,856 parameters.
  """
  from flax import linen

  import rdescent.flax

  class Block(linen.Module):
    @linen.compact
    def __call__(self, tokens):
      x = linen.Embed(vocab, width)(tokens)
      x = x + linen.MultiHeadDotProductAttention(num_heads=heads, qkv_features=width)(
        linen.LayerNorm()(x)
      )
      h = linen.Dense(hidden)(linen.LayerNorm()(x))
      x = x + linen.Dense(width)(jax.nn.gelu(h))
      return linen.Dense(outputs)(x.mean(axis=1))

  model = Block()
  key = jax.random.PRNGKey(4)
  kx, ky = jax.random.split(jax.random.fold_in(key, 1))
  tokens = jax.random.randint(kx, (m, sequence), 0, vocab)
  params = model.init(key, tokens)["params"]
  return Case(
    f"transformer block (linen, {heads} heads, width {width}), m = {m}, "
    f"sequence {sequence}, k = {outputs}",
    rdescent.flax.linen_apply_fn(model),
    params,
    tokens,
    jax.random.normal(ky, (m, outputs)),
    integer_inputs=True,
  )


def cases(quick: bool) -> list[Case]:
  """The study's models: the four of issue 18 and a small transformer block.

  Quick: a tiny MLP, SmallCNN and transformer block (a smoke test of every path).
  """
  if quick:  # one of each kind of model (dense, convolution, Flax attention), tiny
    return [
      _mlp_case("saturated sigmoid MLP", [16, 4, 4, 4, 4, 4, 3], "sigmoid", 4, True, 0),
      _cnn_case(4, channels=2, side=8),
      transformer_case(4, sequence=4, vocab=8, width=8, heads=4, hidden=8, outputs=2),
    ]
  hidden = lorenz96.FULL["hidden"]
  return [
    _mlp_case("saturated sigmoid MLP", list(saturation.SIZES), "sigmoid", 32, True, 0),
    _cnn_case(32, channels=8, side=28),
    _mlp_case("Lorenz96 MLP", [40, hidden, hidden, 40], "tanh", 32, False, 1),
    _mlp_case("MNIST MLP", [784, 256, 256, 10], "tanh", 128, True, 2),
    transformer_case(32, sequence=16, vocab=64, width=32, heads=4, hidden=64, outputs=8),
  ]


# ---------------------------------------------------------------- timing


class Compiled(NamedTuple):
  """A compiled function with its arguments, its compile seconds and its first call."""

  call: Callable[[], Any]
  compile_s: float
  first_s: float
  output: Any


def compile_and_warm(fn: Callable[..., Any], args: tuple) -> Compiled:
  """`jax.jit(fn)` compiled for `args` (timed), then called once (the warm-up, timed)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  output = jax.block_until_ready(compiled(*args))
  return Compiled(lambda: compiled(*args), compile_s, time.perf_counter() - start, output)


def _call_seconds(call: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(call())
  return time.perf_counter() - start


def time_parts(
  parts: Mapping[str, Compiled], repeats: int, slice_s: float = SLICE_S
) -> dict[str, dict[str, Any]]:
  """Median ms per call of each compiled part, the parts timed in interleaved rounds.

  Each of `repeats` rounds calls every part in turn, each call alone and
  waited for: a part whose warm-up took t seconds is called max(1,
  round(slice_s / t)) times a round, so a fast part is sampled more often.
  Interleaving puts the load of a busy machine on all parts of a model alike,
  so that their ratios (step / floor, step / Adam) stay meaningful.

  A part whose warm-up and next call both took more than `SLOW_CALL_S` (the
  jacobian engine on the large MLPs) is timed apart, over `SLOW_SAMPLES`
  calls, the warm-up included.

  Returns:
    name -> {"ms": median, "min_ms": fastest, "calls": samples, "compile_s"}.
  """
  times: dict[str, list[float]] = {name: [] for name in parts}
  slow = []
  for name, part in parts.items():
    if part.first_s > SLOW_CALL_S:  # slow, or slowed by a busy machine: one more call tells
      times[name] = [part.first_s, _call_seconds(part.call)]
      if min(times[name]) > SLOW_CALL_S:
        slow.append(name)
        while len(times[name]) < SLOW_SAMPLES:
          times[name].append(_call_seconds(part.call))
      else:
        times[name] = []
  per_round = {
    name: max(1, min(100, round(slice_s / max(part.first_s, 1e-9))))
    for name, part in parts.items()
    if name not in slow
  }
  for _ in range(repeats):
    for name, count in per_round.items():
      for _ in range(count):
        times[name].append(_call_seconds(parts[name].call))
  return {
    name: {
      "ms": 1e3 * statistics.median(samples),
      "min_ms": 1e3 * min(samples),
      "calls": len(samples),
      "compile_s": parts[name].compile_s,
    }
    for name, samples in times.items()
  }


def rd_step_fn(tx: optax.GradientTransformationExtraArgs) -> Callable[..., Any]:
  """(params, state, x, y) -> (params, state): one RD update and `apply_updates`."""

  def step(params, state, x, y):
    updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  return step


def adam_step_fn(apply_fn: Callable[..., jax.Array], tx: optax.GradientTransformation):
  """(params, state, x, y) -> (params, state, loss): Adam on the summed squared error."""

  def loss_fn(params, x, y):
    return jnp.sum(jnp.square(apply_fn(params, x) - y))

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step


def auto_choice(case: Case) -> str:
  """The engine whose program `gram_matrix(method="auto")` traces to, or "other"."""

  def program(method: str) -> str:
    fn = lambda p, x: rd.gram_matrix(case.apply, p, x, method=method)
    return str(jax.make_jaxpr(fn)(case.params, case.inputs))

  auto = program("auto")
  for engine in ENGINES:
    if program(engine) == auto:
      return engine
  return "other"


def _spd_system(size: int) -> tuple[jax.Array, jax.Array]:
  """A well-conditioned (size, size) SPD matrix A = G Gᵀ / size + I and a right-hand side."""
  key = jax.random.PRNGKey(size)
  g = jax.random.normal(key, (size, size))
  return g @ g.T / size + jnp.eye(size), jax.random.normal(jax.random.fold_in(key, 1), (size,))


def plain_cholesky(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
  """(A, b) -> A⁻¹ b by `cho_factor` / `cho_solve` (no damping, no checks)."""
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(matrix, lower=True), rhs)


def _rd_state(state: Any) -> Any:
  """The `RegressionDescentState` inside an optax chain's state (None if there is none)."""
  for leaf in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "num_rejected")):
    if hasattr(leaf, "num_rejected") and hasattr(leaf, "damping"):
      return leaf
  return None


def damping_record(before: Any, after: Any) -> dict[str, Any]:
  """λ of a controlled step: initial, used by the step, the controller's next, and accepted."""
  old, new = _rd_state(before), _rd_state(after)
  if old is None or new is None:
    return {}
  controller_damping = lambda s: getattr(s.damping_state, "damping", s.damping)
  return {
    "damping_initial": float(controller_damping(old)),
    "damping_used": float(new.damping),
    "damping_next": float(controller_damping(new)),
    "accepted": bool(new.accepted),
  }


def measure_case(case: Case, repeats: int, slice_s: float, progress: bool) -> dict[str, Any]:
  """Every measurement of one model (see the module docstring)."""
  params, x, y = case.params, case.inputs, case.targets
  m, k = y.shape
  size = m * k
  rd_options = dict(integer_inputs=case.integer_inputs)
  transforms = {
    "rd_full": rd.regression_descent(case.apply, 1.0, damping=RD_DAMPING, **rd_options),
    "rd_per_output": rd.regression_descent(
      case.apply, 1.0, damping=RD_DAMPING, outputs="per_output", **rd_options
    ),
    "rd_lm": rd.regression_descent(
      case.apply, 1.0, damping=rd.damping.levenberg_marquardt(), **rd_options
    ),
  }
  adam = optax.adam(ADAM_LEARNING_RATE)
  matrix, rhs = _spd_system(size)
  calls: dict[str, tuple[Callable[..., Any], tuple]] = {
    name: (rd_step_fn(tx), (params, tx.init(params), x, y)) for name, tx in transforms.items()
  }
  for engine in ENGINES:
    calls[f"gram_{engine}"] = (
      lambda p, x, engine=engine: rd.gram_matrix(case.apply, p, x, method=engine),
      (params, x),
    )
  calls["cholesky"] = (plain_cholesky, (matrix, rhs))
  calls["forward"] = (case.apply, (params, x))
  # The default's per-step check that examples are independent (each example alone
  # against the batch call's outputs): what `examples="independent"` costs.
  flat_outputs = jax.jit(case.apply)(params, x).reshape(m, -1)
  calls["coupling_check"] = (
    lambda p, x, outputs: problem_lib.examples_consistent(case.apply, p, x, outputs),
    (params, x, flat_outputs),
  )
  calls["adam"] = (adam_step_fn(case.apply, adam), (params, adam.init(params), x, y))

  choice = auto_choice(case)
  if choice == "other":  # neither engine's program: timed on its own
    calls["gram_auto"] = (
      lambda p, x: rd.gram_matrix(case.apply, p, x, method="auto"),
      (params, x),
    )
  compiled = {}
  for name, (fn, args) in calls.items():
    compiled[name] = compile_and_warm(fn, args)
    if progress:
      print(
        f"step_cost {case.name[:40]:40s} {name:16s} compiled in {compiled[name].compile_s:5.1f} s, "
        f"first call {1e3 * compiled[name].first_s:10.3f} ms",
        flush=True,
      )
  parts = time_parts(compiled, repeats, slice_s)
  parts["rd_lm"].update(damping_record(calls["rd_lm"][1][1], compiled["rd_lm"].output[1]))
  gram_ms = {engine: parts[f"gram_{engine}"]["ms"] for engine in ENGINES}
  fastest = min(gram_ms, key=gram_ms.__getitem__)
  floor = gram_ms[fastest] + parts["cholesky"]["ms"] + 3 * parts["forward"]["ms"]
  auto_ms = parts["gram_auto"]["ms"] if choice == "other" else gram_ms[choice]
  # The same from each part's fastest call: what a busy machine's load spares.
  floor_min = (
    min(parts[f"gram_{engine}"]["min_ms"] for engine in ENGINES)
    + parts["cholesky"]["min_ms"]
    + 3 * parts["forward"]["min_ms"]
  )
  return {
    "model": case.name,
    "num_params": models.num_params(params),
    "m": int(m),
    "k": int(k),
    "system_size": int(size),
    "parts": parts,
    "auto_choice": choice,
    "auto_gram_ms": auto_ms,
    "fastest_engine": fastest,
    "floor_ms": floor,
    "step_over_floor": parts["rd_full"]["ms"] / floor,
    "step_over_adam": parts["rd_full"]["ms"] / parts["adam"]["ms"],
    "floor_min_ms": floor_min,
    "step_over_floor_min": parts["rd_full"]["min_ms"] / floor_min,
    "step_over_adam_min": parts["rd_full"]["min_ms"] / parts["adam"]["min_ms"],
    "per_output_over_adam": parts["rd_per_output"]["ms"] / parts["adam"]["ms"],
    "lm_over_full": parts["rd_lm"]["ms"] / parts["rd_full"]["ms"],
    "coupling_check_over_forward": parts["coupling_check"]["ms"] / parts["forward"]["ms"],
  }


def run(options: StudyOptions) -> dict[str, Any]:
  repeats = QUICK_REPEATS if options.quick else max(options.seeds or FULL_REPEATS, 15)
  slice_s = 0.0 if options.quick else SLICE_S
  rows = [measure_case(case, repeats, slice_s, options.progress) for case in cases(options.quick)]
  return {
    "study": "step_cost",
    "kind": "step_cost",
    "command": options.command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "settings": {  # not "config": the report reads a training budget and seeds from that
      "repeats": repeats,
      "slow_call_s": SLOW_CALL_S,
      "slow_samples": SLOW_SAMPLES,
      "slice_s": slice_s,
      "timing": "interleaved rounds (time_parts)",
      "rd_damping": RD_DAMPING,
      "adam_learning_rate": ADAM_LEARNING_RATE,
      "floor": "min-engine Gram + plain Cholesky + 3 forward passes",
      "quick": options.quick,
      # Threading of XLA:CPU and of the LAPACK behind `cho_factor` (OpenBLAS): on a busy
      # machine a multi-threaded Cholesky is far slower in the median than in its fastest call.
      "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    },
    "rows": rows,
  }


# ---------------------------------------------------------------- table and plot


def _ms(value: float | None) -> str:
  return "–" if value is None else f"{value:.3g}"


def _coupling_check(row: Mapping[str, Any]) -> str:
  part = row["parts"].get("coupling_check")
  if part is None:  # results from before the check existed
    return "–"
  return f"{_ms(part['ms'])} ({row['coupling_check_over_forward']:.2g}×)"


def markdown_table(result: Mapping[str, Any]) -> str:
  """The step against its floor and Adam's step; then the other RD steps and compile times."""
  lines = [
    "One RD step against its floor and an Adam step, per model, every part timed in the same "
    "run (`benchmarks/step_cost.py`; the floor and the timing protocol are explained below the "
    "tables).",
    "",
    "| model, batch | system | RD full step ms | floor ms (Gram + Cholesky + 3 fwd) | "
    "step / floor | Gram ms structured / jacobian (auto's choice) | Cholesky ms | forward ms | "
    "Adam step ms | step / Adam |",
    "|" + "---|" * 10,
  ]
  for r in result["rows"]:
    p = r["parts"]
    grams = " / ".join(
      f"**{_ms(p[f'gram_{e}']['ms'])}**" if e == r["fastest_engine"] else _ms(p[f"gram_{e}"]["ms"])
      for e in ENGINES
    )
    auto = r["auto_choice"]
    if auto == "other":
      auto = f"other, {_ms(r['auto_gram_ms'])}"
    fastest = p["gram_" + r["fastest_engine"]]["ms"]
    floor_parts = f"{_ms(fastest)} + {_ms(p['cholesky']['ms'])} + 3 × {_ms(p['forward']['ms'])}"
    lines.append(
      f"| {r['model']} | {r['system_size']} | {_ms(p['rd_full']['ms'])} | "
      f"{_ms(r['floor_ms'])} ({floor_parts}) | {r['step_over_floor']:.2g}× | {grams} ({auto}) | "
      f"{_ms(p['cholesky']['ms'])} | {_ms(p['forward']['ms'])} | {_ms(p['adam']['ms'])} | "
      f"{r['step_over_adam']:.3g}× |"
    )
  lines += [
    "",
    "| model, batch | parameters | RD full + LM ms (λ initial → used, next) | LM / full | "
    "RD per-output ms | per-output / Adam | fastest calls: step / floor, step / Adam | "
    "compile s: full / LM / per-output / Adam | coupling check ms (/ forward) |",
    "|" + "---|" * 9,
  ]
  for r in result["rows"]:
    p = r["parts"]
    lm = p["rd_lm"]
    lm_state = ""
    if "damping_used" in lm:
      lm_state = (
        f" (λ {lm['damping_initial']:.2g} → {lm['damping_used']:.2g} used, next "
        f"{lm['damping_next']:.2g}{'' if lm['accepted'] else ', rejected'})"
      )
    compile_s = " / ".join(
      f"{p[name]['compile_s']:.1f}" for name in ("rd_full", "rd_lm", "rd_per_output", "adam")
    )
    lines.append(
      f"| {r['model']} | {r['num_params']:,} | {_ms(lm['ms'])}{lm_state} | "
      f"{r['lm_over_full']:.2g}× | {_ms(p['rd_per_output']['ms'])} | "
      f"{r['per_output_over_adam']:.3g}× | {r['step_over_floor_min']:.2g}×, "
      f"{r['step_over_adam_min']:.3g}× | {compile_s} | {_coupling_check(r)} |"
    )
  config = result["settings"]
  slow = [
    f"{r['model'].split(',')[0]} {name}"
    for r in result["rows"]
    for name, t in r["parts"].items()
    if t["calls"] < config["repeats"]
  ]
  lines += [
    "",
    f"Each part is its own jitted function, each call timed alone; the parts of a model are "
    f"timed in {config['repeats']} interleaved rounds after a warm-up call"
    + (
      f" (a part faster than {1e3 * config['slice_s']:g} ms is called several times a round)"
      if config["slice_s"] > 0
      else ""
    )
    + ", median over all its calls, compile excluded "
    f"(slower than {config['slow_call_s']:g} s a call: {config['slow_samples']} calls, the "
    "warm-up included"
    + (f": {', '.join(slow)}" if slow else "")
    + "). RD steps: `rd.regression_descent(apply_fn, 1.0, damping=...)` update + "
    f"`apply_updates`, λ = {config['rd_damping']:g} or "
    "`rd.damping.levenberg_marquardt()` (timed from its initial state). System: m k, the size "
    "of the full-mode Gram system. Floor: the faster Gram engine (in bold) + a plain "
    "`cho_factor`/`cho_solve` of that size + 3 forward passes. "
    f"Adam: `optax.adam({config['adam_learning_rate']:g})` on `value_and_grad` of the summed "
    "squared error. Fastest calls: the same ratios from each part's fastest call, which a busy "
    "machine's load disturbs less than the medians. Random inputs and targets of each model's "
    "shapes.",
  ]
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Horizontal bars per model: RD steps, the floor stacked from its parts, Adam's step.

  Bars are medians; a black tick marks each one's fastest call.
  """
  plt = plotting.pyplot()
  rows = result["rows"]
  fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 1.9 * len(rows)), squeeze=False)
  labels = ["RD full", "floor", "RD full + LM", "RD per-output", "Adam"]
  colors = {"Gram": "tab:blue", "Cholesky": "tab:orange", "3 × forward": "tab:green"}
  for ax, r in zip(axes[:, 0], rows):
    p = r["parts"]
    y = np.arange(len(labels))[::-1]
    ax.barh(y[0], p["rd_full"]["ms"], color="tab:red")
    left = 0.0
    pieces = (
      ("Gram", p[f"gram_{r['fastest_engine']}"]["ms"]),
      ("Cholesky", p["cholesky"]["ms"]),
      ("3 × forward", 3 * p["forward"]["ms"]),
    )
    for name, value in pieces:
      ax.barh(y[1], value, left=left, color=colors[name], label=name)
      left += value
    ax.barh(y[2], p["rd_lm"]["ms"], color="tab:purple")
    ax.barh(y[3], p["rd_per_output"]["ms"], color="tab:brown")
    ax.barh(y[4], p["adam"]["ms"], color="tab:gray")
    fastest = [p["rd_full"]["min_ms"], r["floor_min_ms"], p["rd_lm"]["min_ms"]]
    fastest += [p["rd_per_output"]["min_ms"], p["adam"]["min_ms"]]
    ax.plot(fastest, y, "k|", markersize=12, label="fastest call")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("ms per call", fontsize=8)
    ax.set_title(
      f"{r['model']} — step / floor {r['step_over_floor']:.2g}×, "
      f"step / Adam {r['step_over_adam']:.3g}×",
      fontsize=8,
    )
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
  axes[0, 0].legend(fontsize=7, loc="lower right")
  fig.suptitle(
    f"RD step cost against its floor and Adam — {result['machine']['device']}", fontsize=9
  )
  return plotting.save_figure(fig, path)


registry.register(
  "step_cost",
  run,
  "one RD step, its parts, its floor and an Adam step, per model",
  in_all=False,
  table=markdown_table,
  plot=plot,
)
