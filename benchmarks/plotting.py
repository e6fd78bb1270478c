"""Figure helpers shared by the report, the studies' own plots and the demo.

matplotlib is imported when a figure is drawn, not when a study is imported
(it takes about a second), with the non-interactive Agg backend.
"""

from __future__ import annotations

import pathlib
from typing import Any


def pyplot() -> Any:
  """`matplotlib.pyplot` on the Agg backend (imported on first use)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save_figure(
  fig: Any,
  path: str | pathlib.Path,
  rect: tuple[float, float, float, float] = (0, 0, 1, 1),
  dpi: int = 90,
) -> pathlib.Path:
  """Lays out `fig` within `rect` (figure fractions), writes it to `path` (PNG, parent
  folders created), closes it; returns the path."""
  plt = pyplot()
  fig.tight_layout(rect=rect)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
