"""Spaces: each space's unit count in a tree, its old and new IDs, and its role in the network.

Sizes come from the leaves: a plain axis entry gives its space's size; composite entries
(``Flat``, ``Grid``, ``Concat``) are solved for their one unknown space. Layouts stay free of
sizes on purpose: one layout serves both trees (``new_layout`` defaults to ``layout``, and a
layout traced from the old model is often reused for the new one), so sizes are read from each
tree, never from the layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flaxsurgery.layout import (
    Concat,
    Grid,
    as_grid,
    carries_units,
    leaf_entries,
    output_axis,
    output_spaces,
    spaces_in,
)
from flaxsurgery.units import show


def entry_size(entry, sizes) -> int | None:
    """Units along an axis entry, or None while a space in it has no known size."""
    entry = as_grid(entry)
    if isinstance(entry, int):
        return entry
    if isinstance(entry, (Concat, Grid)):
        parts = [entry_size(part, sizes) for part in entry.parts]
        if any(p is None for p in parts):
            return None
        return sum(parts) if isinstance(entry, Concat) else int(np.prod(parts, dtype=np.int64))
    return sizes.get(entry)


def _solve_size(entry, space, total, sizes) -> int | None:
    """The size of `space` (the entry's one unknown) that makes the entry `total` long."""
    lo, hi = 0, total
    while lo <= hi:  # an entry's size grows with each space's size
        mid = (lo + hi) // 2
        size = entry_size(entry, {**sizes, space: mid})
        if size == total:
            return mid
        lo, hi = (mid + 1, hi) if size < total else (lo, mid - 1)
    return None


def space_sizes(leaves, axes_of, given, which, problems) -> dict[str, int]:
    """Each space's unit count, checked to agree on every axis that carries it.

    Plain entries give sizes directly; then given IDs; then composite entries (Flat, Grid,
    Concat) are solved for their one unknown space, repeatedly.
    """
    sizes, seen_at, composite = {}, {}, []
    for path, axes in axes_of.items():
        shape = np.shape(leaves[path])
        for axis, spec in enumerate(axes):
            if not carries_units(spec):
                continue
            where = f"{path!r} axis {axis}"
            if not isinstance(spec, str):
                composite.append((where, spec, shape[axis]))
            elif spec in sizes and sizes[spec] != shape[axis]:
                problems.append(f"space {spec!r} has {sizes[spec]} {which} units at {seen_at[spec]}, "
                                f"but {shape[axis]} at {where}")
            else:
                sizes.setdefault(spec, shape[axis])
                seen_at.setdefault(spec, where)
    for name, unit_ids in given.items():
        if unit_ids is not None and name not in sizes and any(name in spaces_in(spec) for _, spec, _ in composite):
            sizes[name] = len(unit_ids)
    while composite:
        unsolved = []
        for where, spec, total in composite:
            unknown = sorted({s for s in spaces_in(spec) if s not in sizes})
            if len(unknown) == 1:
                solved = _solve_size(spec, unknown[0], total, sizes)
                if solved is None:
                    problems.append(f"{which} leaf {where}: size {total} fits no size of space "
                                    f"{unknown[0]!r} in {spec!r}")
                    continue
                sizes[unknown[0]] = solved
                seen_at[unknown[0]] = where
            elif unknown:
                unsolved.append((where, spec, total))
            elif entry_size(spec, sizes) != total:
                problems.append(f"{which} leaf {where}: size {total}, but {spec!r} has "
                                f"{entry_size(spec, sizes)} units ({', '.join(f'{s!r}: {sizes[s]}' for s in dict.fromkeys(spaces_in(spec)))})")
        if len(unsolved) == len(composite):
            for where, spec, _ in unsolved:
                unknown = sorted({s for s in spaces_in(spec) if s not in sizes})
                problems.append(f"{which} leaf {where}: cannot tell the sizes of spaces {unknown} apart in "
                                f"{spec!r}; give their IDs in spaces=")
            break
        composite = unsolved
    return sizes


def space_ids(given, named, old_sizes, new_sizes, problems) -> dict[str, tuple[tuple, tuple]]:
    """Old and new unit IDs of every space: as given, else by position."""
    ids = {}
    for name in sorted(set(old_sizes) | set(new_sizes), key=str):
        ids[name] = (tuple(range(old_sizes.get(name, 0))), tuple(range(new_sizes.get(name, 0))))
    for name in named:
        if name not in ids:
            problems.append(f"spaces names unknown space {show(name)}; the layouts' spaces are "
                            f"{sorted(ids, key=str)}")
    for name, pair in given.items():
        if name not in ids:
            continue
        both = []
        for which, unit_ids, sizes in (("old", pair[0], old_sizes), ("new", pair[1], new_sizes)):
            if unit_ids is not None and name in sizes and len(unit_ids) != sizes[name]:
                problems.append(f"space {name!r}: {len(unit_ids)} {which} IDs {show(list(unit_ids))} "
                                f"but the {which} parameters have {sizes[name]} units")
            both.append(unit_ids if unit_ids is not None and name in sizes else ids[name][len(both)])
        ids[name] = tuple(both)
    return ids


def roles_of(layout: Mapping) -> dict[str, str]:
    """Each space's role in a layout: input, hidden or output."""
    return roles_by_axis(leaf_entries(layout), output_spaces(layout))


def roles_by_axis(axes_of, outputs: frozenset = frozenset()) -> dict[str, str]:
    """A space's role: the model's output (listed in OUTPUTS) -> output; else only on input axes
    -> input, only on output axes -> output, else hidden."""
    seen: dict[str, set] = {}
    for axes in axes_of.values():
        out = output_axis(axes)
        for axis, spec in enumerate(axes):
            for name in spaces_in(spec):
                seen.setdefault(name, set()).add("output" if axis == out else "input")
    roles = {name: roles.pop() if len(roles) == 1 else "hidden" for name, roles in seen.items()}
    return {**roles, **{name: "output" for name in outputs if name in roles}}
