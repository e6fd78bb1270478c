"""The structured Gram engine: K = J Jᵀ without materialising the Jacobian.

For a parameter V used as z = x V inside the model (per example: x_i of shape
(T, n) with T positions, z_i of shape (T, o)), the Jacobian of output (i, c)
with respect to V is Σ_t x_{i,t} ⊗ δ_{i,c,t}, with δ_{i,c} = ∂f_{i,c}/∂z_i.
Hence that layer's block of K = J Jᵀ is

    K_V[(i,c),(j,c')] = Σ_{t,t'} (x_{i,t} · x_{j,t'}) (δ_{i,c,t} · δ_{j,c',t'})

which for a dense layer (T = 1) is (x_i · x_j)(δ_{i,c} · δ_{j,c'}): m² n + m² k² o
multiply-adds instead of m² k² n o, and no m·k·p array. A bias b in
z = y + b adds (δ_{i,c} · δ_{j,c'}) (summed over positions when it is broadcast).
The engine

1. traces one example's forward pass to a jaxpr and finds the sites where
   parameter leaves enter dot_general, conv_general_dilated and bias adds
   (`rdescent._structured_trace`);
2. evaluates it with zero perturbations added at those sites, recording each
   site's input x, and gets every δ with one VJP per example, batched over the
   k output directions with `jax.vmap` (and over the m examples); the same
   VJP gives the per-example gradients of the "fallback" leaves below, and a
   max-pool (`reduce_window_max`) is differentiated there through a mask of
   its window maxima (`_structured_trace.max_window`), not select-and-scatter;
3. returns K's factors leaf by leaf (`factors_from_trace`; `rdescent.gram`
   makes them a `rdescent.gram.GramFactors` and multiplies them with
   `rdescent.gram.cross_gram`), in the cheapest exact form for each:
   * `"dense"`: one dot_general use without positions (T = 1):
     (x_i · x_j) ∘ (δ_{i,c} · δ_{j,c'}), sharing the δ-Gram with the layer's
     bias;
   * `"bias"`: one bias add that does not broadcast the bias: δ_{i,c} · δ_{j,c'};
   * `"position_pair"`: one dot_general use with positions (sequence models),
     or one convolution with few output positions (x_{i,t} its image patch
     at position t, per feature group): the position-pair sum above, chosen
     when cheaper than materialising;
   * `"materialised"`: per-example gradients of that leaf, G_{i,c}, summed
     over the leaf's sites, then G Gᵀ. A convolution kernel's come from the
     image patches of the conv's input and one einsum,
     G_{i,c}[o, (c_in, w)] = Σ_t P_{i,t}[(c_in, w)] δ_{i,c,t}[o] (with a column
     of ones appended to P when the conv's bias is broadcast over its
     positions, which gives that bias's gradients in the same einsum); any
     other site's from the VJP of the site's operation with δ_{i,c}. Used
     for convolution kernels (weight sharing over positions: one filter
     gradient per example and output), broadcast biases, leaves used by
     several operations, and position-pair layers where it is cheaper;
   * `"fallback"`: leaves with a use that is not a site (norm scales,
     embeddings gathered by index, parameters inside scan/cond/custom_jvp):
     their per-example Jacobian, from the cotangent pass's VJP.

Peak memory (numbers of the compute dtype), with s over the active sites,
src over the sites that carry their own perturbation, K's size
N = (m k)² (`"full"`) or k m² (`"per_output"`), and k' = k² or k:

    m Σ_s |x_s|  +  m k Σ_src |z_src|  +  m k p_fallback  +  2 N
      + max( B m² k' T²              over "position_pair" leaves,
             m k |θ_ℓ| + m |P_ℓ|     over "materialised" leaves )

where B is the layer's dot_general batch size (a conv's feature groups)
and |P_ℓ| the size of a conv's patches per example (zero for other sites).
No m·k·p array is formed for "dense", "bias" and "position_pair" leaves.
`describe` reports the plan, its flop count and this estimate for a given
model and batch:

>>> import jax.numpy as jnp
>>> from rdescent import structured_gram
>>> params = [{"w": jnp.ones((3, 4)), "b": jnp.zeros(4)},
...           {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}]
>>> def apply_fn(params, x):
...   h = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
...   return h @ params[1]["w"] + params[1]["b"]
>>> plan = structured_gram.describe(apply_fn, params, jnp.ones((5, 3)))
>>> [form for _, form, _ in plan["leaves"]]
['bias', 'dense', 'bias', 'dense']
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rdescent import _jacobian
from rdescent import _structured_trace as trace_lib

Params = Any
ApplyFn = Callable[[Params, Any], jax.Array]
FORMS = ("dense", "bias", "position_pair", "materialised", "fallback")


@dataclasses.dataclass(frozen=True)
class TracedModel:
  """One example's forward pass as a jaxpr, and the structure found in it.

  Attributes:
    jaxpr: closed jaxpr of f(*param_leaves, *example_leaves) -> (k,).
    structure: its `_structured_trace.Structure`.
    num_params: number of parameter leaves.
    leaf_sizes: size of each parameter leaf.
    num_outputs: k.
  """

  jaxpr: Any
  structure: trace_lib.Structure
  num_params: int
  leaf_sizes: tuple[int, ...]
  num_outputs: int

  @property
  def covered(self) -> tuple[int, ...]:
    """Leaves handled without their per-example Jacobian (used, not fallback)."""
    used = {s.leaf for s in self.structure.sites}
    return tuple(sorted(used - self.structure.fallback))


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """How one parameter leaf's block of K is computed."""

  leaf: int
  form: str
  sites: tuple[trace_lib.Site, ...]
  flops: int
  memory: int  # transient numbers beyond the shared buffers


