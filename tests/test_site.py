"""The built documentation site reads offline: no script, style or font from the network,
math rendered as MathML at build time, links between pages that work from files.

`make test` builds the site once (`make docs`, warnings are errors) and points
RDESCENT_SITE_DIR at it; without that variable the site is built here, once, into a
temporary folder (`mkdocs build --strict`, about 20-40 s). Reading the pages takes a
second.
"""

from __future__ import annotations

import html.parser
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("site")  # one build per run under xdist (loadgroup)

_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://..., https://..., //host/...
_REMOTE_IMPORT = re.compile(r"""\bimport\s*\(\s*["'`](?:https?:)?//""")
_RAW_TEX = re.compile(r"\\\(|\\\[|\$[^$<>\s][^$<>]*\$")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  built = os.environ.get("RDESCENT_SITE_DIR")
  if built:
    path = pathlib.Path(built)
    assert (path / "index.html").is_file(), f"RDESCENT_SITE_DIR={built} holds no built site"
    return path
  pytest.importorskip("mkdocs", reason="the `docs` extra builds the site")
  out = tmp_path_factory.mktemp("site")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  env.setdefault("RDESCENT_DATA_DIR", str(REPO.parent / "shared" / "data"))
  command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return out


def _pages(site: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(site)): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}


class _Resources(html.parser.HTMLParser):
  """What a page loads: script sources, stylesheets, preconnects, images, frames."""

  def __init__(self):
    super().__init__()
    self.loaded: list[tuple[str, str]] = []  # (tag, address)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag in ("script", "img", "iframe", "audio", "video", "source", "embed") and attrs.get("src"):
      self.loaded.append((tag, attrs["src"]))
    rel = (attrs.get("rel") or "").lower()
    if tag == "link" and attrs.get("href") and rel != "canonical":  # canonical: a name, not a load
      self.loaded.append((f"link rel={rel}", attrs["href"]))


def test_no_page_loads_anything_from_the_network(site):
  remote = {}
  for name, text in _pages(site).items():
    parser = _Resources()
    parser.feed(text)
    found = [f"<{tag} {address}>" for tag, address in parser.loaded if _REMOTE.match(address)]
    found += _REMOTE_IMPORT.findall(text)
    if found:
      remote[name] = found
  assert not remote, f"pages that load from the network (offline they break): {remote}"


def test_math_is_mathml_on_pages_and_notebooks(site):
  pages = _pages(site)
  for name in ("guide/momentum.html", "notebooks/03_lorenz96.html", "notebooks/05_last_layer.html"):
    assert "<math" in pages[name], f"{name}: no MathML"
  assert all("mathjax" not in text.lower() for text in pages.values())
  for name, text in pages.items():
    assert '<span class="arithmatex">\\(' not in text, f"{name}: TeX left unconverted"
    assert '<div class="arithmatex">\\[' not in text, f"{name}: TeX left unconverted"
    if name.startswith("notebooks/"):
      cells = re.findall(r'jp-MarkdownOutput"[^>]*>(.*?)</div>', text, re.S)
      prose = [re.sub(r"<(pre|code)\b.*?</\1>", "", cell, flags=re.S) for cell in cells]
      raw = [m.group(0) for cell in prose for m in _RAW_TEX.finditer(cell)]
      assert not raw, f"{name}: raw TeX in Markdown cells: {raw[:5]}"


def test_pages_link_to_files_and_the_404_page_works_from_disk(site):
  index = (site / "index.html").read_text(encoding="utf-8")
  assert 'href="guide/options.html"' in index  # use_directory_urls: false
  assert (site / "guide" / "options.html").is_file()
  not_found = (site / "404.html").read_text(encoding="utf-8")
  rooted = re.findall(r'(?:href|src)="(/[^/"][^"]*)"', not_found)
  assert not rooted, f"404.html links from the server's root, broken from disk: {rooted[:5]}"


def test_api_reference_has_one_page_per_area_public_names_first(site):
  api = site / "api"
  for area in (
    "transform",
    "damping",
    "losses",
    "solvers",
    "last_layer",
    "sharding",
    "flax",
    "datasets",
    "internals",
  ):
    assert (api / f"{area}.html").is_file(), area
  transform = (api / "transform.html").read_text(encoding="utf-8")
  assert transform.index('id="rdescent.transform.regression_descent"') < transform.index(
    'id="rdescent.transform.RegressionDescentState"'
  )
  internals = (api / "internals.html").read_text(encoding="utf-8")
  for name in ("linearize", "LinearizedProblem", "Trial", "output_sketch", "examples_consistent"):
    assert f'id="rdescent.problem.{name}"' in internals, name
