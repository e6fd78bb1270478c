#!/usr/bin/env bash
# Screenshots of the built site, opened from files (file://, no network), at 1,280 px wide:
# the landing page, the options guide, the API reference, the benchmark page, a guide page with
# display math and a notebook. For each page it also prints what is wider than its box there
# (a table column cut off, a code block or formula that scrolls): "fits" when nothing is.
#
#   make docs && bash docs/screenshots.sh [SITE_DIR] [OUT_DIR]   # default: site/ -> /tmp/rdescent-screenshots/
#
# Needs Debian's chromium (apt-get install -y chromium). Look at the PNGs: math rendered (no raw
# TeX such as `$K = J J^\top$`), no column cut at the right edge. Don't commit them.
# SCREENSHOT_HEIGHT (default 2000) sets the window height; PAGES overrides the list of pages
# (paths under SITE_DIR, e.g. PAGES="api/damping.html").
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="$(realpath "${1:-site}")"
OUT="$(realpath -m "${2:-${TMPDIR:-/tmp}/rdescent-screenshots}")"
HEIGHT="${SCREENSHOT_HEIGHT:-2000}"
PAGES="${PAGES:-index.html guide/options.html api/index.html api/transform.html benchmarks.html
  guide/momentum.html notebooks/05_last_layer.html}"
BROWSER="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [[ -z "$BROWSER" ]]; then
  echo "no chromium on PATH: apt-get install -y chromium" >&2
  exit 1
fi
run_browser() {
  # --virtual-time-budget: let the page's own scripts finish before the picture is taken.
  "$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1280,$HEIGHT" \
    --virtual-time-budget=5000 "$@" 2>/dev/null
}
# Appended to a copy of the page (next to it, so its relative links hold): lists the boxes whose
# content is wider than they are.
PROBE='<script>window.addEventListener("load", () => {
  const wide = [];
  document.querySelectorAll(".md-typeset__scrollwrap, .md-typeset table, pre > code, " +
      "div.arithmatex, .jp-Cell, .doc-signature").forEach((box) => {
    if (box.scrollWidth > box.clientWidth + 1) {
      wide.push(box.scrollWidth + " px in " + box.clientWidth + " px: " +
        box.textContent.replace(/\s+/g, " ").trim().slice(0, 60));
    }
  });
  const report = document.createElement("pre");
  report.id = "width-report";
  const tag = "WI" + "DE:";  // not written whole here: the dumped page holds this script too
  report.textContent = wide.map((line) => tag + line).join("\n");
  document.body.appendChild(report);
});</script>'
mkdir -p "$OUT"
for page in $PAGES; do
  if [[ ! -f "$SITE/$page" ]]; then
    echo "missing: $SITE/$page (build the site first: make docs)" >&2
    exit 1
  fi
  png="$OUT/$(echo "${page%.html}" | tr '/' '_').png"
  run_browser --screenshot="$png" "file://$SITE/$page" >/dev/null
  probe="$(dirname "$SITE/$page")/.width-probe.html"
  { cat "$SITE/$page"; echo "$PROBE"; } >"$probe"
  wide="$(run_browser --dump-dom "file://$probe" | grep -o 'WIDE:[^<]*' || true)"
  rm -f "$probe"
  echo "$png: ${wide:-fits}"
done
