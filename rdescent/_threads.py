"""One BLAS thread for jaxlib's LAPACK calls on CPU, applied when rdescent is imported.

On CPU, jaxlib runs the step's Cholesky factorisation, triangular solves and
`eigh` (the `lapack_*_ffi` custom calls) through the LAPACK and BLAS that
`scipy.linalg.cython_lapack` / `cython_blas` export: with SciPy's wheels that is
SciPy's own OpenBLAS (`scipy.libs/libscipy_openblas*.so`), a different library
file from the one NumPy's wheel bundles (`numpy.libs/libscipy_openblas64_*.so`).
That OpenBLAS starts one thread per core, and inside a jitted step its threads
compete with XLA's own intra-op threads for the same cores: on a 2-core CPU the
full RD step on a 1,280-row system ran at 2.3–2.5× the time it takes with
`OPENBLAS_NUM_THREADS=1`.

`limit_jaxlib_blas` sets SciPy's BLAS (the library jaxlib's LAPACK kernels go
through, found by its file path with threadpoolctl) to one thread and leaves
every other library alone, NumPy's BLAS included. It does nothing when

* the user set a BLAS thread count (`OPENBLAS_NUM_THREADS`, `GOTO_NUM_THREADS`,
  `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `BLIS_NUM_THREADS`): their choice stands;
* `RDESCENT_BLAS_THREADS=off` (or `0`); `RDESCENT_BLAS_THREADS=N` sets N threads
  instead of 1;
* SciPy's BLAS is not a library of its own (a conda or system SciPy that shares
  NumPy's BLAS file): limiting it would limit NumPy too, so it is left alone;
* threadpoolctl cannot control it (Apple's Accelerate, for instance).

On GPU and TPU the step's solves do not go through this library; the limit
affects only SciPy's host-side BLAS calls.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import NamedTuple

OPT_OUT_VARIABLE = "RDESCENT_BLAS_THREADS"
USER_THREAD_VARIABLES = (
  "OPENBLAS_NUM_THREADS",
  "GOTO_NUM_THREADS",
  "OMP_NUM_THREADS",
  "MKL_NUM_THREADS",
  "BLIS_NUM_THREADS",
)
OFF_VALUES = ("off", "0", "none", "false", "no")


class BlasLimit(NamedTuple):
  """What `limit_jaxlib_blas` did.

  Attributes:
    threads: the thread count set, or None when nothing was changed.
    filepaths: the libraries it was set on (SciPy's BLAS).
    reason: why, in words (also when nothing was changed).
  """

  threads: int | None
  filepaths: tuple[str, ...]
  reason: str


def _requested_threads(environ: Mapping[str, str]) -> tuple[int | None, str]:
  """The thread count to set (None: leave the library alone) and why."""
  value = environ.get(OPT_OUT_VARIABLE, "").strip()
  if value:
    if value.lower() in OFF_VALUES:
      return None, f"{OPT_OUT_VARIABLE}={value}: left as it is"
    try:
      threads = int(value)
    except ValueError:
      threads = -1
    if threads < 1:
      warnings.warn(
        f"{OPT_OUT_VARIABLE}={value!r} is neither a positive thread count nor 'off'; "
        "SciPy's BLAS is left as it is",
        RuntimeWarning,
        stacklevel=3,
      )
      return None, f"{OPT_OUT_VARIABLE}={value!r} not understood: left as it is"
    return threads, f"{OPT_OUT_VARIABLE}={value}"
  user_set = [name for name in USER_THREAD_VARIABLES if environ.get(name, "").strip()]
  if user_set:
    return None, f"{user_set[0]} set by the user: left as it is"
  return 1, "default: one thread for jaxlib's LAPACK calls"


def _package_dirs(module_file: str | None) -> tuple[pathlib.Path, ...]:
  """A package's folder and the folder of libraries its wheel vendors beside it."""
  if module_file is None:
    return ()
  package = pathlib.Path(module_file).resolve().parent
  # auditwheel (Linux) and delvewheel (Windows): site-packages/<name>.libs;
  # delocate (macOS): <name>/.dylibs, inside the package's folder.
  return (package, package.parent / f"{package.name}.libs")


def _inside(path: str, folders: tuple[pathlib.Path, ...]) -> bool:
  resolved = pathlib.Path(path).resolve()
  return any(resolved.is_relative_to(folder) for folder in folders)


def limit_jaxlib_blas(environ: Mapping[str, str] | None = None) -> BlasLimit:
  """Sets SciPy's BLAS, the one jaxlib's CPU LAPACK kernels use, to one thread.

  Loads `scipy.linalg.cython_lapack` (what jaxlib loads for its first LAPACK
  call anyway) so that the library is there to be limited. NumPy's BLAS is
  never changed. See the module's docstring for when nothing is done.

  Args:
    environ: the environment to read (default `os.environ`).

  Returns:
    What was done, as a `BlasLimit`.
  """
  environ = os.environ if environ is None else environ
  threads, reason = _requested_threads(environ)
  if threads is None:
    return BlasLimit(None, (), reason)
  try:
    import numpy
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (jaxlib's BLAS and LAPACK source)
    import scipy.linalg.cython_lapack  # noqa: F401
    import threadpoolctl
  except ImportError as error:
    return BlasLimit(None, (), f"not available: {error}")
  try:
    return _limit_scipy_blas(threadpoolctl, numpy.__file__, scipy.__file__, threads, reason)
  except Exception as error:  # a speed setting never stops the import of rdescent
    warnings.warn(f"SciPy's BLAS threads left as they are: {error!r}", RuntimeWarning, stacklevel=2)
    return BlasLimit(None, (), f"failed: {error!r}")


def _limit_scipy_blas(
  threadpoolctl, numpy_file: str | None, scipy_file: str | None, threads: int, reason: str
) -> BlasLimit:
  libraries = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
  numpy_dirs = _package_dirs(numpy_file)
  scipy_dirs = _package_dirs(scipy_file)
  numpy_files = {lib.filepath for lib in libraries if _inside(lib.filepath, numpy_dirs)}
  scipy_files = [
    lib.filepath
    for lib in libraries
    if _inside(lib.filepath, scipy_dirs) and lib.filepath not in numpy_files
  ]
  if not scipy_files:
    return BlasLimit(None, (), "no BLAS of SciPy's own found: left as it is")
  threadpoolctl.ThreadpoolController().select(filepath=scipy_files).limit(limits=threads)
  return BlasLimit(threads, tuple(scipy_files), reason)


APPLIED = limit_jaxlib_blas()
