"""Every ```python block of README.md and docs/**/*.md runs as written.

The blocks of one markdown file run in order in one fresh namespace, so a later
block may use the names of an earlier one and nothing leaks from one file to
the next. All files share one subprocess (JAX starts once), with a time limit
per file and float64 switched off again after each; a file whose blocks set
environment variables (`XLA_FLAGS` before JAX starts, as the data-parallel
guide does to simulate devices) gets an interpreter of its own. Blocks run on
the CPU in float32 unless they enable float64 themselves, from a temporary
working directory, with the repository root on `sys.path` (for `benchmarks.*`).

Conventions in the markdown:

* ```` ```python notest ```` (the word `notest` after the language) or the
  line `<!-- notest -->` right before the opening fence keeps a block out;
  the text around such a block must say why it cannot run here.
* `<!-- docs-test-requires: flax -->` anywhere in a file skips the file when
  the named module cannot be imported (optional extras).
* Other languages (```bash, ```text, ...) are never executed.

docs/api/ (generated from docstrings, which run as doctests) and
docs/benchmarks.md (generated from the results JSON) are not collected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXCLUDED = ("docs/api/", "docs/benchmarks.md")
TIMEOUT_SECONDS = 1200  # per file: stops a hang; a busy 2-core machine takes far less
PYTHON_LANGUAGES = ("python", "py")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NOTEST_COMMENT = re.compile(r"^\s*<!--\s*notest\b.*-->\s*$")
_REQUIRES = re.compile(r"<!--\s*docs-test-requires:\s*(?P<modules>[\w., ]+?)\s*-->")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
  """One fenced block: its language, source, first source line (1-based), skip flag."""

  language: str
  source: str
  line: int
  notest: bool


def code_blocks(text: str) -> list[CodeBlock]:
  """Fenced code blocks of a markdown text, in order (indented fences included).

  A fence is three or more backticks or tildes; the block ends at a fence of
  the same character at least as long. The block's lines lose the opening
  fence's indentation (blocks inside lists or admonitions).
  """
  lines = text.splitlines()
  blocks = []
  index = 0
  while index < len(lines):
    match = _FENCE.match(lines[index])
    if not match:
      index += 1
      continue
    indent, fence = match["indent"], match["fence"]
    words = match["info"].strip().strip("{}").replace(",", " ").split()
    language = words[0].lstrip(".").lower() if words else ""
    notest = "notest" in words[1:] or (index > 0 and bool(_NOTEST_COMMENT.match(lines[index - 1])))
    body = []
    end = index + 1
    while end < len(lines):
      closing = lines[end].strip()
      if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
        break
      line = lines[end]
      body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
      end += 1
    blocks.append(CodeBlock(language, "\n".join(body) + "\n", index + 2, notest))
    index = end + 1
  return blocks


def python_blocks(text: str) -> list[CodeBlock]:
  return [b for b in code_blocks(text) if b.language in PYTHON_LANGUAGES and not b.notest]


def markdown_files() -> list[pathlib.Path]:
  files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
  keep = []
  for path in files:
    relative = path.relative_to(REPO).as_posix()
    if path.is_file() and not relative.startswith(EXCLUDED):
      keep.append(path)
  return keep


# Runs in a subprocess: for each file, executes its blocks in one fresh
# namespace, each compiled with the markdown file as its file name and its own
# line numbers (a traceback points at the markdown line), under a per-file
# alarm; then resets float64. Results are written after every file.
_RUNNER = """
import contextlib, io, json, signal, sys, traceback

def on_alarm(signum, frame):
  raise TimeoutError("the blocks of this file ran past their time limit")

signal.signal(signal.SIGALRM, on_alarm)
files = json.load(open(sys.argv[1], encoding="utf-8"))
results = {}
for entry in files:
  namespace = {"__name__": "__main__"}
  output = io.StringIO()
  error = None
  signal.alarm(entry["timeout"])
  try:
    with contextlib.redirect_stdout(output):
      for block in entry["blocks"]:
        source = "\\n" * (block["line"] - 1) + block["source"]
        exec(compile(source, entry["path"], "exec"), namespace)
  except Exception:
    error = traceback.format_exc()
  finally:
    signal.alarm(0)
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_enable_x64", False)
  results[entry["path"]] = {"error": error, "stdout": output.getvalue()[-3000:]}
  with open(sys.argv[2], "w", encoding="utf-8") as stream:
    json.dump(results, stream)
