"""The races' batch-size grid, the paper-protocol study's summary and `benchmarks/device_check.sh`.

No training here (the default suite's cost stays as it was): the grid's expansion of the specs,
which batch size a race takes for each family from synthetic records, the paper-protocol
table from a synthetic record, and the device check's syntax, help and commands (each a
registered study, each optimizer label one of that study's configurations). Running the
studies themselves is the smoke tests' job (`make bench-smoke`, tests/test_benchmarks_smoke.py).
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import optimizers as opt  # noqa: E402
from benchmarks import registry  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import runner  # noqa: E402

SCRIPT = REPO / "benchmarks" / "device_check.sh"
HANG_SECONDS = 1800  # only a hung subprocess reaches it


def test_with_batch_sizes_runs_every_spec_at_every_size_and_keeps_fixed_ones():
  specs = opt.adam_grid([1e-3]) + [opt.rd_spec("rd fixed", batch_size=16)]
  grid = runner.with_batch_sizes(specs, [32, 128, 32])
  assert [(s.label, s.batch_size) for s in grid] == [
    ("adam lr=0.001 m=32", 32),
    ("adam lr=0.001 m=128", 128),
    ("rd fixed", 16),
  ]
  assert grid[1].hyperparams == {"learning_rate": 1e-3, "batch_size": 128}
  assert grid[1].family == "adam" and grid[1].build is specs[0].build
  single = runner.with_batch_sizes(specs[:1], [128])
  assert [(s.label, s.batch_size) for s in single] == [("adam lr=0.001", 128)]
  assert runner.with_batch_sizes(specs, None) == specs
  with pytest.raises(ValueError, match="batch_sizes"):
    runner.with_batch_sizes(specs, [0])


def test_race_batch_sizes_default_quick_explicit_and_callers_specs():
  options = runner.StudyOptions()
  assert runner.race_batch_sizes(options) == (32, 128, 256)
  assert runner.race_batch_sizes(runner.StudyOptions(quick=True)) == (32, 128)
  assert runner.race_batch_sizes(runner.StudyOptions(batch_sizes=[64])) == (64,)
  assert runner.race_batch_sizes(options, specs=opt.adam_grid([1e-3])) is None  # the demo's
  explicit = runner.StudyOptions(batch_sizes=[32, 256])
  assert runner.race_batch_sizes(explicit, specs=opt.adam_grid([1e-3])) == (32, 256)


def _run(label: str, family: str, batch: int, seconds: list[float], losses: list[float]) -> dict:
  return {
    "label": label,
    "family": family,
    "batch_size": batch,
    "seed": 0,
    "steps": 10,
    "seconds_per_step": 0.01,
    "compile_seconds": 0.1,
    "final_loss": losses[-1],
    "diverged": False,
    "curve": {"step": list(range(len(losses))), "seconds": seconds, "loss": losses},
  }


def test_race_target_is_the_best_adam_over_learning_rate_and_batch_size():
  result = {
    "study": "synthetic",
    "kind": "training",
    "config": {"seeds": 1},
    "runs": [
      _run("adam lr=0.001 m=32", "adam", 32, [0, 1, 2], [1.0, 0.5, 0.30]),
      _run("adam lr=0.001 m=256", "adam", 256, [0, 1, 2], [1.0, 0.4, 0.20]),
      _run("rd paper m=32", "rd", 32, [0, 1, 2], [1.0, 0.25, 0.15]),
      _run("rd paper m=128", "rd", 128, [0, 0.5, 2], [1.0, 0.2, 0.1]),
    ],
  }
  summary = report.summarize(result)
  assert summary["target"] == 0.20 and "adam lr=0.001 m=256" in summary["target_source"]
  assert summary["best"] == {"adam": "adam lr=0.001 m=256", "rd": "rd paper m=128"}
  assert summary["best_batch_size"] == {"adam": 256, "rd": 128}
  assert summary["rd_over_adam"] == pytest.approx(0.5 / 2)
  assert "Batch size each family's best picked: adam 256, rd 128." in report.training_table(result)


def _protocol_run(label: str, family: str, train: list[float], step_s: float, eval_s: float):
  steps = list(range(len(train)))
  strict = [step_s * i for i in steps]
  protocol = [(step_s + eval_s) * i + eval_s for i in steps]
  curve = {"step": steps, "strict": strict, "protocol": protocol, "train": train}
  curve.update(val=train, acc=[0.5] * len(train))
  return {
    "label": label,
    "family": family,
    "seed": 0,
    "steps": steps[-1],
    "diverged": False,
    "compile_seconds": 0.1,
    "strict_seconds": strict[-1],
    "protocol_seconds": protocol[-1],
    "final_train_loss": train[-1],
    "final_val_accuracy": 0.5,
    "curve": curve,
  }


def test_paper_protocol_counts_evaluation_in_its_clock_and_reports_both_ratios():
  from benchmarks import paper_protocol

  task = {
    "task": "mnist",
    "name": "synthetic",
    "model": "m",
    "train_size": 8,
    "validation_size": 4,
    "runs": [
      _protocol_run("adam lr=0.001", "adam", [1.0, 0.8, 0.6, 0.5, 0.4], 0.01, 1.0),
      _protocol_run("rd paper", "rd", [1.0, 0.4, 0.3, 0.2, 0.1], 0.05, 1.0),
    ],
  }
  summary = paper_protocol.summarize_task(task)
  assert summary["target"] == 0.4
  rows = {row["label"]: row for row in summary["rows"]}
  assert rows["adam lr=0.001"]["iterations"] == 4 and rows["rd paper"]["iterations"] == 1
  assert rows["rd paper"]["protocol"] == pytest.approx(2.05)  # one step + two evaluations
  assert summary["ratios"]["protocol"] == pytest.approx(2.05 / 5.04)
  assert summary["ratios"]["strict"] == pytest.approx(0.05 / 0.04)
  result = {"config": {"iterations": 4, "batch_size": 32, "seeds": 1}, "tasks": [task]}
  table = paper_protocol.markdown_table(result)
  assert "The paper's timing protocol, not the strict one" in table
  assert "RD / best Adam under the paper's protocol: **0.41** (reproduces" in table
  study = registry.find("paper_protocol")
  assert study is not None and not study.in_all
  assert study.table is paper_protocol.markdown_table and study.plot is paper_protocol.plot


def _script(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", str(SCRIPT), *args],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    capture_output=True,
    text=True,
    timeout=HANG_SECONDS,
  )


def _study_specs(study: str) -> list[str]:
  """The labels of a race's full grid (before the batch-size grid)."""
  from benchmarks import lorenz96
  from benchmarks import mnist
  from benchmarks import saturation

  if study in ("mnist", "fashion_mnist"):
    return [s.label for s in mnist.default_optimizers("mse", quick=False)]
  module = {"saturation": saturation, "lorenz96": lorenz96}[study]
  return [s.label for s in module.default_optimizers(quick=False)]


