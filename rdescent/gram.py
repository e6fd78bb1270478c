"""Gram matrices K = J Jᵀ of a model's outputs with respect to its parameters.

For a batch of m examples with k outputs, J is the (m k) × p Jacobian of the
outputs (example-major: row i k + c is output c of example i) and

    K[(i, c), (j, c')] = ⟨∂f_{i,c}/∂θ, ∂f_{j,c'}/∂θ⟩,        shape (m k, m k).

`outputs="per_output"` returns only the k diagonal blocks K_c = J_c J_cᵀ,
shape (k, m, m).

Engines:

* `"jacobian"`: per-example Jacobians with `jax.vmap` of `jax.jacrev` (or
  `jax.jacfwd` when p < k), evaluated over the examples in chunks of
  `chunk_size` with `jax.lax.map`. Peak memory: the Jacobian itself, m·k·p
  numbers, plus one chunk's autodiff intermediates (about chunk_size·k times
  the activations of one example), plus the Gram, (m k)² numbers.
* `"structured"`: `rdescent.structured_gram`: K assembled layer by layer from
  layer inputs and output cotangents, (x_i · x_j)(δ_{i,c} · δ_{j,c'}) for a
  dense layer, without forming J; parameters outside recognised operations
  fall back to their own per-example Jacobian, so K still equals J Jᵀ. Peak
  memory: see that module.
* `"auto"`: the engine with the lower cost estimate (`choose_method`,
  `engine_flops`): `"structured"` when its estimated flops are at most
  1/`STRUCTURED_ADVANTAGE` of the jacobian engine's, `"jacobian"` otherwise,
  and always where the trace finds no parameter used by a recognised
  operation (dot_general, conv_general_dilated, bias add).

Both engines first compute per-example factors of K (`gram_factors`, a
`GramFactors`): K's block between two sets of examples is `cross_gram` of
their factors, which is how each device of a mesh builds its own block row
of K (`rdescent.sharding.row_block_gram`).

Examples:
  A linear model f(x) = x w + b has J_i = [x_i, 1], so K = X Xᵀ + 1:

  >>> import jax.numpy as jnp
  >>> import rdescent as rd
  >>> params = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
  >>> apply_fn = lambda p, x: x @ p["w"] + p["b"]
  >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  >>> print(rd.gram.gram_matrix(apply_fn, params, x))
  [[2. 1. 2.]
   [1. 2. 2.]
   [2. 2. 3.]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rdescent import _jacobian
from rdescent import _structured_trace as trace_lib
from rdescent import _validation
from rdescent import structured_gram as structured_lib
from rdescent._jacobian import flat_jacobian as flat_jacobian
from rdescent._jacobian import per_example_jacobian as per_example_jacobian

__all__ = (
  "METHODS",
  "EXAMPLES",
  "OUTPUT_MODES",
  "STRUCTURED_ADVANTAGE",
  "GramFactors",
  "choose_method",
  "coupled_factors",
  "cross_gram",
  "engine_flops",
  "flat_jacobian",
  "gram_factors",
  "gram_from_jacobian",
  "gram_matrix",
  "jacobian_factors",
  "per_example_jacobian",
)

Params = Any
ApplyFn = Callable[[Params, Any], jax.Array]

METHODS = ("auto", "jacobian", "structured")
OUTPUT_MODES = ("full", "per_output")
# `examples=`: "independent" (apply_fn maps each example alone: the engines above)
# or "coupled" (J of the whole-batch function, `rdescent._jacobian.batch_jacobian`).
EXAMPLES = ("independent", "coupled")
# `"auto"` takes the structured engine only when its flop estimate is at most
# 1/STRUCTURED_ADVANTAGE of the jacobian engine's. The estimates match XLA's own
# counts, but the engines reach different flop rates: the jacobian engine's work
# is a few large batched VJPs and one (m k, p) matmul, the structured engine's a
# cotangent pass that stores every layer's input and cotangents, then smaller
# per-site operations (patches, einsums, VJPs). Measured (2-core CPU, float32),
# the structured engine's rate was 0.5 (SmallCNN) to 1.4 (784-256-256-10 MLP)
# times the jacobian engine's, so only a factor 2 in flops is sure to pay. Where
# the estimates are close the two engines take about as long: on a transformer
# block (ratio 0.98) the structured engine took 7.4 ms and the jacobian 8.2 ms.
STRUCTURED_ADVANTAGE = 2.0


class GramFactors(NamedTuple):
  """Per-example factors of K = J Jᵀ (a pytree; every array has leading axis m).

  Every entry of K is a sum of products of one quantity of example i and one
  of example j, so K's block between two sets of examples needs only their
  factors (`cross_gram`): this is what lets each device of a mesh build its
  own block row of K from its examples and the all-gathered factors of the
  others (`rdescent.sharding.row_block_gram`).

  Attributes:
    sources: (F, δ) pairs, F of shape (m, f) and δ of shape (m, k, Z): a
      cotangent source and the features of the leaves that use it ("dense":
      the layer input x; "bias": a constant 1), adding
      (F_i · F_j)(δ_{i,c} · δ_{j,c'}).
    position_pairs: (x, δ) pairs of "position_pair" leaves, x (m, B, T, n),
      δ (m, k, B, T, o).
    gradients: per-example gradients G (m, k, P) of "materialised" and
      "fallback" leaves (or, for the jacobian engine, of every leaf), adding
      G_{i,c} · G_{j,c'}.
    reference: an empty (m, k, 0) array: carries m, k and the dtype.
  """

  sources: tuple[tuple[jax.Array, jax.Array], ...]
  position_pairs: tuple[tuple[jax.Array, jax.Array], ...]
  gradients: tuple[jax.Array, ...]
  reference: jax.Array


def cross_gram(rows: GramFactors, cols: GramFactors, *, outputs: str = "full") -> jax.Array:
  """K's block between the examples of two `gram_factors` of the same model and engine.

  K[(i, c), (j, c')] for i in `rows`, j in `cols`: (m_r k, m_c k),
  example-major, for `outputs="full"`, (k, m_r, m_c) for `"per_output"`;
  `cross_gram(f, f)` is K itself. Both factors must come from the same
  engine: `method="auto"` picks one per batch (`choose_method`, whose
  estimate depends on m), so pass the same explicit `method` for both.

  Raises:
    ValueError: if the two factors differ in structure or per-example shapes
      (another engine, model or `outputs`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent import gram
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w"] + p["b"])
    >>> x = jnp.arange(8.0).reshape(4, 2) / 8
    >>> method = gram.choose_method(apply_fn, params, x)      # the full batch's engine
    >>> every = gram.gram_factors(apply_fn, params, x, method=method)
    >>> first = gram.gram_factors(apply_fn, params, x[:1], method=method)
    >>> block = gram.cross_gram(first, every)          # K's first block row
    >>> block.shape
    (3, 12)
    >>> bool(jnp.allclose(block, gram.gram_matrix(apply_fn, params, x)[:3], atol=1e-6))
    True
  """
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  layout = lambda factors: (
    str(jax.tree_util.tree_structure(factors)),
    [leaf.shape[1:] for leaf in jax.tree_util.tree_leaves(factors)],
  )
  if layout(rows) != layout(cols):
    raise ValueError(
      "cross_gram: rows and cols must be gram_factors of the same model, engine and "
      "outputs (per-example shapes differ); pass the same explicit method= to both."
    )
  per_output = outputs == "per_output"
  m_r, k, _ = rows.reference.shape
  m_c = cols.reference.shape[0]
  value = jnp.zeros((k, m_r, m_c) if per_output else (m_r, k, m_c, k), rows.reference.dtype)
  for (features_r, delta_r), (features_c, delta_c) in zip(rows.sources, cols.sources):
    scale = features_r @ features_c.T
    if per_output:
      value = value + scale[None] * jnp.einsum("icz,jcz->cij", delta_r, delta_c)
    else:
      value = value + scale[:, None, :, None] * jnp.einsum("icz,jdz->icjd", delta_r, delta_c)
  for (x_r, delta_r), (x_c, delta_c) in zip(rows.position_pairs, cols.position_pairs):
    # Σ_{b,t,u} (x_{ibt} · x_{jbu})(δ_{icbt} · δ_{jc'bu})
    inputs = jnp.einsum("ibtn,jbun->bitju", x_r, x_c)
    if per_output:
      cot = jnp.einsum("icbto,jcbuo->bcitju", delta_r, delta_c)
      value = value + jnp.einsum("bitju,bcitju->cij", inputs, cot)
    else:
      cot = jnp.einsum("icbto,jdbuo->bictjdu", delta_r, delta_c)
      value = value + jnp.einsum("bitju,bictjdu->icjd", inputs, cot)
  for grads_r, grads_c in zip(rows.gradients, cols.gradients):
    if per_output:
      value = value + jnp.einsum("icp,jcp->cij", grads_r, grads_c)
    else:  # one (m_r k, P) × (P, m_c k) matmul: faster on XLA:CPU than the 4-index einsum
      block = grads_r.reshape(m_r * k, -1) @ grads_c.reshape(m_c * k, -1).T
      value = value + block.reshape(m_r, k, m_c, k)
  return value if per_output else value.reshape(m_r * k, m_c * k)


def jacobian_factors(jacobian: Params) -> GramFactors:
  """The `GramFactors` of a per-example Jacobian pytree: one gradient block per leaf."""
  leaves = jax.tree_util.tree_leaves(jacobian)
  num_examples, num_outputs = leaves[0].shape[:2]
  flats = tuple(leaf.reshape(num_examples, num_outputs, -1) for leaf in leaves)
  reference = jnp.zeros((num_examples, num_outputs, 0), jnp.result_type(*leaves))
  return GramFactors((), (), flats, reference)


def gram_from_jacobian(jacobian: Params, *, outputs: str = "full") -> jax.Array:
  """K = J Jᵀ from a per-example Jacobian pytree, leaf by leaf (no concatenation).

  Returns (m k, m k) for `outputs="full"`, (k, m, m) for `"per_output"`.
  """
  factors = jacobian_factors(jacobian)
  return cross_gram(factors, factors, outputs=outputs)


def flat_scales(scales: Params, params: Params) -> jax.Array:
  """Column scales as one p-vector (`ravel_pytree` order), each leaf's broadcast over it."""
  leaves = jax.tree_util.tree_leaves(scales)
  shapes = [jnp.shape(p) for p in jax.tree_util.tree_leaves(params)]
  return jnp.concatenate([jnp.broadcast_to(w, s).reshape(-1) for w, s in zip(leaves, shapes)])


def _num_examples(inputs: Any) -> int:
  return int(jax.tree_util.tree_leaves(inputs)[0].shape[0])


def _engine_flops(traced: structured_lib.TracedModel, inputs: Any, outputs: str) -> dict[str, int]:
  m, per_output = _num_examples(inputs), outputs == "per_output"
  count = trace_lib.count_flops(traced.jaxpr)
  return {
    "structured": structured_lib.engine_flops(traced, m, per_output),
    "jacobian": _jacobian.jacobian_flops(
      count.linear,
      count.other,
      num_examples=m,
      num_outputs=traced.num_outputs,
      num_params=sum(traced.leaf_sizes),
      per_output=per_output,
    ),
  }


def _choose(traced: structured_lib.TracedModel, inputs: Any, outputs: str) -> str:
  if not traced.covered:
    return "jacobian"
  flops = _engine_flops(traced, inputs, outputs)
  cheaper = STRUCTURED_ADVANTAGE * flops["structured"] <= flops["jacobian"]
  return "structured" if cheaper else "jacobian"


def engine_flops(
  apply_fn: ApplyFn, params: Params, inputs: Any, *, outputs: str = "full"
) -> dict[str, int]:
  """Estimated floating point operations of each engine for this model and batch.

  With one example's forward pass costing F = L + O flops (L in dot_general
  and conv_general_dilated, O in every other operation; counted from its
  jaxpr), m examples, k outputs, p parameters and k' = k² for
  `outputs="full"`, k for `"per_output"`:

  * `"jacobian"`: m F + m k (2 L + O) + 2 m² k' p (k VJPs per example, then
    the Gram of the (m k, p) Jacobian; `rdescent._jacobian.jacobian_flops`);
  * `"structured"`: m F + m k (L + O) (the cotangent pass) + the assembly of
    every leaf's block in its form (`rdescent.structured_gram.plan`; with
    per-example gradients where a leaf is materialised).

  Both count 2 per multiply-add and agree with XLA's own count of the
  compiled engines (`jax.stages.Compiled.cost_analysis`) to within a factor
  of two.

  Returns:
    `{"structured": int, "jacobian": int}`.
  """
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  traced = structured_lib.trace_model(apply_fn, params, inputs)
  return _engine_flops(traced, inputs, outputs)


def choose_method(apply_fn: ApplyFn, params: Params, inputs: Any, *, outputs: str = "full") -> str:
  """The engine `method="auto"` uses for this model and batch: `"structured"` or `"jacobian"`.

  `"structured"` when the trace finds a recognised layer and the structured
  engine's `engine_flops` estimate is at most 1/`STRUCTURED_ADVANTAGE` of the
  jacobian engine's; `"jacobian"` otherwise.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rdescent import gram
    >>> params = {"w": jnp.ones((64, 64)), "v": jnp.ones((64, 4))}
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    >>> gram.choose_method(apply_fn, params, jnp.ones((16, 64)))
    'structured'
    >>> gram.choose_method(lambda p, x: jnp.sin(x * p), jnp.ones(3), jnp.ones((16, 3)))
    'jacobian'
  """
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  return _choose(structured_lib.trace_model(apply_fn, params, inputs), inputs, outputs)


def gram_factors(
  apply_fn: ApplyFn,
  params: Params,
  inputs: Any,
  *,
  method: str = "auto",
  outputs: str = "full",
  chunk_size: int | None = None,
  scales: Params | None = None,
) -> GramFactors:
  """Per-example factors of K, a `GramFactors`.

  K's block between two sets of examples is `cross_gram` of their factors;
  `cross_gram(f, f)` equals `gram_matrix` with the same arguments. The
  structured engine's factors are layer inputs and output cotangents (plus
  per-example gradients of the leaves it materialises); the jacobian
  engine's are the per-example Jacobians (m k p numbers).

  With `scales` (w, params-shaped; `rdescent.metric`) they are the factors of
  K̃ = J diag(w)² Jᵀ, the Gram of J̃ = J diag(w). A per-parameter w (a leaf
  with non-scalar scale) takes the jacobian engine; one number per leaf
  keeps the structured engine's cost.
  """
  _validation.check_option("method", method, METHODS)
  _validation.check_option("outputs", outputs, OUTPUT_MODES)
  per_parameter = scales is not None and any(jnp.ndim(w) for w in jax.tree_util.tree_leaves(scales))
  if method in ("auto", "structured") and not (per_parameter and method == "auto"):
    traced = structured_lib.trace_model(apply_fn, params, inputs)
    if method == "structured" or _choose(traced, inputs, outputs) == "structured":
      terms = structured_lib.factors_from_trace(
        traced,
        apply_fn,
        params,
        inputs,
        outputs=outputs,
        chunk_size=chunk_size,
        scales=scales,
      )
      num_examples = _num_examples(inputs)
      dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
      reference = jnp.zeros((num_examples, traced.num_outputs, 0), dtype)
      return GramFactors(*terms, reference=reference)
  out_shape = jax.eval_shape(apply_fn, params, inputs).shape
  jacobian = per_example_jacobian(
    apply_fn,
    params,
    inputs,
    num_outputs=math.prod(out_shape[1:]),
    chunk_size=chunk_size,
  )
  if scales is not None:
    jacobian = jax.tree_util.tree_map(lambda block, w: block * w, jacobian, scales)
  return jacobian_factors(jacobian)


def gram_matrix(
  apply_fn: ApplyFn,
  params: Params,
  inputs: Any,
  *,
  method: str = "auto",
  outputs: str = "full",
  chunk_size: int | None = None,
  examples: str = "independent",
  scales: Params | None = None,
) -> jax.Array:
  """The empirical neural tangent kernel K = J Jᵀ of a batch.

  Args:
    apply_fn: `apply_fn(params, inputs) -> (m,) or (m, k)`.
    params: parameter pytree.
    inputs: array or pytree of arrays with leading axis m.
    method: `"auto"`, `"structured"` or `"jacobian"` (see the module
      docstring; `"auto"` is `choose_method`); all three return the same K
      up to rounding.
    outputs: `"full"` for the (m k, m k) matrix, example-major, or
      `"per_output"` for the k diagonal blocks, shape (k, m, m).
    chunk_size: examples differentiated at once (None: all m).
    examples: `"independent"` (the default: `apply_fn` maps each example
      on its own, which both engines rely on) or `"coupled"`: J is the
      Jacobian of the whole-batch function θ ↦ apply_fn(θ, inputs)
      (`jax.jacrev` or `jax.jacfwd` by shape, m k p numbers; `method` and
      `chunk_size` do not apply), for batch statistics, residuals that mix
      examples, or a plain residual vector with `inputs=None` (m is then
      the outputs' leading axis).
    scales: None, or column scales w (params-shaped, a 0-d array per leaf or
      one per parameter; `rdescent.metric`): returns K̃ = J diag(w)² Jᵀ
      (`gram_factors`).

  Returns:
    K as described by `outputs`.
  """
  _validation.check_option("examples", examples, EXAMPLES)
  if examples == "coupled":
    _validation.check_option("outputs", outputs, OUTPUT_MODES)
    factors = coupled_factors(apply_fn, params, inputs, scales=scales)
  else:
    factors = gram_factors(
      apply_fn,
      params,
      inputs,
      method=method,
      outputs=outputs,
      chunk_size=chunk_size,
      scales=scales,
    )
  return cross_gram(factors, factors, outputs=outputs)


def coupled_factors(
  apply_fn: ApplyFn, params: Params, inputs: Any, *, scales: Params | None = None
) -> GramFactors:
  """The `GramFactors` of the whole-batch Jacobian (`examples="coupled"`): J itself
  (J diag(w) with `scales`)."""
  jacobian = _jacobian.batch_jacobian(apply_fn, params, inputs)
  if scales is not None:
    jacobian = jacobian * flat_scales(scales, params).astype(jacobian.dtype)
  return GramFactors((), (), (jacobian,), jnp.zeros((*jacobian.shape[:2], 0), jacobian.dtype))
