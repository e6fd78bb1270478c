"""Smoke test of the benchmark suite: every study at `--quick` sizes, into a temp directory."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_run_all_quick_writes_json_plots_and_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [sys.executable, "-m", "benchmarks", "run", "all", "--quick", "--no-progress",
             "--out", str(tmp_path)]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  for study in ("lorenz96", "mnist", "mnist_ce", "fashion_mnist", "saturation", "batch_size",
                "scaling"):
    result = json.loads((tmp_path / f"{study}.json").read_text())
    assert result["study"] == study
    assert (tmp_path / f"{study}.png").stat().st_size > 0
    if result["kind"] == "training":
      assert {run["family"] for run in result["runs"]} >= {"adam"}
      assert all(run["steps"] > 0 and run["compile_seconds"] > 0 for run in result["runs"])
  doc = tmp_path / "benchmarks.md"
  (tmp_path / "lorenz96.png").unlink()            # `--plots` redraws it from the JSON
  table = subprocess.run([sys.executable, "-m", "benchmarks", "table", "--results", str(tmp_path),
                          "--doc", str(doc), "--plots"], cwd=REPO, env=env, capture_output=True,
                         text=True)
  assert table.returncode == 0, table.stderr
  assert (tmp_path / "lorenz96.png").stat().st_size > 0
  text = doc.read_text()
  assert "### lorenz96" in text and "time to target" in text and "lorenz96.png" in text


def test_unknown_study_and_quick_without_out_are_refused():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for args in (["run", "nope", "--quick", "--out", "/tmp/x"], ["run", "lorenz96", "--quick"]):
    done = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr


def test_gram_speed_quick_writes_json_and_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [sys.executable, "-m", "benchmarks.gram_speed", "--quick", "--repeats", "2",
             "--out", str(tmp_path)]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((tmp_path / "gram_speed.json").read_text())
  assert result["study"] == "gram_speed" and len(result["rows"]) == 3
  for row in result["rows"]:
    assert row["structured_ms"] > 0 and row["jacobian_ms"] > 0 and row["sgd_ms"] > 0
    assert row["structured_flops"] > 0 and row["structured_estimate_bytes"] > 0
  assert "| jacobian / structured |" in done.stdout
