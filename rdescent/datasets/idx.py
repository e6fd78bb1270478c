"""MNIST and Fashion-MNIST from their original IDX files (gzip), checksum-verified.

Nothing is downloaded. The files are read from `data_dir` or, when it is None,
from the directory in the environment variable `RDESCENT_DATA_DIR`, with the
layout

    <dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <dir>/fashion_mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

Each file's MD5 is checked against the official release before it is parsed.
IDX format: a big-endian header, magic 2051 (0x00000803, uint8 images, then
three int32 sizes n, rows, cols) or 2049 (0x00000801, uint8 labels, then one
int32 size n), followed by the raw uint8 values.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
from typing import NamedTuple

import numpy as np

ENV_VAR = "RDESCENT_DATA_DIR"
SPLITS = ("train", "test")

_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049

# Official MD5s of the gzip files (see the data directory's README.md).
CHECKSUMS: dict[str, dict[str, str]] = {
  "mnist": {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
  },
  "fashion_mnist": {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
  },
}


class DatasetError(Exception):
  """Base class of the errors raised while loading a data set from files."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
  """A data file (or the data directory) is missing."""


class ChecksumError(DatasetError, ValueError):
  """A data file exists but its MD5 is not the official one (corrupted or wrong file)."""


class IdxFormatError(DatasetError, ValueError):
  """A file is not a valid IDX file of the expected kind."""


