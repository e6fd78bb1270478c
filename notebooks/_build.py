"""Writes the example notebooks of rdescent from the cell sources below.

    python notebooks/_build.py                 # (re)write every notebooks/*.ipynb
    python notebooks/_build.py --execute       # also execute them into docs/notebooks/
    python notebooks/_build.py --script 04     # print one notebook's code as a script

The notebooks are generated, with outputs cleared, so that they can be
reviewed as code and regenerated after an API change. Each one reads
`RDESCENT_NOTEBOOK_SIZE`: `ci` runs a tiny version (seconds, used by
`tests/test_notebooks.py`); anything else (the default) the full version.

`--execute` runs each notebook at the CI size (with this interpreter as the
kernel) and writes the executed copy, outputs and figures included, to
`docs/notebooks/`, which the documentation site renders as it is (the docs
build executes nothing). `tests/test_notebooks.py` checks that those copies
have the same cells as the notebooks written here: rerun `--execute` after
changing a notebook (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
EXECUTED_DIR = HERE.parent / "docs" / "notebooks"
KERNEL_NAME = "rdescent-notebooks"
CELL_TIMEOUT_S = 300

SIZE_CELL = """
import os
CI = os.environ.get("RDESCENT_NOTEBOOK_SIZE", "full") == "ci"  # tiny sizes for CI
"""

RD_IN_ONE_CELL = r"""
**Regression Descent (RD)** replaces the gradient step by a small ridge regression. For a
batch of $m$ examples with residuals $r = f(\theta; X) - Y$ (length $mk$ for $k$ outputs) and
Jacobian $J = \partial r / \partial \theta$,

$$K = J J^\top, \qquad \alpha = (K + \lambda I)^{-1} r, \qquad d = J^\top \alpha, \qquad \theta \leftarrow \theta - \eta\, d .$$

$d$ is the ridge-regression fit of the residual on the Jacobian, $\arg\min_\delta \|J\delta - r\|^2 + \lambda\|\delta\|^2$:
a Gauss-Newton / Levenberg-Marquardt step solved in the $mk \times mk$ space of the batch instead
of the $p \times p$ space of the parameters. `rd.regression_descent(apply_fn, ...)` is an ordinary
Optax transformation; its `update` needs the parameters and the batch:
`tx.update(grads, state, params, batch=(inputs, targets))` (the gradients are ignored).
"""

# ---------------------------------------------------------------- 01 quickstart

QUICKSTART = [
  (
    "md",
    r"""
# Quickstart: Regression Descent vs Adam on a 1D fit

Fit $y = \sin(3x) + 0.3\cos(9x)$ on $[-1, 1]$ with a small tanh MLP, once with Regression
Descent and once with Adam, and compare the training loss against wall-clock seconds.
""",
  ),
  ("md", RD_IN_ONE_CELL),
  (
    "code",
    SIZE_CELL
    + """
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import rdescent as rd

NUM_POINTS, HIDDEN = (64, 16) if CI else (256, 32)
RD_STEPS, ADAM_STEPS = (25, 400) if CI else (150, 10000)

inputs = jnp.linspace(-1.0, 1.0, NUM_POINTS)[:, None]
targets = jnp.sin(3 * inputs) + 0.3 * jnp.cos(9 * inputs)
""",
  ),
  (
    "md",
    """
Any function `apply_fn(params, inputs) -> outputs` of shape `(m,)` or `(m, k)` works;
here a plain-JAX MLP.
""",
  ),
  (
    "code",
    '''
def init_mlp(key, sizes=(1, HIDDEN, HIDDEN, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def apply_fn(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


@jax.jit
def loss(params):
  """½ Σ (f(x) − y)², the loss RD minimises (summed over the batch)."""
  return 0.5 * jnp.sum((apply_fn(params, inputs) - targets) ** 2)


params = init_mlp(jax.random.PRNGKey(0))
''',
  ),
  (
    "md",
    """
The RD optimizer in three lines. `damping` is λ: a float, an optax schedule, or a controller.
`rd.damping.levenberg_marquardt()` adapts λ from the ratio of actual to predicted decrease on
the same batch (rejected steps are re-solved with the same $K$): the safe default for
full-batch problems like this one.
""",
  ),
  (
    "code",
    '''
tx = rd.regression_descent(apply_fn, learning_rate=1.0,
                           damping=rd.damping.levenberg_marquardt())


@jax.jit
def rd_step(params, state):
  updates, state = tx.update(None, state, params, batch=(inputs, targets))
  return optax.apply_updates(params, updates), state


adam = optax.adam(1e-2)


@jax.jit
def adam_step(params, state):
  updates, state = adam.update(jax.grad(loss)(params), state, params)
  return optax.apply_updates(params, updates), state


def train(step, params, state, num_steps):
  """Runs `num_steps` steps; returns the params and (seconds, loss) per step.

  The step is compiled first (compile time is not counted).
  """
  jax.block_until_ready(step(params, state))
  history, elapsed = [(0.0, float(loss(params)))], 0.0
  for _ in range(num_steps):
    start = time.perf_counter()
    params, state = jax.block_until_ready(step(params, state))
    elapsed += time.perf_counter() - start
    history.append((elapsed, float(loss(params))))
  return params, np.array(history)


rd_params, rd_history = train(rd_step, params, tx.init(params), RD_STEPS)
adam_params, adam_history = train(adam_step, params, adam.init(params), ADAM_STEPS)
print(f"RD:   {RD_STEPS:5d} steps, {rd_history[-1, 0]:.2f} s, loss {rd_history[-1, 1]:.2e}")
print(f"Adam: {ADAM_STEPS:5d} steps, {adam_history[-1, 0]:.2f} s, loss {adam_history[-1, 1]:.2e}")
''',
  ),
  (
    "code",
    """
