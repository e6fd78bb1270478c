"""Finding the linear operations that consume a model's parameters, in its jaxpr.

The structured Gram engine (`rdescent.structured_gram`) needs, for every
parameter leaf θ_ℓ, the operations through which θ_ℓ reaches the outputs. This
module walks the jaxpr of one example's forward pass, `f(θ, x_i) -> (k,)`,
and follows each leaf through *views* (reshape, transpose, squeeze,
expand_dims, copy, broadcast_in_dim, float convert_element_type). A view of a
leaf that is consumed by one of

    dot_general(x, V) or dot_general(V, x)          kind "dot"
    conv_general_dilated(x, V)                      kind "conv"   (V the kernel)
    add(x, V) or add(V, x), output shaped like x     kind "bias"

with the other operand x not itself a parameter view, is a *site*: the output
z = op(x, V) depends on θ_ℓ only through V, so ∂f/∂θ_ℓ at that site is the
vector-Jacobian product of V ↦ op(x, V) with the cotangent δ = ∂f/∂z.

A leaf is *covered* when every use of it is a site; any other use (an
elementwise scale, a norm, a gather, a control-flow primitive, an output of
the model) makes it a *fallback* leaf, whose per-example Jacobian the engine
materialises. Calls to `jax.jit` / `closed_call` are walked into (inlined);
other higher-order primitives (custom_jvp_call, scan, cond, remat, ...) are
evaluated as they are, and a leaf that enters one falls back.

The same walker evaluates the jaxpr (`evaluate`): it adds a perturbation e_s
to the output of each active site s, z_s + e_s, and records the site's input
x_s, so that one VJP with respect to the (zero) perturbations gives every
δ_s = ∂f/∂z_s. A "dot" or "conv" site whose output feeds only a "bias" site
shares that site's perturbation (their cotangents are equal), which halves the
cotangent memory of dense and convolution layers. While evaluating, a
max-pool (`reduce_window_max`, what `flax.linen.max_pool` emits) is
differentiated through `max_window`: the same values and derivative as JAX's
own rule (each window passes its tangent on from the first maximum in window
order), written with a one-hot mask of the window maxima instead of
select-and-scatter, whose k per-example copies are slow on XLA:CPU.

`count_flops` counts a jaxpr's floating point operations (2 per multiply-add
in dot_general and conv_general_dilated, one per output element elsewhere),
for the engines' cost estimates.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

_VIEW_PRIMITIVES = frozenset(
  {"reshape", "transpose", "squeeze", "expand_dims", "copy", "copy_p", "broadcast_in_dim"}
)
_INLINED_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}


@dataclasses.dataclass(frozen=True)
class _ParamView:
  """A value equal to `chain` applied to parameter leaf number `leaf`."""

  leaf: int
  chain: tuple  # JaxprEqn views, applied in order


@dataclasses.dataclass(frozen=True)
class Site:
  """A recognised parameter-consuming linear operation (per-example shapes).

  Attributes:
    index: position in program order (the walker's numbering).
    kind: "dot", "conv" or "bias".
    leaf: index of the parameter leaf (in `jax.tree_util.tree_leaves` order).
    chain: the view equations from the leaf to the operand V.
    param_position: operand index of V in `eqn` (0 or 1).
    eqn: the equation itself (primitive and its parameters).
    input_aval: abstract value of the other operand x (one example).
    output_aval: abstract value of z = op(x, V) (one example).
  """

  index: int
  kind: str
  leaf: int
  chain: tuple
  param_position: int
  eqn: Any
  input_aval: Any
  output_aval: Any

  @property
  def view_is_isometric(self) -> bool:
    """True when V is a re-arrangement of the leaf (same numbers, no copies)."""
    leaf_size = math.prod(self.chain[0].invars[0].aval.shape) if self.chain else None
    sizes = {math.prod(e.outvars[0].aval.shape) for e in self.chain}
    return not self.chain or sizes == {leaf_size}


@dataclasses.dataclass(frozen=True)
class Structure:
  """What the walk found: sites, fallback leaves and shared perturbations.

  Attributes:
    sites: every site, in program order (including those of fallback leaves).
    fallback: leaves with at least one use that is not a site.
    shares: {dot/conv site: bias site} whose cotangents are equal (both active).
  """

  sites: tuple[Site, ...]
  fallback: frozenset[int]
  shares: dict[int, int]

  def active(self, site: Site) -> bool:
    return site.leaf not in self.fallback

  @property
  def active_sites(self) -> tuple[Site, ...]:
    return tuple(s for s in self.sites if self.active(s))

  @property
  def perturbed(self) -> tuple[int, ...]:
    """Active sites that get their own perturbation (the cotangent sources)."""
    return tuple(s.index for s in self.active_sites if s.index not in self.shares)

  def source(self, site: Site) -> int:
    """The site whose perturbation gives `site`'s cotangent."""
    return self.shares.get(site.index, site.index)


def _is_view(eqn) -> bool:
  name = eqn.primitive.name
  if name == "convert_element_type":
    return jnp.issubdtype(eqn.params["new_dtype"], jnp.floating)
  return name in _VIEW_PRIMITIVES


def _site_kind(eqn, tags) -> str | None:
  tagged = [i for i, tag in enumerate(tags) if tag is not None]
  if len(tagged) != 1 or len(eqn.invars) != 2:
    return None
  name = eqn.primitive.name
  if name == "dot_general":
    return "dot"
  if name == "conv_general_dilated" and tagged == [1]:
    return "conv"
  if name == "add":
    other = eqn.invars[1 - tagged[0]].aval
    out = eqn.outvars[0].aval
    if other.shape == out.shape and other.dtype == out.dtype:
      return "bias"
  return None


def bind(eqn, operands: list[Any]) -> Any:
  """Applies `eqn`'s primitive with its parameters to `operands`."""
  return eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))


