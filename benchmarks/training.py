"""The training loop that every study shares: when it evaluates, the timed loop, the rounding of
what it records.

The timing protocol (docs/benchmarks.md, "Protocol"): the step is compiled before the loop (the
caller's), each step is waited for with `block_until_ready`, and the clock counts only the
steps; preparing a step's arguments, evaluating and recording stop it. `runner.train_run`,
`pinn_2d.train` and `momentum.train` are this loop with their own step, evaluation and record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np


class EvaluationSchedule:
  """When a timed training loop evaluates: after steps 1, 2, 4, 8, ..., whenever `interval`
  seconds of training have passed since the last timed evaluation, and at the end."""

  def __init__(self, interval: float):
    self.interval = interval
    self.next_power = 1
    self.next_time = interval

  def due(self, steps: int, seconds: float, done: bool) -> bool:
    """Whether to evaluate after `steps` steps and `seconds` of training (`done`: the last)."""
    power, timed = steps == self.next_power, seconds >= self.next_time
    if power:
      self.next_power *= 2
    if timed:
      self.next_time = seconds + self.interval
    return power or timed or done


class Loop(NamedTuple):
  """The end of a `train_loop`: the step's last outputs and what the loop measured."""

  carry: tuple  # the step's outputs after the last step (the parameters first)
  steps: int
  seconds: float  # seconds of training: the steps alone
  eval_seconds: float  # seconds spent in `evaluate`
  diverged: bool


def train_loop(
  step: Callable[..., tuple],
  carry: tuple,
  arguments: Callable[[int], tuple],
  evaluate: Callable[[tuple, int, float], float],
  due: Callable[[int, float, bool], bool],
  *,
  budget: float = math.inf,
  max_steps: int | None = None,
  initial: bool = True,
  divergence: float | None = 1e6,
  floor: float = 0.0,
  progress: str | None = None,
  metric: str = "loss",
) -> Loop:
  """Runs `carry = step(*carry, *arguments(steps))` until `budget` seconds of training or
  `max_steps` steps.

  Only the steps are timed: each is waited for (`block_until_ready` on `carry[0]`, the
  parameters) before the clock stops; `arguments(steps)` (e.g. the batch's indices) comes
  before the clock starts.

  Args:
    step: the compiled step, `step(*carry, *arguments) -> carry`.
    carry: the step's first arguments, the parameters first (e.g. `(params, opt_state)`).
    arguments: the step's other arguments for the step of that number (from 0).
    evaluate: `evaluate(carry, steps, seconds) -> value` records one evaluation in the caller's
      curve and returns the value watched for divergence; timed apart (`Loop.eval_seconds`).
    due: whether to evaluate after `steps` steps and `seconds` of training, `due(steps,
      seconds, done)` with `done` true after the last step (`EvaluationSchedule.due`).
    budget: seconds of training (steps only).
    max_steps: the most steps (None: no limit).
    initial: also evaluate before the first step (0 steps, 0 s).
    divergence: the run stops as diverged when an evaluation after the first is not finite
      or exceeds `divergence` times max(the first evaluation's value, `floor`); None: never.
    progress: the description of a tqdm bar of the training seconds (None: no bar).
    metric: the watched value's name in the bar.
  """
  bar = None
  if progress is not None:
    from tqdm.auto import tqdm

    bar = tqdm(
      total=round(budget, 2),
      desc=progress,
      unit="s",
      leave=False,
      mininterval=1.0,
      bar_format="{l_bar}{bar}| {n:.1f}/{total}s {postfix}",
    )
  eval_seconds, reference = 0.0, None

  def evaluated(steps: int, seconds: float) -> float:
    nonlocal eval_seconds
    start = time.perf_counter()
    value = evaluate(carry, steps, seconds)
    eval_seconds += time.perf_counter() - start
    return value

  if initial:
    reference = evaluated(0, 0.0)
  seconds, steps, diverged = 0.0, 0, False
  while seconds < budget and (max_steps is None or steps < max_steps):
    args = arguments(steps)
    start = time.perf_counter()
    carry = step(*carry, *args)
    jax.block_until_ready(carry[0])
    elapsed = time.perf_counter() - start
    seconds += elapsed
    steps += 1
    if bar is not None:
      bar.update(min(elapsed, max(budget - bar.n, 0.0)))
    done = seconds >= budget or (max_steps is not None and steps >= max_steps)
    if due(steps, seconds, done):
      value = evaluated(steps, seconds)
      if bar is not None:
        bar.set_postfix_str(f"{metric}={value:.3g} steps={steps}")
      if reference is None:
        reference = value
      elif divergence is not None and (
        not np.isfinite(value) or value > divergence * max(reference, floor)
      ):
        diverged = True
        break
  if bar is not None:
    bar.close()
  return Loop(tuple(carry), steps, seconds, eval_seconds, diverged)


def rounded(value: Any, digits: int = 5) -> float | None:
  """`value` as a float of `digits` significant digits; None when None or not finite."""
  if value is None:
    return None
  value = float(value)
  return float(f"{value:.{digits}g}") if np.isfinite(value) else None
