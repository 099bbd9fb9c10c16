"""What a plan preserves, derived in one place from what it does on the given trees: the rule of
each space, where its offsets land, which leaves carry its units, whether the forward pass mixes
them (the layout's MIXING), and what each new layer's init keeps (after the activation the
layout's ACTIVATIONS says follows it)."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.activations import KNOWN, identity_layer_claim
from flaxsurgery.layout import carries_units, output_axis, space_of, spaces_in
from flaxsurgery.leaves import BIAS_NAMES
from flaxsurgery.paths import leaf_name
from flaxsurgery.plans import LeafArrays, LeafPlan, SpaceInfo
from flaxsurgery.rules import PRESERVED


def space_info(name, both_ids, role, rule, in_old, mixing, facts, margins) -> SpaceInfo:
    """A space's info with what the plan preserves of it, derived from what the plan does."""
    old_ids, new_ids = both_ids
    info = SpaceInfo(name, old_ids, new_ids, role, rule, in_old)
    if not in_old:
        return info  # a new layer's space: its init decides, see Plan.layer_inits
    index = info.index()
    added = int((index < 0).sum())
    removed = len(old_ids) - (len(new_ids) - added)
    preserves, why = "function", ""
    if removed:
        preserves, why = "none", f"{removed} old units removed: their contribution is lost"
    elif added and mixing:
        preserves, why = "none", ("the forward pass mixes this space's units (a norm's statistics, "
                                  "a softmax): new units change what the old ones compute")
    elif added:
        preserves, why = _rule_preserves(role, rule, facts.get(name, SpaceFacts()), margins.get(name))
    return dataclasses.replace(info, preserves=preserves, why=why)


def _rule_preserves(role, rule, facts, margin) -> tuple[str, str]:
    """What `rule` keeps for a space's new units, given what the plan does to them (`facts`)
    and the margin the old outputs need, and why not more."""
    nominal, why = rule.preserves(role)
    if role != "output" or nominal not in ("greedy", "policy"):
        return nominal, why
    if facts.input_leaves:
        return "none", (f"leaves {sorted(facts.input_leaves)} also carry the output units on an input "
                        f"axis (tied weights), where a new unit's values are not the mean or copy "
                        f"its margin relies on")
    if facts.other_leaves:
        return "none", (f"leaves {sorted(facts.other_leaves)} carry the output units but are neither "
                        f"a kernel nor a bias, so the new actions' values are not a mean/copy of old ones")
    dtypes = "/".join(sorted(str(d) for d in facts.dtypes))
    if margin is None or margin.needed is None:
        return "none", ("the old tree's values are not known (shapes only, or traced under jax.jit), "
                        "so the margin cannot be checked against the outputs' magnitude; plan from "
                        "the old parameters' arrays")
    if -rule.offset < margin.needed:
        return "none", (f"offset {rule.offset:g} is not below -{margin.needed:.3g}, the margin that "
                        f"rounding of {dtypes} outputs up to {margin.magnitude:.3g} needs, so a tie "
                        f"can go to a new action; use offset='auto'")
    if len(facts.offset_leaves) != 1:
        where = sorted(facts.offset_leaves) or f"no bias (no leaf named {'/'.join(BIAS_NAMES)} carries the space)"
        return "none", f"the rule's offset lands on {where}, so a tie can go to a new action"
    return nominal, ""


class Margin(NamedTuple):
    """What the old output layer says about the rounding of an output space's values.

    Attributes:
      needed: `greedy_margin` on the tree at hand; None where the old
        tree holds shapes only.
      magnitude: the largest ``|bias_j| + R * sum_i |kernel_ij|`` over the old output units.
      terms: the output layer's fan-in.
    """

    needed: float | None
    magnitude: float | None
    terms: int


def output_margins(old_leaves: dict, old_axes: dict, roles: dict, activations) -> dict:
    """``{output space: Margin}`` from the old leaves that hold each output space's incoming
    weights (kernels, scaled by the bound R of the values they read, and biases)."""
    sums: dict = {}
    for path, axes in old_axes.items():
        out = output_axis(axes)
        space = axes[out] if out is not None else None
        if not isinstance(space, str) or roles.get(space) != "output":
            continue
        leaf = old_leaves[path]
        entry = sums.setdefault(space, {"per_unit": 0.0, "terms": 0, "dtypes": set(), "abstract": False})
        entry["dtypes"].add(np.dtype(leaf.dtype))
        if not has_values(leaf):
            entry["abstract"] = True
            continue
        values = np.moveaxis(np.abs(np.asarray(leaf, np.float64)), out, -1)
        if not values.size:
            continue  # no old units: nothing to round
        rows = values.reshape(-1, values.shape[-1])
        mapped = [a for i, a in enumerate(axes) if carries_units(a) and i != out]
        bound = _bound(space_of(mapped[0]) if len(mapped) == 1 else None, activations) if mapped else 1.0
        entry["per_unit"] = entry["per_unit"] + bound * rows.sum(0)
        entry["terms"] += rows.shape[0] if mapped else 0
    margins = {}
    for space, entry in sums.items():
        if entry["abstract"]:
            margins[space] = Margin(None, None, entry["terms"])
            continue
        magnitude = float(np.max(entry["per_unit"], initial=0.0))
        needed = rules_lib.greedy_margin(magnitude, entry["terms"], entry["dtypes"])
        margins[space] = Margin(needed, magnitude, entry["terms"])
    return margins


