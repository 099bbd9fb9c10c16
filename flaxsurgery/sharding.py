"""Transplant on sharded parameters: ``NamedSharding`` on a device mesh, one or many hosts.

Built on JAX's own machinery only: [`transplant_sharded`][flaxsurgery.sharding.transplant_sharded] runs [`flaxsurgery.transplant`][flaxsurgery.transplant.transplant]
under ``jax.jit`` with the new leaves' shardings as ``out_shardings``, so each device computes
its own shard of every new leaf. A general gather along a sharded axis (units permuted, or taken
from anywhere) would make XLA gather that axis whole; so each source leaf is first re-laid out
with that mesh axis moved onto an axis whose units stay in place (an all-to-all: every device
still holds one shard), and the result is laid out as the new leaf's sharding.
[`whole_leaf_gathers`][flaxsurgery.sharding.whole_leaf_gathers] reads the compiled HLO to check that no leaf is ever gathered whole.

Meshes must use ``AxisType.Auto`` axes (the default of ``jax.sharding.Mesh``; pass
``axis_types=(AxisType.Auto,) * n`` to ``jax.make_mesh``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flaxsurgery.paths import flatten
from flaxsurgery.plans import LeafPlan, Plan
from flaxsurgery.transplant import transplant


def _mesh_parts(mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return int(np.prod([dict(mesh.shape)[n] for n in names if n is not None], dtype=np.int64))


def source_sharding(leaf: LeafPlan | None, sharding: jax.sharding.Sharding, old_shape: tuple) -> jax.sharding.Sharding:
    """Where a source leaf lives while `leaf` (the new leaf it feeds) is computed.

    The new leaf's partitioning on the same mesh, with two changes: an axis the mesh does not
    divide at the old size is left whole, and the mesh axes of an axis gathered by a general
    index (permuted units, units from anywhere) move to an axis whose units stay in place, or
    else to an axis that is only cropped or padded; where there is none (a permuted vector)
    they stay, and XLA gathers that vector.

    Args:
      leaf: the new leaf's plan (None: no axis is gathered).
      sharding: the new leaf's sharding.
      old_shape: the source leaf's shape.

    Returns:
      A sharding for the source leaf (the same object when `sharding` is not a NamedSharding).
    """
    if not isinstance(sharding, NamedSharding):
        return sharding
    mesh, ndim = sharding.mesh, len(old_shape)
    spec = list(tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec)))
    if len(spec) != ndim:  # the rank changed: nothing to keep
        return NamedSharding(mesh, PartitionSpec())
    spec = [e if e is None or size % _mesh_parts(mesh, e) == 0 else None for e, size in zip(spec, old_shape)]
    axes = leaf.axes if leaf is not None and leaf.init == "gather" else ()
    general = [i for i, ax in enumerate(axes) if ax.gather and ax.prefix is None]
    in_place = [i for i in range(ndim) if not (i < len(axes) and axes[i].gather)]
    cropped = [i for i, ax in enumerate(axes) if ax.gather and ax.prefix is not None]
    for i in general:
        if spec[i] is None:
            continue
        entry, spec[i] = spec[i], None
        free = [j for j in in_place + cropped if spec[j] is None and old_shape[j] % _mesh_parts(mesh, entry) == 0]
        spec[free[0] if free else i] = entry  # nowhere to go (a vector): XLA decides
    return NamedSharding(mesh, PartitionSpec(*spec))


def source_shardings(plan: Plan, shardings: Mapping[str, jax.sharding.Sharding]) -> dict[str, jax.sharding.Sharding]:
    """``{old leaf path: sharding}`` from ``{new leaf path: sharding}`` (see [`source_sharding`][flaxsurgery.sharding.source_sharding])."""
    return {leaf.source: source_sharding(leaf, shardings[leaf.path], plan.old_leaves[leaf.source][0])
            for leaf in plan.leaves if leaf.source is not None and leaf.path in shardings}


def tree_shardings(tree: Any) -> dict[str, jax.sharding.Sharding]:
    """``{leaf path: sharding}`` of a tree of ``jax.Array`` or ``jax.ShapeDtypeStruct``."""
    return {path: leaf.sharding for path, leaf in flatten(tree)[0].items()
            if getattr(leaf, "sharding", None) is not None}


def transplant_fn(plan: Plan, shardings: Mapping[str, jax.sharding.Sharding]):
    """A jitted ``fn(old_tree, fresh_tree) -> new tree`` that computes every new leaf in its
    sharding; ``fn.lower(old, fresh).compile().as_text()`` shows the collectives it uses."""
    missing = [leaf.path for leaf in plan.leaves if leaf.path not in shardings]
    if missing:
        raise ValueError(f"no sharding for new leaves {missing}: give every new leaf one (e.g. shard "
                         f"the fresh tree, or pass shardings={{path: NamedSharding}})")
    sources = source_shardings(plan, shardings)
    out = jax.tree_util.tree_unflatten(plan.new_treedef, [shardings[leaf.path] for leaf in plan.leaves])

    def run(old_tree, fresh_tree):
        leaves, treedef = flatten(old_tree)
        placed = [jax.lax.with_sharding_constraint(x, sources[p]) if p in sources else x for p, x in leaves.items()]
        return transplant(jax.tree_util.tree_unflatten(treedef, placed), plan, fresh_tree)

    return jax.jit(run, out_shardings=out)


def transplant_sharded(old_tree: Any, plan: Plan, fresh_tree: Any | None = None, *,
                       shardings: Mapping[str, jax.sharding.Sharding] | None = None) -> Any:
    """[`flaxsurgery.transplant`][flaxsurgery.transplant.transplant] on sharded trees: every new leaf in its sharding.

    Args:
      old_tree: the old parameters, sharded or not.
      plan: from [`flaxsurgery.plan`][flaxsurgery.plan].
      fresh_tree: the new network's parameters, sharded as the result should be.
      shardings: ``{new leaf path: Sharding}``; default: `fresh_tree`'s shardings.

    Returns:
      The new tree, each leaf with its sharding; no leaf is gathered whole on any device (for
      leaves with an axis the shard can stay on; see [`whole_leaf_gathers`][flaxsurgery.sharding.whole_leaf_gathers]).
    """
    if shardings is None:
        if fresh_tree is None:
            raise ValueError("pass fresh_tree (sharded as the result should be) or shardings={path: Sharding}")
        shardings = tree_shardings(fresh_tree)
    return transplant_fn(plan, shardings)(old_tree, fresh_tree)


_ALL_GATHER = re.compile(r"=\s*(\w+)\[([\d,]*)\]\S*\s+all-gather(?:-start)?\(")


_HLO_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64", "int32": "s32",
              "int64": "s64", "int8": "s8", "uint8": "u8", "uint32": "u32", "bool": "pred"}


def whole_leaf_gathers(hlo_text: str, plan: Plan) -> list[str]:
    """The all-gathers in compiled HLO that put a whole leaf on one device.

    A leaf counts as whole along an axis at its old or its new size (so an intermediate that is
    padded along one axis and complete along another counts too); the element type must match.

    Args:
      hlo_text: ``transplant_fn(plan, shardings).lower(old, fresh).compile().as_text()``.
      plan: the plan being applied.

    Returns:
      The offending HLO lines (empty: no leaf is ever gathered whole).
    """
    old = plan.old_leaves
    whole = {(_HLO_TYPES.get(dtype.name, ""), tuple(shape)) for shape, dtype in old.values()}
    for leaf in plan.leaves:
        kind = _HLO_TYPES.get(np.dtype(leaf.dtype).name, "")
        source = old.get(leaf.source, ((), None))[0]
        sizes = zip(source, leaf.shape) if len(source) == len(leaf.shape) else ((d,) for d in leaf.shape)
        whole |= {(kind, dims) for dims in itertools.product(*sizes)}
    found = []
    for line in hlo_text.splitlines():
        match = _ALL_GATHER.search(line)
        if match:
            dims = tuple(int(d) for d in match.group(2).split(",") if d)
            if (match.group(1), dims) in whole:
                found.append(line.strip())
    return found


def restore_sharded(path: Any, shapes: Any, shardings: Any) -> Any:
    """Restores an orbax checkpoint straight into `shardings`: each device reads its own shard.

    Args:
      path: the orbax checkpoint.
      shapes: its tree of ``jax.ShapeDtypeStruct`` ([`flaxsurgery.checkpoint.checkpoint_shapes`][flaxsurgery.checkpoint.checkpoint_shapes]).
      shardings: a matching tree of shardings.
    """
    import orbax.checkpoint.experimental.v1 as ocp

    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return ocp.load(path, abstract)