def apply_chain(chain: tuple, leaf: jax.Array) -> jax.Array:
  """V = the view equations of `chain` applied to a parameter leaf."""
  for eqn in chain:
    leaf = bind(eqn, [leaf])
  return leaf


def chain_on_numpy(chain: tuple, value: np.ndarray) -> np.ndarray | None:
  """The view equations of `chain` applied to a NumPy array (None: a view it does not know).

  For checking at trace time, in any context (under jit, shard_map or a mesh),
  what a chain does to a probe leaf.
  """
  for eqn in chain:
    name, p = eqn.primitive.name, eqn.params
    if name == "reshape":
      value = value.reshape(p["new_sizes"])
    elif name == "transpose":
      value = np.transpose(value, p["permutation"])
    elif name == "squeeze":
      value = np.squeeze(value, axis=tuple(p["dimensions"]))
    elif name == "expand_dims":
      value = np.expand_dims(value, tuple(p["dimensions"]))
    elif name == "broadcast_in_dim":
      dims, shape = tuple(p["broadcast_dimensions"]), tuple(p["shape"])
      aligned = [value.shape[dims.index(a)] if a in dims else 1 for a in range(len(shape))]
      value = np.broadcast_to(value.reshape(aligned), shape)
    elif name not in ("convert_element_type", "copy", "copy_p"):
      return None
  return value


SiteHook = Callable[[Site, list[Any], Any], Any]


class _Walker:
  """Walks (and, given a hook, evaluates) a jaxpr, tracking parameter views."""

  def __init__(self, hook: SiteHook | None):
    self.hook = hook
    self.sites: list[Site] = []
    self.fallback: set[int] = set()
    self.candidate_shares: list[tuple[int, int]] = []

  def run(self, jaxpr, consts, args, arg_tags):
    evaluate = self.hook is not None
    values: dict[Any, Any] = {}
    tags: dict[Any, _ParamView | None] = {}
    uses = collections.Counter(
      v for eqn in jaxpr.eqns for v in eqn.invars if not isinstance(v, jex_core.Literal)
    )
    uses.update(v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal))
    dot_outputs: dict[Any, int] = {}

    def read(v):
      if isinstance(v, jex_core.Literal):
        return v.val, None
      return values.get(v), tags.get(v)

    for v, value in zip(jaxpr.constvars, consts):
      values[v], tags[v] = value, None
    for v, value, tag in zip(jaxpr.invars, args, arg_tags):
      values[v], tags[v] = value, tag

    for eqn in jaxpr.eqns:
      pairs = [read(v) for v in eqn.invars]
      operands = [value for value, _ in pairs]
      in_tags = [tag for _, tag in pairs]
      out_tags: list[_ParamView | None] = [None] * len(eqn.outvars)
      name = eqn.primitive.name
      if not any(in_tags):
        outs = self._bind(eqn, operands) if evaluate else None
      elif name in _INLINED_CALLS:
        inner = eqn.params[_INLINED_CALLS[name]]
        outs, out_tags = self.run(inner.jaxpr, inner.consts, operands, in_tags)
      elif _is_view(eqn):
        tag = in_tags[0]
        out_tags = [_ParamView(tag.leaf, tag.chain + (eqn,))]
        outs = self._bind(eqn, operands) if evaluate else None
      elif (kind := _site_kind(eqn, in_tags)) is not None:
        position = next(i for i, tag in enumerate(in_tags) if tag is not None)
        tag = in_tags[position]
        site = Site(
          index=len(self.sites),
          kind=kind,
          leaf=tag.leaf,
          chain=tag.chain,
          param_position=position,
          eqn=eqn,
          input_aval=eqn.invars[1 - position].aval,
          output_aval=eqn.outvars[0].aval,
        )
        self.sites.append(site)
        other = eqn.invars[1 - position]
        if kind in ("dot", "conv"):
          dot_outputs[eqn.outvars[0]] = site.index
        elif kind == "bias" and other in dot_outputs and uses[other] == 1:
          self.candidate_shares.append((dot_outputs[other], site.index))
        outs = self.hook(site, operands, bind(eqn, operands)) if self.hook else None
      else:
        self.fallback.update(tag.leaf for tag in in_tags if tag is not None)
        outs = self._bind(eqn, operands) if evaluate else None
      if not eqn.primitive.multiple_results and name not in _INLINED_CALLS:
        outs = [outs]
      for i, v in enumerate(eqn.outvars):
        values[v] = outs[i] if outs is not None else None
        tags[v] = out_tags[i]
    results = [read(v) for v in jaxpr.outvars]
    return [r[0] for r in results], [r[1] for r in results]

  @staticmethod
  def _bind(eqn, operands):
    if eqn.primitive.name == "reduce_window_max" and _max_window_applies(eqn):
      return max_window(eqn, operands[0])
    out = bind(eqn, operands)
    return list(out) if eqn.primitive.multiple_results else out