def has_values(leaf) -> bool:
    """Whether a leaf holds values (an array), not only a shape (a tracer, a ShapeDtypeStruct)."""
    return isinstance(leaf, (np.ndarray, np.generic, int, float)) or \
        isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)


def _bound(space, activations) -> float:
    """How large the values an output layer reads from `space` can be: the activation's bound
    where it has one, else 1 (their typical scale; see greedy_margin)."""
    lo, hi = KNOWN.get((activations or {}).get(space, "unknown"), KNOWN["unknown"]).values
    return max(abs(lo), abs(hi)) if math.isfinite(lo) and math.isfinite(hi) else 1.0


def resolve_margins(chosen: dict, margins: dict) -> dict:
    """Each space's rule with ``offset="auto"`` resolved to minus the margin its tree needs (the
    least margin at unit magnitude where the old tree holds shapes only)."""
    resolved = {}
    for name, rule in chosen.items():
        margin = margins.get(name)
        if getattr(rule, "offset", None) == rules_lib.AUTO:
            needed = margin.needed if margin is not None and margin.needed is not None else \
                rules_lib.greedy_margin(1.0, margin.terms if margin else 0, [])
            rule = rule.resolved(needed)
        resolved[name] = rule
    return resolved


@dataclasses.dataclass
class SpaceFacts:
    """What the plan does to a space's new output units, for deriving what it preserves."""

    offset_leaves: set = dataclasses.field(default_factory=set)
    other_leaves: set = dataclasses.field(default_factory=set)
    input_leaves: set = dataclasses.field(default_factory=set)  # the space on a non-output axis
    dtypes: set = dataclasses.field(default_factory=set)


def space_facts(leaf_plans, new_axes: dict) -> dict[str, SpaceFacts]:
    """Per space, which of the finished plan's leaves taken from an old leaf carry its new units,
    and how: on an input axis, with the rule's offset (a bias), or otherwise."""
    facts: dict[str, SpaceFacts] = {}
    for leaf in leaf_plans:
        axes = new_axes[leaf.path]
        if leaf.source is None or len(leaf.axes) != len(axes):
            continue  # a new layer's leaf (its init decides), or one with a problem reported
        out = output_axis(axes)
        for axis, entry in enumerate(axes):
            if axis != out:
                for name in spaces_in(entry):
                    facts.setdefault(name, SpaceFacts()).input_leaves.add(leaf.path)
        if out is None or not isinstance(axes[out], str):
            continue
        space = facts.setdefault(axes[out], SpaceFacts())
        space.dtypes.add(leaf.dtype)
        if leaf.axes[out].offset:
            space.offset_leaves.add(leaf.path)
        elif sum(carries_units(a) for a in axes) == 1 and leaf_name(leaf.path) not in BIAS_NAMES:
            space.other_leaves.add(leaf.path)
    return facts


def self_paired(sources: dict, old_axes: dict, new_axes: dict) -> set[str]:
    """Spaces an old leaf carries into the same space of its new leaf (a new layer that writes
    one of them adds to an old network's space, a residual stream)."""
    found: set[str] = set()
    for path, source in sources.items():
        if source is None:
            continue
        for old_spec, new_spec in zip(old_axes[source], new_axes[path]):
            if carries_units(old_spec) or carries_units(new_spec):
                found |= set(spaces_in(old_spec)) & set(spaces_in(new_spec))
    return found


def init_claim(leaf: LeafPlan, arrays: LeafArrays, writes_old: bool, axes: tuple,
               activations, input_spaces) -> tuple[str, str]:
    """What a new layer's init keeps, and why. An identity kernel replaces a connection only
    when it writes a space of its own (one that writes an old network's space, a residual stream,
    adds to it), and only where the activation after it keeps the values before it
    (`flaxsurgery.activations.identity_layer_claim`: ReLU after ReLU, or none at all)."""
    if leaf.init == "fresh" or leaf.init == "near_identity" and leaf.kernel_axes:
        return "none", ""
    if leaf.kernel_axes and writes_old:
        return "none", "it writes a space of the old network (a residual stream), adding to it"
    if leaf.init == "zeros" and leaf.kernel_axes is None and len(leaf.shape) >= 2:
        return "none", ""
    if arrays.match is not None:
        match = arrays.match
        if (match < 0).any() or len(set(match.tolist())) != leaf.shape[leaf.kernel_axes[0]]:
            return "none", "some output unit has no input unit of the same ID to pass on"
    if leaf.init == "identity" and leaf.kernel_axes:
        in_space, out_space = (space_of(axes[i]) for i in leaf.kernel_axes)
        return identity_layer_claim(in_space, out_space, activations, input_spaces)
    return "function", ""


def summarise_layer(layer: str, inits: set) -> tuple[tuple[str, str, str], str]:
    """A new layer's (layer, inits, what it keeps) from its leaves' (init, claim, why), and
    the reason its weakest leaf gives."""
    names = "/".join(sorted({init for init, _, _ in inits}))
    exact = min((e for _, e, _ in inits), key=PRESERVED.index)
    why = "; ".join(sorted({w for _, e, w in inits if e == exact and w}))
    return (layer, names, exact), why
