"""Shared test fixtures: small models, dense float64 references, data directory."""

from __future__ import annotations

import os
import pathlib

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("RDESCENT_DATA_DIR", str(_REPO.parent / "shared" / "data"))

# The suite compiles hundreds of small programs and runs each a few times: it is
# compile-bound. XLA's lowest CPU optimisation level (as the notebooks and the
# multi-device subprocess already use) compiles them in about half the time with the
# same results up to rounding (measured: test_common's LM variants 149 -> 83 s of CPU).
# Set before any test starts JAX's backend (the flags are read once, at its start);
# subprocesses inherit it. A level the user gives in XLA_FLAGS is kept.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
  os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0".strip()


def pytest_addoption(parser):
  parser.addoption(
    "--run-slow", action="store_true", default=False, help="run tests marked slow (long benchmarks)"
  )


def pytest_collection_modifyitems(config, items):
  if config.getoption("--run-slow"):
    return
  skip = pytest.mark.skip(reason="slow: pass --run-slow to run")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
