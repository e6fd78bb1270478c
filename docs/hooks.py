"""MkDocs hooks of the rdescent site: the benchmark page is rendered from the JSON results.

At each build, `python -m benchmarks table` regenerates the results section of
`docs/benchmarks.md` from `benchmarks/results/cpu/*.json` into a temporary
copy, with the figures copied next to it; the site renders that copy (so the
page always matches the JSON) and serves the figures as `assets/benchmarks/*.png`.
The committed `docs/benchmarks.md` links the figures where they lie in the
repository (readable on GitHub); when its tables differ from what the JSON
gives, the build warns (and `mkdocs build --strict` fails) with the command
that brings it up to date.
"""

from __future__ import annotations

import logging
import pathlib
import re
import subprocess
import sys
import tempfile

from mkdocs.structure.files import File

LOG = logging.getLogger("mkdocs.hooks.rdescent")
REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results/cpu"
PAGE = "benchmarks.md"
ASSETS = "assets/benchmarks"
START, END = "<!-- results:start -->", "<!-- results:end -->"
UPDATE_COMMAND = f"python -m benchmarks table --results {RESULTS} --doc docs/{PAGE} --no-assets"
_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:[^)]*/)?([^)/]+\.png)\)")

_rendered: dict[str, str] = {}
_tmp: tempfile.TemporaryDirectory | None = None


def _results_section(text: str) -> str:
  """The generated part of the page, image links reduced to their file names."""
  if START not in text or END not in text:
    return ""
  section = text.split(START, 1)[1].split(END, 1)[0]
  return _IMAGE.sub(r"![\1](\2)", section).strip()


def _regenerate(docs_dir: pathlib.Path) -> tuple[str, pathlib.Path]:
  """(page text generated from the JSON, folder of its figures) in a temporary folder."""
  global _tmp
  if _tmp is not None:
    _tmp.cleanup()
  _tmp = tempfile.TemporaryDirectory(prefix="rdescent-docs-")
  tmp = pathlib.Path(_tmp.name)
  page = tmp / PAGE
  page.write_text((docs_dir / PAGE).read_text())
  assets = tmp / ASSETS
  command = [
    sys.executable,
    "-m",
    "benchmarks",
    "table",
    "--results",
    str(REPO / RESULTS),
    "--doc",
    str(page),
    "--assets",
    str(assets),
  ]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"docs/hooks.py: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")
  return page.read_text(), assets


def on_files(files, config):
  """Regenerates the benchmark page and adds its figures to the site."""
  docs_dir = pathlib.Path(config["docs_dir"])
  text, assets = _regenerate(docs_dir)
  committed = (docs_dir / PAGE).read_text()
  if _results_section(committed) != _results_section(text):
    LOG.warning(f"docs/{PAGE} is older than the JSON under {RESULTS}; run `{UPDATE_COMMAND}`")
  _rendered[PAGE] = text
  for png in sorted(assets.glob("*.png")):
    files.append(File.generated(config, f"{ASSETS}/{png.name}", abs_src_path=str(png)))
  return files


def on_page_markdown(markdown, page, config, files):
  """The benchmark page as generated from the JSON (figures under assets/benchmarks/)."""
  if page.file.src_uri == PAGE and PAGE in _rendered:
    generated = _rendered[PAGE]
    if generated.startswith("---"):  # keep the page's own front matter out of the body
      generated = generated.split("---", 2)[2]
    return generated
  return markdown


_QUOTED_DOCTEST = re.compile(r"<blockquote>\s*<blockquote>\s*<blockquote>\s*<p>([^<\n]*)")
_ANCHOR = re.compile(r'id="(rdescent[\w.]*)"')


def on_page_content(html, page, config, files):
  """Warns about doctests that the API reference would render as nested quotes.

  mkdocstrings renders `>>>` lines as code only inside a Google `Examples:`
  section; anywhere else (`Example:`, which is an admonition, or a module
  docstring without a section) Markdown reads `>>>` as three nested quotes.
  """
  if not page.file.src_uri.startswith("api/"):
    return html
  for match in _QUOTED_DOCTEST.finditer(html):
    anchors = _ANCHOR.findall(html, 0, match.start())
    where = anchors[-1] if anchors else page.file.src_uri
    LOG.warning(
      f"{where}: docstring example `>>> {match.group(1).strip()[:60]}` is rendered as a "
      "quote: put doctests under an `Examples:` section (plural) of the docstring"
    )
  return html


def on_post_build(config):
  global _tmp
  if _tmp is not None:
    _tmp.cleanup()
    _tmp = None
