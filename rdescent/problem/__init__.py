"""The linearised regression that one Regression Descent step solves.

At parameters θ and a batch (X, Y) with m examples and k outputs, RD linearises
the model, f(θ + δ; X) ≈ f(θ; X) + J δ, and solves the damped regression of
the (loss-weighted) residual on the Jacobian:

    full, dual:    α = (Lᵀ K L + λI)⁻¹ u,   d = Jᵀ L α          (m q × m q system)
    full, primal:  d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ u,  J̃ = Lᵀ J            (p × p system)
    per-output:    α_c = (K_c + λI)⁻¹ r_c,  d = (1/k) Σ_c J_cᵀ α_c  (k m × m systems)
                   or its primal form d = (1/k) Σ_c (J_cᵀJ_c + λI)⁻¹ J_cᵀ r_c
    sketched:      α = (Fᵀ K F + λI)⁻¹ Sᵀu,  d = Jᵀ F α,  F = L S      (m s × m s system)
                   or its primal form d = (J̃ᵀ J̃ + λI)⁻¹ J̃ᵀ Sᵀu, J̃ = Fᵀ J

with K = J Jᵀ and the loss factors g = L u, H = L Lᵀ of `rdescent.losses`
(L = I, u = r for squared error). Both sides give the same d (push-through
identity); the primal one is cheaper when p is smaller than the system size.
The direction d has the sign of a gradient: the descent step is θ − η d.

**Sketched outputs.** With many outputs per example (q large), the sketched
form regresses a random s-dimensional projection of each example's residual:
S (q × s) has orthonormal columns scaled by √(q/s), drawn per step
(`output_sketch`), so E[S Sᵀ] = I and the Gauss-Newton model
½‖Sᵀ(u + Lᵀ J δ)‖² is unbiased for ½‖u + Lᵀ J δ‖². The system has m s rows
instead of m q; for squared error its matrix Sᵀ K S is the Gram of the
sketched model x ↦ Sᵀ f(θ; x), built with s instead of k backward passes per
example. The loss, the predicted reduction and the loss after a step are
those of the true, unsketched problem.

**A prior direction (SPRING, Goldshlager, Abrahamsen & Lin 2024).** Every
form also solves the regression of what a prior direction d₀ (weight μ)
leaves of the residual, and adds it back (`LinearizedProblem.shifted`):
d = μ d₀ + (the form's solution for the residual u − μ Lᵀ J d₀), which for
the full form is argmin_δ ‖Lᵀ J δ − u‖² + λ ‖δ − μ d₀‖². The system matrix is
the same; only its right-hand side changes (one product J d₀ per step).

**How a form is made.** Three independent choices, composed by `linearize`
(`rdescent.problem._linearize`): the output map (full, per-output, sketched;
`_output_maps`), the side (dual, primal; `_sides`) and where products with J
come from (the matrix formed from K or J, JVP/VJP through the network, or J
materialised; `_products`). K and J come from one builder (`_arrays`); the
trial of a solve is scored in `_trial`. A damping controller calls
`solve(λ, η)` for as many λ as it likes (the system is built once) and
receives `Trial`s: the direction, the solve's health, J d, and the predicted
reduction and the loss after the step θ − η d.
"""

from __future__ import annotations

from rdescent.problem._coupling import examples_consistent
from rdescent.problem._linearize import FORMS
from rdescent.problem._linearize import OUTPUT_MODES
from rdescent.problem._linearize import PRODUCTS
from rdescent.problem._linearize import SYSTEMS
from rdescent.problem._linearize import check_column_sketch
from rdescent.problem._linearize import check_form
from rdescent.problem._linearize import check_metric
from rdescent.problem._linearize import check_row_sketch
from rdescent.problem._linearize import linearize
from rdescent.problem._product_cost import JACOBIAN_BYTES
from rdescent.problem._product_cost import choose_products
from rdescent.problem._product_cost import product_flops
from rdescent.problem._protocol import LinearizedProblem
from rdescent.problem._sketch import output_sketch
from rdescent.problem._trial import Trial
from rdescent.problem._trial import step_params

__all__ = (
  "FORMS",
  "JACOBIAN_BYTES",
  "OUTPUT_MODES",
  "PRODUCTS",
  "SYSTEMS",
  "LinearizedProblem",
  "Trial",
  "check_column_sketch",
  "check_form",
  "check_metric",
  "check_row_sketch",
  "choose_products",
  "examples_consistent",
  "linearize",
  "output_sketch",
  "product_flops",
  "step_params",
)
