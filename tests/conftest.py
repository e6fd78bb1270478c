"""Shared test fixtures: small models, dense float64 references, data directory."""

from __future__ import annotations

import os
import pathlib

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("RDESCENT_DATA_DIR", str(_REPO.parent / "shared" / "data"))


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
