"""Data sets used by the benchmarks and examples: generated Lorenz96 trajectories,
MNIST and Fashion-MNIST from their original IDX files."""

from rdescent.datasets.idx import ChecksumError
from rdescent.datasets.idx import DatasetError
from rdescent.datasets.idx import DatasetNotFoundError
from rdescent.datasets.idx import IdxFormatError
from rdescent.datasets.idx import ImageDataset
from rdescent.datasets.idx import load_fashion_mnist
from rdescent.datasets.idx import load_mnist
from rdescent.datasets.lorenz96 import lorenz96_dataset
from rdescent.datasets.lorenz96 import lorenz96_tendency
from rdescent.datasets.lorenz96 import rk4_step

__all__ = (
  "ChecksumError",
  "DatasetError",
  "DatasetNotFoundError",
  "IdxFormatError",
  "ImageDataset",
  "load_fashion_mnist",
  "load_mnist",
  "lorenz96_dataset",
  "lorenz96_tendency",
  "rk4_step",
)
