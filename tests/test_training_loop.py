"""The training loop that the benchmark studies share (`benchmarks.training.train_loop`)."""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import models
from benchmarks import runner
from benchmarks import training


def _counter_step(factor: float = 1.0, pause: float = 0.0):
  """A step of carry (x, calls): x ← factor x + argument, after `pause` seconds (Python floats:
  nothing to compile inside the clock)."""

  def step(x, calls, argument):
    time.sleep(pause)
    return factor * x + argument, calls + 1

  return step


def test_only_the_steps_are_timed_and_the_arguments_come_by_step_number():
  evaluations, arguments = [], []

  def evaluate(carry, steps, seconds):
    time.sleep(0.1)
    evaluations.append((steps, float(carry[0])))
    return float(carry[0])

  def argument(steps):
    arguments.append(steps)
    return (float(steps),)

  loop = training.train_loop(
    _counter_step(pause=0.01),
    (0.0, 0),
    argument,
    evaluate,
    training.EvaluationSchedule(math.inf).due,
    max_steps=4,
    divergence=None,  # x grows from 0
  )
  assert arguments == [0, 1, 2, 3] and loop.steps == 4 and loop.carry[1] == 4
  # Evaluated at 0 and after steps 1, 2, 4 (the last); x = 0 + 0 + 1 + 2 + 3.
  assert evaluations == [(0, 0.0), (1, 0.0), (2, 1.0), (4, 6.0)]
  assert loop.eval_seconds >= 0.4 and 0.04 <= loop.seconds < loop.eval_seconds, loop
  assert not loop.diverged


def test_schedule_powers_of_two_and_the_end_and_the_budget_stops_the_run():
  steps_seen = []

  def evaluate(carry, steps, seconds):
    steps_seen.append(steps)
    return 1.0

  loop = training.train_loop(
    _counter_step(),
    (0.0, 0),
    lambda steps: (1.0,),
    evaluate,
    training.EvaluationSchedule(math.inf).due,
    max_steps=10,
  )
  assert steps_seen == [0, 1, 2, 4, 8, 10] and loop.steps == 10
  loop = training.train_loop(
    _counter_step(pause=0.02),
    (0.0, 0),
    lambda steps: (1.0,),
    lambda carry, steps, seconds: 1.0,
    training.EvaluationSchedule(math.inf).due,
    budget=0.1,
  )
  assert loop.seconds >= 0.1 and 1 <= loop.steps <= 5, loop  # each step 0.02 s or more


def test_divergence_stops_against_the_first_evaluation_and_can_be_switched_off():
  def run(**options):
    seen = []

    def evaluate(carry, steps, seconds):
      seen.append(steps)
      return float(carry[0])

    loop = training.train_loop(
      _counter_step(factor=10.0),
      (1.0, 0),
      lambda steps: (0.0,),
      evaluate,
      lambda steps, seconds, done: True,
      max_steps=12,
      **options,
    )
    return loop, seen

  loop, seen = run()  # 10^7 > 1e6 × 1 after step 7
  assert loop.diverged and loop.steps == 7 and seen == list(range(8))
  loop, _ = run(floor=10.0)  # 10^8 > 1e6 × max(1, 10)
  assert loop.diverged and loop.steps == 8
  loop, seen = run(initial=False, divergence=None)
  assert not loop.diverged and loop.steps == 12 and seen == list(range(1, 13))
  loop, _ = run(initial=False)  # the first evaluation, after step 1 (10), is the reference
  assert loop.diverged and loop.steps == 8


def test_rounded():
  assert training.rounded(1.234567891) == 1.2346 and training.rounded(None) is None
  assert training.rounded(float("nan")) is None and training.rounded(math.inf) is None
  assert training.rounded(jnp.float32(2.5), 3) == 2.5
  first, none, infinite = runner._round([1.234567891, None, math.inf])  # the runner's curves
  assert first == 1.2346 and none is None and np.isnan(infinite)


class _Descent(NamedTuple):
  """A stepper (`OptimizerSpec.uses_step`): plain gradient descent on the mean loss."""

  task: runner.Task

  def init(self, params: Any) -> Any:
    return jnp.zeros([], jnp.int32)

  def step(self, params, state, x, y):
    loss = lambda p: runner.mean_loss(self.task.loss, self.task.model.apply(p, x), y)
    grads = jax.grad(loss)(params)
    return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), state + 1


def test_runner_train_run_records_a_stepper_run_on_the_shared_loop():
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 4))
  y = jnp.sin(x[:, :2])
  task = runner.Task("tiny", models.mlp([4, 8, 2], "tanh"), "mse", x, y, x, y, x, y)
  spec = runner.OptimizerSpec("descent", "gd", _Descent, {"learning_rate": 0.1}, uses_step=True)
  record = runner.train_run(task, spec, 0, budget=60.0, batch_size=8, max_steps=5, progress=False)
  assert record["steps"] == 5 and not record["diverged"]
  assert record["curve"]["step"] == [0, 1, 2, 4, 5]
  assert record["curve"]["loss"][-1] < record["curve"]["loss"][0]
  assert record["train_seconds"] > 0 and record["eval_seconds"] > 0
  assert record["final_loss"] == record["curve"]["loss"][-1] and "test_loss" in record
