"""Gram engine speed: structured vs jacobian vs one SGD step (issue 3).

    .venv/bin/python -m benchmarks.gram_speed [--quick] [--out DIR] [--repeats N]

For every case (model, batch size m) it times, each jitted and compiled
before the clock starts (compile time reported separately), the median of
`--repeats` calls (each waited for with `block_until_ready`) of

* `rd.gram_matrix(apply_fn, params, x, method="structured")`,
* `rd.gram_matrix(apply_fn, params, x, method="jacobian")` (vmap of jacrev),
* one SGD step: `value_and_grad` of the MSE and the parameter update,

and reports the ratio jacobian / structured, the structured engine's assembly
flop count (`structured_gram.describe`, 2 per multiply-add; the cotangent VJP
is not counted) with its achieved GFLOP/s, the GFLOP/s of a plain f32 matmul
measured in the same run, and the peak memory of both engines: the formula
estimates (see `estimate_jacobian_bytes` and the `structured_gram` docstring)
and XLA's own figure for the compiled program (temporaries + output).

Writes `gram_speed.json` into `--out` (default `benchmarks/results/cpu`) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rdescent as rd
from benchmarks import models
from rdescent import structured_gram

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results" / "cpu"


def cases(quick: bool) -> list[dict[str, Any]]:
  """(name, apply_fn, params, input shape per example, m) of every measured case."""
  if quick:
    mlp_sizes, mlp_ms, cnn = [64, 32, 32, 10], [8], dict(channels=2, side=10)
    lorenz, lorenz_m = [8, 16, 16, 8], 8
  else:
    mlp_sizes, mlp_ms, cnn = [784, 256, 256, 10], [32, 128, 256], dict(channels=8, side=28)
    lorenz, lorenz_m = [40, 256, 256, 40], 32
  name = lambda sizes: "MLP " + "-".join(map(str, sizes))
  mlp, lorenz_mlp, cnn_model = (
    models.mlp(mlp_sizes, "tanh"),
    models.mlp(lorenz, "tanh"),
    models.small_cnn(**cnn),
  )
  found = [
    dict(
      name=name(mlp_sizes),
      apply=mlp.apply,
      params=mlp.init(jax.random.PRNGKey(0)),
      input_shape=(mlp_sizes[0],),
      m=m,
    )
    for m in mlp_ms
  ]
  found.append(
    dict(
      name=f"SmallCNN conv 1→{cnn['channels']} on {cnn['side']}²",
      apply=cnn_model.apply,
      params=cnn_model.init(jax.random.PRNGKey(0)),
      input_shape=(cnn["side"], cnn["side"], 1),
      m=32 if not quick else 4,
    )
  )
  found.append(
    dict(
      name=name(lorenz),
      apply=lorenz_mlp.apply,
      params=lorenz_mlp.init(jax.random.PRNGKey(1)),
      input_shape=(lorenz[0],),
      m=lorenz_m,
    )
  )
  return found


# ---------------------------------------------------------------- timing


def _compile(fn: Callable, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


SLOW_CALL_S = 2.0  # calls slower than this: the first call counts, 3 calls in all


def _median_ms(compiled, args, repeats: int) -> tuple[float, int]:
  """Median milliseconds of `repeats` calls after an untimed first call, and the call count.

  A first call slower than `SLOW_CALL_S` (the jacobian engine at large m) is
  counted as a sample and only 3 calls are made in all.
  """
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  first = time.perf_counter() - start
  times, calls = ([first], 3) if first > SLOW_CALL_S else ([], repeats)
  while len(times) < calls:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times), len(times)


def _xla_bytes(compiled) -> int | None:
  """XLA's temporaries + output size of a compiled program (None if unavailable)."""
  try:
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
  except Exception:  # noqa: BLE001 - not every backend reports it
    return None


