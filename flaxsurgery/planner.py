"""Planning: what the host computes once, from layouts, unit IDs, a layer map and init rules.

Everything here is NumPy on the host. [`plan`][flaxsurgery.plan] checks the arguments
(`flaxsurgery.checks`), finds each space's size, IDs and role (`flaxsurgery.spaces`),
chooses each space's rule and each new leaf's source (here), plans every leaf
(`flaxsurgery.leaves`), derives what the plan preserves (`flaxsurgery.claims`) and
returns a [`Plan`][flaxsurgery.Plan]; applying it ([`flaxsurgery.transplant`][flaxsurgery.transplant.transplant]) is
pure ``jax.numpy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.checks import checked_spec, full_names, given_ids, resolve_layout, show
from flaxsurgery.claims import (
    init_claim,
    output_margins,
    resolve_margins,
    self_paired,
    space_facts,
    space_info,
    summarise_layer,
)
from flaxsurgery.layout import (
    activations_of,
    carries_units,
    mixing_spaces,
    output_axis,
    output_spaces,
    spaces_in,
)
from flaxsurgery.leaves import Context, gather_leaf, init_leaf, read_only
from flaxsurgery.paths import flatten, is_under, layer_of, leaf_name
from flaxsurgery.plans import Plan
from flaxsurgery.spaces import roles_by_axis, space_ids, space_sizes
from flaxsurgery.spec import Spec
from flaxsurgery.units import Problems

TITLE = "the transplant spec does not fit the parameters"


def plan(old_tree: Any, new_tree: Any, spec: Spec | Mapping | None = None, **options: Any) -> Plan:
    """Computes, on the host, how every leaf of `new_tree` is made from `old_tree`.

    Args:
      old_tree: the trained parameters (or any tree of arrays / ``jax.ShapeDtypeStruct``).
      new_tree: the new network's parameters or their shapes (``jax.eval_shape(model.init, ...)``).
      spec: a [`Spec`][flaxsurgery.Spec] (every option at once), or the old tree's layout (see
        `flaxsurgery.layout`).
      **options: any of [`Spec`][flaxsurgery.Spec]'s fields, in place of the spec's: ``new_layout``,
        ``spaces``, ``layer_map``, ``rules``, ``preset``, ``leaf_inits``, ``drop``, ``neutral``.

    Returns:
      A [`Plan`][flaxsurgery.Plan].

    Raises:
      SurgeryError: a ValueError listing every problem at once (leaf path, axis, space, IDs).
      TypeError: for an option that is not one of Spec's fields.

    >>> old = {"Dense_0": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    >>> new = {"Dense_0": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    >>> layout = {"Dense_0/kernel": ("obs", "h"), "Dense_0/bias": ("h",)}
    >>> p = plan(old, new, layout, spaces={"obs": (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])})
    >>> p.index("obs")
    array([-1,  0,  1, -1], dtype=int32)
    """
    spec = Spec.of(spec, **options)
    problems = Problems()
    args = checked_spec(spec, old_tree, new_tree, problems)
    problems.check(TITLE)
    old_leaves, old_treedef = flatten(old_tree)
    new_leaves, new_treedef = flatten(new_tree)
    args = full_names(args, old_leaves, new_leaves)
    old_axes = resolve_layout(old_leaves, args.layout, "old", problems)
    new_axes = resolve_layout(new_leaves, args.new_layout, "new", problems)
    mixing = mixing_spaces(args.layout) | mixing_spaces(args.new_layout)
    given = given_ids(args.spaces, problems)
    old_sizes = space_sizes(old_leaves, old_axes, {k: v[0] for k, v in given.items()}, "old", problems)
    new_sizes = space_sizes(new_leaves, new_axes, {k: v[1] for k, v in given.items()}, "new", problems)
    ids = space_ids(given, set(args.spaces), old_sizes, new_sizes, problems)
    old_roles = roles_by_axis(old_axes, output_spaces(args.layout))
    new_roles = roles_by_axis(new_axes, output_spaces(args.new_layout))
    roles = {**old_roles, **new_roles}
    preset_rules = rules_lib.PRESETS[args.preset]
    chosen = _space_rules(args.rules, roles, preset_rules, ids, problems)
    margins = output_margins(old_leaves, old_axes, roles, activations_of(args.layout))
    chosen = resolve_margins(chosen, margins)
    sources = _leaf_sources(old_leaves, new_leaves, args.layer_map, args.leaf_inits, args.drop, problems)
    _check_pairing(sources, args.layer_map, old_axes, new_axes, old_roles, new_roles, problems)

    ctx = Context(ids, chosen, problems, args.neutral)
    leaf_plans, arrays, new_layer_leaves = _leaf_plans(new_leaves, old_leaves, new_axes, old_axes, sources,
                                                       args.leaf_inits, preset_rules.layer, ctx)
    # What the plan preserves, derived from the finished leaf plans and the layouts.
    input_spaces = {name for name, role in new_roles.items() if role == "input"}
    layer_inits, layer_notes = _layer_inits(new_layer_leaves, _dropped_layers(old_leaves, sources, args.drop),
                                            self_paired(sources, old_axes, new_axes),
                                            activations_of(args.new_layout), input_spaces)
    facts = space_facts(leaf_plans, new_axes)
    infos = tuple(
        space_info(name, ids[name], roles[name], chosen[name], name in old_sizes, name in mixing,
                   facts, margins)
        for name in sorted(ids, key=str)
    )
    problems.check(TITLE)
    return Plan(
        leaves=tuple(leaf_plans),
        arrays=tuple(arrays),
        old_shapes=tuple((p, tuple(np.shape(x)), np.dtype(x.dtype)) for p, x in old_leaves.items()),
        old_treedef=old_treedef,
        new_treedef=new_treedef,
        spaces=infos,
        layer_inits=layer_inits,
        layer_notes=layer_notes,
    )


def _leaf_plans(new_leaves, old_leaves, new_axes, old_axes, sources, leaf_inits, layer_init, ctx):
    """Every new leaf's plan and arrays, in the new tree's order; and the leaves that have no
    source (a new layer's), with their arrays and axes."""
    leaf_plans, arrays, new_layer_leaves = [], [], []
    for path, new in new_leaves.items():
        source = sources[path]
        entries = new_axes[path] + (old_axes[source] if source else ())
        if any(name not in ctx.ids for entry in entries for name in spaces_in(entry)):
            continue  # a space without a known size: reported already, the plan is not built
        if source is None:
            leaf, arr = init_leaf(path, new, new_axes[path], leaf_inits.get(path, layer_init), ctx)
            new_layer_leaves.append((leaf, arr, new_axes[path]))
        else:
            leaf, arr = gather_leaf(path, new, new_axes[path], source, old_leaves[source], old_axes[source], ctx)
        leaf_plans.append(leaf)
        arrays.append(read_only(arr))
    return leaf_plans, arrays, new_layer_leaves


def _layer_inits(new_layer_leaves, dropped_layers, paired, activations, input_spaces) -> tuple:
    """Per new or dropped layer: its init and what it preserves (see Plan.layer_inits), and
    the reasons (see Plan.layer_notes)."""
    inits: dict = {layer: {("dropped", "none", "")} for layer in dropped_layers}
    for leaf, arr, axes in new_layer_leaves:
        out = output_axis(axes)
        writes_old = out is not None and any(s in paired for s in spaces_in(axes[out]))
        claim = init_claim(leaf, arr, writes_old, axes, activations, input_spaces)
        inits.setdefault(layer_of(leaf.path), set()).add((leaf.init, *claim))
    summaries = [summarise_layer(layer, found) for layer, found in sorted(inits.items())]
    notes = tuple((summary[0], why) for summary, why in summaries if why)
    return tuple(summary for summary, _ in summaries), notes


def _space_rules(given, roles, preset, ids, problems) -> dict[str, rules_lib.Rule]:
    """The rule of every space: given, else the preset's for its role; sources checked."""
    for name, rule in given.items():
        if name not in roles:
            problems.append(f"rules names unknown space {show(name)}")
        elif not isinstance(rule, rules_lib.Rule):
            problems.append(f"rules[{name!r}] must be a flaxsurgery Rule (fs.zeros(), fs.mean(), ...), got {show(rule)}")
    chosen = {}
    for name, role in roles.items():
        rule = given.get(name)
        chosen[name] = rule if isinstance(rule, rules_lib.Rule) else preset.rule_for(role)
    for name, rule in chosen.items():
        if name in ids:
            problems.extend(rule.problems(name, ids[name]))
    return chosen


def _leaf_sources(old_leaves, new_leaves, layer_map, leaf_inits, drop, problems) -> dict:
    """Each new leaf's old source leaf (or None); checks the layer map and what is dropped."""
    old_layers = {layer_of(p) for p in old_leaves}
    new_layers = {layer_of(p) for p in new_leaves}
    for new_layer, old_layer in layer_map.items():
        if new_layer not in new_layers:
            problems.append(f"layer_map names new layer {show(new_layer)}, which the new tree lacks")
        if old_layer is not None and old_layer not in old_layers:
            problems.append(f"layer_map maps {show(new_layer)} to old layer {show(old_layer)}, which the old tree lacks")
    for path in leaf_inits:
        if path not in new_leaves:
            problems.append(f"leaf_inits names leaf {show(path)}, which the new tree lacks")
        elif leaf_inits[path] not in rules_lib.LAYER_INITS:
            problems.append(f"leaf_inits[{path!r}] = {show(leaf_inits[path])}; choose one of {rules_lib.LAYER_INITS}")

    sources, used = {}, set()
    for path in new_leaves:
        layer = layer_of(path)
        old_layer = layer_map.get(layer, layer if layer in old_layers else None)
        candidate = f"{old_layer}/{leaf_name(path)}" if old_layer else leaf_name(path)
        found = old_layer is not None and candidate in old_leaves
        if found:
            used.add(candidate)
        sources[path] = candidate if found and path not in leaf_inits else None

    def dropped_explicitly(path: str) -> bool:
        return any(is_under(path, d) for d in drop)

    for d in drop:
        if not any(is_under(p, d) for p in old_leaves):
            problems.append(f"drop names {d!r}, which matches no old leaf")
    lost = [p for p in old_leaves if p not in used and not dropped_explicitly(p)]
    if lost:
        problems.append(f"old leaves {show(lost)} would be dropped: no new leaf takes from them; map "
                        f"their layer in layer_map, or list them (or their layer) in drop=")
    return sources


def _dropped_layers(old_leaves, sources, drop) -> list[str]:
    """Old layers none of whose leaves a new leaf takes from (they were listed in `drop`)."""
    used = {layer_of(s) for s in sources.values() if s is not None}
    return sorted({layer_of(p) for p in old_leaves if layer_of(p) not in used
                   and any(is_under(p, d) for d in drop)})


def _check_pairing(sources, layer_map, old_axes, new_axes, old_roles, new_roles, problems) -> None:
    """A layer paired by its name alone must play the same part in both networks.

    Linen names layers by position, so inserting a layer renames the ones after it: the old
    output layer ``Dense_1`` and the new hidden ``Dense_1`` share a name, not a job.
    """
    suspicious = {}
    for path, source in sources.items():
        if source is None or layer_of(path) in layer_map:
            continue
        for axis, (old_spec, new_spec) in enumerate(zip(old_axes[source], new_axes[path])):
            old_names, new_names = spaces_in(old_spec), spaces_in(new_spec)
            old_parts = {old_roles.get(s) for s in old_names} & {"input", "output"}
            new_parts = {new_roles.get(s) for s in new_names} & {"input", "output"}
            if old_parts != new_parts:
                suspicious.setdefault(layer_of(path), (axis, old_spec, new_spec, old_parts, new_parts))
    for layer, (axis, old_spec, new_spec, old_parts, new_parts) in sorted(suspicious.items()):
        def part(parts, spec):
            return f"the network's {'/'.join(sorted(parts))} space {spec!r}" if parts else f"hidden space {spec!r}"
        hint = _layer_map_hint(old_axes, new_axes, old_roles, new_roles)
        problems.append(
            f"new layer {layer!r} takes its weights from the old layer of the same name, but axis {axis} "
            f"is {part(old_parts, old_spec)} in the old network and {part(new_parts, new_spec)} in the "
            f"new one: the layers were probably renamed by an inserted or removed layer; say how they "
            f"pair with layer_map{hint}")


def _layer_map_hint(old_axes, new_axes, old_roles, new_roles) -> str:
    """A likely layer map: the layers that produce the network's output, paired."""
    def producer(axes_of, roles):
        for path, axes in axes_of.items():
            out = output_axis(axes)
            if out is not None and len([a for a in axes if carries_units(a)]) > 1 and \
                    any(roles.get(s) == "output" for s in spaces_in(axes[out])):
                return layer_of(path)
        return None

    old_out, new_out = producer(old_axes, old_roles), producer(new_axes, new_roles)
    if old_out and new_out and old_out != new_out:
        renamed = f", {old_out!r}: None" if any(layer_of(p) == old_out for p in new_axes) else ""
        return (f" (for example {{{new_out!r}: {old_out!r}{renamed}}}), or confirm the pairing by "
                f"name with {{layer: layer}}")
    return " (confirm a pairing by name with {layer: layer})"
