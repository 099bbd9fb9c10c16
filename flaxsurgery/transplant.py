"""Applying a plan: pure ``jax.numpy`` gathers and selects, jit- and vmap-able.

Per leaf: ``jnp.take`` along each axis whose units changed (clipped indices), a per-unit scale or
offset where a rule asks for one, then ``jnp.where(index < 0, fill, gathered)`` per axis. There is
no Python loop over units; the loop over leaves runs once, at trace time.

This is the device side: it reads plans (`flaxsurgery.plans`) and unit helpers
(`flaxsurgery.units`) and never plans itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.paths import flatten
from flaxsurgery.plans import LeafArrays, LeafPlan, Plan
from flaxsurgery.units import NEAR_IDENTITY_NOISE, Fill, problems_error


def transplant(old_tree: Any, plan: Any, fresh_tree: Any | None = None) -> Any:
    """Moves what `old_tree` learned into the new architecture, as `plan` says.

    Pure: the caller's trees are not changed. Under ``jax.jit`` it compiles once per plan and
    shapes; under ``jax.vmap`` it transplants a stacked population in one call.

    Args:
      old_tree: the old parameters (or any tree shaped like them: a target network, an EMA copy).
      plan: from [`flaxsurgery.plan`][flaxsurgery.plan], or a [`Spec`][flaxsurgery.Spec] (planned on
        first use): any object that is not a `Plan` is asked for one with its
        ``plan_for(old_tree, fresh_tree)``.
      fresh_tree: the new network's own initialisation, where rules ``fresh`` and
        ``near_identity`` take their values; may be None when no rule needs it.

    Returns:
      A tree with the new network's structure.

    Raises:
      ValueError: if a tree does not match the plan (naming every leaf that differs), if the
        plan needs fresh values and `fresh_tree` is None, or if `plan` is neither a `Plan` nor
        has ``plan_for``.

    What is preserved is the plan's: see ``plan.report()`` and `flaxsurgery.rules`.

    >>> import flaxsurgery as fs
    >>> old = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    >>> p = fs.plan(old, {"w": np.zeros((2, 4), np.float32)}, {"w": ("obs", "act")},
    ...             spaces={"act": (["a", "b", "c"], ["c", "a", "b", "d"])})
    >>> fs.transplant(old, p)["w"]
    Array([[2., 0., 1., 1.],
           [5., 3., 4., 4.]], dtype=float32)
    """
    if not isinstance(plan, Plan):
        plan = _planned(plan, old_tree, fresh_tree)
    old_leaves, _ = flatten(old_tree)
    _check_leaves(old_leaves, plan.old_leaves, "old_tree")
    treedef = plan.new_treedef
    fresh_leaves = {}
    if fresh_tree is not None:
        fresh_leaves, treedef = flatten(fresh_tree)
        _check_leaves(fresh_leaves, {leaf.path: (leaf.shape, leaf.dtype) for leaf in plan.leaves}, "fresh_tree")
    else:
        needing = [leaf.path for leaf in plan.leaves if leaf.needs_fresh]
        if needing:
            raise ValueError(f"the plan takes fresh values for {needing}: pass the new network's "
                             f"initialised parameters as fresh_tree")
    new_leaves = [
        apply_leaf(leaf, arrays, old_leaves.get(leaf.source), fresh_leaves.get(leaf.path))
        for leaf, arrays in zip(plan.leaves, plan.arrays)
    ]
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def _planned(spec: Any, old_tree: Any, fresh_tree: Any) -> Plan:
    """The plan a planning object (a `Spec`) makes for these trees; the apply side does not
    import the planner, it asks the object."""
    if not callable(getattr(spec, "plan_for", None)):
        raise ValueError(f"transplant takes a Plan (from flaxsurgery.plan) or a Spec, got "  # noqa: TRY004
                         f"{type(spec).__name__}")
    if fresh_tree is None:
        raise ValueError("transplant with a Spec needs fresh_tree: the new tree it plans for")
    return spec.plan_for(old_tree, fresh_tree)


def _check_leaves(leaves: dict, expected: dict, name: str) -> None:
    """Every leaf the plan expects, with its shape and dtype, holding values; nothing else."""
    problems = [f"{name} lacks leaf {p!r}" for p in expected if p not in leaves]
    problems += [f"{name} has leaf {p!r}, which the plan does not know" for p in leaves if p not in expected]
    for path, leaf in leaves.items():
        if path not in expected:
            continue
        shape, dtype = expected[path]
        if isinstance(leaf, jax.ShapeDtypeStruct):
            problems.append(f"{name} leaf {path!r} is abstract (a ShapeDtypeStruct): a plan can be "
                            f"built from shapes, but transplant needs values")
        elif tuple(np.shape(leaf)) != shape:
            problems.append(f"{name} leaf {path!r} has shape {tuple(np.shape(leaf))}, the plan expects {shape}")
        elif _dtype(leaf) != dtype:
            problems.append(f"{name} leaf {path!r} has dtype {_dtype(leaf)}, the plan expects {dtype}; "
                            f"cast it first (transplant does not cast)")
    if problems:
        raise problems_error(f"{name} does not match the plan", problems)


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _along(vector: jax.Array, axis: int, ndim: int) -> jax.Array:
    """`vector` shaped to broadcast along `axis` of an `ndim`-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return jnp.reshape(vector, shape)


