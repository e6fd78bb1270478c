"""Executes every notebook in notebooks/ at its CI size (RDESCENT_NOTEBOOK_SIZE=ci).

Each notebook must run without error and draw at least one image/png output.
The kernel is the interpreter running pytest (a temporary kernelspec), so no
globally installed Jupyter kernel is needed; the kernel compiles with XLA's
lowest optimisation level (faster compiles, same results up to rounding). Also checks that the committed
notebooks are exactly what notebooks/_build.py writes (cell sources, no outputs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after importorskip)
from jupyter_client.manager import KernelManager  # noqa: E402

import rdescent as rd  # noqa: E402

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
KERNEL_NAME = "rdescent-test"
CELL_TIMEOUT_S = 300


def _load_builder():
  spec = importlib.util.spec_from_file_location("_notebook_builder", NOTEBOOK_DIR / "_build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _have_mnist() -> bool:
  try:
    rd.datasets.load_mnist("test", verify=False)
  except rd.datasets.DatasetError:
    return False
  return True


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
  """A kernelspec that launches ipykernel with this very interpreter."""
  root = tmp_path_factory.mktemp("kernels")
  spec_dir = root / KERNEL_NAME
  spec_dir.mkdir()
  spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "rdescent tests",
      "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  return KernelSpecManager(kernel_dirs=[str(root)])


def test_the_notebooks_exist_and_match_their_builder():
  builder = _load_builder()
  names = [path.stem for path in NOTEBOOKS]
  assert names == sorted(builder.NOTEBOOKS), "run `python notebooks/_build.py`"
  for path in NOTEBOOKS:
    committed = nbformat.read(path, as_version=4)
    expected = builder.build_notebook(builder.NOTEBOOKS[path.stem])
    assert [c.source for c in committed.cells] == [c.source for c in expected.cells], (
        f"{path.name} differs from notebooks/_build.py: run `python notebooks/_build.py`")
    for cell in committed.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, (
            f"{path.name}: commit the notebooks with their outputs cleared")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_ci_size_and_plots(path, kernel_specs, monkeypatch, tmp_path):
  if "mnist" in path.stem and not _have_mnist():
    pytest.skip(f"MNIST IDX files not found under $RDESCENT_DATA_DIR "
                f"({os.environ.get('RDESCENT_DATA_DIR')})")
  monkeypatch.setenv("RDESCENT_NOTEBOOK_SIZE", "ci")
  if os.environ.get("RDESCENT_DATA_DIR"):  # the kernel runs in tmp_path: no relative paths
    monkeypatch.setenv("RDESCENT_DATA_DIR", os.path.abspath(os.environ["RDESCENT_DATA_DIR"]))
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the PNGs
  # Tiny problems: XLA's cheapest optimisation level cuts compile time by about a third.
  flags = os.environ.get("XLA_FLAGS", "")
  monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
  notebook = nbformat.read(path, as_version=4)
  manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
  client = nbclient.NotebookClient(
      notebook, km=manager, timeout=CELL_TIMEOUT_S, allow_errors=False,
      resources={"metadata": {"path": str(tmp_path)}},
  )
  client.execute()  # raises CellExecutionError (with the traceback) when a cell fails
  outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == "error"]
  images = [out for out in outputs if "image/png" in out.get("data", {})]
  assert images, f"{path.name} produced no image/png output"
