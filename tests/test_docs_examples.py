"""Every ```python block of README.md and docs/**/*.md runs as written.

The blocks of one markdown file run in order, in one namespace, in a fresh
interpreter (a subprocess with a timeout), so a later block may use the names
of an earlier one and nothing leaks from one file to the next. They run on the
CPU in float32 unless a block enables float64 itself, from a temporary working
directory, with the repository root on `sys.path` (for `benchmarks.*`).

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
TIMEOUT_SECONDS = 300
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


# Runs in the subprocess: executes the blocks in one namespace, each compiled
# with the markdown file as its file name and its own line numbers, so that a
# traceback points at the line of the markdown file.
_RUNNER = """
import json, sys
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for block in blocks:
  source = "\\n" * (block["line"] - 1) + block["source"]
  exec(compile(source, block["path"], "exec"), namespace)
"""


def run_blocks(path: pathlib.Path, blocks: list[CodeBlock], workdir: pathlib.Path):
  payload = workdir / "blocks.json"
  payload.write_text(
    json.dumps([{"path": str(path), "line": b.line, "source": b.source} for b in blocks]),
    encoding="utf-8",
  )
  env = {
    k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS", "JAX_PLATFORMS")
  }
  env.update(
    JAX_PLATFORMS="cpu",
    MPLBACKEND="Agg",
    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
  )
  return subprocess.run(
    [sys.executable, "-c", _RUNNER, str(payload)],
    cwd=workdir,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_SECONDS,
  )


def _missing_requirements(text: str) -> list[str]:
  missing = []
  for match in _REQUIRES.finditer(text):
    for name in match["modules"].replace(",", " ").split():
      if importlib.util.find_spec(name) is None:
        missing.append(name)
  return missing


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_blocks_run(path: pathlib.Path, tmp_path: pathlib.Path):
  text = path.read_text(encoding="utf-8")
  blocks = python_blocks(text)
  if not blocks:
    pytest.skip("no python blocks")
  missing = _missing_requirements(text)
  if missing:
    pytest.skip(f"needs {', '.join(missing)} (docs-test-requires)")
  result = run_blocks(path, blocks, tmp_path)
  assert result.returncode == 0, (
    f"a python block of {path.relative_to(REPO)} failed "
    f"({len(blocks)} blocks, run in order):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
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
