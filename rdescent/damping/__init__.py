"""Damping controllers: how Regression Descent chooses λ at each step.

See `rdescent.damping._base` for the controller protocol: a controller calls
`problem.solve(λ, η)` on the step's `rdescent.problem.LinearizedProblem` and
judges the `Trial`s it returns. Public controllers:

* `constant(λ)` and `schedule(fn)` (a plain float or an optax schedule),
* `next_batch_ratio(initial=1e-5)`: the paper code's accept/reject rule,
* `levenberg_marquardt(initial=1e-3)`: trust ratio on the same batch,
* `residual_proportional(mu, delta)`, `gradient_proportional(mu)`,
* `gcv()`: generalized cross-validation from one eigendecomposition,
* `per_example(λ̄)`: λ = m λ̄, damping in the mean loss's units.

Wrappers build a controller around another one:

* `backtracking(controller)`: a bounded line search on the same batch,
* `cap_logit_change(controller, bound=π)`: the safe cross-entropy step,
* `spring(controller, momentum=0.9)`: SPRING momentum inside the regression.

A new controller is one module here that returns a `DampingController`, its
export below, and its entry in the common test list (`tests/test_common.py`).
"""

from rdescent.damping._base import DampingController
from rdescent.damping._base import DampingStep
from rdescent.damping._base import as_controller
from rdescent.damping._base import constant
from rdescent.damping._base import schedule
from rdescent.damping._gcv import GCVState
from rdescent.damping._gcv import gcv
from rdescent.damping._levenberg_marquardt import LevenbergMarquardtState
from rdescent.damping._levenberg_marquardt import levenberg_marquardt
from rdescent.damping._levenberg_marquardt import nielsen_update
from rdescent.damping._line_search import BacktrackingState
from rdescent.damping._line_search import backtracking
from rdescent.damping._logit_cap import CapLogitChangeState
from rdescent.damping._logit_cap import cap_logit_change
from rdescent.damping._logit_cap import output_change_spread
from rdescent.damping._next_batch_ratio import NextBatchRatioState
from rdescent.damping._next_batch_ratio import next_batch_ratio
from rdescent.damping._next_batch_ratio import ratio_and_coefficient
from rdescent.damping._next_batch_ratio import ratio_rule
from rdescent.damping._per_example import PerExampleState
from rdescent.damping._per_example import per_example
from rdescent.damping._proportional import ProportionalState
from rdescent.damping._proportional import gradient_proportional
from rdescent.damping._proportional import residual_proportional
from rdescent.damping._spring import SpringState
from rdescent.damping._spring import spring

__all__ = (
  "BacktrackingState",
  "CapLogitChangeState",
  "DampingController",
  "DampingStep",
  "GCVState",
  "LevenbergMarquardtState",
  "NextBatchRatioState",
  "PerExampleState",
  "ProportionalState",
  "SpringState",
  "as_controller",
  "backtracking",
  "cap_logit_change",
  "constant",
  "gcv",
  "gradient_proportional",
  "levenberg_marquardt",
  "next_batch_ratio",
  "nielsen_update",
  "output_change_spread",
  "per_example",
  "ratio_and_coefficient",
  "ratio_rule",
  "residual_proportional",
  "schedule",
  "spring",
)
