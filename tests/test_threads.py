"""Importing rdescent gives jaxlib's LAPACK kernels one BLAS thread, and NumPy's BLAS none less.

The import side effect is checked in fresh interpreters (`python -c`), with the
thread variables of this process removed from their environment: a plain shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rdescent import _threads

# In a fresh interpreter: NumPy's BLAS before `import rdescent`, every BLAS after
# it and after a jitted Cholesky solve (jaxlib's first LAPACK call), and what
# rdescent did.
_SCRIPT = """
import json, numpy, threadpoolctl
def blas():
  libs = threadpoolctl.threadpool_info()
  return {lib["filepath"]: lib for lib in libs if lib["user_api"] == "blas"}
before = blas()
import rdescent
after_import = blas()
import jax, jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve
a = jnp.eye(3) * 2.0
jax.jit(lambda a: cho_solve(cho_factor(a), a[0]))(a).block_until_ready()
import scipy.linalg.cython_lapack
after_solve = blas()
applied = rdescent._threads.APPLIED
print(json.dumps(dict(before=before, after_import=after_import, after_solve=after_solve,
  threads=applied.threads, filepaths=list(applied.filepaths), reason=applied.reason)))
"""


def _run(**variables: str) -> dict:
  env = {
    name: value
    for name, value in os.environ.items()
    if name not in _threads.USER_THREAD_VARIABLES and name != _threads.OPT_OUT_VARIABLE
  }
  env.update(variables)
  done = subprocess.run(
    [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=False
  )
  assert done.returncode == 0, done.stderr
  return json.loads(done.stdout.strip().splitlines()[-1])


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_import_limits_the_blas_of_jaxlibs_lapack_and_not_numpys():
  result = _run()
  if result["threads"] is None:
    pytest.skip(f"no BLAS of SciPy's own to limit here: {result['reason']}")
  assert result["threads"] == 1
  limited = set(result["filepaths"])
  assert limited, result
  # NumPy's BLAS: loaded before rdescent, never limited, its thread count unchanged.
  assert limited.isdisjoint(result["before"])
  for path, lib in result["before"].items():
    assert result["after_import"][path]["num_threads"] == lib["num_threads"], path
    assert result["after_solve"][path]["num_threads"] == lib["num_threads"], path
  # The limited library is SciPy's, at one thread, and it is the one jaxlib's LAPACK
  # call uses: the Cholesky solve loaded no other BLAS.
  assert set(result["after_solve"]) == set(result["after_import"])
  for path in limited:
    assert result["after_solve"][path]["num_threads"] == 1
    assert "scipy" in path.lower()


def test_opt_out_leaves_the_blas_as_it_is():
  if _cores() < 2:
    pytest.skip("one core: OpenBLAS starts one thread anyway")
  result = _run(RDESCENT_BLAS_THREADS="off")
  assert result["threads"] is None
  assert result["filepaths"] == []
  assert "RDESCENT_BLAS_THREADS=off" in result["reason"]
  scipy_own = set(result["after_solve"]) - set(result["before"])
  if not scipy_own:
    pytest.skip("SciPy's BLAS is NumPy's here: nothing would have been limited")
  for path in scipy_own:
    assert result["after_solve"][path]["num_threads"] > 1, path


@pytest.mark.parametrize(
  ("environ", "threads", "reason"),
  [
    ({}, 1, "default"),
    ({"OPENBLAS_NUM_THREADS": ""}, 1, "default"),  # empty: unset, for OpenBLAS too
    ({"OPENBLAS_NUM_THREADS": "2"}, None, "OPENBLAS_NUM_THREADS set by the user"),
    ({"OMP_NUM_THREADS": "4"}, None, "OMP_NUM_THREADS set by the user"),
    ({"RDESCENT_BLAS_THREADS": "off"}, None, "RDESCENT_BLAS_THREADS=off"),
    ({"RDESCENT_BLAS_THREADS": "0"}, None, "RDESCENT_BLAS_THREADS=0"),
    ({"RDESCENT_BLAS_THREADS": "3"}, 3, "RDESCENT_BLAS_THREADS=3"),
    ({"RDESCENT_BLAS_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}, 2, "RDESCENT_BLAS_THREADS=2"),
  ],
)
def test_requested_threads(environ, threads, reason):
  got, why = _threads._requested_threads(environ)
  assert got == threads
  assert why.startswith(reason)


def test_requested_threads_refuses_what_it_cannot_read():
  with pytest.warns(RuntimeWarning, match="RDESCENT_BLAS_THREADS='two'"):
    got, _ = _threads._requested_threads({"RDESCENT_BLAS_THREADS": "two"})
  assert got is None
  with pytest.warns(RuntimeWarning, match="RDESCENT_BLAS_THREADS='-1'"):
    got, _ = _threads._requested_threads({"RDESCENT_BLAS_THREADS": "-1"})
  assert got is None
