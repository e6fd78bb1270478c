"""Where studies are registered, with the functions that print and draw their results.

A study is a function `run(options: StudyOptions) -> dict` returning the result
record (see `benchmarks.runner`). A module registers its study at import time:

    from benchmarks import registry
    registry.register("my_study", run, "one-line description")

and is listed in `STUDY_MODULES` (modules that do not exist yet are skipped),
or imported before `benchmarks.__main__.main` runs.

A study whose record is not a training record (`kind != "training"`, e.g. the
step-cost sweeps of `benchmarks.scaling`) also registers how its record is
shown: `table(result) -> str` (markdown) and `plot(result, path) -> path`
(PNG). `benchmarks.report` looks them up here, so a study module never
imports the report and the report never imports a study: studies import
`registry` and `plotting`, the report imports `registry` and `plotting`, and
`registry` imports the study modules only by name, when asked (`load_all`).
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

# Imported by `load_all`, in this order (`run all` runs the studies in this order).
STUDY_MODULES = (
  "benchmarks.lorenz96",
  "benchmarks.full_batch_fit",
  "benchmarks.mnist",
  "benchmarks.saturation",
  "benchmarks.batch_size",
  "benchmarks.scaling",
  "benchmarks.step_cost",
  "benchmarks.momentum",
  "benchmarks.last_layer",
  "benchmarks.sharding",
  "benchmarks.least_squares",
  "benchmarks.pinn_2d",
  "benchmarks.pinn_suite",
  "benchmarks.vmap_problems",
  "benchmarks.neural_least_squares",
  "benchmarks.paper_protocol",
)

TableFn = Callable[[Mapping[str, Any]], str]
PlotFn = Callable[[Mapping[str, Any], pathlib.Path], pathlib.Path]


class Study(NamedTuple):
  """A registered study.

  Attributes:
    name: the name of `python -m benchmarks run <name>`, and the `"study"` of its record.
    run: `run(options) -> dict`, the result record.
    description: one line, for `python -m benchmarks list`.
    in_all: whether `run all` runs it.
    table: `table(result) -> str`, the markdown table of its record; None for the
      training table of `benchmarks.report`.
    plot: `plot(result, path) -> path`, writes its PNG; None for the training plot
      of `benchmarks.report`.
  """

  name: str
  run: Callable[..., dict[str, Any]]
  description: str
  in_all: bool
  table: TableFn | None = None
  plot: PlotFn | None = None


STUDIES: dict[str, Study] = {}


def register(
  name: str,
  run: Callable[..., dict[str, Any]],
  description: str = "",
  *,
  in_all: bool = True,
  table: TableFn | None = None,
  plot: PlotFn | None = None,
) -> Study:
  """Registers (or replaces) the study `name`; returns its record.

  Args:
    name: the study's name.
    run: `run(options) -> dict`.
    description: one line for `list`.
    in_all: False keeps it out of `run all`.
    table: markdown table of its results (default: the training table).
    plot: PNG of its results (default: the training plot).
  """
  if not callable(run):
    raise TypeError(f"register({name!r}): run must be callable, got {type(run).__name__}.")
  for argument, value in (("table", table), ("plot", plot)):
    if value is not None and not callable(value):
      raise TypeError(
        f"register({name!r}): {argument} must be callable or None, got {type(value).__name__}."
      )
  STUDIES[name] = Study(name, run, description, in_all, table, plot)
  return STUDIES[name]


def load_all() -> dict[str, Study]:
  """Imports every module of `STUDY_MODULES` that exists; returns the registry."""
  for module in STUDY_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as error:
      if error.name != module:
        raise
  return STUDIES


def find(name: str) -> Study | None:
  """The study registered as `name` (loading `STUDY_MODULES` if needed), or None."""
  if name not in STUDIES:
    load_all()
  return STUDIES.get(name)
