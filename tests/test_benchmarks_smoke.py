"""Smoke tests of the benchmark suite at `--quick` sizes, into a temp directory.

The default suite runs two studies (one training race through the runner, one of the
non-training studies) and the page table; every study of `run all` at quick sizes, several
minutes on a 2-core machine, is the `benchmark_smoke` test (`make bench-smoke`, or
`pytest --run-slow -m benchmark_smoke tests/test_benchmarks_smoke.py`). Subprocess limits are
there to stop a hang, not to time a run: generous, far above what a busy machine takes.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


HANG_SECONDS = 1800  # a limit that only a hung subprocess reaches (a quick study: 10-60 s)
ALL_STUDIES_HANG_SECONDS = 3600  # `run all --quick`: 3-6 minutes on a busy 2-core machine


def _run_quick(study: str, out: pathlib.Path, timeout: float, *extra: str) -> None:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [sys.executable, "-m", "benchmarks", "run", study, "--quick", "--no-progress", *extra]
  done = subprocess.run(
    [*command, "--out", str(out)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _check_results_and_table(out: pathlib.Path, studies: tuple[str, ...]) -> None:
  """Each study's JSON and PNG; then the page's tables from the JSON, figures redrawn."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for study in studies:
    result = json.loads((out / f"{study}.json").read_text())
    assert result["study"] == study
    assert (out / f"{study}.png").stat().st_size > 0
    if result["kind"] == "training":
      assert {run["family"] for run in result["runs"]} >= {"adam"}
      assert all(run["steps"] > 0 and run["compile_seconds"] > 0 for run in result["runs"])
  doc = out / "benchmarks.md"
  first = studies[0]
  (out / f"{first}.png").unlink()  # `--plots` redraws it from the JSON
  table = subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks",
      "table",
      "--results",
      str(out),
      "--doc",
      str(doc),
      "--plots",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=HANG_SECONDS,
  )
  assert table.returncode == 0, table.stderr
  assert (out / f"{first}.png").stat().st_size > 0
  text = doc.read_text()
  assert f"### {first}" in text and "time to target" in text and f"{first}.png" in text
  # Every image link resolves from the doc (MkDocs needs them inside docs_dir: copied there).
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert links and all(link.startswith("assets/benchmarks/") for link in links), links
  assert all((doc.parent / link).stat().st_size > 0 for link in links)


def test_two_quick_studies_write_json_plots_and_table(tmp_path):
  """A training race (saturation: MNIST through the runner) and the sharding study.

  The race at one batch size (its quick grid 32,128 would double its compilations; `run all
  --quick` below runs the grid)."""
  studies = ("saturation", "sharding")
  _run_quick("saturation", tmp_path, HANG_SECONDS, "--batch-sizes", "32")
  _run_quick("sharding", tmp_path, HANG_SECONDS)
  _check_results_and_table(tmp_path, studies)
  assert {
    run["batch_size"] for run in json.loads((tmp_path / "saturation.json").read_text())["runs"]
  } == {32}


@pytest.mark.slow
@pytest.mark.benchmark_smoke
def test_run_all_quick_writes_json_plots_and_table(tmp_path):
  _run_quick("all", tmp_path, ALL_STUDIES_HANG_SECONDS)
  _check_results_and_table(
    tmp_path,
    (
      "lorenz96",
      "mnist",
      "mnist_ce",
      "fashion_mnist",
      "saturation",
      "batch_size",
      "scaling",
    ),
  )
  for race in ("lorenz96", "mnist", "fashion_mnist", "saturation"):  # the races' quick grid
    result = json.loads((tmp_path / f"{race}.json").read_text())
    assert {run["batch_size"] for run in result["runs"]} == {32, 128}, race


