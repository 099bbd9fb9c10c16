"""Applying a plan: pure ``jax.numpy`` gathers and selects, jit- and vmap-able.

Per leaf: ``jnp.take`` along each axis whose units changed (clipped indices), a per-unit scale or
offset where a rule asks for one, then ``jnp.where(index < 0, fill, gathered)`` per axis. There is
no Python loop over units; the loop over leaves runs once, at trace time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.init import NEAR_IDENTITY_NOISE
from flaxsurgery.paths import flatten
from flaxsurgery.spec import LeafPlan, Plan


def transplant(old_tree: Any, plan: Plan, fresh_tree: Any | None = None) -> Any:
    """Moves what `old_tree` learned into the new architecture, as `plan` says.

    Pure: the caller's trees are not changed. Under ``jax.jit`` it compiles once per plan and
    shapes; under ``jax.vmap`` it transplants a stacked population in one call.

    Args:
      old_tree: the old parameters (or any tree shaped like them: a target network, an EMA copy).
      plan: from :func:`flaxsurgery.plan`.
      fresh_tree: the new network's own initialisation, where rules ``fresh`` and
        ``near_identity`` take their values; may be None when no rule needs it.

    Returns:
      A tree with the new network's structure.

    Raises:
      ValueError: if a tree does not match the plan (naming every leaf that differs), or if the
        plan needs fresh values and `fresh_tree` is None.

    What is preserved is the plan's: see ``plan.report()`` and :mod:`flaxsurgery.init`.

    >>> import flaxsurgery as fs
    >>> old = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    >>> p = fs.plan(old, {"w": np.zeros((2, 4), np.float32)}, {"w": ("obs", "act")},
    ...             spaces={"act": (["a", "b", "c"], ["c", "a", "b", "d"])})
    >>> fs.transplant(old, p)["w"]
    Array([[2., 0., 1., 1.],
           [5., 3., 4., 4.]], dtype=float32)
    """
    old_leaves, _ = flatten(old_tree)
    _check_leaves(old_leaves, {p: (s, d) for p, s, d in plan.old_shapes}, "old_tree")
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
        _leaf(leaf, arrays, old_leaves.get(leaf.source), fresh_leaves.get(leaf.path))
        for leaf, arrays in zip(plan.leaves, plan.arrays)
    ]
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def transplant_state(old_state: Any, plan: Plan, fresh_state: Any, *, reset_count: bool = False) -> Any:
    """Transplants optimizer state (optax) with the parameters' plan.

    Every subtree shaped like the old parameters (Adam's ``mu`` and ``nu``, a momentum trace) is
    transplanted with every new entry zero, so a new unit starts with no momentum. Other leaves
    (``count``) are kept from `old_state`, or taken from `fresh_state` with ``reset_count=True``
    (resetting Adam's bias correction).

    Args:
      old_state: the optimizer state of the old parameters.
      plan: the parameters' plan.
      fresh_state: ``optimizer.init(new_params)``: gives the new state's structure.
      reset_count: take the non-parameter leaves from `fresh_state`.

    Returns:
      The optimizer state for the new parameters.
    """
    zero_plan = plan.for_state()

    def like(treedef):
        return lambda node: jax.tree_util.tree_structure(node) == treedef

    old_parts, _ = jax.tree_util.tree_flatten(old_state, is_leaf=like(plan.old_treedef))
    fresh_parts, outer = jax.tree_util.tree_flatten(fresh_state, is_leaf=like(plan.new_treedef))
    if len(old_parts) != len(fresh_parts):
        raise ValueError(f"old_state has {len(old_parts)} parts (parameter-shaped subtrees and other "
                         f"leaves) but fresh_state has {len(fresh_parts)}: are they the same optimizer's?")
    is_params = like(plan.old_treedef)
    new_parts = [
        transplant(old, zero_plan) if is_params(old) else (fresh if reset_count else old)
        for old, fresh in zip(old_parts, fresh_parts)
    ]
    return jax.tree_util.tree_unflatten(outer, new_parts)


def _check_leaves(leaves: dict, expected: dict, name: str) -> None:
    problems = [f"{name} lacks leaf {p!r}" for p in expected if p not in leaves]
    problems += [f"{name} has leaf {p!r}, which the plan does not know" for p in leaves if p not in expected]
    for path, leaf in leaves.items():
        if path in expected:
            shape, _ = expected[path]
            if tuple(np.shape(leaf)) != shape:
                problems.append(f"{name} leaf {path!r} has shape {tuple(np.shape(leaf))}, the plan expects {shape}")
    if problems:
        raise ValueError(f"{name} does not match the plan:\n  - " + "\n  - ".join(problems))


def _along(vector: jax.Array, axis: int, ndim: int) -> jax.Array:
    """`vector` shaped to broadcast along `axis` of an `ndim`-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return jnp.reshape(vector, shape)


def _leaf(leaf: LeafPlan, arrays: dict, old: Any, fresh: Any) -> jax.Array:
    if leaf.init != "gather":
        return _init_leaf(leaf, arrays, fresh)
    ndim = len(leaf.shape)
    x = _gather(jnp.asarray(old), leaf, arrays)
    for axis, ax in enumerate(leaf.axes):
        if ax.scaled:
            x = x * _along(arrays[f"scale{axis}"], axis, ndim).astype(x.dtype)
    for axis in leaf.fill_order():
        fills = leaf.axes[axis].fills
        for i, kind in enumerate(fills):
            new = arrays[f"src{axis}"] < 0 if len(fills) == 1 else arrays[f"kind{axis}"] == i
            x = jnp.where(_along(new, axis, ndim), _fill(kind, leaf, axis, arrays, old, fresh), x)
    for axis, ax in enumerate(leaf.axes):
        if ax.offset:  # after the fills: a mean-filled bias gets its margin too
            x = x + _along(arrays[f"offset{axis}"], axis, ndim).astype(x.dtype)
    return x.astype(leaf.dtype)


def _gather(x: jax.Array, leaf: LeafPlan, arrays: dict, skip: int | None = None) -> jax.Array:
    """`x` gathered along every axis that has an index array, except `skip`."""
    axes = [a for a, ax in enumerate(leaf.axes) if ax.gather and a != skip]
    if not axes:
        return x
    for axis in axes:
        kept = leaf.axes[axis].prefix
        if kept is None:
            x = jnp.take(x, arrays[f"src{axis}"], axis=axis, mode="clip")
        else:  # old units in order, new ones appended: a slice and a pad
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, leaf.shape[axis] - kept)
            x = jnp.pad(jax.lax.slice_in_dim(x, 0, kept, axis=axis), pad)
    return x


def _fill(kind: str, leaf: LeafPlan, axis: int, arrays: dict, old: Any, fresh: Any) -> Any:
    """Values of fill `kind` for new entries along `axis`, broadcastable to the leaf."""
    if kind == "fresh":
        return fresh
    if kind == "zeros":
        return jnp.asarray(leaf.neutral, leaf.dtype)
    if kind == "zero":
        return jnp.asarray(0, leaf.dtype)
    # mean: over the old units of this axis, the other axes gathered as usual.
    return jnp.mean(_gather(jnp.asarray(old), leaf, arrays, skip=axis), axis=axis, keepdims=True)


def _init_leaf(leaf: LeafPlan, arrays: dict, fresh: Any) -> jax.Array:
    """A leaf with no source: identity (near-identity) kernel, neutral vector, fresh or zeros."""
    if leaf.init == "fresh":
        return jnp.asarray(fresh).astype(leaf.dtype)
    if leaf.init == "zero":
        return jnp.zeros(leaf.shape, leaf.dtype)
    if leaf.kernel_axes is None:  # identity of a bias or norm vector, or zeros: the neutral value
        return jnp.full(leaf.shape, leaf.neutral, leaf.dtype)
    kernel = _identity_kernel(leaf, arrays["match"])
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
