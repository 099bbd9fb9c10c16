"""Input checks: a [`Spec`][flaxsurgery.Spec]'s options, unit IDs and layouts, each problem
a line of the one error that lists them all."""

from __future__ import annotations

import collections
from collections.abc import Hashable, Mapping
from typing import Any

import jax
import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.activations import KNOWN
from flaxsurgery.layout import ACTIVATIONS, MIXING, WINDOW, Concat, Flat, Grid, leaf_entries
from flaxsurgery.paths import layer_of, without_collection
from flaxsurgery.spec import Spec
from flaxsurgery.units import MAX_SHOWN, show


def checked_spec(spec: Spec, old_tree: Any, new_tree: Any, problems: list) -> Spec:
    """`spec` with every option as the type planning works with (dicts, tuples; the new layout
    defaulted to the old one); a problem for each option that is not."""

    def mapping(value, name, example):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            problems.append(f"{name} must be a mapping such as {example}, got {type(value).__name__} "
                            f"{show(value)}")
            return {}
        return dict(value)

    for name, tree in (("old_tree", old_tree), ("new_tree", new_tree)):
        with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
        if not with_path or any(not path for path, _ in with_path):
            problems.append(f"{name} must be a tree of named arrays (a dict such as "
                            f"{{'Dense_0': {{'kernel': ...}}}} or an NNX State), got "
                            f"{type(tree).__name__}: leaves need paths for the layout to name them")
    if spec.layout is None:
        problems.append("no layout: say which axes carry which space with the old tree's layout "
                        "(fs.trace_layout traces one; fs.surgery traces both models itself)")
    if not (isinstance(spec.preset, str) and spec.preset in rules_lib.PRESETS):
        problems.append(f"unknown preset {show(spec.preset)}; choose one of {sorted(rules_lib.PRESETS)}")
    drop = (spec.drop,) if isinstance(spec.drop, str) else spec.drop
    if not isinstance(drop, (list, tuple, set, frozenset)) or not all(isinstance(d, str) for d in drop):
        problems.append(f"drop must be a list of old leaf or layer paths, got {show(drop)}")
        drop = ()
    layer_map = mapping(spec.layer_map, "layer_map", "{'Dense_2': 'Dense_1', 'Dense_1': None}")
    for new_layer, old_layer in layer_map.items():
        if not isinstance(new_layer, str) or not (old_layer is None or isinstance(old_layer, str)):
            problems.append(f"layer_map entry {show(new_layer)}: {show(old_layer)} must map a new "
                            f"layer path to an old layer path or None")
    neutral = mapping(spec.neutral, "neutral", "{'gamma': 1.0}")
    for key, value in neutral.items():
        if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
            problems.append(f"neutral[{show(key)}] must be a number, got {show(value)}")
    layout_example = "{'params/Dense_0/kernel': ('obs', 'Dense_0')}"
    layout = mapping(spec.layout, "layout", layout_example)
    return Spec(
        layout=layout,
        new_layout=layout if spec.new_layout is None else mapping(spec.new_layout, "new_layout", layout_example),
        spaces=mapping(spec.spaces, "spaces", "{'obs': (['x', 'y'], ['x', 'y', 'z'])}"),
        layer_map=layer_map,
        rules=mapping(spec.rules, "rules", "{'out': fs.mean()}"),
        preset=spec.preset,
        leaf_inits=mapping(spec.leaf_inits, "leaf_inits", "{'params/Dense_1/kernel': 'fresh'}"),
        drop=tuple(drop),
        neutral=neutral,
    )


def _named(name: str, names: set) -> list[str]:
    """What a user's layer or leaf name stands for: itself where the tree has it, else the same
    name under each collection (``Dense_1`` -> ``params/Dense_1``, ``batch_stats/Dense_1``):
    spaces drop Linen's collection prefix, so layer names may drop it too."""
    if not isinstance(name, str) or name in names:
        return [name]
    return sorted(n for n in names if without_collection(n) == name) or [name]


def full_names(spec: Spec, old_leaves: dict, new_leaves: dict) -> Spec:
    """A checked spec's `layer_map`, `leaf_inits` and `drop` with every name as the trees write it."""
    old_layers = {layer_of(p) for p in old_leaves}
    new_layers = {layer_of(p) for p in new_leaves}
    old_prefixes = old_layers | set(old_leaves) | {layer_of(p) for p in old_layers}
    layer_map = {}
    for new_name, old_name in spec.layer_map.items():
        for new_layer in _named(new_name, new_layers):
            collection = new_layer[: len(new_layer) - len(new_name)] if new_layer != new_name else ""
            old_layer = old_name
            if isinstance(old_name, str) and old_name not in old_layers and collection + old_name in old_layers:
                old_layer = collection + old_name
            layer_map[new_layer] = old_layer
    leaf_inits = {full: init for path, init in spec.leaf_inits.items()
                  for full in _named(path, set(new_leaves))}
    drop = tuple(full for d in spec.drop for full in _named(d.rstrip("/"), old_prefixes))
    return spec.replace(layer_map=layer_map, leaf_inits=leaf_inits, drop=drop)