class ImageDataset(NamedTuple):
  """Images and labels of one split.

  Attributes:
    images: uint8 array (n, 28, 28), pixel values 0..255.
    labels: uint8 array (n,), class indices 0..9.
  """

  images: np.ndarray
  labels: np.ndarray


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The data directory: `data_dir` if given, else `$RDESCENT_DATA_DIR`.

  Examples:
    >>> from rdescent.datasets.idx import resolve_data_dir
    >>> resolve_data_dir("/data/sets").as_posix()
    '/data/sets'
  """
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  from_env = os.environ.get(ENV_VAR)
  if not from_env:
    raise DatasetNotFoundError(
      f"No data directory: pass data_dir=... or set the environment variable "
      f"{ENV_VAR} to the directory that holds mnist/ and fashion_mnist/, e.g. "
      f"`export {ENV_VAR}=/path/to/data`."
    )
  return pathlib.Path(from_env).expanduser()


def md5sum(path: pathlib.Path) -> str:
  """Hex MD5 of a file, read in 1 MiB blocks."""
  digest = hashlib.md5()
  with open(path, "rb") as stream:
    for block in iter(lambda: stream.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _locate(dataset: str, filename: str, data_dir: str | os.PathLike | None) -> pathlib.Path:
  root = resolve_data_dir(data_dir)
  path = root / dataset / filename
  if not path.is_file():
    source = "the data_dir argument" if data_dir is not None else f"${ENV_VAR}"
    raise DatasetNotFoundError(
      f"Missing data file {filename!r} of {dataset}: looked for {path} "
      f"(directory {root / dataset}, from {source}). Put the original IDX .gz "
      f"files under <dir>/{dataset}/ and pass data_dir=<dir> or set "
      f"`export {ENV_VAR}=<dir>`."
    )
  return path


def _verify(path: pathlib.Path, expected_md5: str) -> None:
  actual = md5sum(path)
  if actual != expected_md5:
    raise ChecksumError(
      f"Checksum mismatch for {path}: MD5 {actual}, expected the official "
      f"{expected_md5}. The file is corrupted or not the original release; "
      "replace it with the original .gz file."
    )


def parse_idx(raw: bytes, *, expected_magic: int, source: str = "<bytes>") -> np.ndarray:
  """Parses uncompressed IDX bytes into a uint8 array shaped by the header.

  Examples:
    A labels file with three labels (magic 2049, size 3, the values):

    >>> from rdescent.datasets.idx import parse_idx
    >>> raw = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([7, 0, 9])
    >>> parse_idx(raw, expected_magic=2049).tolist()
    [7, 0, 9]
  """
  num_dims = {_IMAGES_MAGIC: 3, _LABELS_MAGIC: 1}[expected_magic]
  header_size = 4 + 4 * num_dims
  magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if magic != expected_magic:
    raise IdxFormatError(
      f"{source}: IDX magic number {magic}, expected {expected_magic} "
      f"({'images' if expected_magic == _IMAGES_MAGIC else 'labels'})."
    )
  if len(raw) < header_size:
    raise IdxFormatError(f"{source}: {len(raw)} bytes, too short for an IDX header.")
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
  body = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
  if body.size != int(np.prod(shape)):
    raise IdxFormatError(
      f"{source}: header says shape {shape} ({int(np.prod(shape))} values) but "
      f"the file holds {body.size} values."
    )
  return body.reshape(shape)


def _read(dataset: str, filename: str, magic: int, data_dir, verify: bool) -> np.ndarray:
  path = _locate(dataset, filename, data_dir)
  if verify:
    _verify(path, CHECKSUMS[dataset][filename])
  try:
    with gzip.open(path, "rb") as stream:
      raw = stream.read()
  except (OSError, EOFError) as error:
    raise IdxFormatError(f"{path}: not a readable gzip file ({error}).") from error
  return parse_idx(raw, expected_magic=magic, source=str(path))


def load_idx_dataset(
  dataset: str,
  split: str = "train",
  data_dir: str | os.PathLike | None = None,
  *,
  verify: bool = True,
) -> ImageDataset:
  """Loads one split of `"mnist"` or `"fashion_mnist"` from its IDX files.

  Args:
    dataset: `"mnist"` or `"fashion_mnist"` (the sub-directory name).
    split: `"train"` (60000 examples) or `"test"` (10000).
    data_dir: directory holding `mnist/` and `fashion_mnist/`; None reads
      `$RDESCENT_DATA_DIR`.
    verify: check each file's MD5 against the official one first.

  Returns:
    `ImageDataset(images uint8 (n, 28, 28), labels uint8 (n,))`.

  Raises:
    DatasetNotFoundError: a file or the directory is missing (the message
      names the file, the directory searched and how to set the variable).
    ChecksumError: a file's MD5 differs from the official one.
    IdxFormatError: a file is not a valid IDX file.

  Examples:
    Two 28 × 28 images written in the IDX layout to a temporary directory
    and read back (`verify=False`: they are not the official files; with the
    real files, pass their directory or set `$RDESCENT_DATA_DIR`):

    >>> import gzip, pathlib, shutil, tempfile
    >>> from rdescent.datasets.idx import load_idx_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "mnist").mkdir()
    >>> header = lambda magic, *sizes: b"".join(n.to_bytes(4, "big") for n in (magic, *sizes))
    >>> with gzip.open(root / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
    ...   _ = f.write(header(2051, 2, 28, 28) + bytes(2 * 28 * 28))
    >>> with gzip.open(root / "mnist" / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    ...   _ = f.write(header(2049, 2) + bytes([3, 5]))
    >>> data = load_idx_dataset("mnist", "test", root, verify=False)
    >>> data.images.shape, data.images.dtype, data.labels.tolist()
    ((2, 28, 28), dtype('uint8'), [3, 5])
    >>> shutil.rmtree(root)
  """
  if dataset not in CHECKSUMS:
    raise ValueError(f"dataset={dataset!r}; expected one of {', '.join(map(repr, CHECKSUMS))}.")
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; expected one of {', '.join(map(repr, SPLITS))}.")
  prefix = _FILE_PREFIX[split]
  images = _read(dataset, f"{prefix}-images-idx3-ubyte.gz", _IMAGES_MAGIC, data_dir, verify)
  labels = _read(dataset, f"{prefix}-labels-idx1-ubyte.gz", _LABELS_MAGIC, data_dir, verify)
  if images.shape[0] != labels.shape[0]:
    raise IdxFormatError(
      f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels."
    )
  return ImageDataset(images=images, labels=labels)


def load_mnist(
  split: str = "train", data_dir: str | os.PathLike | None = None, *, verify: bool = True
) -> ImageDataset:
  """MNIST digits; see `load_idx_dataset`."""
  return load_idx_dataset("mnist", split, data_dir, verify=verify)


def load_fashion_mnist(
  split: str = "train", data_dir: str | os.PathLike | None = None, *, verify: bool = True
) -> ImageDataset:
  """Fashion-MNIST (Zalando) clothing images; see `load_idx_dataset`."""
  return load_idx_dataset("fashion_mnist", split, data_dir, verify=verify)
