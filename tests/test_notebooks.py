"""Executes every notebook in notebooks/ at its CI size (RDESCENT_NOTEBOOK_SIZE=ci).

Each notebook must run without error and draw at least one image/png output.
The kernel is the interpreter running pytest (a temporary kernelspec, see
`notebooks/_build.py: execute_notebook`), so no globally installed Jupyter
kernel is needed; the kernel compiles with XLA's lowest optimisation level
(faster compiles, same results up to rounding). Also checks that the committed
notebooks are exactly what notebooks/_build.py writes (cell sources, no
outputs), and that the executed copies the documentation site renders
(docs/notebooks/) have the same cells, every code cell run, and figures.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import rdescent as rd  # noqa: E402  (after importorskip)

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
EXECUTED_DIR = REPO / "docs" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _load_builder():
  spec = importlib.util.spec_from_file_location("_notebook_builder", NOTEBOOK_DIR / "_build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


BUILDER = _load_builder()


def _have_mnist() -> bool:
  try:
    rd.datasets.load_mnist("test", verify=False)
  except rd.datasets.DatasetError:
    return False
  return True


def _images(notebook) -> list:
  outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
  return [out for out in outputs if "image/png" in out.get("data", {})]


def test_the_notebooks_exist_and_match_their_builder():
  names = [path.stem for path in NOTEBOOKS]
  assert names == sorted(BUILDER.NOTEBOOKS), "run `python notebooks/_build.py`"
  for path in NOTEBOOKS:
    committed = nbformat.read(path, as_version=4)
    expected = BUILDER.build_notebook(BUILDER.NOTEBOOKS[path.stem])
    assert [c.source for c in committed.cells] == [c.source for c in expected.cells], (
      f"{path.name} differs from notebooks/_build.py: run `python notebooks/_build.py`"
    )
    for cell in committed.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, (
          f"{path.name}: commit the notebooks with their outputs cleared"
        )


def test_the_executed_copies_for_the_docs_match_their_builder():
  """docs/notebooks/*.ipynb: the same cells, every code cell executed, figures drawn."""
  fix = "run `python notebooks/_build.py --execute`"
  names = sorted(path.stem for path in EXECUTED_DIR.glob("[0-9][0-9]_*.ipynb"))
  assert names == sorted(BUILDER.NOTEBOOKS), fix
  for name in names:
    executed = nbformat.read(EXECUTED_DIR / f"{name}.ipynb", as_version=4)
    expected = BUILDER.build_notebook(BUILDER.NOTEBOOKS[name])
    assert [c.source for c in executed.cells] == [c.source for c in expected.cells], (
      f"docs/notebooks/{name}.ipynb differs from notebooks/_build.py: {fix}"
    )
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), f"{name}: not executed; {fix}"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert _images(executed), f"docs/notebooks/{name}.ipynb holds no image/png output; {fix}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_ci_size_and_plots(path, monkeypatch, tmp_path):
  if "mnist" in path.stem and not _have_mnist():
    pytest.skip(
      f"MNIST IDX files not found under $RDESCENT_DATA_DIR ({os.environ.get('RDESCENT_DATA_DIR')})"
    )
  # RDESCENT_NOTEBOOK_SIZE=ci, an absolute RDESCENT_DATA_DIR (the kernel runs in tmp_path),
  # XLA's cheapest optimisation level (cuts compile time of the tiny problems by about a third).
  for name, value in BUILDER.ci_environment().items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the PNGs
  notebook = nbformat.read(path, as_version=4)
  BUILDER.execute_notebook(notebook, tmp_path)  # raises CellExecutionError when a cell fails
  outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == "error"]
  assert _images(notebook), f"{path.name} produced no image/png output"