def trace_model(apply_fn: ApplyFn, params: Params, inputs: Any) -> TracedModel:
  """Traces one example of `apply_fn` and finds its parameter sites."""
  param_leaves, param_def = jax.tree_util.tree_flatten(params)
  input_leaves, input_def = jax.tree_util.tree_flatten(inputs)
  num_params = len(param_leaves)

  def single(*leaves):
    p = jax.tree_util.tree_unflatten(param_def, leaves[:num_params])
    x = jax.tree_util.tree_unflatten(input_def, leaves[num_params:])
    return jnp.reshape(apply_fn(p, _jacobian.batch_of_one(x)), (-1,))

  specs = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in param_leaves]
  specs += [jax.ShapeDtypeStruct(jnp.shape(v)[1:], jnp.result_type(v)) for v in input_leaves]
  closed = jax.make_jaxpr(single)(*specs)
  structure = trace_lib.analyse(closed, num_params)
  (out_aval,) = closed.out_avals
  return TracedModel(
    jaxpr=closed,
    structure=structure,
    num_params=num_params,
    leaf_sizes=tuple(int(math.prod(jnp.shape(v))) for v in param_leaves),
    num_outputs=int(out_aval.shape[0]),
  )


def cotangents(
  traced: TracedModel,
  param_leaves: list[jax.Array],
  inputs: Any,
  chunk_size: int | None,
  fallback: Sequence[int] = (),
) -> tuple[dict[int, jax.Array], dict[int, jax.Array], list[jax.Array]]:
  """Layer inputs x_s (m, *x), cotangents δ_src (m, k, *z) and fallback leaves' gradients.

  δ_{i,c} = ∂f_{i,c}/∂z_i comes from one VJP per example with respect to the
  zero perturbations, batched over the k one-hot output directions. The same
  VJP differentiates the `fallback` leaves (indices into `param_leaves`), so
  their per-example Jacobians ∂f_{i,c}/∂θ_ℓ, shape (m, k, *θ_ℓ.shape), cost no
  second pass through the model.
  """
  structure = traced.structure
  sites = {s.index: s for s in structure.sites}
  fallback = tuple(fallback)

  def per_example(example):
    zeros = {
      s: jnp.zeros(sites[s].output_aval.shape, sites[s].output_aval.dtype)
      for s in structure.perturbed
    }

    def forward(perturbations, differentiated):
      leaves = list(param_leaves)
      for i, leaf in zip(fallback, differentiated):
        leaves[i] = leaf
      args = [*leaves, *jax.tree_util.tree_leaves(example)]
      outs, layer_inputs = trace_lib.evaluate(
        traced.jaxpr, structure, traced.num_params, args, perturbations
      )
      return outs[0], layer_inputs

    differentiated = [param_leaves[i] for i in fallback]
    out, vjp_fn, layer_inputs = jax.vjp(forward, zeros, differentiated, has_aux=True)
    basis = jnp.eye(traced.num_outputs, dtype=out.dtype)
    deltas, gradients = jax.vmap(vjp_fn)(basis)
    return layer_inputs, deltas, gradients

  return _jacobian.map_examples(per_example, inputs, chunk_size)


# ---------------------------------------------------------------- dot layout


@dataclasses.dataclass(frozen=True)
class _DotLayout:
  """A dot_general site as z[b, t, o] = Σ_n x[b, t, n] V[b, n, o] (per example)."""

  x_perm: tuple[int, ...]  # x axes -> (batch, free, contracting)
  z_perm: tuple[int, ...]  # z axes -> (batch, x free, V free)
  batch: int
  positions: int
  contracting: int
  features: int