"""


def _missing_requirements(text: str) -> list[str]:
  missing = []
  for match in _REQUIRES.finditer(text):
    for name in match["modules"].replace(",", " ").split():
      if importlib.util.find_spec(name) is None:
        missing.append(name)
  return missing


def plan(path: pathlib.Path) -> tuple[list[CodeBlock], str | None]:
  """The blocks of a file to run, and why the file is skipped (None: it runs)."""
  text = path.read_text(encoding="utf-8")
  blocks = python_blocks(text)
  if not blocks:
    return blocks, "no python blocks"
  missing = _missing_requirements(text)
  if missing:
    return blocks, f"needs {', '.join(missing)} (docs-test-requires)"
  return blocks, None


def needs_own_interpreter(blocks: list[CodeBlock]) -> bool:
  """A file that sets environment variables (XLA_FLAGS before JAX starts) runs alone."""
  return any("os.environ" in b.source for b in blocks)


def run_files(paths: list[pathlib.Path], workdir: pathlib.Path) -> dict[str, dict]:
  """Runs the blocks of `paths` in one fresh interpreter; {path: {error, stdout}}."""
  payload, output = workdir / "blocks.json", workdir / "results.json"
  entries = []
  for path in paths:
    blocks, _ = plan(path)
    entries.append(
      {
        "path": str(path),
        "timeout": TIMEOUT_SECONDS,
        "blocks": [{"line": b.line, "source": b.source} for b in blocks],
      }
    )
  payload.write_text(json.dumps(entries), encoding="utf-8")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
  if not any(needs_own_interpreter(plan(path)[0]) for path in paths):
    # As the notebooks: XLA's lowest CPU optimisation level compiles the examples' small
    # programs in about half the time, with the same results up to rounding. (A file that
    # sets XLA_FLAGS itself, with os.environ.setdefault, gets an environment without it.)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  env.update(
    JAX_PLATFORMS="cpu",
    MPLBACKEND="Agg",
    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
  )
  process = subprocess.run(
    [sys.executable, "-c", _RUNNER, str(payload), str(output)],
    cwd=workdir,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_SECONDS * len(paths) + 60,
  )
  results = json.loads(output.read_text(encoding="utf-8")) if output.exists() else {}
  for path in paths:  # a file the interpreter never finished (it crashed)
    results.setdefault(
      str(path),
      {
        "error": f"the interpreter exited with {process.returncode}:\n{process.stderr[-6000:]}",
        "stdout": process.stdout[-3000:],
      },
    )
  return results


@pytest.fixture(scope="session")
def shared_results(request, tmp_path_factory) -> dict[str, dict]:
  """One interpreter for every selected file that does not need its own (saves JAX's start-up).

  Under pytest-xdist every worker would see every selected item, so there each
  file runs in its own interpreter instead, on the worker that runs its test.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return {}
  selected = [
    item.callspec.params["path"]
    for item in request.session.items
    if getattr(item, "originalname", None) == "test_python_blocks_run"
  ]
  shared = []
  for path in selected:
    blocks, skip = plan(path)
    if skip is None and not needs_own_interpreter(blocks):
      shared.append(path)
  if not shared:
    return {}
  return run_files(shared, tmp_path_factory.mktemp("docs_examples"))


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_blocks_run(path: pathlib.Path, shared_results, tmp_path: pathlib.Path):
  blocks, skip = plan(path)
  if skip is not None:
    pytest.skip(skip)
  result = shared_results.get(str(path)) or run_files([path], tmp_path)[str(path)]
  assert result["error"] is None, (
    f"a python block of {path.relative_to(REPO)} failed ({len(blocks)} blocks, run in "
    f"order in one namespace):\n{result['stdout']}\n{result['error']}"
  )


def test_readme_has_a_runnable_example():
  blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
  assert blocks, "README.md must hold at least one ```python block that runs"


def test_code_blocks_parses_fences_and_markers():
  text = "\n".join(
    [
      "intro",
      "```python",
      "a = 1",
      "```",
      "```bash",
      "make test",
      "```",
      "<!-- notest -->",
      "```python",
      "needs_devices()",
      "```",
      "```python notest",
      "also_skipped()",
      "```",
      "1. a list item",
      "    ```python",
      "    b = a + 1",
      "    ```",
      "````python",
      "s = '''",
      "```",
      "'''",
      "````",
    ]
  )
  blocks = code_blocks(text)
  assert [b.language for b in blocks] == ["python", "bash", "python", "python", "python", "python"]
  assert [b.notest for b in blocks] == [False, False, True, True, False, False]
  runnable = python_blocks(text)
  assert [b.source for b in runnable] == ["a = 1\n", "b = a + 1\n", "s = '''\n```\n'''\n"]
  assert [b.line for b in runnable] == [3, 17, 20]