def apply_leaf(leaf: LeafPlan, arrays: LeafArrays, old: Any, fresh: Any, dtype: Any = None) -> jax.Array:
    """One leaf of a plan: `old` (its source's values) made into the new leaf.

    Args:
      leaf, arrays: one of ``zip(plan.leaves, plan.arrays)``.
      old: the source leaf's values (None for a leaf with no source).
      fresh: the new leaf's fresh values, where the leaf's rules take any (else None).
      dtype: the result's dtype (default: the leaf's), e.g. an optimizer moment kept in float32
        for bfloat16 parameters.
    """
    dtype = leaf.dtype if dtype is None else dtype
    if leaf.init != "gather":
        return _init_leaf(leaf, arrays, fresh).astype(dtype)
    ndim = len(leaf.shape)
    x = _gather(jnp.asarray(old), leaf, arrays)
    for axis, ax in enumerate(leaf.axes):
        if ax.scaled:
            x = x * _along(arrays.axes[axis].scale, axis, ndim).astype(x.dtype)
    for axis in leaf.fill_order():
        fills = leaf.axes[axis].fills
        for i, kind in enumerate(fills):
            units = arrays.axes[axis]
            new = units.src < 0 if len(fills) == 1 else units.kind == i
            x = jnp.where(_along(new, axis, ndim), _fill(kind, leaf, axis, arrays, old, fresh), x)
    for axis, ax in enumerate(leaf.axes):
        if ax.offset:  # after the fills: a mean-filled bias gets its margin too
            x = x + _along(arrays.axes[axis].offset, axis, ndim).astype(x.dtype)
    return x.astype(dtype)


def _gather(x: jax.Array, leaf: LeafPlan, arrays: LeafArrays, skip: int | None = None) -> jax.Array:
    """`x` gathered along every axis that has an index array, except `skip`."""
    axes = [a for a, ax in enumerate(leaf.axes) if ax.gather and a != skip]
    if not axes:
        return x
    for axis in axes:
        kept = leaf.axes[axis].prefix
        if kept is None:
            x = jnp.take(x, arrays.axes[axis].src, axis=axis, mode="clip")
        else:  # old units in order, new ones appended: a slice and a pad
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, leaf.shape[axis] - kept)
            x = jnp.pad(jax.lax.slice_in_dim(x, 0, kept, axis=axis), pad)
    return x


def _fill(kind: Fill, leaf: LeafPlan, axis: int, arrays: LeafArrays, old: Any, fresh: Any) -> Any:
    """Values of fill `kind` for new entries along `axis`, broadcastable to the leaf."""
    if kind is Fill.FRESH:
        return fresh
    if kind is Fill.NEUTRAL:  # 1 for a scale, 0 elsewhere
        return jnp.asarray(leaf.neutral, leaf.dtype)
    if kind is Fill.ZERO:
        return jnp.asarray(0, leaf.dtype)
    # mean: over the old units of this axis, the other axes gathered and scaled as usual (a split
    # unit's halves must average to what the unit contributed).
    x = _gather(jnp.asarray(old), leaf, arrays, skip=axis)
    for other, ax in enumerate(leaf.axes):
        if ax.scaled and other != axis:
            x = x * _along(arrays.axes[other].scale, other, x.ndim).astype(x.dtype)
    return jnp.mean(x, axis=axis, keepdims=True)


def _init_leaf(leaf: LeafPlan, arrays: LeafArrays, fresh: Any) -> jax.Array:
    """A leaf with no source: identity (near-identity) kernel, neutral vector, fresh or zeros."""
    if leaf.init == "fresh":
        return jnp.asarray(fresh).astype(leaf.dtype)
    if leaf.kernel_axes is None:  # identity of a bias or norm vector, or zeros: the neutral value
        return jnp.full(leaf.shape, leaf.neutral, leaf.dtype)
    kernel = _identity_kernel(leaf, arrays.match)
    if leaf.init == "near_identity":
        kernel = kernel + NEAR_IDENTITY_NOISE * jnp.asarray(fresh, leaf.dtype)
    return kernel


def _identity_kernel(leaf: LeafPlan, match: jax.Array) -> jax.Array:
    """1 where the input unit's ID equals the output unit's, at the centre tap of spatial axes."""
    in_axis, out_axis = leaf.kernel_axes
    ndim = len(leaf.shape)
    kernel = _along(jnp.arange(leaf.shape[in_axis]), in_axis, ndim) == _along(match, out_axis, ndim)
    for axis, size in enumerate(leaf.shape):
        if axis not in leaf.kernel_axes:  # SAME padding centres on tap (size - 1) // 2
            kernel = kernel & _along(jnp.arange(size) == (size - 1) // 2, axis, ndim)
    return kernel.astype(leaf.dtype)
