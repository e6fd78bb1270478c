"""Cross-entropy diagnosis (issue 25, item 3): RD against Adam per step on MNIST's SmallCNN.

Per-step curves over the first `--steps` steps at batch 32, every optimizer on the same
batches from the same initial parameters; the curve is the mean cross-entropy on a fixed
subset of 2048 training images (as in the `mnist_ce` study), evaluated at `CHECKPOINTS`
outside the clock. The clock counts only the compiled training steps. `--spectrum` also
prints, along Adam's trajectory, the spectrum of the batch's generalized Gauss-Newton system
M = Lᵀ J Jᵀ L (m k × m k, rank ≤ m (k − 1)): its trace per row tr(M)/(m k), its largest
eigenvalue and how many eigenvalues exceed 1 and 10, which is what a fixed λ is compared with.

Run (short: ~10-40 s per variant on a 2-core CPU):

    python -m benchmarks.ce_diagnosis --variants adam_3e-3 rd_l10_cap --steps 1000
    python -m benchmarks.ce_diagnosis --list
    python -m benchmarks.ce_diagnosis --spectrum

somax's EGN-CE runs when `somax` (python-somax, the `peers` extra) is importable.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import mnist
from benchmarks import models
from benchmarks.runner import BatchOrder

CHECKPOINTS = (0, 10, 30, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000)
BATCH = 32  # --batch
EVAL = 2048


def _rd(learning_rate: float = 1.0, **options: Any) -> Callable[[Callable], Any]:
  options.setdefault("loss", "softmax_cross_entropy")

  def build(apply_fn):
    return rd.regression_descent(apply_fn, learning_rate=learning_rate, **options)

  return build


def _optax(tx: optax.GradientTransformation) -> Callable[[Callable], Any]:
  return lambda apply_fn: tx


def _relative(rho: float, **kwargs: Any) -> Any:
  return rd.damping.relative(rho, **kwargs) if hasattr(rd.damping, "relative") else None


def _smoothed(epsilon: float) -> Any:
  """The cross-entropy whose Gauss-Newton curvature is taken at p̃ = (1 − ε) p + ε / k."""
  try:
    return rd.losses.softmax_cross_entropy(curvature_smoothing=epsilon)
  except TypeError:
    exact = rd.losses.softmax_cross_entropy()

    def factors(outputs, targets):
      p = jax.nn.softmax(outputs, axis=-1)
      smooth = (1 - epsilon) * p + epsilon / outputs.shape[-1]
      root = jnp.sqrt(smooth)
      eye = jnp.eye(outputs.shape[-1], dtype=outputs.dtype)
      factor = root[:, :, None] * eye - smooth[:, :, None] * root[:, None, :]
      return rd.losses.GaussNewtonFactors(rhs=(p - targets) / root, factor=factor)

    return exact._replace(factors=factors)


# name -> (kind, builder). kind: "grad" (optax on the mean batch loss), "rd", "somax".
VARIANTS: dict[str, tuple[str, Callable[[], Any]]] = {
  "adam_1e-3": ("grad", lambda: _optax(optax.adam(1e-3))),
  "adam_3e-3": ("grad", lambda: _optax(optax.adam(3e-3))),
  "sgd_0.1_m0.9": ("grad", lambda: _optax(optax.sgd(0.1, momentum=0.9))),
  # The settings of the measurement.
  "rd_l10_cap": ("rd", lambda: _rd(damping=10.0, max_logit_change=math.pi)),
  "rd_l32_step0.1": ("rd", lambda: _rd(0.1, damping=32.0)),
  "rd_l1_cap": ("rd", lambda: _rd(damping=1.0, max_logit_change=math.pi)),
  "rd_lm": ("rd", lambda: _rd(damping=rd.damping.levenberg_marquardt())),
  # λ's units: the summed loss of 32 examples against the mean.
  "rd_l1": ("rd", lambda: _rd(damping=1.0)),
  "rd_l3": ("rd", lambda: _rd(damping=3.0)),
  "rd_l10": ("rd", lambda: _rd(damping=10.0)),
  "rd_l32": ("rd", lambda: _rd(damping=32.0)),
  "rd_l100": ("rd", lambda: _rd(damping=100.0)),
  # Step size: a short step on a less damped system.
  "rd_l3_step0.3": ("rd", lambda: _rd(0.3, damping=3.0)),
  "rd_l10_step0.3": ("rd", lambda: _rd(0.3, damping=10.0)),
  "rd_l10_step3": ("rd", lambda: _rd(3.0, damping=10.0)),
  "rd_l32_step3": ("rd", lambda: _rd(3.0, damping=32.0)),
  # Memory across batches: SPRING.
  "rd_l10_spring0.9": ("rd", lambda: _rd(damping=10.0, momentum=0.9)),
  "rd_l10_spring0.9_step0.3": ("rd", lambda: _rd(0.3, damping=10.0, momentum=0.9)),
  "rd_l32_spring0.9": ("rd", lambda: _rd(damping=32.0, momentum=0.9)),
  "rd_l3_spring0.9_step0.1": ("rd", lambda: _rd(0.1, damping=3.0, momentum=0.9)),
  "rd_l10_spring0.9_cap": (
    "rd",
    lambda: _rd(damping=10.0, momentum=0.9, max_logit_change=math.pi),
  ),
  # Momentum after the regression (optax trace): a running average of RD directions.
  "rd_l10_trace0.9_step0.1": (
    "rd",
    lambda: (
      lambda apply_fn: optax.chain(
        rd.scale_by_regression_descent(apply_fn, loss="softmax_cross_entropy", damping=10.0),
        optax.trace(0.9),
        optax.scale(-0.1),
      )
    ),
  ),
  "rd_l20": ("rd", lambda: _rd(damping=20.0)),
  "rd_l32_spring0.9_step0.3": ("rd", lambda: _rd(0.3, damping=32.0, momentum=0.9)),
  "rd_l32_spring0.5": ("rd", lambda: _rd(damping=32.0, momentum=0.5)),
  "rd_l32_trace0.9_step0.3": (
    "rd",
    lambda: (
      lambda apply_fn: optax.chain(
        rd.scale_by_regression_descent(apply_fn, loss="softmax_cross_entropy", damping=32.0),
        optax.trace(0.9),
        optax.scale(-0.3),
      )
    ),
  ),
  # One row per example.
  "rd_rows_l10": (
    "rd",
    lambda: _rd(damping=10.0, loss="softmax_cross_entropy_per_example"),
  ),
  # λ relative to the system's trace per row (rd.damping.relative, when present).
  "rd_rel0.1": ("rd", lambda: _rd(damping=_relative(0.1))),
  "rd_rel0.3": ("rd", lambda: _rd(damping=_relative(0.3))),
  "rd_rel1": ("rd", lambda: _rd(damping=_relative(1.0))),
  "rd_rel0.3_spring0.9": ("rd", lambda: _rd(damping=_relative(0.3), momentum=0.9)),
  "rd_rel1_spring0.9": ("rd", lambda: _rd(damping=_relative(1.0), momentum=0.9)),
  "rd_rel3_spring0.9": ("rd", lambda: _rd(damping=_relative(3.0), momentum=0.9)),
  # The Gauss-Newton curvature at smoothed probabilities (bounded steps on wrong examples).
  **{
    f"rd_l{lam:g}_smooth{eps:g}": (
      "rd",
      functools.partial(lambda lam, eps: _rd(damping=lam, loss=_smoothed(eps)), lam, eps),
    )
    for lam in (1.0, 3.0, 10.0)
    for eps in (0.01, 0.1, 0.3)
  },
  # λ per example (λ = m λ̄, the mean loss's units), with and without SPRING.
  **{
    f"rd_pe{lam:g}" + (f"_spring{mu:g}" if mu else ""): (
      "rd",
      functools.partial(
        lambda lam, mu: _rd(damping=rd.damping.per_example(lam), momentum=mu), lam, mu
      ),
    )
    for lam in (0.5, 1.0, 2.0)
    for mu in (0.0, 0.5, 0.7)
  },
  # The scaled metric (metric=, when rdescent has it): λ relative to each layer's curvature.
  **{
    f"rd_layerwise_l{lam:g}" + (f"_spring{mu:g}" if mu else ""): (
      "rd",
      functools.partial(lambda lam, mu: _rd(damping=lam, metric="layerwise", momentum=mu), lam, mu),
    )
    for lam in (0.01, 0.1, 1.0)
    for mu in (0.0, 0.5)
  },
  "somax_egn_ce_l10": ("somax", lambda: 10.0),
  "somax_egn_ce_l1": ("somax", lambda: 1.0),
}

DEFAULT = ("adam_3e-3", "rd_l10_cap", "rd_l10_spring0.9")


def _ce(apply_fn: Callable, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy(apply_fn(params, x), y))


def _stepper(kind: str, build: Any, apply_fn: Callable) -> tuple[Callable, Callable]:
  """(init(params) -> state, step(params, state, x, y) -> (params, state)), jitted."""
  if kind == "somax":
    import somax

    method = somax.egn_ce(predict_fn=apply_fn, lam0=build, lam_policy="const", learning_rate=1.0)

    def somax_step(params, state, x, y):
      batch = {"x": x, "y": jnp.argmax(y, axis=-1)}
      params, state, _ = method.step(params, batch, state, jax.random.PRNGKey(0))
      return params, state

    return method.init, jax.jit(somax_step)
  tx = build(apply_fn)

  def step(params, state, x, y):
    if kind == "grad":
      grads = jax.grad(lambda p: _ce(apply_fn, p, x, y))(params)
      updates, state = tx.update(grads, state, params)
    else:
      updates, state = tx.update(None, state, params, batch=(x, y))
    return optax.apply_updates(params, updates), state

  return tx.init, jax.jit(step)


def run_variant(name: str, data: dict, steps: int, seed: int, batch: int = BATCH) -> dict[str, Any]:
  kind, make = VARIANTS[name]
  build = make()
  model = data["model"]
  params = model.init(jax.random.PRNGKey(seed))
  init, step = _stepper(kind, build, model.apply)
  state = init(params)
  order = BatchOrder(data["x"].shape[0], batch, seed)
  evaluate = jax.jit(lambda p: _ce(model.apply, p, data["ex"], data["ey"]))
  batches = _batches(order, steps)
  x0, y0 = data["x"][batches[0]], data["y"][batches[0]]
  compile_start = time.perf_counter()
  step = step.lower(params, state, x0, y0).compile()
  compile_s = time.perf_counter() - compile_start
  curve, seconds, clock = {}, {}, 0.0
  checkpoints = [c for c in CHECKPOINTS if c <= steps]
  for t in range(steps + 1):
    if t in checkpoints:
      value = float(evaluate(params))
      curve[t], seconds[t] = value, clock
      if not math.isfinite(value):
        break
    if t == steps:
      break
    x, y = data["x"][batches[t]], data["y"][batches[t]]
    start = time.perf_counter()
    params, state = step(params, state, x, y)
    jax.block_until_ready(params)
    clock += time.perf_counter() - start
  return {"variant": name, "curve": curve, "seconds": seconds, "compile_s": compile_s}


def _batches(order: BatchOrder, steps: int) -> list[np.ndarray]:
  return [order(t) for t in range(max(steps, 1))]


def gn_spectrum(
  data: dict, seed: int, at: tuple[int, ...], batch: int = BATCH
) -> list[dict[str, Any]]:
  """Spectrum of M = Lᵀ J Jᵀ L of one batch of 32 along Adam(3e-3)'s trajectory."""
  model = data["model"]
  params = model.init(jax.random.PRNGKey(seed))
  tx = optax.adam(3e-3)
  state = tx.init(params)
  loss = rd.losses.get("softmax_cross_entropy")
  order = BatchOrder(data["x"].shape[0], batch, seed)
  batches = _batches(order, max(at) + 1)

  @jax.jit
  def adam_step(params, state, x, y):
    grads = jax.grad(lambda p: _ce(model.apply, p, x, y))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def system(params, x, y):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacrev(lambda f: model.apply(unravel(f), x))(flat)  # (m, k, p)
    outputs = model.apply(params, x)
    factors = loss.factors(outputs, y)
    lj = jnp.einsum("ikq,ikp->iqp", factors.factor, jac).reshape(-1, flat.size)
    matrix = lj @ lj.T
    return (
      jnp.linalg.eigvalsh(matrix),
      jnp.sum(factors.rhs**2),
      jnp.sum(jnp.square(lj.T @ factors.rhs.reshape(-1))),
    )

  rows = []
  for t in range(max(at) + 1):
    x, y = data["x"][batches[t]], data["y"][batches[t]]
    if t in at:
      values, u2, g2 = system(params, x, y)
      values = np.asarray(values)
      rows.append(
        {
          "step": t,
          "trace_per_row": float(values.sum() / values.size),
          "largest": float(values[-1]),
          "median": float(np.median(values)),
          "above_1": int((values > 1).sum()),
          "above_10": int((values > 10).sum()),
          "above_100": int((values > 100).sum()),
          "rank_1e-6": int((values > 1e-6 * values[-1]).sum()),
          "u_sq": float(u2),
          "grad_sq": float(g2),
        }
      )
    params, state = adam_step(params, state, x, y)
  return rows


