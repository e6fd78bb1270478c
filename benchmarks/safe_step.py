"""Cross-entropy with Regression Descent: the safe step `max_logit_change`.

RD with softmax cross-entropy (generalized Gauss-Newton) on MNIST, a small
MLP, constant damping and learning rate 1, with and without the cap of the
logit-change spread (B = π), and Adam for scale. Same data order and
initialisation for every run; compile time excluded (one warm-up step on a
copy). Reports the mean training loss on a fixed 2048-image subset after each
run, test accuracy, the median seconds per step, and the fraction of RD steps
the cap shortened.

    python -m benchmarks.safe_step                       # defaults below
    python -m benchmarks.safe_step --steps 50 --seeds 1  # quicker
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rdescent as rd
from benchmarks import models


def _data(limit_eval: int = 2048):
  train = rd.datasets.load_mnist("train")
  test = rd.datasets.load_mnist("test")
  x = jnp.asarray(train.images, jnp.float32).reshape(len(train.labels), -1) / 255.0
  y = jnp.asarray(train.labels, jnp.int32)
  xt = jnp.asarray(test.images, jnp.float32).reshape(len(test.labels), -1) / 255.0
  yt = jnp.asarray(test.labels, jnp.int32)
  return x, y, x[:limit_eval], y[:limit_eval], xt, yt


def _step_scale(opt_state) -> float:
  """The factor the logit cap applied to the last step (1.0 when uncapped), read from the
  cap's state (`step_scale`) wherever the controller nests it in the optimizer state."""
  for node in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "step_scale")):
    if hasattr(node, "step_scale"):
      return float(node.step_scale)
  return 1.0


def _run(tx, params, apply_fn, x, y, steps, batch, needs_batch, rng):
  state = tx.init(params)

  def step(params, state, xb, yb):
    if needs_batch:
      updates, state = tx.update(None, state, params, batch=(xb, yb))
    else:
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xb), yb).sum()
      updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step)
  order = rng.permutation(x.shape[0])
  batches = [order[(t * batch) % len(order) :][:batch] for t in range(steps)]
  jax.block_until_ready(step(params, state, x[batches[0]], y[batches[0]]))  # compile
  times, capped = [], 0
  for idx in batches:
    start = time.perf_counter()
    params, state = step(params, state, x[idx], y[idx])
    jax.block_until_ready(params)
    times.append(time.perf_counter() - start)
    if needs_batch:
      capped += int(_step_scale(state) < 1.0)
  return params, float(np.median(times)), capped / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--dampings", default="1e-3,1e-1")
  parser.add_argument("--out", default=None, help="optional JSON path")
  args = parser.parse_args(argv)

  x, y, xe, ye, xt, yt = _data()
  model = models.mlp([784, args.hidden, 10])
  loss = jax.jit(
    lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xe), ye).mean()
  )
  accuracy = jax.jit(lambda p: jnp.mean(jnp.argmax(model.apply(p, xt), axis=1) == yt))

  configs = []
  for damping in map(float, args.dampings.split(",")):
    for cap in (None, float(np.pi)):
      configs.append(
        (
          f"RD λ={damping:g} cap={'π' if cap else 'off'}",
          True,
          rd.regression_descent(
            model.apply, 1.0, damping=damping, loss="softmax_cross_entropy", max_logit_change=cap
          ),
        )
      )
  configs.append(("Adam lr=1e-3", False, optax.adam(1e-3)))

  rows = []
  for name, needs_batch, tx in configs:
    losses, accs, secs, fracs = [], [], [], []
    for seed in range(args.seeds):
      params = model.init(jax.random.PRNGKey(seed))
      params, sec, frac = _run(
        tx,
        params,
        model.apply,
        x,
        y,
        args.steps,
        args.batch,
        needs_batch,
        np.random.default_rng(seed),
      )
      losses.append(float(loss(params)))
      accs.append(float(accuracy(params)))
      secs.append(sec)
      fracs.append(frac)
    row = {
      "optimizer": name,
      "train_loss": float(np.median(losses)),
      "test_accuracy": float(np.median(accs)),
      "seconds_per_step": float(np.median(secs)),
      "capped_fraction": float(np.median(fracs)) if needs_batch else None,
      "train_loss_per_seed": losses,
    }
    rows.append(row)
    print(
      f"{name:28s} loss {row['train_loss']:.4f}  acc {row['test_accuracy']:.4f}  "
      f"{1e3 * row['seconds_per_step']:.1f} ms/step  capped {row['capped_fraction']}",
      flush=True,
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "rows": rows, "device": str(jax.devices()[0])}, f, indent=1)


if __name__ == "__main__":
  main()
