"""The project's own reference solution of the viscous Burgers equation of the PINN suite.

    u_t + u u_x = ν u_xx  on  x ∈ [−1, 1), t ∈ [0, 1],  u(x, 0) = −sin(πx),  ν = 0.01,

periodic in x (the solution is odd, so u(±1, t) = 0 as well). Two independent solvers:

* `cole_hopf(x, t)`: the exact solution by the Cole–Hopf transform u = −2ν φ_x / φ with
  φ_t = ν φ_xx, φ(y, 0) = exp(−∫₀^y u₀ / (2ν)) = exp((1 − cos πy) / (2πν)). The heat kernel
  gives, after the change of variable y = x − 2√(νt) z,

      u(x, t) = ∫ e^{−z²} u₀(y) φ₀(y) dz / ∫ e^{−z²} φ₀(y) dz,

  evaluated with Gauss–Hermite quadrature (`nodes` nodes; numpy's nodes are accurate up to a
  few hundred), the exponent of φ₀ shifted by its
  largest value at each point so that no term overflows.
* `spectral(x, t)`: Fourier pseudo-spectral method of lines on `modes` points, the ODE system
  integrated by scipy's DOP853 at rtol 1e-13, then the Fourier interpolant at x.

`tests/test_pinn_suite.py` checks that they agree with each other and, where a DSGNAR
checkout is present, with its `burgers.npz`.
"""

from __future__ import annotations

import numpy as np

NU = 0.01


def initial_condition(x: np.ndarray) -> np.ndarray:
  """u₀(x) = −sin(πx)."""
  return -np.sin(np.pi * x)


def cole_hopf(
  x: np.ndarray, t: np.ndarray, nu: float = NU, nodes: int = 200, chunk: int = 4096
) -> np.ndarray:
  """u(x, t) at points (broadcast together) by Cole–Hopf and Gauss–Hermite quadrature."""
  x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
  shape = x.shape
  x, t = x.ravel(), t.ravel()
  z, w = np.polynomial.hermite.hermgauss(nodes)
  log_w = np.log(w)
  out = np.empty_like(x)
  for start in range(0, x.size, chunk):
    xs, ts = x[start : start + chunk, None], t[start : start + chunk, None]
    y = xs - 2.0 * np.sqrt(nu * ts) * z[None, :]
    exponent = log_w[None, :] + (1.0 - np.cos(np.pi * y)) / (2.0 * np.pi * nu)
    weights = np.exp(exponent - exponent.max(axis=1, keepdims=True))
    out[start : start + chunk] = (weights * initial_condition(y)).sum(1) / weights.sum(1)
  return out.reshape(shape)


def spectral(
  x: np.ndarray, t: np.ndarray, nu: float = NU, modes: int = 512, rtol: float = 1e-13
) -> np.ndarray:
  """u(x_i, t_j) on the grid x (n,) × t (k,) -> (n, k), by the pseudo-spectral method of lines."""
  from scipy.integrate import solve_ivp

  grid = -1.0 + 2.0 * np.arange(modes) / modes
  k = np.pi * np.fft.rfftfreq(modes, d=1.0 / modes)  # wavenumbers of period 2

  def rhs(_, u):
    u_hat = np.fft.rfft(u)
    flux_x = np.fft.irfft(1j * k * np.fft.rfft(0.5 * u * u), modes)
    return nu * np.fft.irfft(-(k**2) * u_hat, modes) - flux_x

  times = np.asarray(t, np.float64)
  solution = solve_ivp(
    rhs,
    (0.0, float(times.max())),
    initial_condition(grid),
    t_eval=times,
    method="DOP853",
    rtol=rtol,
    atol=rtol,
  )
  if not solution.success:
    raise RuntimeError(f"spectral Burgers solve failed: {solution.message}")
  coefficients = np.fft.rfft(solution.y, axis=0) / modes  # (modes // 2 + 1, k)
  phase = np.exp(1j * np.pi * np.outer(np.asarray(x) + 1.0, np.arange(coefficients.shape[0])))
  scale = np.full(coefficients.shape[0], 2.0)
  scale[0] = 1.0
  if modes % 2 == 0:
    scale[-1] = 1.0
  return np.real(phase @ (scale[:, None] * coefficients))