def _dot_layout(site: trace_lib.Site) -> _DotLayout:
  (lhs_c, rhs_c), (lhs_b, rhs_b) = site.eqn.params["dimension_numbers"]
  x_on_left = site.param_position == 1
  x_c, x_b = (lhs_c, lhs_b) if x_on_left else (rhs_c, rhs_b)
  x_shape = site.input_aval.shape
  x_free = [a for a in range(len(x_shape)) if a not in x_c and a not in x_b]
  num_batch = len(x_b)
  z_ndim = len(site.output_aval.shape)
  v_free_count = z_ndim - num_batch - len(x_free)
  batch_axes = list(range(num_batch))
  if x_on_left:
    z_x = list(range(num_batch, num_batch + len(x_free)))
    z_v = list(range(num_batch + len(x_free), z_ndim))
  else:
    z_v = list(range(num_batch, num_batch + v_free_count))
    z_x = list(range(num_batch + v_free_count, z_ndim))
  size = lambda axes, shape: int(math.prod(shape[a] for a in axes))
  return _DotLayout(
    x_perm=tuple(list(x_b) + x_free + list(x_c)),
    z_perm=tuple(batch_axes + z_x + z_v),
    batch=size(x_b, x_shape),
    positions=size(x_free, x_shape),
    contracting=size(x_c, x_shape),
    features=size(z_v, site.output_aval.shape),
  )


def _canonical_inputs(layout: _DotLayout, x: jax.Array) -> jax.Array:
  """(m, *x) -> (m, B, T, n)."""
  x = jnp.transpose(x, (0, *(a + 1 for a in layout.x_perm)))
  return x.reshape(x.shape[0], layout.batch, layout.positions, layout.contracting)


def _canonical_cotangents(layout: _DotLayout, delta: jax.Array) -> jax.Array:
  """(m, k, *z) -> (m, k, B, T, o)."""
  delta = jnp.transpose(delta, (0, 1, *(a + 2 for a in layout.z_perm)))
  return delta.reshape(*delta.shape[:2], layout.batch, layout.positions, layout.features)


# ---------------------------------------------------------------- conv layout


@dataclasses.dataclass(frozen=True)
class _ConvLayout:
  """A conv_general_dilated site per example, in the terms of its image patches.

  With x of b images of C channels, the kernel V of O = G·O_g output and
  C_g = C/G input channels per group over a filter of F = Π filter_shape
  elements, and S output positions per image, the kernel gradient of one
  example and output direction is

      ∂f/∂V[g o_g, c_g, w] = Σ_{b,s} P[b, g, c_g w, s] δ[b, g, o_g, s]

  with P the patches of x (`lax.conv_general_dilated_patches`, channel-major
  features c w) and δ the cotangent of the conv's output.
  """

  lhs_spec: tuple[int, ...]
  rhs_spec: tuple[int, ...]
  out_spec: tuple[int, ...]
  filter_shape: tuple[int, ...]
  images: int  # b
  groups: int  # G
  group_inputs: int  # C_g
  group_outputs: int  # O_g
  out_positions: int  # S

  @property
  def filter_size(self) -> int:
    return int(math.prod(self.filter_shape))


def _patches_apply(site: trace_lib.Site) -> bool:
  """Whether the patch form covers this conv site (no batch groups)."""
  return site.kind == "conv" and site.eqn.params["batch_group_count"] == 1


def _conv_layout(site: trace_lib.Site) -> _ConvLayout:
  lhs_spec, rhs_spec, out_spec = site.eqn.params["dimension_numbers"]
  groups = site.eqn.params["feature_group_count"]
  kernel_shape = site.eqn.invars[site.param_position].aval.shape
  x_shape, z_shape = site.input_aval.shape, site.output_aval.shape
  return _ConvLayout(
    lhs_spec=tuple(lhs_spec),
    rhs_spec=tuple(rhs_spec),
    out_spec=tuple(out_spec),
    filter_shape=tuple(kernel_shape[a] for a in rhs_spec[2:]),
    images=x_shape[lhs_spec[0]],
    groups=groups,
    group_inputs=x_shape[lhs_spec[1]] // groups,
    group_outputs=z_shape[out_spec[1]] // groups,
    out_positions=int(math.prod(z_shape[a] for a in out_spec[2:])),
  )


_PATCH_SLICES = 64  # filters of at most this many elements: patches by strided slices


