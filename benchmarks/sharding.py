"""Sharding study: data-parallel RD step time against simulated devices, and traffic.

Two parts (one JSON):

* `timings`: one jitted `scale_by_regression_descent` step (full and per-output
  mode; K built by every device, or in block rows with `data_axis="data"`)
  with the batch sharded over n = 1, 2, 4, 8 simulated CPU devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=n`, one subprocess per n,
  this module run as a script), an `AxisType.Explicit` mesh, replicated
  parameters. Median over repeats after compilation; n = 0 is the same step
  without a mesh. Simulated devices share the host's cores, so this measures
  what sharding costs (collectives, replicated solve), not a speed-up.
* `communication`: `benchmarks.communication.communication_bytes` evaluated for
  m = 4096 examples over 8 and 64 devices, MLP 784-256-256-10, with the size
  of K and the flops of its Cholesky factorisation, which every device
  repeats (the limit of data-parallel RD).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from benchmarks import communication
from benchmarks import plotting

REPO = pathlib.Path(__file__).resolve().parents[1]
LAYOUTS = ("replicated", "row_blocks")
FULL = {
  "devices": (1, 2, 4, 8),
  "sizes": (64, 128, 128, 10),
  "m": 64,
  "repeats": 5,
  "outputs": ("full", "per_output"),
  "worker_timeout": 300,
}
QUICK = {
  "devices": (2,),
  "sizes": (4, 4, 2),
  "m": 4,
  "repeats": 1,
  "outputs": ("full",),
  "worker_timeout": 300,
}
COMM_SIZES = (784, 256, 256, 10)
COMM_M = 4096
COMM_DEVICES = (8, 64)


def _worker(
  devices: int, sizes: tuple[int, ...], m: int, repeats: int, outputs_modes: tuple[str, ...]
) -> list[dict[str, Any]]:
  """Runs in a subprocess with `devices` CPU devices: median step seconds per mode and layout."""
  import jax
  import numpy as np
  from jax.sharding import AxisType

  import rdescent as rd
  from benchmarks import models

  assert jax.device_count() == devices, jax.devices()
  model = models.mlp(list(sizes), "tanh")
  key = jax.random.PRNGKey(0)
  params = model.init(key)
  x = jax.random.normal(jax.random.fold_in(key, 1), (m, sizes[0]))
  y = jax.random.normal(jax.random.fold_in(key, 2), (m, sizes[-1]))
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Explicit,))
  rows = []
  for outputs, layout in [(o, lay) for o in outputs_modes for lay in LAYOUTS]:
    tx = rd.scale_by_regression_descent(
      model.apply,
      damping=1e-3,
      outputs=outputs,
      system="dual",
      data_axis="data" if layout == "row_blocks" else None,
    )
    step = jax.jit(lambda p, s, x, y, tx=tx: tx.update(None, s, p, batch=(x, y)))
    state = tx.init(params)
    plain = devices == 1 and layout == "replicated"
    for meshed in (False, True) if plain else (True,):
      # Progress on stderr: a worker that hangs is reported with the case it was in.
      print(f"start {outputs} {layout if meshed else 'no mesh'}", file=sys.stderr, flush=True)
      if meshed:
        with jax.set_mesh(mesh):
          args = (
            rd.sharding.replicate(params, mesh),
            state,
            *rd.sharding.shard_batch((x, y), mesh),
          )
          start = time.perf_counter()
          compiled = step.lower(*args).compile()
      else:
        args = (params, state, x, y)
        start = time.perf_counter()
        compiled = step.lower(*args).compile()
      compile_seconds = time.perf_counter() - start
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
      rows.append(
        {
          "devices": devices if meshed else 0,
          "outputs": outputs,
          "layout": layout if meshed else "no mesh",
          "seconds": float(np.median(times)),
          "compile_seconds": compile_seconds,
        }
      )
      print("row " + json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def _timings(config: Mapping[str, Any], progress: bool) -> list[dict[str, Any]]:
  """Step times per device count; a worker that hangs becomes a row with `hung`.

  Simulated CPU devices hung in this benchmark until the per-output solves
  stopped using batched LAPACK kernels on several CPU devices (see
  `rdescent._batch_linalg`); a worker that still hangs records the case it
  was in. The workers run with OPENBLAS_NUM_THREADS=1, so that the simulated
  devices' concurrent LAPACK calls do not share one OpenBLAS thread pool.
  """
  rows = []
  for devices in config["devices"]:
    env = dict(
      os.environ,
      PYTHONPATH=str(REPO),
      JAX_PLATFORMS="cpu",
      OPENBLAS_NUM_THREADS="1",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    args = [
      sys.executable,
      "-m",
      "benchmarks.sharding",
      str(devices),
      ",".join(map(str, config["sizes"])),
      str(config["m"]),
      str(config["repeats"]),
      ",".join(config["outputs"]),
    ]
    try:
      done = subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=config["worker_timeout"]
      )
    except subprocess.TimeoutExpired as expired:
      stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
      lines = (stderr or "").splitlines()
      rows += [json.loads(line[len("row ") :]) for line in lines if line.startswith("row ")]
      started = [line for line in lines if line.startswith("start ")]
      case = started[-1][len("start ") :] if started else "before the first case"
      rows.append(
        {
          "devices": devices,
          "outputs": case.split()[0] if started else "-",
          "layout": " ".join(case.split()[1:]) if started else "-",
          "seconds": None,
          "compile_seconds": None,
          "hung": f"no result after {config['worker_timeout']} s, in case {case!r}",
        }
      )
      if progress:
        print(f"sharding devices={devices}: {rows[-1]['hung']}", flush=True)
      continue
    if done.returncode:
      raise RuntimeError(f"sharding worker with {devices} devices failed:\n{done.stderr[-3000:]}")
    new = json.loads(done.stdout.strip().splitlines()[-1])
    rows += new
    if progress:
      for row in new:
        print(
          f"sharding devices={row['devices']} {row['outputs']:10s} {row['layout']:10s} "
          f"{1e3 * row['seconds']:9.2f} ms/step",
          flush=True,
        )
  return rows


def _communication() -> list[dict[str, Any]]:
  m, k = COMM_M, COMM_SIZES[-1]
  rows = []
  for devices in COMM_DEVICES:
    for outputs in ("full", "per_output"):
      for layout in ("replicated", "row_blocks"):
        for gathered in ("inputs", "factors", "jacobian"):
          if (gathered == "inputs") != (layout == "replicated"):
            continue
          got = communication.communication_bytes(
            m, COMM_SIZES, devices, outputs=outputs, gram_layout=layout, gathered=gathered
          )
          system = m * k if outputs == "full" else m
          blocks = 1 if outputs == "full" else k
          rows.append(
            {
              "devices": devices,
              "outputs": outputs,
              "layout": layout,
              "gathered": gathered,
              **{name: float(value) for name, value in got._asdict().items()},
              "gram_bytes": 4.0 * blocks * system**2,
              "solve_flops": blocks * system**3 / 3.0,
            }
          )
  return rows


def run(options) -> dict[str, Any]:
  from benchmarks.runner import machine_info

  config = dict(QUICK if options.quick else FULL)
  if options.seeds and not options.quick:
    config["repeats"] = options.seeds
  return {
    "study": "sharding",
    "kind": "sharding",
    "command": options.command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "config": {
      "model": "MLP " + "-".join(map(str, config["sizes"])) + " (tanh)",
      "m": config["m"],
      "devices": list(config["devices"]),
      "repeats": config["repeats"],
      "outputs": list(config["outputs"]),
      "damping": 1e-3,
      "system": "dual",
      "mesh": "Explicit",
      "quick": options.quick,
      "layouts": list(LAYOUTS),
      "worker_env": "OPENBLAS_NUM_THREADS=1",
      "worker_timeout_s": config["worker_timeout"],
      "communication_model": "MLP " + "-".join(map(str, COMM_SIZES)),
      "communication_m": COMM_M,
    },
    "timings": _timings(config, options.progress),
    "communication": _communication(),
  }


def _size(value: float) -> str:
  for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if value >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g} B"


def markdown_table(result: Mapping[str, Any]) -> str:
  config = result["config"]
  lines = [
    f"Step time, {config['model']}, m = {config['m']}, dual system, median of "
    f"{config['repeats']} (devices 0: no mesh).",
    "",
    "| devices | outputs | K layout | ms/step | compile s |",
    "|---|---|---|---|---|",
  ]
  for r in result["timings"]:
    if r.get("hung"):
      lines.append(f"| {r['devices']} | {r['outputs']} | {r['layout']} | hung: {r['hung']} | – |")
      continue
    lines.append(
      f"| {r['devices']} | {r['outputs']} | {r.get('layout', 'replicated')} | "
      f"{1e3 * r['seconds']:.3g} | "
      f"{r['compile_seconds']:.2f} |"
    )
  lines += [
    "",
    f"Bytes received per device per step, {config['communication_model']}, "
    f"m = {config['communication_m']}, float32 "
    "(`benchmarks.communication.communication_bytes`); "
    "K and solve: the Gram system every device holds and factors.",
    "",
    "| devices | outputs | layout | gathered | inputs | cotangents | K rows | "
    "Jᵀα psum | total | K size | solve flops |",
    "|" + "---|" * 11,
  ]
  for r in result["communication"]:
    lines.append(
      f"| {r['devices']} | {r['outputs']} | {r['layout']} | {r['gathered']} | "
      f"{_size(r['layer_inputs'])} | {_size(r['cotangents'])} | {_size(r['gram'])} | "
      f"{_size(r['direction'])} | {_size(r['total'])} | {_size(r['gram_bytes'])} | "
      f"{r['solve_flops']:.2g} |"
    )
  return "\n".join(lines)


def plot(result: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """ms per step against simulated devices, one line per mode and K layout."""
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.8))
  for outputs in ("full", "per_output"):
    for layout, style in zip(LAYOUTS, ("o-", "s--")):
      rows = [
        r
        for r in result["timings"]
        if r["outputs"] == outputs
        and r["devices"] > 0
        and r.get("layout", "replicated") == layout
        and r["seconds"] is not None
      ]
      if rows:
        ax.plot(
          [r["devices"] for r in rows],
          [1e3 * r["seconds"] for r in rows],
          style,
          label=f"{outputs}, K {layout}",
        )
  ax.set_xscale("log", base=2)
  ax.set_xlabel("simulated devices (batch sharded)")
  ax.set_ylabel("ms per RD step")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.suptitle(
    f"{result['config']['model']}, m = {result['config']['m']} — {result['machine']['device']}",
    fontsize=9,
  )
  return plotting.save_figure(fig, path)


if __name__ == "__main__":
  _devices, _sizes, _m, _repeats, _outputs = sys.argv[1:6]
  print(
    json.dumps(
      _worker(
        int(_devices),
        tuple(int(s) for s in _sizes.split(",")),
        int(_m),
        int(_repeats),
        tuple(_outputs.split(",")),
      )
    )
  )
else:
  from benchmarks import registry

  registry.register(
    "sharding",
    run,
    "data-parallel RD step time against simulated devices; bytes per step",
    table=markdown_table,
    plot=plot,
  )
