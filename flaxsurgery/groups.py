"""Parts of a plan: apply it a few leaves at a time.

Every new leaf needs only its source leaf (and its fresh leaf, where a rule takes fresh values),
so a plan splits into independent sub-plans. Out-of-core checkpoint surgery applies one group of
leaves at a time and never holds the whole model. Host side, NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from flaxsurgery.plans import LeafPlan, Plan


def subplan(plan: Plan, paths: Iterable[str]) -> Plan:
    """The part of `plan` that makes the new leaves `paths`.

    The sub-plan's trees are flat dicts keyed by leaf path: its old tree is
    ``{source path: old leaf}`` for the sources those leaves need, its new (and fresh) tree
    ``{new path: leaf}``. Apply it with [`flaxsurgery.transplant`][flaxsurgery.transplant.transplant] as any plan.

    Args:
      plan: a plan from [`flaxsurgery.plan`][flaxsurgery.plan].
      paths: new leaf paths of `plan`.

    Returns:
      A [`Plan`][flaxsurgery.Plan] over those leaves only.

    Raises:
      ValueError: if a path is not a new leaf of `plan`.

    >>> import flaxsurgery as fs
    >>> old = {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}
    >>> new = {"kernel": np.ones((2, 4), np.float32), "bias": np.zeros(4, np.float32)}
    >>> layout = {"kernel": (None, "h"), "bias": ("h",)}
    >>> p = fs.plan(old, new, layout, spaces={"h": (3, 4)}, rules={"h": fs.zeros()})
    >>> part = subplan(p, ["bias"])
    >>> fs.transplant({"bias": old["bias"] + 2}, part)["bias"]
    Array([2., 2., 2., 0.], dtype=float32)
    """
    return plan.restricted(paths)


def leaf_bytes(leaf: LeafPlan) -> int:
    """Bytes of one new leaf."""
    return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def leaf_groups(plan: Plan, max_bytes: int) -> Iterator[list[LeafPlan]]:
    """The plan's new leaves in groups of about `max_bytes` (new plus source bytes) each.

    A group closes once it holds `max_bytes`, so it never exceeds `max_bytes` plus one leaf (and
    its source). Leaves come in plan order, so that neighbours (a layer's kernel and bias) share a
    group.

    >>> import flaxsurgery as fs
    >>> tree = {"a": np.ones(100, np.float32), "b": np.ones(100, np.float32), "c": np.ones(10, np.float32)}
    >>> p = fs.plan(tree, tree, {})
    >>> [[leaf.path for leaf in group] for group in leaf_groups(p, 1000)]
    [['a', 'b'], ['c']]
    """
    old_bytes = {path: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                 for path, (shape, dtype) in plan.old_leaves.items()}
    group, size = [], 0
    for leaf in plan.leaves:
        group.append(leaf)
        size += leaf_bytes(leaf) + old_bytes.get(leaf.source, 0)
        if size >= max_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group
