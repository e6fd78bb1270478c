"""Data sets used by the benchmarks and examples: generated Lorenz96 trajectories."""

from rdescent.datasets.lorenz96 import lorenz96_dataset
from rdescent.datasets.lorenz96 import lorenz96_tendency
from rdescent.datasets.lorenz96 import rk4_step

__all__ = ("lorenz96_dataset", "lorenz96_tendency", "rk4_step")
