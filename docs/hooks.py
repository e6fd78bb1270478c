"""MkDocs hooks of the rdescent site: the benchmark page from the JSON results, math as MathML.

At each build, `python -m benchmarks table` regenerates the results section of
`docs/benchmarks.md` from `benchmarks/results/cpu/*.json` into a temporary
copy, with the figures copied next to it; the site renders that copy (so the
page always matches the JSON) and serves the figures as `assets/benchmarks/*.png`.
The committed `docs/benchmarks.md` links the figures where they lie in the
repository (readable on GitHub); when its tables differ from what the JSON
gives, the build warns (and `mkdocs build --strict` fails) with the command
that brings it up to date.

Math is rendered at build time, so the site needs no network and no script to
show it: the TeX of the Markdown pages (`pymdownx.arithmatex`, generic mode:
`\\(...\\)` and `\\[...\\]`) and of the notebooks' Markdown cells (`$...$`,
`$$...$$`) becomes MathML (`latex2mathml`, the `docs` extra), which browsers
render natively. TeX that does not convert is a build warning. The notebook
template's own MathJax loader (a script without source) and its Mermaid loader
(from a CDN; the notebooks have no diagrams) are taken out of the pages.
"""

from __future__ import annotations

import logging
import pathlib
import re
import subprocess
import sys
import tempfile
from html import unescape

from latex2mathml.converter import convert as tex_to_mathml
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


_ARITHMATEX = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.S)
_NOTEBOOK_MARKDOWN = re.compile(r'<div class="[^"]*\bjp-MarkdownOutput\b[^"]*"[^>]*>')
_DIV = re.compile(r"<div\b|</div>")
_VERBATIM = re.compile(r"(<pre\b.*?</pre>|<code\b.*?</code>)", re.S)
_DOLLARS = re.compile(r"(?<!\\)\$\$(?P<display>.+?)\$\$|(?<!\\)\$(?P<inline>[^$]+?)\$", re.S)
_NOTEBOOK_MATHJAX = re.compile(
  r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S
)
_NOTEBOOK_MERMAID = re.compile(
  r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?</script>', re.S
)


# TeX that latex2mathml does not know, in a form it does (applied before converting).
_MACROS = ((re.compile(r"\\arg(?![A-Za-z])"), r"\\operatorname{arg}"),)
# A command left as text in the MathML (`<mi>\arg</mi>`): latex2mathml did not know it.
_UNKNOWN_COMMAND = re.compile(r">[^<]*(\\[A-Za-z]+)[^<]*<")


def _mathml(tex: str, display: bool, where: str) -> str | None:
  """MathML of one TeX formula (HTML-escaped as it stands in the page), None if it fails."""
  tex = unescape(tex).strip()
  for macro, replacement in _MACROS:
    tex = macro.sub(replacement, tex)
  try:
    mathml = tex_to_mathml(tex, display="block" if display else "inline")
  except Exception as error:  # latex2mathml raises its own errors and plain ones
    LOG.warning(f"{where}: the TeX `{tex[:80]}` does not convert: {error!r}")
    return None
  unknown = _UNKNOWN_COMMAND.search(mathml)
  if unknown:
    LOG.warning(
      f"{where}: the TeX `{tex[:80]}` has {unknown.group(1)}, which the MathML converter does "
      "not know: write it another way, or add it to _MACROS in docs/hooks.py"
    )
  return mathml


def _arithmatex_to_mathml(html: str, where: str) -> str:
  """pymdownx.arithmatex's `<span>\\(...\\)</span>` and `<div>\\[...\\]</div>` as MathML."""

  def replace(match: re.Match) -> str:
    tex, display = match["tex"].strip(), match["tag"] == "div"
    opening, closing = ("\\[", "\\]") if display else ("\\(", "\\)")
    if tex.startswith(opening) and tex.endswith(closing):
      tex = tex[len(opening) : -len(closing)]
    mathml = _mathml(tex, display, where)
    if mathml is None:
      return match.group(0)
    return f'<{match["tag"]} class="arithmatex">{mathml}</{match["tag"]}>'

  return _ARITHMATEX.sub(replace, html)


def _dollars_to_mathml(text: str, where: str) -> str:
  """`$...$` and `$$...$$` of rendered Markdown as MathML, code and preformatted text untouched."""

  def replace(match: re.Match) -> str:
    display = match["display"] is not None
    mathml = _mathml(match["display"] if display else match["inline"], display, where)
    return match.group(0) if mathml is None else mathml

  parts = _VERBATIM.split(text)
  return "".join(part if i % 2 else _DOLLARS.sub(replace, part) for i, part in enumerate(parts))


def _notebook_math_to_mathml(html: str, where: str) -> str:
  """The math of a notebook page's Markdown cells as MathML (cell outputs untouched)."""
  pieces, position = [], 0
  for start in _NOTEBOOK_MARKDOWN.finditer(html):
    if start.start() < position:
      continue
    depth, end = 1, start.end()
    for tag in _DIV.finditer(html, start.end()):
      depth += 1 if tag.group(0) == "<div" else -1
      if depth == 0:
        end = tag.start()
        break
    pieces += [html[position : start.end()], _dollars_to_mathml(html[start.end() : end], where)]
    position = end
  return "".join(pieces) + html[position:]


def _math_to_mathml(html: str, page) -> str:
  where = page.file.src_uri
  if where.endswith(".ipynb"):
    html = _NOTEBOOK_MERMAID.sub("", _NOTEBOOK_MATHJAX.sub("", html))
    return _notebook_math_to_mathml(html, where)
  return _arithmatex_to_mathml(html, where)


_QUOTED_DOCTEST = re.compile(r"<blockquote>\s*<blockquote>\s*<blockquote>\s*<p>([^<\n]*)")
_ANCHOR = re.compile(r'id="(rdescent[\w.]*)"')


def on_page_content(html, page, config, files):
  """Math as MathML; warns about doctests that the API reference would render as nested quotes.

  mkdocstrings renders `>>>` lines as code only inside a Google `Examples:`
  section; anywhere else (`Example:`, which is an admonition, or a module
  docstring without a section) Markdown reads `>>>` as three nested quotes.
  """
  html = _math_to_mathml(html, page)
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


def on_template_context(context, template_name, config):
  """404.html links relative to itself (it lies at the site root), so it works from files too.

  MkDocs gives error pages links from the server's root (the path of `site_url`): they break
  when the site is opened from disk. Relative to the root folder they work from disk and
  wherever a server shows 404.html for a missing page at the site's top level.
  """
  if template_name == "404.html":
    context["base_url"] = "."
  return context


def on_post_build(config):
  global _tmp
  if _tmp is not None:
    _tmp.cleanup()
    _tmp = None