def matmul_gflops(size: int, repeats: int) -> float:
  """GFLOP/s of a plain f32 (size × size) @ (size × size) matmul on this machine."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  compiled, _ = _compile(jnp.matmul, a, b)
  return 2 * size**3 / (_median_ms(compiled, (a, b), repeats)[0] * 1e-3) / 1e9


def estimate_jacobian_bytes(params, m: int, k: int, activations: int) -> int:
  """Jacobian engine peak, f32: m·k·p (the Jacobian) + (m k)² (K) + m·k·A.

  A is the number of activations of one example (the outputs of its
  parameter-consuming operations); vmap of jacrev keeps about k copies of
  them per example for the backward passes.
  """
  p = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  return 4 * (m * k * p + (m * k) ** 2 + m * k * activations)


def run_case(case: dict[str, Any], repeats: int, jacobian_max_m: int) -> dict[str, Any]:
  apply_fn, params, m = case["apply"], case["params"], case["m"]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((m, *case["input_shape"])), jnp.float32)
  k = int(jax.eval_shape(apply_fn, params, x).shape[-1])
  y = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)

  def sgd_step(p, x, y):
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((apply_fn(p, x) - y) ** 2, axis=-1))
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree_util.tree_map(lambda w, g: w - 0.01 * g, p, grads), value

  engines = {
    "structured": lambda p, x: rd.gram_matrix(apply_fn, p, x, method="structured"),
    "jacobian": lambda p, x: rd.gram_matrix(apply_fn, p, x, method="jacobian"),
  }
  row: dict[str, Any] = {
    "case": case["name"],
    "m": m,
    "k": k,
    "params": int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))),
  }
  for label, fn in engines.items():
    if label == "jacobian" and m > jacobian_max_m:
      row.update(
        jacobian_compile_s=None, jacobian_ms=None, jacobian_calls=0, jacobian_xla_bytes=None
      )
      continue
    compiled, row[f"{label}_compile_s"] = _compile(fn, params, x)
    row[f"{label}_ms"], row[f"{label}_calls"] = _median_ms(compiled, (params, x), repeats)
    row[f"{label}_xla_bytes"] = _xla_bytes(compiled)
  compiled, row["sgd_compile_s"] = _compile(sgd_step, params, x, y)
  row["sgd_ms"], row["sgd_calls"] = _median_ms(compiled, (params, x, y), repeats)
  row["ratio_jacobian_over_structured"] = (
    None if row["jacobian_ms"] is None else row["jacobian_ms"] / row["structured_ms"]
  )

  plan = structured_gram.describe(apply_fn, params, x)
  traced = structured_gram.trace_model(apply_fn, params, x)
  activations = sum(math.prod(s.output_aval.shape) for s in traced.structure.sites)
  row["structured_forms"] = sorted({form for _, form, _ in plan["leaves"]})
  row["structured_flops"] = int(plan["flops"])
  row["structured_gflops_per_s"] = plan["flops"] / (row["structured_ms"] * 1e-3) / 1e9
  row["structured_estimate_bytes"] = 4 * int(plan["peak_numbers"])
  row["jacobian_estimate_bytes"] = estimate_jacobian_bytes(params, m, k, activations)
  return row


# ---------------------------------------------------------------- report


def _mib(value: int | None) -> str:
  return "–" if value is None else f"{value / 2**20:.1f}"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
  return "not run" if value is None else f"{value:{spec}}{suffix}"


def markdown(result: dict[str, Any]) -> str:
  lines = [
    f"Machine: {result['machine']}; f32; median of {result['repeats']} calls, compile excluded; "
    f"plain f32 matmul {result['matmul_size']}² reaches {result['matmul_gflops']:.1f} GFLOP/s; "
    f'jacobian engine timed for m ≤ {result["jacobian_max_m"]} only ("not run" above); '
    '"(3 calls)": calls over 2 s, median of 3 with the first counted.',
    "",
    "| case | m | k | structured ms | jacobian ms | SGD step ms | jacobian / structured "
    "| structured flops | structured GFLOP/s | compile s (struct / jac / sgd) "
    "| peak MiB structured est. (XLA) | peak MiB jacobian est. (XLA) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['case']} | {r['m']} | {r['k']} | {r['structured_ms']:.2f} "
      f"| {_fmt(r['jacobian_ms'], '.1f')}{' (3 calls)' if r['jacobian_calls'] == 3 else ''} "
      f"| {r['sgd_ms']:.2f} | {_fmt(r['ratio_jacobian_over_structured'], '.0f', '×')} "
      f"| {r['structured_flops']:.3g} | {r['structured_gflops_per_s']:.1f} "
      f"| {r['structured_compile_s']:.1f} / {_fmt(r['jacobian_compile_s'], '.1f')} / "
      f"{r['sgd_compile_s']:.1f} "
      f"| {_mib(r['structured_estimate_bytes'])} ({_mib(r['structured_xla_bytes'])}) "
      f"| {_mib(r['jacobian_estimate_bytes'])} ({_mib(r['jacobian_xla_bytes'])}) |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.gram_speed",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR, help="results directory")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
  parser.add_argument(
    "--jacobian-max-m",
    type=int,
    default=128,
    help="largest batch for which the jacobian engine is timed (its cost "
    "grows as m²; about a minute per call at m = 128 on 2 CPU cores)",
  )
  args = parser.parse_args(argv)
  repeats = args.repeats or (3 if args.quick else 7)
  matmul_size = 256 if args.quick else 1024
  result = {
    "study": "gram_speed",
    "quick": args.quick,
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, "
    f"{jax.local_device_count()} device(s), jax {jax.__version__}",
    "repeats": repeats,
    "jacobian_max_m": args.jacobian_max_m,
    "matmul_size": matmul_size,
    "matmul_gflops": matmul_gflops(matmul_size, repeats),
    "rows": [],
  }
  for case in cases(args.quick):
    row = run_case(case, repeats, args.jacobian_max_m)
    result["rows"].append(row)
    print(
      f"{row['case']} m={row['m']}: structured {row['structured_ms']:.2f} ms, "
      f"jacobian {_fmt(row['jacobian_ms'], '.1f')} ms",
      flush=True,
    )
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "gram_speed.json").write_text(json.dumps(result, indent=1))
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
