#!/usr/bin/env bash
# Screenshots of the built site, opened from files (file://, no network), at 1,280 px wide:
# the landing page, the options guide, the API reference, the benchmark page and a notebook.
#
#   make docs && bash docs/screenshots.sh [SITE_DIR] [OUT_DIR]     # default: site/ -> screenshots/
#
# Needs Debian's chromium (apt-get install -y chromium). Look at the PNGs: math rendered (no raw
# TeX such as `$K = J J^\top$`), no table column cut off at the right edge. Don't commit them.
# SCREENSHOT_HEIGHT (default 2000) sets the window height; PAGES overrides the list of pages.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="$(realpath "${1:-site}")"
OUT="$(realpath -m "${2:-screenshots}")"
HEIGHT="${SCREENSHOT_HEIGHT:-2000}"
PAGES="${PAGES:-index.html guide/options.html api/index.html api/transform.html benchmarks.html
  guide/momentum.html notebooks/05_last_layer.html}"
BROWSER="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [[ -z "$BROWSER" ]]; then
  echo "no chromium on PATH: apt-get install -y chromium" >&2
  exit 1
fi
mkdir -p "$OUT"
for page in $PAGES; do
  if [[ ! -f "$SITE/$page" ]]; then
    echo "missing: $SITE/$page (build the site first: make docs)" >&2
    exit 1
  fi
  png="$OUT/$(echo "${page%.html}" | tr '/' '_').png"
  # --virtual-time-budget: let the page's own scripts finish before the picture is taken.
  "$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1280,$HEIGHT" \
    --virtual-time-budget=5000 --screenshot="$png" "file://$SITE/$page" >/dev/null 2>&1
  echo "$png"
done
