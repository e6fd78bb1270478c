"""Random output sketches S for `outputs="sketched"` (`_output_maps.SketchedOutputs`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def output_sketch(key: jax.Array, num_residuals: int, size: int, dtype: Any) -> jax.Array:
  """A random S of shape (q, s) with orthonormal columns scaled by √(q/s).

  The columns span a uniformly random s-dimensional subspace of R^q (QR of
  a Gaussian matrix), so E[S Sᵀ] = I; s = q gives S Sᵀ = I.

  Args:
    key: a PRNG key.
    num_residuals: q, the residual size per example.
    size: s, 1 ≤ s ≤ q.
    dtype: the dtype of S.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rdescent.problem import output_sketch
    >>> sketch = output_sketch(jax.random.key(0), 5, 2, jnp.float32)
    >>> sketch.shape, bool(jnp.allclose(sketch.T @ sketch, 2.5 * jnp.eye(2), atol=1e-5))
    ((5, 2), True)
  """
  gaussian = jax.random.normal(key, (num_residuals, size), dtype)
  basis, upper = jnp.linalg.qr(gaussian)
  # Signs from R's diagonal make the basis Haar-distributed (not QR's convention).
  signs = jnp.where(jnp.diagonal(upper) < 0, -1.0, 1.0).astype(dtype)
  return basis * signs * jnp.asarray(jnp.sqrt(num_residuals / size), dtype)


def checked_sketch(size: Any, key: Any, num_residuals: int, dtype: Any, name: str) -> jax.Array:
  """S for `outputs="sketched"`, after checking its size against q at trace time."""
  if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= num_residuals:
    raise ValueError(
      f"{name}: outputs='sketched' needs sketch_size, an int with 1 <= sketch_size <= q = "
      f"{num_residuals} (the loss's residual size per example); got sketch_size={size!r}."
    )
  if key is None:
    raise ValueError(f"{name}: outputs='sketched' needs sketch_key, a PRNG key; got None.")
  return output_sketch(key, num_residuals, size, dtype)
