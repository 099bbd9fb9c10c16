"""Naming: the inputs' names, and a layout entry with a predictable name for every class.

Spaces are named after what users know: an input's argument name, ``out`` for the outputs, the
first layer (in forward order) whose parameter outputs a hidden space, ``name[start:stop]`` for a
segment, ``name.i`` for a part a reshape splits off, and ``layer:axis`` for anything else.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax

from flaxsurgery.layout import WINDOW, AxisSpec, Concat, Flat, Grid
from flaxsurgery.paths import path_name
from flaxsurgery.trace.graph import Axis, AxisGraph

DEFAULT_INPUT = "obs"  # a Linen module's one input when its __call__ names none (nn.Sequential)


def _last_unit_axes(axes: list[Axis], g: AxisGraph, carrying) -> dict[str, int]:
    last = {}
    for a in axes:
        if g.find(a.node) in carrying:
            last[a.owner] = a.axis
    return last


class Namer:
    """Gives each unit-carrying class a predictable, unique name."""

    def __init__(self, g, carrying, inputs, outputs, producers, params, layer_of_leaf):
        self.g, self.carrying = g, carrying
        self.candidates: dict[int, list[str]] = {}
        for group in (inputs, outputs, producers):
            last = _last_unit_axes(group, g, carrying)
            for a in group:
                root = g.find(a.node)
                if root not in carrying:
                    continue
                owner = layer_of_leaf(a.owner) if group is producers else a.owner
                if group is producers:
                    if last.get(a.owner) != a.axis:
                        continue
                    name = owner
                else:
                    name = owner if last[a.owner] == a.axis else f"{owner}:{a.axis}"
                self.candidates.setdefault(root, []).append(name)
        self.fallback: dict[int, str] = {}
        for a in params:
            self.fallback.setdefault(g.find(a.node), f"{layer_of_leaf(a.owner)}:{a.axis}")
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()

    def name(self, root: int) -> str:
        """The name of `root`'s class: the first of its candidate names not yet taken."""
        root = self.g.find(root)
        if root in self.names:
            return self.names[root]
        options = list(self.candidates.get(root, []))
        part = self._part_name(root)
        if part is not None:
            options.append(part)
        if root in self.fallback:
            options.append(self.fallback[root])
        options.append(f"space_{root}")
        name = next((o for o in options if o not in self.taken), None)
        if name is None:
            k = 1
            while f"{options[0]}#{k}" in self.taken:
                k += 1
            name = f"{options[0]}#{k}"
        self.names[root] = name
        self.taken.add(name)
        return name

    def _part_name(self, root: int) -> str | None:
        """``parent[start:stop]`` for a segment of a concat, ``parent.i`` for a grid's part."""
        owner = self.g.part_of.get(root)
        if owner is None:
            for node, info in self.g.part_of.items():
                if self.g.find(node) == root:
                    owner = info
                    break
        if owner is None:
            return None
        parent, kind, index = owner
        base = self.name(parent)
        if kind != "concat":
            return f"{base}.{index}"
        st = self.g.structure.get(self.g.find(parent))
        start = sum(self.g.size[self.g.find(p)] for p in st.parts[:index]) if st else 0
        return f"{base}[{start}:{start + self.g.size[root]}]"


def entry(g: AxisGraph, root: int, carrying, namer: Namer) -> AxisSpec:
    """The layout entry of `root`'s class: a space name, None, WINDOW, Concat, Flat or Grid."""
    root = g.find(root)
    if root not in carrying:
        return WINDOW if root in {g.find(w) for w in g.window} else None
    st = g.structure.get(root)
    if st is None:
        return namer.name(root)
    if st.kind == "concat":
        parts = []
        for p in st.parts:
            e = entry(g, p, carrying, namer)
            parts.extend(e.parts if isinstance(e, Concat) else [e])
        return Concat(tuple(parts))
    items: list = []
    for p in st.parts:
        e = entry(g, p, carrying, namer) if g.find(p) in carrying else g.size[g.find(p)]
        for item in _grid_items(e):
            if isinstance(item, int) and items and isinstance(items[-1], int):
                items[-1] *= item
            elif item != 1:
                items.append(item)
    if len(items) == 1:
        return items[0]
    if len(items) == 2 and isinstance(items[0], int) and isinstance(items[1], str):
        return Flat(items[1], items[0])
    return Grid(tuple(items))


def _grid_items(entry) -> list:
    """A grid part as a list of grid items: nested grids and Flat entries are spliced in."""
    if isinstance(entry, Grid):
        return list(entry.parts)
    if isinstance(entry, Flat):
        return [entry.positions, entry.space]
    return [entry]


def argument_names(fn: Callable, count: int, skip: int) -> list[str]:
    """Names of the sample inputs: the apply function's parameter names (a Linen module's
    ``__call__``'s for its ``apply``; ``obs`` for the one input of a module whose ``__call__``
    takes only ``*args``, as ``nn.Sequential``'s does), else ``arg{i}``."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__self__", None)
    if module is not None and callable(module) and target.__name__ == "apply":
        target, skip = type(module).__call__, 1  # Linen: names come from Module.__call__
        if count == 1 and _only_var_positional(target, skip):
            return [DEFAULT_INPUT]
    try:
        params = list(inspect.signature(target).parameters.values())[skip:]
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(count):
        p = params[i] if i < len(params) else None
        usable = p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        names.append(p.name if usable else f"arg{i}")
        if p is not None and p.kind == p.VAR_POSITIONAL:
            params = []
    return names


def _only_var_positional(fn: Callable, skip: int) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].kind == inspect.Parameter.VAR_POSITIONAL


def leaves_named(base: str, tree: Any) -> list[tuple[str, Any]]:
    """``(base/path, leaf)`` for every leaf of `tree` (``base`` alone for a bare array)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(f"{base}/{path_name(p)}" if p else base, leaf) for p, leaf in flat]


def collection_layer(has_collections: bool) -> Callable[[str], str]:
    """Leaf path -> its layer's name (Linen's collection prefix dropped where there is one)."""
    def layer(path: str) -> str:
        parts = path.split("/")
        if has_collections and len(parts) > 1:
            parts = parts[1:]
        return "/".join(parts[:-1]) or parts[-1]
    return layer