@pytest.mark.slow
@pytest.mark.benchmark_smoke
def test_paper_protocol_quick_writes_json_plot_and_table(tmp_path):
  """The paper's protocol (not in `run all`): three tasks, both clocks, its own table."""
  _run_quick("paper_protocol", tmp_path, HANG_SECONDS)
  result = json.loads((tmp_path / "paper_protocol.json").read_text())
  assert [task["task"] for task in result["tasks"]] == ["mnist", "fashion_mnist", "lorenz96"]
  for task in result["tasks"]:
    assert {run["family"] for run in task["runs"]} == {"sgd", "adam", "rd"}
    for run in task["runs"]:
      curve = run["curve"]
      assert run["steps"] == result["config"]["iterations"] == len(curve["step"]) - 1
      assert all(p >= s for p, s in zip(curve["protocol"], curve["strict"]))
  assert (tmp_path / "paper_protocol.png").stat().st_size > 0
  doc = tmp_path / "benchmarks.md"
  table = subprocess.run(
    [sys.executable, "-m", "benchmarks", "table", "--results", str(tmp_path), "--doc", str(doc)],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    capture_output=True,
    text=True,
    timeout=HANG_SECONDS,
  )
  assert table.returncode == 0, table.stderr
  assert "### paper_protocol" in doc.read_text() and "not the strict one" in doc.read_text()