def _unit_ids(spec: Any, space: str, which: str, problems: list) -> tuple | None:
    """A space's unit IDs from an int count or a sequence (an array: its values); None on error."""
    where = f"{space}: {which} IDs"
    if isinstance(spec, bool) or spec is None:
        problems.append(f"{where}: expected an int count or a list of unit IDs, got {show(spec)}")
        return None
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):  # NumPy / JAX arrays, scalars
        try:
            array = np.asarray(spec)
        except Exception:  # noqa: BLE001 - an abstract array (ShapeDtypeStruct, tracer)
            problems.append(f"{where}: IDs must be concrete values, got {show(spec)}")
            return None
        if array.ndim == 0 and np.issubdtype(array.dtype, np.integer):
            spec = int(array)
        elif array.ndim == 1:
            return _hashable_ids(tuple(array.tolist()), space, which, problems)
        else:
            problems.append(f"{where}: an array of IDs must be 1-D, got shape {array.shape} "
                            f"dtype {array.dtype}")
            return None
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            problems.append(f"{where}: a negative unit count {spec}")
            return None
        return tuple(range(int(spec)))
    if isinstance(spec, (float, np.floating, str, bytes, Mapping, set, frozenset)):
        hint = {str: " (list('abc') if each character is an ID)", bytes: "",
                set: " (a set has no order: use a list)", frozenset: " (use a list)"}
        problems.append(f"{where}: expected an int count or a list of unit IDs, got "
                        f"{type(spec).__name__} {show(spec)}{hint.get(type(spec), '')}")
        return None
    try:
        unit_ids = tuple(spec)
    except TypeError:
        problems.append(f"{where}: expected an int count or a list of unit IDs, got "
                        f"{type(spec).__name__} {show(spec)}")
        return None
    unit_ids = tuple(np.asarray(u).item() if getattr(u, "shape", None) == () else u for u in unit_ids)
    return _hashable_ids(unit_ids, space, which, problems)


def _hashable_ids(unit_ids: tuple, space: str, which: str, problems: list) -> tuple | None:
    try:
        counts = collections.Counter(unit_ids)
    except TypeError:
        bad = [(i, u) for i, u in enumerate(unit_ids) if not isinstance(u, Hashable) or _unhashable(u)]
        shown = ", ".join(f"{show(u)} at position {i}" for i, u in bad[:MAX_SHOWN])
        problems.append(f"{space}: {which} IDs must be hashable (str, int, tuple, ...); got "
                        f"{type(bad[0][1]).__name__} IDs: {shown}")
        return None
    dupes = [u for u, n in counts.items() if n > 1]
    if dupes:
        problems.append(f"{space}: duplicate {which} IDs {show(dupes)}")
        return None
    return unit_ids


def _unhashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return True
    return False


def resolve_layout(leaves, layout, which, problems) -> dict[str, tuple]:
    """Every leaf's axes (all None where the layout omits it); checks entries and axis counts."""
    entries = leaf_entries(layout)
    mixing = layout.get(MIXING, ())
    if isinstance(mixing, str) or not isinstance(mixing, (list, tuple, set, frozenset)):
        problems.append(f"{which} layout's MIXING must list space names, got {show(mixing)}")
    activations = layout.get(ACTIVATIONS, {})
    if not isinstance(activations, Mapping) or any(a not in KNOWN for a in activations.values()):
        problems.append(f"{which} layout's ACTIVATIONS must map space names to one of "
                        f"{sorted(KNOWN)}, got {show(activations)}")
    for path in entries:
        if path not in leaves:
            problems.append(f"{which} layout names leaf {show(path)}, which the {which} tree lacks")
    resolved = {}
    for path, leaf in leaves.items():
        ndim = len(np.shape(leaf))
        axes = entries.get(path, (None,) * ndim)
        if not isinstance(axes, (tuple, list)) or len(axes) != ndim:
            problems.append(f"{which} leaf {path!r} has {ndim} axes {tuple(np.shape(leaf))}, "
                            f"but its layout gives {len(axes) if isinstance(axes, (tuple, list)) else 0}: "
                            f"{show(axes)}")
            axes = (None,) * ndim
        bad = [a for a in axes if not _valid_entry(a)]
        if bad:
            problems.append(f"{which} leaf {path!r}: layout entries must be a space name, None, "
                            f"WINDOW, Flat, Concat or Grid; got {show(bad)}")
            axes = (None,) * ndim
        resolved[path] = tuple(axes)
    return resolved


def _valid_entry(entry) -> bool:
    if entry is None or entry is WINDOW or isinstance(entry, str):
        return True
    if isinstance(entry, Flat):
        return isinstance(entry.space, str) and isinstance(entry.positions, int)
    if isinstance(entry, (Concat, Grid)):
        return all(isinstance(p, int) or _valid_entry(p) for p in entry.parts)
    return False


def given_ids(spaces: dict, problems: list) -> dict[str, tuple]:
    """``{space: (old IDs or None, new IDs or None)}`` for the spaces the user named."""
    given = {}
    for name, pair in spaces.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            problems.append(f"space {show(name)}: expected (old_ids, new_ids), got {show(pair)}")
            continue
        given[name] = (_unit_ids(pair[0], f"space {show(name)}", "old", problems),
                       _unit_ids(pair[1], f"space {show(name)}", "new", problems))
    return given