def _param_tags(num_params: int, num_args: int) -> list[_ParamView | None]:
  return [_ParamView(i, ()) if i < num_params else None for i in range(num_args)]


def analyse(closed_jaxpr, num_params: int) -> Structure:
  """Finds the sites of a jaxpr whose first `num_params` inputs are parameter leaves."""
  walker = _Walker(hook=None)
  jaxpr = closed_jaxpr.jaxpr
  _, out_tags = walker.run(
    jaxpr,
    closed_jaxpr.consts,
    [None] * len(jaxpr.invars),
    _param_tags(num_params, len(jaxpr.invars)),
  )
  fallback = walker.fallback | {tag.leaf for tag in out_tags if tag is not None}
  active = lambda index: walker.sites[index].leaf not in fallback
  shares = {d: b for d, b in walker.candidate_shares if active(d) and active(b)}
  return Structure(tuple(walker.sites), frozenset(fallback), shares)


def evaluate(
  closed_jaxpr,
  structure: Structure,
  num_params: int,
  args: list[Any],
  perturbations: dict[int, jax.Array],
) -> tuple[list[Any], dict[int, Any]]:
  """Evaluates the jaxpr with z_s + e_s at the perturbed sites.

  Args:
    closed_jaxpr: the jaxpr that `analyse` saw.
    structure: its `Structure`.
    num_params: how many leading inputs are parameter leaves.
    args: the jaxpr's inputs (parameter leaves, then the example's leaves).
    perturbations: {site index: e_s} for `structure.perturbed`, shaped like
      the site's output.

  Returns:
    The jaxpr's outputs and {site index: x_s}, the other operand of every
    active "dot" and "conv" site.
  """
  layer_inputs: dict[int, Any] = {}

  def hook(site, operands, out):
    if not structure.active(site):
      return out
    if site.kind in ("dot", "conv"):
      layer_inputs[site.index] = operands[1 - site.param_position]
    if site.index in perturbations:
      out = out + perturbations[site.index]
    return out

  jaxpr = closed_jaxpr.jaxpr
  outs, _ = _Walker(hook).run(
    jaxpr, closed_jaxpr.consts, args, _param_tags(num_params, len(jaxpr.invars))
  )
  return outs, layer_inputs


# ---------------------------------------------------------------- max-pool


_MAX_WINDOW_SLICES = 64  # overlapping windows: at most this many strided slices


def _max_window_applies(eqn) -> bool:
  """Whether `max_window` handles this reduce_window_max (floating point, not too many slices)."""
  if not jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating):
    return False
  p = eqn.params
  tiled = (
    all(d == 1 for d in p["window_dilation"]) and p["window_strides"] == p["window_dimensions"]
  )
  return tiled or math.prod(p["window_dimensions"]) <= _MAX_WINDOW_SLICES