def load(seed: int) -> dict:
  x, y = mnist.load_arrays("mnist", "train")
  index = np.random.default_rng(0).choice(x.shape[0], size=EVAL, replace=False)
  return {"x": x, "y": y, "ex": x[index], "ey": y[index], "model": models.small_cnn()}


def time_to(result: dict, target: float) -> tuple[int | None, float | None]:
  for t in sorted(result["curve"]):
    if result["curve"][t] <= target:
      return t, result["seconds"][t]
  return None, None


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="*", default=list(DEFAULT))
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch", type=int, default=BATCH)
  parser.add_argument("--list", action="store_true")
  parser.add_argument("--spectrum", action="store_true")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  if args.list:
    for name, (kind, _) in VARIANTS.items():
      print(f"{name:32s} {kind}")
    return
  os.environ.setdefault("RDESCENT_DATA_DIR", "/work/shared/data")
  data = load(args.seed)
  out: dict[str, Any] = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "results": []}
  if args.spectrum:
    rows = gn_spectrum(data, args.seed, (0, 30, 100, 300, 1000), args.batch)
    out["spectrum"] = rows
    for row in rows:
      print(json.dumps(row))
  for name in args.variants:
    kind, _ = VARIANTS[name]
    if kind == "somax" and importlib.util.find_spec("somax") is None:
      print(f"{name}: skipped (somax not importable)")
      continue
    result = run_variant(name, data, args.steps, args.seed, args.batch)
    out["results"].append(result)
    curve = " ".join(f"{t}:{v:.3f}" for t, v in result["curve"].items())
    last = max(result["seconds"])
    print(f"{name:28s} {curve}  ({result['seconds'][last]:.1f} s, {last} steps)", flush=True)
  adam = [r for r in out["results"] if r["variant"].startswith("adam")]
  if adam and args.steps in adam[0]["curve"]:
    target = adam[0]["curve"][args.steps]
    print(f"target: {adam[0]['variant']}'s loss after {args.steps} steps = {target:.4f}")
    for r in out["results"]:
      step, sec = time_to(r, target)
      when = "never" if sec is None else f"{sec:.2f} s"
      print(f"  {r['variant']:28s} reaches it at step {step} ({when})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
