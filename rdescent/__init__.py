"""rdescent: Regression Descent and other second-order optimizers for JAX, in Optax style."""

# Side effect: one BLAS thread for jaxlib's LAPACK calls on CPU (rdescent/_threads.py).
from rdescent import _threads  # noqa: F401
from rdescent import damping
from rdescent import datasets
from rdescent import last_layer
from rdescent import losses
from rdescent import metric
from rdescent import sharding
from rdescent import solvers
from rdescent._precision import PrecisionState
from rdescent._precision import PrecisionSwitch
from rdescent._precision import precision_switch
from rdescent._termination import Termination
from rdescent._termination import termination
from rdescent.dtypes import compute_dtype
from rdescent.gram import gram_matrix
from rdescent.last_layer import closed_form_last_layer
from rdescent.problem import LinearizedProblem
from rdescent.problem import Trial
from rdescent.problem import linearize
from rdescent.transform import RegressionDescentState
from rdescent.transform import STATUS_BAD_METRIC
from rdescent.transform import STATUS_CONVERGED
from rdescent.transform import STATUS_MESSAGES
from rdescent.transform import regression_descent
from rdescent.transform import scale_by_regression_descent

__version__ = "0.1.0"

__all__ = (
  "LinearizedProblem",
  "PrecisionState",
  "PrecisionSwitch",
  "RegressionDescentState",
  "STATUS_BAD_METRIC",
  "STATUS_CONVERGED",
  "STATUS_MESSAGES",
  "Termination",
  "Trial",
  "closed_form_last_layer",
  "compute_dtype",
  "damping",
  "datasets",
  "gram_matrix",
  "last_layer",
  "linearize",
  "losses",
  "metric",
  "precision_switch",
  "regression_descent",
  "scale_by_regression_descent",
  "sharding",
  "solvers",
  "termination",
)