def _windows(eqn, value: jax.Array, fill: Any) -> tuple[jax.Array, tuple[int, ...], jax.Array]:
  """The windows of a reduce_window, each element on window axes of its own.

  Returns (windows, window_axes, order): reducing `windows` over
  `window_axes` (keepdims) gives an array that reshapes to the output;
  `order`, broadcastable to `windows`, numbers each element's offset in its
  window, row-major. Tiled windows (strides equal to the window, no window
  dilation) are a reshape of the operand, (n_0, w_0, n_1, w_1, ...); other
  windows a stack of strided slices, (F, *out) with F = Π window_dimensions.
  The operand is padded with `fill` (borders and base dilation holes), so
  the windows are linear in `value` when `fill` is 0.
  """
  p = eqn.params
  dims, strides, dilation = p["window_dimensions"], p["window_strides"], p["window_dilation"]
  out_shape = eqn.outvars[0].aval.shape
  config = [(lo, hi, b - 1) for (lo, hi), b in zip(p["padding"], p["base_dilation"])]
  padded = jax.lax.pad(value, jnp.asarray(fill, value.dtype), config)
  if all(d == 1 for d in dilation) and tuple(strides) == tuple(dims):
    tiles = padded[tuple(slice(0, n * w) for n, w in zip(out_shape, dims))]
    tiles = tiles.reshape([s for n, w in zip(out_shape, dims) for s in (n, w)])
    axes = tuple(2 * a + 1 for a in range(len(dims)))
    order = jnp.zeros([1] * tiles.ndim, jnp.int32)
    for axis, w in zip(axes, dims):
      shape = [1] * tiles.ndim
      shape[axis] = w
      order = order * w + jnp.arange(w, dtype=jnp.int32).reshape(shape)
    return tiles, axes, order
  slices = []
  for offset in itertools.product(*(range(w) for w in dims)):
    start = [o * d for o, d in zip(offset, dilation)]
    limit = [b + (n - 1) * s + 1 for b, n, s in zip(start, out_shape, strides)]
    slices.append(jax.lax.slice(padded, start, limit, strides))
  order = jnp.arange(len(slices), dtype=jnp.int32).reshape(-1, *[1] * len(out_shape))
  return jnp.stack(slices), (0,), order


def max_window(eqn, operand: jax.Array) -> jax.Array:
  """A reduce_window_max equation applied to `operand`, with a mask-based derivative.

  The value is the primitive's own. The tangent of output o is the tangent
  of the first element of its window (row-major window order) that equals
  the maximum, as in JAX's rule for reduce_window_max (select-and-gather
  forward, select-and-scatter in reverse), but computed as Σ_w mask_w t_w
  over the windows (`_windows`), with a one-hot mask found once from the
  primal; its transpose is a select and a pad, batched cheaply over the k
  output directions.
  """

  @jax.custom_jvp
  def pool(x):
    return bind(eqn, [x])

  @pool.defjvp
  def pool_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out = pool(x)
    windows, axes, order = _windows(eqn, x, -jnp.inf)
    is_max = windows == jnp.max(windows, axis=axes, keepdims=True)
    size = int(math.prod(eqn.params["window_dimensions"]))
    first = jnp.min(jnp.where(is_max, order, size), axis=axes, keepdims=True)
    mask = order == first  # the first maximum of each window (none where the max is NaN)
    tangent_windows, _, _ = _windows(eqn, t, 0)
    tangent = jnp.sum(jnp.where(mask, tangent_windows, 0), axis=axes)
    return out, tangent.reshape(out.shape)

  return pool(operand)


# ---------------------------------------------------------------- flop count


class FlopCount(NamedTuple):
  """Floating point operations of one evaluation of a jaxpr.

  Attributes:
    linear: 2 per multiply-add of dot_general and conv_general_dilated.
    other: one per output element of every other equation (elementwise
      arithmetic, reductions, copies).
  """

  linear: int
  other: int

  @property
  def total(self) -> int:
    return self.linear + self.other


def _equation_flops(eqn) -> FlopCount:
  name = eqn.primitive.name
  out_size = sum(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
  if name == "dot_general":
    (lhs_c, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    return FlopCount(2 * out_size * int(np.prod([lhs_shape[a] for a in lhs_c])), 0)
  if name == "conv_general_dilated":
    rhs_shape = eqn.invars[1].aval.shape
    out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    return FlopCount(2 * out_size * int(np.prod(rhs_shape)) // out_features, 0)
  inner = [count_flops(sub) for sub in _inner_jaxprs(eqn)]
  if inner:
    if name == "cond":  # one branch runs
      return max(inner, key=lambda c: c.total)
    repeat = int(eqn.params.get("length", 1)) if name == "scan" else 1
    return FlopCount(repeat * sum(c.linear for c in inner), repeat * sum(c.other for c in inner))
  return FlopCount(0, out_size)


def _inner_jaxprs(eqn) -> list[Any]:
  """The jaxprs in an equation's parameters (call bodies, scan bodies, cond branches)."""
  kinds = (jex_core.Jaxpr, jex_core.ClosedJaxpr)
  found: list[Any] = []
  for value in eqn.params.values():
    values = value if isinstance(value, tuple) else (value,)
    found.extend(v for v in values if isinstance(v, kinds))
  return found


def count_flops(jaxpr) -> FlopCount:
  """`FlopCount` of a (closed) jaxpr, walking into calls, scans (× length) and conds (max).

  A while loop's body is counted once (its trip count is not known).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  linear = other = 0
  for eqn in jaxpr.eqns:
    count = _equation_flops(eqn)
    linear, other = linear + count.linear, other + count.other
  return FlopCount(linear, other)