fig, (ax_loss, ax_fit) = plt.subplots(1, 2, figsize=(11, 4))
ax_loss.semilogy(rd_history[:, 0], rd_history[:, 1], label="Regression Descent (LM damping)")
ax_loss.semilogy(adam_history[:, 0], adam_history[:, 1], label="Adam (lr 1e-2)")
ax_loss.set(xlabel="seconds (compile excluded)", ylabel="training loss ½Σr²",
            title="Loss vs wall-clock")
ax_loss.legend()
ax_fit.plot(inputs, targets, "k.", label="data")
ax_fit.plot(inputs, apply_fn(rd_params, inputs), label="RD")
ax_fit.plot(inputs, apply_fn(adam_params, inputs), "--", label="Adam")
ax_fit.set(xlabel="x", title="Fits")
ax_fit.legend()
plt.show()
""",
  ),
  (
    "md",
    """
## Which options to choose

| option | choose |
|---|---|
| `damping` | `rd.damping.levenberg_marquardt()` for full-batch / small problems; `rd.damping.next_batch_ratio()` (the paper's rule) for mini-batches; a float when you know the scale of $K$ |
| `outputs` | `"full"` (one $mk \\times mk$ system, exact Gauss-Newton); `"per_output"` ($k$ systems of size $m$, cheaper for many outputs, the paper's reference) |
| `loss` | `"mse"` for regression; `"softmax_cross_entropy"` (generalized Gauss-Newton) for classification; `"huber"`, `"sigmoid_binary_cross_entropy"` |
| `gram` | `"auto"` (default): $K$ built layer by layer for dense and convolutional layers, no Jacobian stored; `"jacobian"`: materialised per-example Jacobians, for any model |
| `learning_rate` | 1.0 with an adaptive damping; smaller with a fixed λ |

Each step costs about $m k$ backward passes plus an $mk \\times mk$ Cholesky factorisation: use
batches of tens to a few hundred examples.
""",
  ),
]

# ---------------------------------------------------------------- 02 Flax MNIST

FLAX_MNIST = [
  (
    "md",
    r"""
# A Flax (linen) CNN on MNIST with Regression Descent

The paper's SmallCNN (conv 1→8 3×3, ReLU, 2×2 max-pool, dense 1352→10, 13 610 parameters)
written in `flax.linen`, trained on MNIST mini-batches with Regression Descent and with Adam.
The data are read from the IDX files in `$RDESCENT_DATA_DIR` (nothing is downloaded).
""",
  ),
  ("md", RD_IN_ONE_CELL),
  (
    "code",
    SIZE_CELL
    + """
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen
from flax.training import train_state

import rdescent as rd
import rdescent.flax  # the Flax helpers: import explicitly

NUM_TRAIN, NUM_TEST = (512, 500) if CI else (60000, 10000)
BATCH, STEPS, EVAL_EVERY = (16, 10, 5) if CI else (32, 300, 25)


def load(split, size):
  data = rd.datasets.load_mnist(split)
  return data.images[:size].astype(np.float32) / 255.0, data.labels[:size].astype(np.int32)


train_images, train_labels = load("train", NUM_TRAIN)
test_images, test_labels = load("test", NUM_TEST)
""",
  ),
  (
    "code",
    """
class SmallCNN(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 28, 28, 1)
    x = linen.relu(linen.Conv(8, (3, 3), padding="VALID")(x))
    x = linen.max_pool(x, (2, 2), strides=(2, 2))
    return linen.Dense(10)(x.reshape(x.shape[0], -1))


model = SmallCNN()
params = model.init(jax.random.PRNGKey(0), train_images[:1])["params"]
print(jax.tree.map(jnp.shape, params))
""",
  ),
  (
    "md",
    """
## The linen pattern

RD needs `apply_fn(params, inputs)`. `rdescent.flax.linen_apply_fn(model)` is
`lambda p, x: model.apply({"params": p}, x)`, plus a clear error if the model tries to update
batch statistics or draw dropout random numbers inside RD (run such models deterministically:
`use_running_average=True`, `deterministic=True`, and pass the other collections with
`linen_apply_fn(model, variables)`).

Flax's `TrainState.apply_gradients` does not forward the batch to the optimizer;
`rdescent.flax.apply_gradients(state, batch=(x, y))` does.

Two RD set-ups: squared error on one-hot targets with `outputs="per_output"` (the paper's
reference: $k$ systems of size $m$) and the paper's next-batch damping rule; and softmax
cross-entropy in generalized Gauss-Newton form (`loss="softmax_cross_entropy"`, integer labels as
targets) with Levenberg-Marquardt damping.
""",
  ),
  (
    "code",
    """
apply_fn = rdescent.flax.linen_apply_fn(model)

optimizers = {
    "RD, MSE on one-hot (per_output)": (
        rd.regression_descent(apply_fn, damping=rd.damping.next_batch_ratio(),
                              outputs="per_output"),
        "one_hot",
    ),
    "RD, cross-entropy (GGN)": (
        rd.regression_descent(apply_fn, loss="softmax_cross_entropy",
                              damping=rd.damping.levenberg_marquardt()),
        "labels",
    ),
}


@jax.jit
def rd_step(state, images, targets):
  return rdescent.flax.apply_gradients(state, batch=(images, targets))


adam = optax.adam(1e-3)


@jax.jit
def adam_step(state, images, labels):
  def loss(p):
    logits = apply_fn(p, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return state.apply_gradients(grads=jax.grad(loss)(state.params))


accuracy = jax.jit(lambda p: jnp.mean(jnp.argmax(apply_fn(p, test_images), -1) == test_labels))
order = np.random.default_rng(0).integers(0, NUM_TRAIN, size=(STEPS, BATCH))
""",
  ),
  (
    "code",
    '''
def train(step, tx, targets_kind):
  """Same initial params and batches for everyone; returns (seconds, step, test acc) rows."""
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  to_targets = (lambda y: jax.nn.one_hot(y, 10)) if targets_kind == "one_hot" else (lambda y: y)
  jax.block_until_ready(step(state, train_images[:BATCH], to_targets(train_labels[:BATCH])))
  history, elapsed = [(0.0, 0, float(accuracy(state.params)))], 0.0
  for i, index in enumerate(order):
    images, targets = train_images[index], to_targets(train_labels[index])
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, images, targets))
    elapsed += time.perf_counter() - start
    if (i + 1) % EVAL_EVERY == 0:
      history.append((elapsed, i + 1, float(accuracy(state.params))))
  return np.array(history)


histories = {name: train(rd_step, tx, kind) for name, (tx, kind) in optimizers.items()}
histories["Adam (lr 1e-3), cross-entropy"] = train(adam_step, adam, "labels")
for name, history in histories.items():
  print(f"{name:35s} test accuracy {history[-1, 2]:.3f} after {STEPS} steps, "
        f"{history[-1, 0]:.2f} s")
''',
  ),
  (
    "code",
    """
fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
for name, history in histories.items():
  ax_steps.plot(history[:, 1], history[:, 2], "o-", label=name)
  ax_time.plot(history[:, 0], history[:, 2], "o-", label=name)
ax_steps.set(xlabel=f"steps (batch {BATCH})", ylabel="test accuracy", title="Accuracy vs steps")
ax_time.set(xlabel="seconds (compile and evaluation excluded)", title="Accuracy vs wall-clock")
ax_steps.legend()
plt.show()
""",
  ),
  (
    "md",
    """
RD takes far fewer steps than Adam; each step costs $mk$ backward passes and an $m \\times m$
($k$ of them, `per_output`) or $mk \\times mk$ (`full`) solve, so compare them against seconds
too. For classification, `outputs="per_output"` with squared error on one-hot targets is the
cheapest; cross-entropy in generalized Gauss-Newton form uses the `full` system.
""",
  ),
]

# ---------------------------------------------------------------- 03 Lorenz96

LORENZ96 = [
  (
    "md",
    r"""
# Lorenz96: learning a one-step map and rolling it out

Lorenz96 with $N = 40$ variables and forcing $F = 8$,
$\dot x_i = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F$ (indices cyclic), is a standard chaotic test
system. `rd.datasets.lorenz96_dataset` integrates it (RK4, $dt = 0.01$) and returns pairs
$(x(t), x(t + 0.05))$ on the attractor, standardised. We learn that map, then iterate the learned
map and compare the trajectory with the true one.
""",
  ),
  ("md", RD_IN_ONE_CELL),
  (
    "code",
    SIZE_CELL
    + """
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import rdescent as rd

NUM_TRAIN, HIDDEN, BATCH = (256, 32, 128) if CI else (4096, 64, 256)
RD_STEPS, ADAM_STEPS, ROLLOUT = (20, 200, 40) if CI else (200, 10000, 100)

data = rd.datasets.lorenz96_dataset(NUM_TRAIN, seed=0)
print(data.inputs.shape, data.targets.shape)
""",
  ),
  (
    "md",
    """
## A local model: one regression example per grid point

The dynamics are local and the same at every position, so the map is learned by one small
network $g$ applied at every position $i$ to the window $(x_{i-4}, \\dots, x_{i+3})$ (a 1D
convolution with periodic padding, written as an MLP on windows):
$x_i(t + 0.05) \\approx x_i(t) + g(x_{i-4..i+3}(t))$.

For RD this choice matters: every (state, position) pair is a regression example with a single
output, so a batch of $m$ windows gives an $m \\times m$ system. A dense MLP with 40 outputs per
state would give a $40m \\times 40m$ system (or 40 systems of size $m$ with
`outputs="per_output"`): RD's cost grows with the number of outputs per example, so shape the
problem to have few.
""",
  ),
  (
    "code",
    """
OFFSETS = np.arange(-4, 4)


def windows(x):
  \"\"\"(..., 40) states -> (..., 40, 8) periodic windows around every position.\"\"\"
  return x[..., (np.arange(40)[:, None] + OFFSETS) % 40]


train_windows = windows(data.inputs).reshape(-1, len(OFFSETS))          # (NUM_TRAIN·40, 8)
train_increments = (data.targets - data.inputs).reshape(-1, 1)          # (NUM_TRAIN·40, 1)


def init_mlp(key, sizes=(len(OFFSETS), HIDDEN, HIDDEN, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def apply_fn(params, w):
  \"\"\"g(window): (m, 8) -> (m, 1).\"\"\"
  for layer in params[:-1]:
    w = jnp.tanh(w @ layer["w"] + layer["b"])
  return w @ params[-1]["w"] + params[-1]["b"]


params = init_mlp(jax.random.PRNGKey(0))
loss = jax.jit(lambda p: 0.5 * jnp.mean((apply_fn(p, train_windows) - train_increments) ** 2))
""",
  ),
  (
    "code",
    """
tx = rd.regression_descent(apply_fn, damping=rd.damping.levenberg_marquardt())
adam = optax.adam(1e-3)


@jax.jit
def rd_step(params, state, w, y):
  updates, state = tx.update(None, state, params, batch=(w, y))
  return optax.apply_updates(params, updates), state


@jax.jit
def adam_step(params, state, w, y):
  grads = jax.grad(lambda p: 0.5 * jnp.mean((apply_fn(p, w) - y) ** 2))(params)
  updates, state = adam.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def train(step, state, num_steps, seed=0):
  \"\"\"Random mini-batches of BATCH windows; returns the params and (seconds, loss) rows.\"\"\"
  p = params
  index = np.random.default_rng(seed).integers(0, len(train_windows), size=(num_steps, BATCH))
  jax.block_until_ready(step(p, state, train_windows[index[0]], train_increments[index[0]]))
  history, elapsed = [(0.0, float(loss(p)))], 0.0
  for i, batch in enumerate(index):
    start = time.perf_counter()
    p, state = jax.block_until_ready(
        step(p, state, train_windows[batch], train_increments[batch]))
    elapsed += time.perf_counter() - start
    if (i + 1) % max(1, num_steps // 50) == 0:
      history.append((elapsed, float(loss(p))))
  return p, np.array(history)


rd_params, rd_history = train(rd_step, tx.init(params), RD_STEPS)
adam_params, adam_history = train(adam_step, adam.init(params), ADAM_STEPS)
print(f"RD + LM: {RD_STEPS:6d} steps, {rd_history[-1, 0]:.2f} s, loss {rd_history[-1, 1]:.2e}")
print(f"Adam:    {ADAM_STEPS:6d} steps, {adam_history[-1, 0]:.2f} s, loss {adam_history[-1, 1]:.2e}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(rd_history[:, 0], rd_history[:, 1], label="RD + LM")
ax.semilogy(adam_history[:, 0], adam_history[:, 1], label="Adam (lr 1e-3)")
ax.set(xlabel="seconds (compile excluded)", ylabel="training loss (mean ½r²)")
ax.legend()
plt.show()
""",
  ),
  (
    "md",
    """
## Roll-out against the truth

Start from a state the models never saw (the last training state, carried 5 time units further
along its trajectory by the true dynamics), iterate the learned map, and compare with the true
dynamics (5 RK4 steps of $dt = 0.01$ per map step), in physical units.
""",
  ),
  (
    "code",
    """
WARMUP = 100  # map steps of 0.05: 5 time units past the end of the training data


def true_map(x):  # x(t) -> x(t + 0.05), standardised units
  x = x * data.std + data.mean
  for _ in range(5):
    x = rd.datasets.rk4_step(x, 0.01)
  return (x - data.mean) / data.std


def rollout(map_fn, x, num_steps):
  \"\"\"(num_steps, 40) states after 1..num_steps applications of map_fn, standardised.\"\"\"
  def body(x, _):
    x = map_fn(x)
    return x, x
  return jax.lax.scan(body, x, None, length=num_steps)[1]


true_rollout = jax.jit(lambda x: rollout(true_map, x, WARMUP + ROLLOUT))
learned_rollout = jax.jit(  # one compile serves both models
    lambda params, x: rollout(lambda s: s + apply_fn(params, windows(s))[:, 0], x, ROLLOUT))

# The last training input ends the last of the 16 training trajectories (see lorenz96_dataset).
states = true_rollout(data.inputs[-1])
start, truth = states[WARMUP - 1], states[WARMUP:]
physical = lambda x: np.asarray(x * data.std + data.mean)
truth = physical(truth)
rd_roll = physical(learned_rollout(rd_params, start))
adam_roll = physical(learned_rollout(adam_params, start))

times = 0.05 * np.arange(1, ROLLOUT + 1)
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True)
extent = (0, 40, times[-1], times[0])
for ax, (title, field) in zip(axes[:3], [("truth", truth), ("RD model", rd_roll),
                                         ("Adam model", adam_roll)]):
  ax.imshow(field, aspect="auto", extent=extent, cmap="RdBu_r", vmin=-10, vmax=14)
  ax.set(title=title, xlabel="variable i")
axes[0].set_ylabel("time")
axes[3].semilogx(np.linalg.norm(rd_roll - truth, axis=1) / np.sqrt(40), times, label="RD")
axes[3].semilogx(np.linalg.norm(adam_roll - truth, axis=1) / np.sqrt(40), times, label="Adam")
axes[3].set(xlabel="RMS error", title="error vs time")
axes[3].legend()
plt.show()

fig, ax = plt.subplots(figsize=(11, 3))
ax.plot(times, truth[:, 0], "k", label="truth $x_1$")
ax.plot(times, rd_roll[:, 0], label="RD")
ax.plot(times, adam_roll[:, 0], "--", label="Adam")
ax.set(xlabel="time", ylabel="$x_1$")
ax.legend()
plt.show()
""",
  ),
  (
    "md",
    """
A chaotic system amplifies any one-step error, so every learned model eventually leaves the
true trajectory; a more accurate one-step map stays close for longer.

Damping on mini-batches: `levenberg_marquardt` judges each step on its own batch, which works
well when, as here, a batch holds many more equations than the model can fit exactly. When the
model could interpolate every batch (many parameters, small batches), use a larger fixed λ or
the paper's `next_batch_ratio`, which judges each step on the *next* batch.
""",
  ),
]

# ---------------------------------------------------------------- 04 PINN

PINN = [
  (
    "md",
    r"""
# A physics-informed network for 1D Poisson: RD + Levenberg-Marquardt vs Adam

Solve $-u''(x) = f(x)$ on $(0, 1)$ with $u(0) = u(1) = 0$, for
$u^*(x) = \sin(2\pi x) + 0.1 \sin(6\pi x)$. The network is $u_\theta(x) = x(1 - x)\,
\mathrm{MLP}_\theta(x)$, which satisfies the boundary conditions exactly, so the only residuals
are the PDE residuals at $m$ collocation points:

$$r_i(\theta) = -u_\theta''(x_i) - f(x_i).$$

PINN losses are notoriously ill-conditioned for first-order methods. RD is a Gauss-Newton method in
the $m$-dimensional space of the residuals: with Levenberg-Marquardt damping it typically reaches
errors orders of magnitude below Adam's in the same time.
""",
  ),
  (
    "md",
    RD_IN_ONE_CELL
    + r"""
Here `apply_fn(params, x)` returns $-u_\theta''(x)$ and the targets are $f(x)$: RD only needs the
map from parameters to the residuals' model part, whatever it is (here a second derivative).
""",
  ),
  (
    "code",
    SIZE_CELL
    + """
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import rdescent as rd

NUM_POINTS, HIDDEN = (32, 16) if CI else (128, 32)
RD_STEPS, ADAM_STEPS = (40, 500) if CI else (300, 30000)


def exact(x):
  return jnp.sin(2 * jnp.pi * x) + 0.1 * jnp.sin(6 * jnp.pi * x)


def source(x):  # f = -u*''
  return ((2 * jnp.pi) ** 2 * jnp.sin(2 * jnp.pi * x)
          + 0.1 * (6 * jnp.pi) ** 2 * jnp.sin(6 * jnp.pi * x))


collocation = jnp.linspace(0.0, 1.0, NUM_POINTS + 2)[1:-1]  # (m,) interior points
forcing = source(collocation)
grid = jnp.linspace(0.0, 1.0, 1001)                          # evaluation grid
""",
  ),
  (
    "code",
    '''
def init_mlp(key, sizes=(1, HIDDEN, HIDDEN, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def u(params, x):
  """u_θ(x) for a scalar x; zero at both ends by construction."""
  h = jnp.reshape(x, (1,))
  for layer in params[:-1]:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
  return x * (1.0 - x) * (h @ params[-1]["w"] + params[-1]["b"])[0]


u_xx = jax.grad(jax.grad(u, argnums=1), argnums=1)


def apply_fn(params, x):
  """-u_θ''(x_i) for a batch of points x of shape (m,): the model side of the residuals."""
  return -jax.vmap(u_xx, in_axes=(None, 0))(params, x)


@jax.jit
def relative_error(params):
  """‖u_θ − u*‖ / ‖u*‖ on a fine grid."""
  error = jax.vmap(u, in_axes=(None, 0))(params, grid) - exact(grid)
  return jnp.linalg.norm(error) / jnp.linalg.norm(exact(grid))


params = init_mlp(jax.random.PRNGKey(0))
''',
  ),
  (
    "code",
    '''
tx = rd.regression_descent(apply_fn, damping=rd.damping.levenberg_marquardt())


@jax.jit
def rd_step(params, state):
  updates, state = tx.update(None, state, params, batch=(collocation, forcing))
  return optax.apply_updates(params, updates), state


adam = optax.adam(1e-3)


@jax.jit
def adam_step(params, state):
  loss = lambda p: 0.5 * jnp.mean((apply_fn(p, collocation) - forcing) ** 2)
  updates, state = adam.update(jax.grad(loss)(params), state, params)
  return optax.apply_updates(params, updates), state


def train(step, state, num_steps):
  """Returns the params and (seconds, relative L2 error) rows; compile excluded."""
  p = params
  jax.block_until_ready(step(p, state))
  history, elapsed = [(0.0, float(relative_error(p)))], 0.0
  every = max(1, num_steps // 100)
  for i in range(num_steps):
    start = time.perf_counter()
    p, state = jax.block_until_ready(step(p, state))
    elapsed += time.perf_counter() - start
    if (i + 1) % every == 0:
      history.append((elapsed, float(relative_error(p))))
  return p, np.array(history)


rd_params, rd_history = train(rd_step, tx.init(params), RD_STEPS)
adam_params, adam_history = train(adam_step, adam.init(params), ADAM_STEPS)
print(f"RD + LM: {RD_STEPS:6d} steps, {rd_history[-1, 0]:.2f} s, "
      f"relative L2 error {rd_history[-1, 1]:.2e}")
print(f"Adam:    {ADAM_STEPS:6d} steps, {adam_history[-1, 0]:.2f} s, "
      f"relative L2 error {adam_history[-1, 1]:.2e}")
''',
  ),
  (
    "code",
    """
fig, (ax_time, ax_sol, ax_err) = plt.subplots(1, 3, figsize=(15, 4))
ax_time.semilogy(rd_history[:, 0], rd_history[:, 1], label="RD + LM")
ax_time.semilogy(adam_history[:, 0], adam_history[:, 1], label="Adam (lr 1e-3)")
ax_time.set(xlabel="seconds (compile excluded)", ylabel="relative L2 error",
            title="Error vs wall-clock")
ax_time.legend()
u_rd = jax.vmap(u, in_axes=(None, 0))(rd_params, grid)
u_adam = jax.vmap(u, in_axes=(None, 0))(adam_params, grid)
ax_sol.plot(grid, exact(grid), "k", label="exact")
ax_sol.plot(grid, u_rd, "--", label="RD + LM")
ax_sol.plot(grid, u_adam, ":", label="Adam")
ax_sol.set(xlabel="x", title="Solutions")
ax_sol.legend()
ax_err.semilogy(grid, np.abs(u_rd - exact(grid)) + 1e-12, label="RD + LM")
ax_err.semilogy(grid, np.abs(u_adam - exact(grid)) + 1e-12, label="Adam")
ax_err.set(xlabel="x", ylabel="|u_θ − u*|", title="Pointwise error")
ax_err.legend()
plt.show()
""",
  ),
  (
    "md",
    """
Why `levenberg_marquardt`: the PINN residual is strongly nonlinear in θ and its Jacobian is badly
conditioned, so a fixed λ is either too small (steps blow up) or too large (slow, gradient-like).
LM measures the actual vs predicted decrease of each step on the same batch, grows λ and re-solves
(with the same $K$, no new Jacobian) when a step fails, and shrinks λ when the linear model is
trusted. In float32 the error eventually plateaus at the precision of the second derivatives.
""",
  ),
]

# ---------------------------------------------------------------- 05 closed-form last layer

LAST_LAYER = [
  (
    "md",
    r"""
# A closed-form last layer

Many networks end with a linear layer: $f(\theta, W, b; x) = \phi(\theta; x)\,W + b$, with features
$\phi$ of width $h$ from a backbone. Under squared error, the best head for fixed features is a
ridge regression, so it need not be learned by gradient steps at all.
`rd.closed_form_last_layer(features_fn, backbone=...)` keeps running statistics of the features
($\tilde\Phi = [\Phi, 1]$, decay $\gamma$)

$$S \leftarrow \gamma S + \tilde\Phi^\top \tilde\Phi, \qquad B \leftarrow \gamma B + \tilde\Phi^\top Y,
\qquad [W; b] = (S + \rho P)^{-1} B$$

($\rho$ = `ridge` on the kernel only, $P = \mathrm{diag}(1, \dots, 1, 0)$), sets the head to that
solution at every step, and gives the backbone the gradient of the batch loss at the new head
(by the envelope theorem, the gradient of the loss with the head optimised out). The backbone
transform is any Optax transformation, or Regression Descent on the backbone with the head held
fixed (`rd.last_layer.rd_backbone`).
""",
  ),
  ("md", RD_IN_ONE_CELL),
  (
    "code",
    SIZE_CELL
    + """
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import rdescent as rd

NUM_POINTS, HIDDEN, BATCH = (256, 16, 32) if CI else (1024, 32, 64)
STEPS = 100 if CI else 3000

inputs = jnp.linspace(-2.0, 2.0, NUM_POINTS)[:, None]
targets = jnp.sin(3.0 * inputs) + 0.3 * inputs ** 2
""",
  ),
  (
    "md",
    """
The parameters must be `{"backbone": ..., "head": {"kernel": (h, k), "bias": (k,)}}`, and the
backbone is given as `features_fn(backbone_params, inputs) -> (m, h)`. The same network and
initialisation serve every optimizer below.
""",
  ),
  (
    "code",
    """
def features_fn(backbone, x):
  \"\"\"φ(θ; x): a tanh MLP, (m, 1) -> (m, HIDDEN).\"\"\"
  for layer in backbone:
    x = jnp.tanh(x @ layer["kernel"] + layer["bias"])
  return x


def apply_fn(params, x):
  return features_fn(params["backbone"], x) @ params["head"]["kernel"] + params["head"]["bias"]


def init(key, sizes=(1, HIDDEN, HIDDEN)):
  keys = jax.random.split(key, len(sizes))
  backbone = [{"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a), "bias": jnp.zeros(b)}
              for k, a, b in zip(keys[1:], sizes[:-1], sizes[1:])]
  head = {"kernel": jax.random.normal(keys[0], (sizes[-1], 1)) / np.sqrt(sizes[-1]),
          "bias": jnp.zeros(1)}
  return {"backbone": backbone, "head": head}


params = init(jax.random.PRNGKey(0))
full_loss = jax.jit(lambda p: 0.5 * jnp.mean((apply_fn(p, inputs) - targets) ** 2))
""",
  ),
  (
    "md",
    """
Four ways to train it on mini-batches of `BATCH` points:

* **Adam** on every parameter (the baseline);
* **random features**: a frozen backbone (`backbone=optax.set_to_zero()`), only the ridge head;
* **closed-form head + Adam** on the backbone;
* **closed-form head + RD** on the backbone (`rd.last_layer.rd_backbone`).

All the closed-form transforms return the whole update: apply it as it is (the head update lands
exactly on the ridge solution), with no learning rate chained after it.
""",
  ),
  (
    "code",
    """
optimizers = {
    "Adam (lr 1e-2), all params": optax.adam(1e-2),
    "frozen backbone + ridge head": rd.closed_form_last_layer(
        features_fn, backbone=optax.set_to_zero(), ridge=1e-3, decay=1.0),
    "closed-form head + Adam backbone": rd.closed_form_last_layer(
        features_fn, backbone=optax.adam(1e-2), ridge=1e-3, decay=0.9),
    "closed-form head + RD backbone": rd.closed_form_last_layer(
        features_fn, backbone=rd.last_layer.rd_backbone(
            features_fn, damping=rd.damping.levenberg_marquardt()),
        ridge=1e-3, decay=0.9),
}


def make_step(tx):
  def batch_loss(p, x, y):
    return 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2)

  @jax.jit
  def step(p, state, x, y):
    grads = jax.grad(batch_loss)(p, x, y)  # used by Adam only; the closed-form transforms ignore it
    updates, state = tx.update(grads, state, p, batch=(x, y))
    return optax.apply_updates(p, updates), state
  return step


batches = np.random.default_rng(0).integers(0, NUM_POINTS, size=(STEPS, BATCH))


def train(tx):
  \"\"\"Same batches for everyone; returns the params and (seconds, full-data loss) rows.\"\"\"
  step, p, state = make_step(tx), params, tx.init(params)
  jax.block_until_ready(step(p, state, inputs[batches[0]], targets[batches[0]]))  # compile
  history, elapsed = [(0.0, float(full_loss(p)))], 0.0
  for i, index in enumerate(batches):
    x, y = inputs[index], targets[index]
    start = time.perf_counter()
    p, state = jax.block_until_ready(step(p, state, x, y))
    elapsed += time.perf_counter() - start
    if (i + 1) % max(1, STEPS // 50) == 0:
      history.append((elapsed, float(full_loss(p))))
  return p, np.array(history)


results = {name: train(tx) for name, tx in optimizers.items()}
for name, (_, history) in results.items():
  print(f"{name:34s} {STEPS} steps, {history[-1, 0]:.2f} s, full-data loss {history[-1, 1]:.2e}")
""",
  ),
  (
    "code",
    """
fig, (ax_loss, ax_fit) = plt.subplots(1, 2, figsize=(12, 4))
for name, (p, history) in results.items():
  ax_loss.semilogy(history[:, 0], history[:, 1], label=name)
  ax_fit.plot(inputs, apply_fn(p, inputs), label=name)
ax_loss.set(xlabel="seconds (compile excluded)", ylabel="full-data loss (mean ½r²)",
            title="Loss vs wall-clock")
ax_loss.legend(fontsize=8)
ax_fit.plot(inputs, targets, "k:", lw=3, label="target")
ax_fit.set(xlabel="x", title="Fits")
plt.show()
""",
  ),
  (
    "md",
    """
What to look for: the frozen backbone is a random-features model, exact but limited by its
features; an exact head does not by itself make the backbone's noisy first-order steps better
(Adam backbone); the exact head pays off most with a second-order backbone step (RD with LM
damping), where each step fits the residual left by the current, optimal head.
""",
  ),
  (
    "md",
    """
## Which options to choose

| option | choose |
|---|---|
| `backbone` | any Optax transform (`optax.adam(...)`); `rd.last_layer.rd_backbone(features_fn, damping=...)` for second-order steps on the backbone; `optax.set_to_zero()` for fixed features |
| `ridge` | small (1e-4 to 1e-2 in the units of the summed loss); the bias is never penalised |
| `decay` | 1.0 for a frozen backbone (exact ridge on all data seen); 0.9–0.99 while the backbone moves, so that features computed by old backbones are forgotten |
| `current_weight`, `proximal` | weight the current batch more, or pull the head toward the previous one (see `help(rd.closed_form_last_layer)`) |

Integer labels are accepted as targets (ridge regression on one-hot rows), so the same
transform gives a closed-form classifier head.
""",
  ),
]

NOTEBOOKS = {
  "01_quickstart": QUICKSTART,
  "02_flax_mnist": FLAX_MNIST,
  "03_lorenz96": LORENZ96,
  "04_pinn": PINN,
  "05_last_layer": LAST_LAYER,
}


def _source(text: str) -> str:
  return textwrap.dedent(text).strip("\n")


def build_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
  """A v4 notebook with the given (kind, source) cells and no outputs."""
  notebook = nbformat.v4.new_notebook()
  notebook.metadata["kernelspec"] = {
    "display_name": "Python 3",
    "language": "python",
    "name": "python3",
  }
  notebook.metadata["language_info"] = {"name": "python"}
  for kind, text in cells:
    if kind == "md":
      notebook.cells.append(nbformat.v4.new_markdown_cell(_source(text)))
    else:
      notebook.cells.append(nbformat.v4.new_code_cell(_source(text)))
  for index, cell in enumerate(notebook.cells):
    cell["id"] = f"cell-{index:02d}"  # stable ids: regenerating gives identical files
  return notebook


def script(cells: list[tuple[str, str]]) -> str:
  """The code cells joined into one script (for debugging outside Jupyter)."""
  return "\n\n".join(_source(text) for kind, text in cells if kind == "code") + "\n"


def ci_environment() -> dict[str, str]:
  """The environment the notebooks run in at the CI size.

  `RDESCENT_NOTEBOOK_SIZE=ci`; `RDESCENT_DATA_DIR` absolute (the kernel runs in
  a temporary directory; default `../shared/data` beside the repository);
  no `MPLBACKEND` (the kernel's inline backend draws the PNGs); XLA's lowest
  optimisation level (tiny problems: compiles about a third faster, the same
  results up to rounding).
  """
  data_dir = os.environ.get("RDESCENT_DATA_DIR", str(HERE.parents[1] / "shared" / "data"))
  flags = os.environ.get("XLA_FLAGS", "")
  return {
    "RDESCENT_NOTEBOOK_SIZE": "ci",
    "RDESCENT_DATA_DIR": os.path.abspath(data_dir),
    "XLA_FLAGS": f"{flags} --xla_backend_optimization_level=0".strip(),
  }


@contextlib.contextmanager
def _environment(
  values: Mapping[str, str], remove: tuple[str, ...] = ("MPLBACKEND",)
) -> Iterator[None]:
  saved = dict(os.environ)
  os.environ.update(values)
  for name in remove:
    os.environ.pop(name, None)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(saved)


def execute_notebook(
  notebook: nbformat.NotebookNode, workdir: pathlib.Path, timeout: int = CELL_TIMEOUT_S
) -> nbformat.NotebookNode:
  """Executes `notebook` in place, in `workdir`, with this interpreter as its kernel.

  The kernel is a temporary kernelspec that launches ipykernel with
  `sys.executable`, so no globally installed Jupyter kernel is needed; it
  inherits the current environment (see `ci_environment`). Raises nbclient's
  `CellExecutionError` (with the traceback) when a cell fails.
  """
  import nbclient
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager

  with tempfile.TemporaryDirectory(prefix="rdescent-kernels-") as kernels:
    spec_dir = pathlib.Path(kernels) / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "rdescent notebooks",
      "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelManager(
      kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels])
    )
    client = nbclient.NotebookClient(
      notebook,
      km=manager,
      timeout=timeout,
      allow_errors=False,
      record_timing=False,
      resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
  return notebook


def execute_all(names: list[str], out_dir: pathlib.Path = EXECUTED_DIR) -> None:
  """Writes each notebook of `names`, executed at the CI size, to `out_dir`."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with _environment(ci_environment()):
    for name in names:
      notebook = build_notebook(NOTEBOOKS[name])
      with tempfile.TemporaryDirectory(prefix=f"rdescent-{name}-") as workdir:
        execute_notebook(notebook, pathlib.Path(workdir))
      notebook.metadata["kernelspec"] = build_notebook([]).metadata["kernelspec"]
      path = out_dir / f"{name}.ipynb"
      nbformat.write(notebook, path)
      print(f"executed {path.relative_to(HERE.parent)}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--script",
    metavar="PREFIX",
    help="print the code of the notebook whose name starts with PREFIX",
  )
  parser.add_argument(
    "--execute",
    nargs="*",
    metavar="PREFIX",
    default=None,
    help="also execute the notebooks (all, or those whose names start with "
    "a PREFIX) at the CI size into docs/notebooks/",
  )
  args = parser.parse_args()
  if args.script:
    (name,) = [n for n in NOTEBOOKS if n.startswith(args.script)]
    print(script(NOTEBOOKS[name]), end="")
    return
  for name, cells in NOTEBOOKS.items():
    path = HERE / f"{name}.ipynb"
    nbformat.write(build_notebook(cells), path)
    print(f"wrote {path.relative_to(HERE.parent)}")
  if args.execute is not None:
    prefixes = args.execute or [""]
    execute_all([n for n in NOTEBOOKS if any(n.startswith(p) for p in prefixes)])


if __name__ == "__main__":
  main()
