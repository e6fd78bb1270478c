"""The IDX loaders of MNIST and Fashion-MNIST: errors, checksums, real files."""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil

import numpy as np
import pytest

import rdescent as rd
from rdescent.datasets import idx

DATA_DIR = pathlib.Path(os.environ["RDESCENT_DATA_DIR"])
HAVE_DATA = all(
  (DATA_DIR / name / filename).is_file()
  for name, files in idx.CHECKSUMS.items()
  for filename in files
)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"IDX files not found under {DATA_DIR}")


def _write_idx(path: pathlib.Path, magic: int, array: np.ndarray) -> None:
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as stream:
    stream.write(header + array.astype(np.uint8).tobytes())


def test_missing_file_names_the_file_directory_and_variable(tmp_path):
  (tmp_path / "mnist").mkdir()
  with pytest.raises(rd.datasets.DatasetNotFoundError) as info:
    rd.datasets.load_mnist("test", data_dir=tmp_path)
  message = str(info.value)
  assert "t10k-images-idx3-ubyte.gz" in message
  assert str(tmp_path / "mnist") in message
  assert "RDESCENT_DATA_DIR" in message
  assert isinstance(info.value, FileNotFoundError)


def test_missing_directory_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("RDESCENT_DATA_DIR", str(tmp_path / "nowhere"))
  with pytest.raises(rd.datasets.DatasetNotFoundError, match="RDESCENT_DATA_DIR"):
    rd.datasets.load_fashion_mnist("train")


def test_unset_environment_variable_says_how_to_set_it(monkeypatch):
  monkeypatch.delenv("RDESCENT_DATA_DIR", raising=False)
  with pytest.raises(rd.datasets.DatasetNotFoundError, match="export RDESCENT_DATA_DIR"):
    rd.datasets.load_mnist()


def test_bad_split_and_dataset_names():
  with pytest.raises(ValueError, match="split"):
    rd.datasets.load_mnist("validation")
  with pytest.raises(ValueError, match="dataset"):
    idx.load_idx_dataset("cifar10")


@needs_data
def test_corrupted_copy_fails_the_checksum(tmp_path):
  target = tmp_path / "mnist"
  target.mkdir()
  for filename in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copy(DATA_DIR / "mnist" / filename, target / filename)
  corrupted = target / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(corrupted.read_bytes())
  raw[-10] ^= 0xFF
  corrupted.write_bytes(bytes(raw))
  with pytest.raises(rd.datasets.ChecksumError) as info:
    rd.datasets.load_mnist("test", data_dir=tmp_path)
  assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
  assert idx.CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"] in str(info.value)


def test_parses_a_small_handmade_file_without_verification(tmp_path):
  target = tmp_path / "mnist"
  target.mkdir()
  images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
  labels = np.array([7, 0, 9])
  _write_idx(target / "t10k-images-idx3-ubyte.gz", 2051, images)
  _write_idx(target / "t10k-labels-idx1-ubyte.gz", 2049, labels)
  data = rd.datasets.load_mnist("test", data_dir=tmp_path, verify=False)
  np.testing.assert_array_equal(data.images, images)
  np.testing.assert_array_equal(data.labels, labels)
  assert data.images.dtype == np.uint8


def test_wrong_magic_and_truncated_body_are_format_errors():
  labels = (2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(5)
  with pytest.raises(rd.datasets.IdxFormatError, match="magic"):
    idx.parse_idx(labels, expected_magic=2051)
  with pytest.raises(rd.datasets.IdxFormatError, match="holds 4 values"):
    idx.parse_idx(labels[:-1], expected_magic=2049)


@needs_data
@pytest.mark.parametrize(
  "loader, train_counts, test_counts",
  [
    (
      rd.datasets.load_mnist,
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
      [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
    (rd.datasets.load_fashion_mnist, [6000] * 10, [1000] * 10),
  ],
)
def test_real_files_shapes_and_label_counts(loader, train_counts, test_counts):
  train = loader("train")
  test = loader("test")
  assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28)
  assert train.labels.shape == (60000,) and test.labels.shape == (10000,)
  assert np.bincount(train.labels, minlength=10).tolist() == train_counts
  assert np.bincount(test.labels, minlength=10).tolist() == test_counts
  assert 0 < train.images.mean() < 255