def test_device_check_script_parses_helps_and_calls_registered_studies_and_settings():
  assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=HANG_SECONDS).returncode == 0
  assert os.access(SCRIPT, os.X_OK)
  helped = _script("--help")
  assert helped.returncode == 0 and "--quick" in helped.stdout and "--out" in helped.stdout
  assert _script("--bogus").returncode == 2
  assert _script("--quick").returncode == 2  # quick results need --out
  dry = _script("--dry-run", "--out", "/tmp/device-check")
  assert dry.returncode == 0, dry.stderr
  commands = [shlex.split(line) for line in dry.stdout.splitlines()]
  studies = [words[4] for words in commands]
  assert studies == ["step_cost", "mnist", "fashion_mnist", "saturation", "lorenz96"]
  registered = registry.load_all()
  for words in commands:
    assert words[:4] == ["python", "-m", "benchmarks", "run"] and words[4] in registered
    assert words[words.index("--out") + 1] == "/tmp/device-check"
    if words[4] == "step_cost":
      continue
    assert words[words.index("--budget") + 1] == "2"
    assert words[words.index("--batch-sizes") + 1] == "32,128,256"
    labels = words[words.index("--optimizers") + 1].split(",")
    known = _study_specs(words[4])
    assert {"adam lr=0.001", "adam lr=0.003"} <= set(labels)
    assert [label for label in labels if label not in known] == [], words[4]
  quick = _script("--dry-run", "--quick", "--races-only", "--out", "/tmp/device-check")
  lines = quick.stdout.splitlines()
  assert len(lines) == 4 and all("--quick" in line and "32,128 " in line for line in lines)
  assert all("--budget" not in line for line in lines)


@pytest.mark.slow
@pytest.mark.benchmark_smoke
def test_device_check_quick_runs_the_races_on_this_machine(tmp_path):
  done = _script("--quick", "--races-only", "--out", str(tmp_path))
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  for study in ("mnist", "fashion_mnist", "saturation", "lorenz96"):
    result = runner.load(tmp_path / f"{study}.json")
    assert result["config"]["batch_sizes"] == [32, 128]
    assert {run["batch_size"] for run in result["runs"]} == {32, 128}
    assert {run["family"] for run in result["runs"]} == {"adam", "rd"}