def _conv_patches(site: trace_lib.Site, layout: _ConvLayout, x: jax.Array) -> jax.Array:
  """(m, *x) -> patches (m, b, S, G, C_g F) of the conv's input, channel-major features.

  Patch element (c, w) of output position s is the (dilated, padded) input
  under filter element w of the window of s in channel c: one strided slice
  per filter element (a copy, exact in any precision), or
  `lax.conv_general_dilated_patches` for filters of more than `_PATCH_SLICES`
  elements.
  """
  params = site.eqn.params
  x = jnp.transpose(x, (0, *(a + 1 for a in layout.lhs_spec)))  # (m, b, C, *spatial)
  m, b, channels = x.shape[:3]
  x = x.reshape(m * b, channels, *x.shape[3:])
  if layout.filter_size <= _PATCH_SLICES:
    config = [(0, 0, 0), (0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(params["padding"], params["lhs_dilation"])]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    out_shape = site.output_aval.shape
    out_spatial = [out_shape[a] for a in layout.out_spec[2:]]
    slices = []
    for offset in itertools.product(*(range(w) for w in layout.filter_shape)):
      begin = [o * d for o, d in zip(offset, params["rhs_dilation"])]
      limit = [
        a + (n - 1) * st + 1 for a, n, st in zip(begin, out_spatial, params["window_strides"])
      ]
      slices.append(
        jax.lax.slice(
          x, [0, 0, *begin], [m * b, channels, *limit], [1, 1, *params["window_strides"]]
        )
      )
    patches = jnp.stack(slices, axis=2)  # (m b, C, F, *out_spatial)
    patches = patches.reshape(m * b, channels * layout.filter_size, -1)
  else:
    patches = jax.lax.conv_general_dilated_patches(
      x,
      layout.filter_shape,
      params["window_strides"],
      params["padding"],
      lhs_dilation=params["lhs_dilation"],
      rhs_dilation=params["rhs_dilation"],
      precision=jax.lax.Precision.HIGHEST,  # a copy: keep every bit
    ).reshape(m * b, channels * layout.filter_size, -1)
  patches = jnp.swapaxes(patches, 1, 2)  # (m b, S, C F)
  n = layout.group_inputs * layout.filter_size
  return patches.reshape(m, b, layout.out_positions, layout.groups, n)


def _conv_cotangents(layout: _ConvLayout, delta: jax.Array) -> jax.Array:
  """(m, k, *z) -> (m, k, b, S, G, O_g); no copy for channels-last outputs."""
  order = (layout.out_spec[0], *layout.out_spec[2:], layout.out_spec[1])
  delta = jnp.transpose(delta, (0, 1, *(a + 2 for a in order)))
  return delta.reshape(*delta.shape[:3], layout.out_positions, layout.groups, layout.group_outputs)


def _conv_kernel_gradients(
  site: trace_lib.Site, x: jax.Array, delta: jax.Array, *, with_bias: bool = False
) -> tuple[jax.Array, jax.Array | None]:
  """Per-example gradients of the kernel operand V, (m, k, *V.shape), by one einsum over patches.

  With `with_bias`, a constant 1 is appended to every patch, and the same
  einsum also returns Σ_{b,s} δ[b, s, o], shape (m, k, O): the gradient of a
  bias broadcast over the conv's positions (`_conv_biases`); else None.
  """
  layout = _conv_layout(site)
  patches = _conv_patches(site, layout, x).astype(delta.dtype)
  n = patches.shape[-1]
  if with_bias:
    patches = jnp.concatenate([patches, jnp.ones((*patches.shape[:-1], 1), patches.dtype)], -1)
  grads = jnp.einsum("mbsgn,mkbsgo->mkgon", patches, _conv_cotangents(layout, delta))
  m, k = grads.shape[:2]
  out_features = layout.groups * layout.group_outputs
  bias = grads[..., n].reshape(m, k, out_features) if with_bias else None
  # (m, k, O, C_g, *filter) in (out, in, spatial) order -> the kernel's own layout
  grads = grads[..., :n].reshape(m, k, out_features, layout.group_inputs, *layout.filter_shape)
  order = [int(a) for a in np.argsort(layout.rhs_spec)]
  return jnp.transpose(grads, (0, 1, *(a + 2 for a in order))), bias


def _broadcasts_features(bias_site: trace_lib.Site, conv_site: trace_lib.Site) -> bool:
  """Whether the bias operand is its leaf, a vector over the conv's O output features, broadcast.

  Checked on a probe: the view chain applied to 1, 2, ..., O, broadcast to
  the conv output's shape (as the add does with size-1 axes), must hold
  o + 1 at every position of feature o.
  """
  chain = bias_site.chain
  layout = _conv_layout(conv_site)
  out_features = layout.groups * layout.group_outputs
  if not chain or math.prod(chain[0].invars[0].aval.shape) != out_features:
    return False
  leaf_shape = chain[0].invars[0].aval.shape
  z_shape = conv_site.output_aval.shape
  probe = np.arange(1, out_features + 1, dtype=np.float64).reshape(leaf_shape)
  view = trace_lib.chain_on_numpy(chain, probe)
  if view is None or view.ndim != len(z_shape):
    return False
  if any(v not in (1, z) for v, z in zip(view.shape, z_shape)):
    return False
  column = [-1 if a == layout.out_spec[1] else 1 for a in range(len(z_shape))]
  expected = np.broadcast_to(probe.reshape(column), z_shape)
  # the add broadcasts size-1 axes of the view itself
  return bool(np.array_equal(np.broadcast_to(view, z_shape), expected))


def _conv_biases(traced: TracedModel, plans: list[LeafPlan]) -> dict[int, int]:
  """{conv kernel leaf: bias leaf} whose per-example gradients one patch einsum gives together.

  The conv's only site feeds only a bias add (they share a cotangent), both
  leaves are materialised, and the bias is a vector over the conv's output
  features broadcast over its positions: its gradient Σ_{b,s} δ[b, s, o] is
  the kernel einsum's with a constant 1 appended to every patch, which saves
  a pass over the cotangents (m k |z| numbers).
  """
  structure = traced.structure
  by_leaf = {p.leaf: p for p in plans}
  pairs = {}
  for p in plans:
    if p.form != "materialised" or len(p.sites) != 1 or not _patches_apply(p.sites[0]):
      continue
    conv_site = p.sites[0]
    if conv_site.index not in structure.shares:
      continue
    bias_site = structure.sites[structure.shares[conv_site.index]]
    bias_plan = by_leaf.get(bias_site.leaf)
    if bias_plan is None or bias_plan.form != "materialised" or bias_plan.sites != (bias_site,):
      continue
    if _broadcasts_features(bias_site, conv_site):
      pairs[p.leaf] = bias_site.leaf
  return pairs


def _conv_pair_factors(
  site: trace_lib.Site, x: jax.Array, delta: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The position-pair factors of a conv site: patches (m, G, b S, C_g F), δ (m, k, G, b S, O_g)."""
  layout = _conv_layout(site)
  patches = jnp.transpose(_conv_patches(site, layout, x), (0, 3, 1, 2, 4))
  m, groups, b, positions, n = patches.shape
  delta = jnp.transpose(_conv_cotangents(layout, delta), (0, 1, 4, 2, 3, 5))
  return (
    patches.reshape(m, groups, b * positions, n),
    delta.reshape(*delta.shape[:3], b * positions, layout.group_outputs),
  )


class _PairShape(NamedTuple):
  """A site as z[b, t, o] = Σ_n x[b, t, n] V[b, n, o]: B, T, n and o."""

  batch: int
  positions: int
  contracting: int
  features: int


def _pair_shape(site: trace_lib.Site) -> _PairShape | None:
  """The position-pair shape of a dot site, or of a conv site over its patches."""
  if site.kind == "dot":
    lay = _dot_layout(site)
    return _PairShape(lay.batch, lay.positions, lay.contracting, lay.features)
  if _patches_apply(site):
    conv = _conv_layout(site)
    return _PairShape(
      conv.groups,
      conv.images * conv.out_positions,
      conv.group_inputs * conv.filter_size,
      conv.group_outputs,
    )
  return None


# ---------------------------------------------------------------- planning


def _site_gradient_flops(site: trace_lib.Site, leaf_size: int, m: int, k: int) -> int:
  """Multiply-adds of the per-example VJPs of one site (2 m k T |θ|, T positions)."""
  z_size = math.prod(site.output_aval.shape)
  if site.kind == "bias":
    return m * k * z_size
  if site.kind == "dot":
    return 2 * m * k * _dot_layout(site).positions * leaf_size
  out_channels = site.output_aval.shape[site.eqn.params["dimension_numbers"].out_spec[1]]
  return 2 * m * k * (z_size // out_channels) * leaf_size


def _patch_size(site: trace_lib.Site) -> int:
  """Numbers in one example's patches of a conv site (b S G (C_g F + 1)); 0 for other sites."""
  if not _patches_apply(site):
    return 0
  conv = _conv_layout(site)
  features = conv.group_inputs * conv.filter_size + 1
  return conv.images * conv.out_positions * conv.groups * features


def plan(traced: TracedModel, num_examples: int, per_output: bool) -> list[LeafPlan]:
  """The cheapest exact form for every used leaf, with its flop and memory cost.

  The δ-Gram of a shared cotangent source (2 m² k' |z| flops) is counted once,
  in the first "dense"/"bias" leaf that uses it.
  """
  m, k = num_examples, traced.num_outputs
  kk = k if per_output else k * k
  structure = traced.structure
  by_leaf = collections.defaultdict(list)
  for site in structure.sites:
    by_leaf[site.leaf].append(site)
  for leaf in structure.fallback:  # leaves used only outside sites have no site at all
    by_leaf.setdefault(leaf, [])
  counted_sources: set[int] = set()
  plans = []
  for leaf, sites in sorted(by_leaf.items()):
    size = traced.leaf_sizes[leaf]
    materialised_flops = sum(_site_gradient_flops(s, size, m, k) for s in sites)
    materialised_flops += 2 * m * m * kk * size
    if leaf in structure.fallback:
      plans.append(LeafPlan(leaf, "fallback", tuple(sites), 2 * m * m * kk * size, m * k * size))
      continue
    patches = sum(m * _patch_size(s) for s in sites)  # a conv's patches, at their einsum
    form, flops, memory = "materialised", materialised_flops, m * k * size + patches
    site = sites[0]
    if len(sites) == 1 and site.view_is_isometric:
      source = structure.source(site)
      source_size = math.prod(structure.sites[source].output_aval.shape)
      gram_flops = 0 if source in counted_sources else 2 * m * m * kk * source_size + m * m * kk
      if site.kind == "bias" and size == math.prod(site.output_aval.shape):
        form, flops, memory = "bias", gram_flops, m * m * kk
      elif (shape := _pair_shape(site)) is not None:
        if site.kind == "dot" and shape.batch == 1 and shape.positions == 1:
          form, flops, memory = "dense", gram_flops + 2 * m * m * shape.contracting, m * m * kk
        else:
          pairs = shape.batch * m * m * shape.positions**2
          pair_flops = 2 * pairs * (shape.contracting + kk * shape.features + kk)
          if pair_flops <= materialised_flops:
            form, flops, memory = "position_pair", pair_flops, pairs * kk + patches
      if form in ("dense", "bias"):
        counted_sources.add(source)
    plans.append(LeafPlan(leaf, form, tuple(sites), flops, memory))
  return plans


# ---------------------------------------------------------------- factors


class StructuredFactors(NamedTuple):
  """The structured engine's per-example factors of K (every array has leading axis m).

  The fields of `rdescent.gram.GramFactors` that this engine fills (its
  `reference` is set by `rdescent.gram.gram_factors`).

  Attributes:
    sources: (F, δ) pairs, F of shape (m, f) and δ of shape (m, k, Z): a
      cotangent source and the features of the "dense" and "bias" leaves
      that use it (the layer input x; a constant 1).
    position_pairs: (x, δ) pairs of "position_pair" leaves, x (m, B, T, n),
      δ (m, k, B, T, o).
    gradients: per-example gradients G (m, k, P) of the "materialised" leaves
      (one array per leaf) and of the "fallback" leaves (one array for all).
  """

  sources: tuple[tuple[jax.Array, jax.Array], ...]
  position_pairs: tuple[tuple[jax.Array, jax.Array], ...]
  gradients: tuple[jax.Array, ...]


def _to_leaf(site: trace_lib.Site, leaf: jax.Array, grads: jax.Array) -> jax.Array:
  """Gradients (m, k, *V.shape) of a site's operand V -> of its leaf, (m, k, |θ|)."""
  m, k = grads.shape[:2]
  if not site.chain:
    return grads.reshape(m, k, -1)
  _, vjp_fn = jax.vjp(lambda theta: trace_lib.apply_chain(site.chain, theta), leaf)
  per_example = jax.vmap(jax.vmap(lambda g: vjp_fn(g)[0].reshape(-1)))
  return per_example(grads)


def _site_gradients(
  site: trace_lib.Site, leaf: jax.Array, x: jax.Array | None, delta: jax.Array
) -> jax.Array:
  """Per-example gradients of the leaf through one site, shape (m, k, |θ|).

  A conv kernel's come from the patches of the conv's input and one einsum
  (`_conv_kernel_gradients`); the others from the VJP of the site's operation,
  batched over the examples and the k output directions.
  """
  if x is not None and _patches_apply(site):
    return _to_leaf(site, leaf, _conv_kernel_gradients(site, x, delta)[0])
  if x is None:  # bias: the VJP does not depend on the other operand's value
    x_in_axis, x = None, jnp.zeros(site.input_aval.shape, site.input_aval.dtype)
  else:
    x_in_axis = 0

  def gradient(x_i, delta_ic):
    def use(theta):
      view = trace_lib.apply_chain(site.chain, theta)
      operands = [x_i, view] if site.param_position == 1 else [view, x_i]
      return trace_lib.bind(site.eqn, operands)

    _, vjp_fn = jax.vjp(use, leaf)
    return vjp_fn(delta_ic)[0].reshape(-1)

  per_output = jax.vmap(gradient, in_axes=(None, 0))
  return jax.vmap(per_output, in_axes=(x_in_axis, 0))(x, delta)


_SCALAR_FORMS = ("dense", "bias", "position_pair")


def _leaf_scales(
  scales: Params | None, param_leaves: list[jax.Array], plans: list[LeafPlan]
) -> list[jax.Array] | None:
  """The scale of every leaf (None without scales); refuses a per-parameter scale
  on a leaf whose structured form takes one number per leaf."""
  if scales is None:
    return None
  leaves = [jnp.asarray(w) for w in jax.tree_util.tree_leaves(scales)]
  if len(leaves) != len(param_leaves):
    raise ValueError(
      f"scales must have the parameters' structure ({len(param_leaves)} leaves); got "
      f"{len(leaves)} leaves."
    )
  for leaf_plan in plans:
    if leaf_plan.form in _SCALAR_FORMS and leaves[leaf_plan.leaf].ndim:
      raise ValueError(
        f"the structured Gram engine takes one scale per leaf for leaf {leaf_plan.leaf} "
        f"(form {leaf_plan.form!r}); got a per-parameter scale of shape "
        f"{leaves[leaf_plan.leaf].shape} (use method='jacobian')."
      )
  return leaves


def factors_from_trace(
  traced: TracedModel,
  apply_fn: ApplyFn,
  params: Params,
  inputs: Any,
  *,
  outputs: str = "full",
  chunk_size: int | None = None,
  scales: Params | None = None,
) -> StructuredFactors:
  """The factors of a batch's K, leaf by leaf in the forms chosen by `plan`.

  Args:
    traced: `trace_model` of `apply_fn` on these `params` and `inputs`.
    apply_fn, params, inputs, chunk_size: as for `rdescent.gram.gram_matrix`.
    outputs: `"full"` or `"per_output"` (the plan's costs differ).
    scales: None, or the column scales w of J̃ = J diag(w) (`rdescent.metric`),
      params-shaped: the factors are then those of K̃ = J̃ J̃ᵀ. A leaf in a
      "dense", "bias" or "position_pair" form takes a 0-d scale (its factor
      x, or its constant 1, times w_ℓ); a materialised or fallback leaf also
      takes one per parameter.

  Returns:
    A `StructuredFactors`; `rdescent.gram.gram_factors` adds its `reference`.
  """
  per_output = outputs == "per_output"
  param_leaves = jax.tree_util.tree_leaves(params)
  m = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  k = traced.num_outputs
  structure = traced.structure
  plans = plan(traced, m, per_output)
  fallback = [p.leaf for p in plans if p.form == "fallback"]
  layer_inputs, deltas, fallback_gradients = cotangents(
    traced, param_leaves, inputs, chunk_size, fallback
  )
  dtype = jnp.result_type(*param_leaves)
  scale_leaves = _leaf_scales(scales, param_leaves, plans)
  scaled = lambda leaf, value: value if scale_leaves is None else value * scale_leaves[leaf]
  flat_scaled = lambda leaf, grads: (
    grads if scale_leaves is None else grads * scale_leaves[leaf].reshape(-1).astype(grads.dtype)
  )

  features: dict[int, list[jax.Array]] = {}
  position_pairs, gradients = [], []
  conv_biases = _conv_biases(traced, plans)
  fused: dict[int, jax.Array] = {}  # bias leaf -> its gradients, from its conv's einsum
  for leaf_plan in plans:
    if leaf_plan.form == "fallback" or leaf_plan.leaf in conv_biases.values():
      continue  # fallback leaves come from the cotangent pass, fused biases below
    site = leaf_plan.sites[0]
    if leaf_plan.leaf in conv_biases:
      kernel, bias = _conv_kernel_gradients(
        site, layer_inputs[site.index], deltas[structure.source(site)], with_bias=True
      )
      assert bias is not None
      gradients.append(
        flat_scaled(leaf_plan.leaf, _to_leaf(site, param_leaves[leaf_plan.leaf], kernel))
      )
      fused[conv_biases[leaf_plan.leaf]] = flat_scaled(conv_biases[leaf_plan.leaf], bias)
      continue
    leaf = leaf_plan.leaf
    if leaf_plan.form == "bias":
      ones = jnp.ones((m, 1), dtype)
      features.setdefault(structure.source(site), []).append(scaled(leaf, ones))
    elif leaf_plan.form == "dense":
      x = layer_inputs[site.index].reshape(m, -1).astype(dtype)
      features.setdefault(structure.source(site), []).append(scaled(leaf, x))
    elif leaf_plan.form == "position_pair" and site.kind == "conv":
      x, delta = _conv_pair_factors(site, layer_inputs[site.index], deltas[structure.source(site)])
      position_pairs.append((scaled(leaf, x), delta))
    elif leaf_plan.form == "position_pair":
      layout = _dot_layout(site)
      position_pairs.append(
        (
          scaled(leaf, _canonical_inputs(layout, layer_inputs[site.index])),
          _canonical_cotangents(layout, deltas[structure.source(site)]),
        )
      )
    else:
      through_sites = [
        _site_gradients(
          s, param_leaves[s.leaf], layer_inputs.get(s.index), deltas[structure.source(s)]
        )
        for s in leaf_plan.sites
      ]
      gradients.append(flat_scaled(leaf, sum(through_sites[1:], through_sites[0])))
  gradients.extend(fused.values())
  if fallback:
    if scale_leaves is not None:
      fallback_gradients = [
        grads * jnp.broadcast_to(scale_leaves[leaf], param_leaves[leaf].shape).astype(grads.dtype)
        for leaf, grads in zip(fallback, fallback_gradients)
      ]
    gradients.append(_jacobian.flat_jacobian(fallback_gradients, m, k))
  sources = tuple(
    (
      jnp.concatenate(columns, axis=1) if len(columns) > 1 else columns[0],
      deltas[source].reshape(m, k, -1),
    )
    for source, columns in features.items()
  )
  return StructuredFactors(sources, tuple(position_pairs), tuple(gradients))


def engine_flops(traced: TracedModel, num_examples: int, per_output: bool) -> int:
  """Estimated floating point operations of the structured engine on a batch.

  With F = L + O the flops of one example's forward pass (L in dot_general
  and conv_general_dilated, O elsewhere; `_structured_trace.count_flops`),

      m F  +  m k (L + O)  +  2 m k |θ_fallback|  +  Σ_leaves plan flops

  for the forward pass, the k cotangent VJPs per example (cotangents of the
  activations only: one transpose per linear operation), the fallback
  leaves' gradients taken in the same VJP, and the assembly of every leaf's
  block of K as `plan` counts it (per-example site gradients included).
  """
  m, k = num_examples, traced.num_outputs
  count = trace_lib.count_flops(traced.jaxpr)
  plans = plan(traced, m, per_output)
  fallback = sum(traced.leaf_sizes[p.leaf] for p in plans if p.form == "fallback")
  cotangent_pass = m * count.total + m * k * count.total + 2 * m * k * fallback
  return cotangent_pass + sum(p.flops for p in plans)


def describe(
  apply_fn: ApplyFn, params: Params, inputs: Any, *, outputs: str = "full"
) -> dict[str, Any]:
  """The engine's plan for a model and batch: forms, flop count, memory estimate.

  Returns a dict with `"leaves"` (one (path, form, flops) per used leaf),
  `"flops"` (the assembly's total: 2 per multiply-add; the cotangent VJP and
  fallback Jacobians are not included), `"engine_flops"` (the whole
  engine's estimate, `engine_flops`: what `gram="auto"` compares with the
  jacobian engine's) and `"peak_numbers"` (the estimate of the module
  docstring, in numbers of the compute dtype).
  """
  traced = trace_model(apply_fn, params, inputs)
  m = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  k = traced.num_outputs
  per_output = outputs == "per_output"
  plans = plan(traced, m, per_output)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  structure = traced.structure
  sites = {s.index: s for s in structure.sites}
  stored = sum(
    m * math.prod(s.input_aval.shape) for s in structure.active_sites if s.kind in ("dot", "conv")
  )
  stored += sum(m * k * math.prod(sites[s].output_aval.shape) for s in structure.perturbed)
  stored += sum(p.memory for p in plans if p.form == "fallback")  # from the cotangent pass
  gram_size = k * m * m if per_output else (m * k) ** 2
  transient = max([p.memory for p in plans if p.form != "fallback"] + [0])
  return {
    "leaves": [(paths[p.leaf], p.form, p.flops) for p in plans],
    "flops": sum(p.flops for p in plans),
    "engine_flops": engine_flops(traced, m, per_output),
    "peak_numbers": stored + 2 * gram_size + transient,
  }
