"""Where studies are registered, so that `python -m benchmarks run <study>` finds them.

A study is a function `run(options: StudyOptions) -> dict` returning the result
record (see `benchmarks.runner`). A module registers its study at import time:

    from benchmarks import registry
    registry.register("my_study", run, "one-line description")

and is listed in `STUDY_MODULES` (modules that do not exist yet are skipped),
or imported before `benchmarks.__main__.main` runs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

# Imported by `load_all`, in this order (`run all` runs the studies in this order).
STUDY_MODULES = (
    "benchmarks.lorenz96",
    "benchmarks.full_batch_fit",
    "benchmarks.mnist",
    "benchmarks.saturation",
    "benchmarks.batch_size",
    "benchmarks.scaling",
    "benchmarks.last_layer",
    "benchmarks.sharding",
)


class Study(NamedTuple):
  name: str
  run: Callable[..., dict[str, Any]]
  description: str
  in_all: bool


STUDIES: dict[str, Study] = {}


def register(name: str, run: Callable[..., dict[str, Any]], description: str = "",
             *, in_all: bool = True) -> None:
  """Registers (or replaces) the study `name`; `in_all=False` keeps it out of `run all`."""
  STUDIES[name] = Study(name, run, description, in_all)


def load_all() -> dict[str, Study]:
  """Imports every module of `STUDY_MODULES` that exists; returns the registry."""
  for module in STUDY_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as error:
      if error.name != module:
        raise
  return STUDIES