def test_demo_quick_writes_table_json_and_one_figure(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.demo", "--quick", "--out", str(tmp_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=HANG_SECONDS,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "time to target" in done.stdout and "Lorenz96" in done.stdout
  assert sorted(p.name for p in tmp_path.glob("*.png")) == ["demo.png"]
  assert (tmp_path / "demo.png").stat().st_size > 0
  table = json.loads((tmp_path / "demo.json").read_text())
  families = {}
  for row in table["rows"]:
    families.setdefault(row["study"], set()).add(row["family"])
    assert row["steps"] > 0 and row["ms_per_step"] > 0 and row["target"] > 0
  assert families == {"fit_1d": {"rd", "adam", "lbfgs"}, "lorenz96": {"rd", "adam"}}
  for study in ("fit_1d", "lorenz96"):
    assert json.loads((tmp_path / f"{study}.json").read_text())["config"]["seeds"] == 1
  markdown = (tmp_path / "demo.md").read_text()
  assert "| task | method | final loss | time to target s | steps | ms/step |" in markdown
  assert "![demo](demo.png)" in markdown


def _benchmark_imports() -> dict[str, set[str]]:
  """benchmarks module -> the benchmarks modules it imports anywhere (also inside functions)."""
  graph = {}
  for path in (REPO / "benchmarks").glob("*.py"):
    name = f"benchmarks.{path.stem}"
    graph[name] = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        graph[name] |= {a.name for a in node.names if a.name.startswith("benchmarks.")}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "benchmarks":
          graph[name] |= {f"benchmarks.{a.name}" for a in node.names}
        elif node.module.startswith("benchmarks."):
          graph[name].add(node.module)
  return graph


def test_benchmark_modules_import_no_cycle_and_report_imports_no_study():
  graph = _benchmark_imports()
  state: dict[str, str] = {}

  def visit(module, trail):
    if state.get(module) == "done":
      return
    assert state.get(module) != "open", f"import cycle: {' -> '.join(trail + [module])}"
    state[module] = "open"
    for imported in sorted(graph.get(module, ())):
      visit(imported, trail + [module])
    state[module] = "done"

  for module in sorted(graph):
    visit(module, [])
  assert graph["benchmarks.report"] <= {"benchmarks.plotting", "benchmarks.registry"}
  assert graph["benchmarks.registry"] == set()


def test_registry_carries_table_and_plot_of_non_training_studies():
  sys.path.insert(0, str(REPO))
  from benchmarks import registry
  from benchmarks import report
  from benchmarks import scaling

  studies = registry.load_all()
  assert studies["scaling"].table is scaling.markdown_table
  assert studies["scaling"].plot is scaling.plot
  assert studies["sharding"].table is not None and studies["sharding"].plot is not None
  assert studies["lorenz96"].table is None  # the report's training table
  result = json.loads((REPO / "benchmarks" / "results" / "cpu" / "scaling.json").read_text())
  assert report.markdown_table(result) == scaling.markdown_table(result)


def test_unknown_study_and_quick_without_out_are_refused():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for args in (["run", "nope", "--quick", "--out", "/tmp/x"], ["run", "lorenz96", "--quick"]):
    done = subprocess.run(
      [sys.executable, "-m", "benchmarks", *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=HANG_SECONDS,
    )
    assert done.returncode == 2, done.stderr


def test_gram_speed_quick_writes_json_and_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [
    sys.executable,
    "-m",
    "benchmarks.gram_speed",
    "--quick",
    "--repeats",
    "2",
    "--out",
    str(tmp_path),
  ]
  done = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_SECONDS
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((tmp_path / "gram_speed.json").read_text())
  assert result["study"] == "gram_speed" and len(result["rows"]) == 3
  for row in result["rows"]:
    assert row["structured_ms"] > 0 and row["jacobian_ms"] > 0 and row["sgd_ms"] > 0
    assert row["structured_flops"] > 0 and row["structured_estimate_bytes"] > 0
  assert "| jacobian / structured |" in done.stdout


@pytest.mark.slow  # compile-bound (about 50 s); the CI smoke test of the runner is run_all above
def test_step_cost_quick_writes_json_plot_and_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [
    sys.executable,
    "-m",
    "benchmarks",
    "run",
    "step_cost",
    "--quick",
    "--no-progress",
    "--out",
    str(tmp_path),
  ]
  done = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_SECONDS
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((tmp_path / "step_cost.json").read_text())
  assert result["study"] == "step_cost" and result["kind"] == "step_cost"
  assert "run step_cost" in result["command"] and result["machine"]["jax"]
  assert (tmp_path / "step_cost.png").stat().st_size > 0
  parts = (
    "rd_full",
    "rd_per_output",
    "rd_lm",
    "gram_structured",
    "gram_jacobian",
    "cholesky",
    "forward",
    "adam",
  )
  assert [row["model"].split(" ")[0] for row in result["rows"]] == [
    "saturated",
    "SmallCNN",
    "transformer",
  ]
  for row in result["rows"]:
    assert set(parts) <= set(row["parts"])
    for name in parts:
      timing = row["parts"][name]
      assert timing["ms"] > 0 and timing["min_ms"] <= timing["ms"], (row["model"], name)
      assert timing["calls"] >= 2 and timing["compile_s"] > 0
    p = row["parts"]
    assert row["system_size"] == row["m"] * row["k"]
    assert row["auto_choice"] in ("structured", "jacobian", "other")
    assert row["fastest_engine"] in ("structured", "jacobian")
    gram = min(p["gram_structured"]["ms"], p["gram_jacobian"]["ms"])
    floor = gram + p["cholesky"]["ms"] + 3 * p["forward"]["ms"]
    assert abs(row["floor_ms"] - floor) <= 1e-9 * floor
    assert abs(row["step_over_floor"] - p["rd_full"]["ms"] / floor) <= 1e-9 * row["step_over_floor"]
    assert abs(row["step_over_adam"] * p["adam"]["ms"] - p["rd_full"]["ms"]) <= 1e-9 * floor
    assert p["rd_lm"]["damping_initial"] > 0 and p["rd_lm"]["damping_used"] > 0
    assert 0 < row["floor_min_ms"] <= row["floor_ms"] and row["step_over_floor_min"] > 0
  doc = tmp_path / "benchmarks.md"
  table = subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks",
      "table",
      "--results",
      str(tmp_path),
      "--doc",
      str(doc),
      "--studies",
      "step_cost",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=HANG_SECONDS,
  )
  assert table.returncode == 0, table.stderr
  text = doc.read_text()
  assert "### step_cost" in text and "| model, batch | system | RD full step ms |" in text
  assert "![step_cost](assets/benchmarks/step_cost.png)" in text
  assert (doc.parent / "assets" / "benchmarks" / "step_cost.png").stat().st_size > 0


def test_step_cost_is_registered_outside_run_all_with_its_table_and_plot():
  sys.path.insert(0, str(REPO))
  from benchmarks import registry
  from benchmarks import step_cost

  study = registry.load_all()["step_cost"]
  assert study.table is step_cost.markdown_table and study.plot is step_cost.plot
  assert not study.in_all
