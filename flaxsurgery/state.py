"""Everything shaped like the parameters inside a training state, moved with the parameters' plan.

A training state (a flax ``TrainState``, an optax state, a dict of target networks) holds the
parameters' shape in many places. [`transplant_state`][flaxsurgery.transplant_state] finds them by path, not by tree
structure: a leaf whose path ends with a parameter's path (``opt_state/0/mu/Dense_0/kernel``)
belongs to that parameter, and the field that holds it (``mu``) says how it moves. So wrappers
that change the structure (``optax.masked``, ``multi_transform``, ``inject_hyperparams``,
``MultiSteps``, ``lookahead``) and a plan built on Linen variables (``params/Dense_0/kernel``)
used with an optimizer over ``variables["params"]`` all work alike. The fields it knows are a
registry: [`register_state_field`][flaxsurgery.state.register_state_field] adds one.

The host decides, from paths and shapes alone, where every leaf of the new state comes from
(which parameter and field own it, which leaf plan and index arrays move it, what is kept and
what resets); then one jitted function moves every parameter-shaped leaf at once, so a whole
agent moves at about the speed of a copy, and inside a user's ``jax.jit`` too.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Collection, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.paths import flatten
from flaxsurgery.plans import AxisArrays, AxisPlan, LeafArrays, LeafPlan, Plan
from flaxsurgery.transplant import apply_leaf
from flaxsurgery.units import Fill, prefix_length, problems_error, show

Kind = Literal["params", "statistic"]
KINDS: tuple = ("params", "statistic")

# How each field that holds a parameter-shaped tree moves (`register_state_field` adds fields).
_FIELD_KINDS: dict[str, Kind] = {
    # Copies of the parameters: moved like the parameters (rules, layer inits).
    **dict.fromkeys(("", "params", "target_params", "ema_params", "target", "online",
                     "z",  # schedule-free's z
                     "fast", "slow"),  # optax.LookaheadParams
                    "params"),
    # Optimizer statistics: kept units keep theirs, new units start where the optimizer starts
    # them (the fresh state's value: 0 for Adam's moments, Adagrad's initial sum).
    **dict.fromkeys(("mu", "nu", "trace", "ema", "nu_max", "sum_of_squares", "acc_grads",
                     "grad_acc", "momentum", "exp_avg", "exp_avg_sq", "v"),
                    "statistic"),
}
# Adafactor's factored second moment: v_row and v_col, with a v beside them, move together.
ADAFACTOR_FIELDS = ("v_row", "v_col")
RESETS = ("bias_correction", "schedule", "all")


def register_state_field(field: str, kind: Kind) -> None:
    """Tells [`transplant_state`][flaxsurgery.transplant_state] how a field of a state moves,
    for every later call (``kinds=`` says it for one call).

    A state leaf belongs to a parameter when its path ends with the parameter's path; the field
    is the path component just before (``opt_state/0/my_trace/Dense_0/kernel``: ``my_trace``).

    Args:
      field: the field's name, one path component.
      kind: ``"params"`` (a copy of the parameters: moved with the plan's rules and layer
        inits) or ``"statistic"`` (an optimizer statistic: kept units keep theirs, new units
        start from the fresh state's value).

    Raises:
      ValueError: for a kind that is neither, a name that is not one path component, Adafactor's
        factored fields, or a field already registered as the other kind.

    >>> from flaxsurgery.state import register_state_field, state_field_kinds
    >>> register_state_field("doctest_trace", "statistic")
    >>> state_field_kinds()["doctest_trace"]
    'statistic'
    """
    problems = []
    if not isinstance(field, str) or "/" in field:
        problems.append(f"field {show(field)} must be one path component (a str without '/')")
    if kind not in KINDS:
        problems.append(f"kind {show(kind)} must be one of {KINDS}")
    if field in ADAFACTOR_FIELDS:
        problems.append(f"field {field!r} is Adafactor's factored statistic, moved with its "
                        f"siblings {ADAFACTOR_FIELDS} and 'v'")
    known = _FIELD_KINDS.get(field) if isinstance(field, str) else None
    if known is not None and known != kind:
        problems.append(f"field {field!r} is already registered as {known!r}; to move it otherwise "
                        f"in one call, pass kinds={{{field!r}: {kind!r}}} to transplant_state")
    if problems:
        raise problems_error("register_state_field", problems)
    _FIELD_KINDS[field] = kind


def state_field_kinds() -> Mapping[str, Kind]:
    """Every field [`transplant_state`][flaxsurgery.transplant_state] knows, with its kind
    (a read-only view; Adafactor's ``v_row``/``v_col`` are handled apart)."""
    return types.MappingProxyType(_FIELD_KINDS)


class _Owner(NamedTuple):
    """Which parameter a state leaf belongs to, and in which field."""

    new_path: str  # the new parameter's path
    field: str  # the field holding the parameter-shaped tree ("mu"; "" at the root)
    prefix: tuple  # the state path's components before the parameter's own
    old_suffix: tuple | None  # the source parameter's path components, as the state writes them


class _Move(NamedTuple):
    """One part of the new state computed on the device (static: hashable, so a jitted move
    compiles once per plan and shapes)."""

    leaf: LeafPlan  # the parameters' leaf plan, or the statistics' (`statistics_plan`)
    dtype: Any  # the result's dtype: the fresh leaf's (a float32 moment of bfloat16 parameters)
    factored: tuple | None = None  # Adafactor: (the old parameter's shape, v's dtype when the
    #                                fresh v is the full estimate, else None)


class StatePlan(NamedTuple):
    """Where every leaf of the new state comes from, decided on the host from paths and shapes.

    Attributes:
      moves: the parts computed on the device, one `_Move` each (static).
      arrays: each move's index arrays (`LeafArrays`).
      reads: each move's old-state paths (none for a new layer's leaf).
      writes: each move's new-state paths.
      kept: ``{new-state path: old-state path}`` of leaves taken from the old state as they are.

    Every other leaf is the fresh state's.
    """

    moves: tuple
    arrays: tuple
    reads: tuple
    writes: tuple
    kept: Mapping[str, str]


def transplant_state(
    old_state: Any,
    plan: Plan,
    fresh_state: Any,
    *,
    reset: Collection[str] = (),
    kinds: Mapping[str, Kind] | None = None,
) -> Any:
    """Moves a training or optimizer state to the new parameters with the parameters' plan.

    Each leaf of `fresh_state` (the new network's state: ``optimizer.init(new_params)``, or a
    fresh ``TrainState``) whose path ends with a parameter's path is made from the old state's
    leaf of the same field and parameter:

    - parameter copies (``params``, ``target_params``, ``ema_params``, schedule-free ``z``,
      lookahead ``fast``/``slow``) move like the parameters, with the plan's rules and layer
      inits (fresh values from `fresh_state`);
    - optimizer statistics (``mu``, ``nu``, ``trace``, ``ema``, ``nu_max``,
      ``sum_of_squares``, ``acc_grads``, ...) keep the kept units' values; new units (whatever
      their rule: a copied unit's moments would be another unit's) start from `fresh_state`;
    - Adafactor's factored ``v_row``/``v_col``/``v`` are expanded to the full second-moment
      estimate, moved as a statistic, and factored again along the new leaf's axes.

    Every other leaf (a step counter, hyperparameters) is kept from `old_state`, except the
    counters named in `reset`, taken from `fresh_state`. The fields it knows are those of
    [`state_field_kinds`][flaxsurgery.state.state_field_kinds];
    [`register_state_field`][flaxsurgery.state.register_state_field] adds one for good.

    Planning runs on the host from paths and shapes; the parameter-shaped leaves then move in
    one jitted call, compiled once per plan and shapes. It runs inside ``jax.jit`` too, with
    the plan closed over or passed in as an argument.

    Args:
      old_state: the old network's state.
      plan: the parameters' plan (from [`flaxsurgery.plan`][flaxsurgery.plan]).
      fresh_state: the same kind of state for the new parameters; gives the result's structure.
      reset: counters to restart, any of ``"bias_correction"`` (the ``count`` of a state that
        holds moments: Adam's bias correction starts again; docs/agents.md says what that does
        to the kept units' updates),
        ``"schedule"`` (any other ``count``: learning-rate and hyperparameter schedules start
        again), ``"all"`` (every leaf that is not parameter-shaped, from `fresh_state`), and
        any leaf that is not parameter-shaped named by its path in the state (``"n_updates"``,
        ``"opt_state/1/count"``; a path matches a leaf whose path ends with it).
      kinds: ``{field: "params" | "statistic"}`` for parameter-shaped fields this function does
        not know, or to move a known one otherwise in this call.

    Returns:
      The new state, structured as `fresh_state`.

    Raises:
      ValueError: naming every leaf that cannot be moved: a parameter-shaped leaf in an unknown
        field, a leaf the old state lacks, shapes that do not fit; a `reset` entry that is
        neither a kind nor the path of a leaf that is not parameter-shaped.
    """
    old_leaves, _ = flatten(old_state)
    fresh_leaves, treedef = flatten(fresh_state)
    state_plan = plan_state(plan, old_leaves, fresh_leaves, reset=reset, kinds=kinds)
    moved = _moved(state_plan.moves, state_plan.arrays,
                   tuple(tuple(old_leaves[p] for p in paths) for paths in state_plan.reads),
                   tuple(tuple(fresh_leaves[p] for p in paths) for paths in state_plan.writes))
    result = dict(fresh_leaves)
    result.update({new: old_leaves[old] for new, old in state_plan.kept.items()})
    for paths, values in zip(state_plan.writes, moved):
        result.update(zip(paths, values))
    return jax.tree_util.tree_unflatten(treedef, [result[path] for path in fresh_leaves])


def plan_state(plan: Plan, old_leaves: Mapping[str, Any], fresh_leaves: Mapping[str, Any], *,
               reset: Collection[str] = (), kinds: Mapping[str, Kind] | None = None) -> StatePlan:
    """Where each leaf of the new state comes from (host side: reads paths, shapes and dtypes).

    Args:
      plan: the parameters' plan.
      old_leaves, fresh_leaves: ``{path: leaf}`` of the old and the fresh state (arrays,
        tracers or ``jax.ShapeDtypeStruct``).
      reset, kinds: as [`transplant_state`][flaxsurgery.transplant_state].

    Raises:
      ValueError: as [`transplant_state`][flaxsurgery.transplant_state], every problem at once.
    """
    kinds = dict(kinds or {})
    new_index = _suffix_index([leaf.path for leaf in plan.leaves])
    old_index = _suffix_index(list(plan.old_leaves))
    by_path = {leaf.path: (leaf, arrays) for leaf, arrays in zip(plan.leaves, plan.arrays)}
    reset = _reset_paths(reset, fresh_leaves, new_index)
    stats = statistics_plan(plan)
    stat_by_path = {leaf.path: (leaf, arrays) for leaf, arrays in zip(stats.leaves, stats.arrays)}
    old_shapes = plan.old_leaves

    problems: list[str] = []
    owners = {path: _owner(path, new_index, by_path) for path in fresh_leaves}
    fields_at = {o.prefix for o in owners.values() if o is not None}
    kind_of = {path: _kind(o, fields_at, kinds) for path, o in owners.items() if o is not None}
    holders = {"/".join(owners[path].prefix[:-1]) for path, kind in kind_of.items() if kind != "params"}
    used: set[str] = set()
    moves, kept = _Moves(), {}
    factored: dict[tuple, dict] = {}
    for path, fresh in fresh_leaves.items():
        owner = owners[path]
        if owner is None:
            source = _other_leaf(path, fresh, old_leaves, reset, holders, used, problems)
            if source is not None:
                kept[path] = source
            continue
        kind = kind_of[path]
        if kind == "factored":
            factored.setdefault((owner.prefix[:-1], owner.new_path, owner.old_suffix), {})[owner.field] = path
            continue
        if kind is None:
            problems.append(
                f"state leaf {path!r} is shaped like parameter {owner.new_path!r} and held in field "
                f"{owner.field!r}, which flaxsurgery does not know; say how it moves with "
                f"kinds={{{owner.field!r}: 'params'}} (a copy of the parameters) or 'statistic' (an "
                f"optimizer statistic: new units start from the optimizer's own init), or for good "
                f"with register_state_field({owner.field!r}, ...)")
            continue
        leaf, arrays = (by_path if kind == "params" else stat_by_path)[owner.new_path]
        old_path = _old_path(path, owner, leaf, old_leaves, old_shapes, used, problems)
        if tuple(np.shape(fresh)) != leaf.shape:
            problems.append(f"state leaf {path!r} has shape {tuple(np.shape(fresh))}, but parameter "
                            f"{owner.new_path!r} has {leaf.shape}")
            continue
        if kind == "statistic" and leaf.source is None:
            continue  # a new layer's statistic: the optimizer's own init, the fresh leaf
        if leaf.source is None or old_path is not None:
            moves.add(_Move(leaf, _dtype(fresh)), arrays, () if old_path is None else (old_path,),
                      (path,))
    for (prefix, new_path, old_suffix), paths in factored.items():
        _plan_factored(prefix, new_path, old_suffix, paths, fresh_leaves, old_leaves,
                       stat_by_path, old_shapes, used, problems, moves, kept)

    for path in old_leaves:
        if path not in used and _owner(path, old_index, None) is None:
            problems.append(f"old_state leaf {path!r} has no counterpart in fresh_state: are they "
                            f"states of the same optimizer?")
    if problems:
        raise problems_error("the state does not fit the plan", problems)
    return StatePlan(tuple(moves.moves), tuple(moves.arrays), tuple(moves.reads),
                     tuple(moves.writes), kept)


@dataclasses.dataclass
class _Moves:
    """The moves `plan_state` collects, in the columns `StatePlan` holds."""

    moves: list = dataclasses.field(default_factory=list)
    arrays: list = dataclasses.field(default_factory=list)
    reads: list = dataclasses.field(default_factory=list)
    writes: list = dataclasses.field(default_factory=list)

    def add(self, move: _Move, arrays: LeafArrays, reads: tuple, writes: tuple) -> None:
        self.moves.append(move)
        self.arrays.append(arrays)
        self.reads.append(reads)
        self.writes.append(writes)


# ----------------------------------------------------------------------------- the device side


@functools.partial(jax.jit, static_argnums=0)
def _moved(moves: tuple, arrays: tuple, olds: tuple, freshes: tuple) -> tuple:
    """Every move at once: one compiled call for the whole state (inlined under a user's jit)."""
    return tuple(_apply_move(move, arr, old, fresh)
                 for move, arr, old, fresh in zip(moves, arrays, olds, freshes))


def _apply_move(move: _Move, arrays: LeafArrays, old: tuple, fresh: tuple) -> tuple:
    if move.factored is not None:
        return _refactored(move, arrays, old)
    return (apply_leaf(move.leaf, arrays, old[0] if old else None, fresh[0], dtype=move.dtype),)


def statistics_plan(plan: Plan) -> Plan:
    """The same plan for optimizer statistics (Adam's moments, a momentum trace): every new
    unit takes the optimizer's own initial value (the fresh state's), whatever its rule, with
    no copies, scales or offsets (a copied unit's moments would be another unit's; a negative
    second moment would make the update NaN).

    Host planning, from the plan's own arrays; where they are traced (a plan passed into
    ``jax.jit``) every gathered axis takes the fresh value wherever its index is -1.
    """
    leaves, arrays = [], []
    for leaf, leaf_arrays in zip(plan.leaves, plan.arrays):
        if leaf.init != "gather":
            leaves.append(dataclasses.replace(leaf, init="fresh"))
            arrays.append(LeafArrays())
            continue
        axes, axis_arrays = [], []
        for ax, units in zip(leaf.axes, leaf_arrays.axes):
            if not ax.gather:
                axes.append(ax)
                axis_arrays.append(None)
                continue
            own = units.src if units.own is None else units.own
            axes.append(_statistics_axis(ax, own))
            axis_arrays.append(AxisArrays(own))
        leaves.append(dataclasses.replace(leaf, axes=tuple(axes)))
        arrays.append(LeafArrays(tuple(axis_arrays)))
    return dataclasses.replace(plan, leaves=tuple(leaves), arrays=tuple(arrays))


def _statistics_axis(ax: AxisPlan, own: Any) -> AxisPlan:
    """A gathered axis of a statistic: its own old unit each, the fresh value for a new one."""
    if isinstance(own, jax.core.Tracer):  # not known on the host: fill wherever own < 0
        return AxisPlan(ax.side, gather=True, fills=(Fill.FRESH,))
    new = bool((np.asarray(own) < 0).any())
    return AxisPlan(ax.side, gather=True, fills=(Fill.FRESH,) if new else (),
                    prefix=prefix_length(np.asarray(own)))


# ----------------------------------------------------------------------------- counters


def _reset_paths(reset: Collection[str], fresh_leaves: Mapping, new_index: dict) -> frozenset:
    """`reset` with every path resolved to the full paths of the leaves it names; the kinds
    (``"schedule"``, ...) as they are."""
    if isinstance(reset, str) or not all(isinstance(r, str) for r in reset):
        raise ValueError(f"reset takes a collection of {RESETS} or counter paths, got {show(reset)}")
    counters = [p for p in fresh_leaves if _owner(p, new_index, None) is None]
    resolved, problems = set(), []
    for name in reset:
        if name in RESETS:
            resolved.add(name)
            continue
        matches = [p for p in counters if p == name or p.endswith("/" + name)]
        if not matches:
            problems.append(f"reset names {name!r}, which is neither one of {RESETS} nor the path "
                            f"of a counter in the state (its leaves that are not parameter-shaped: "
                            f"{show(counters)})")
        resolved.update(matches)
    if problems:
        raise problems_error("reset does not fit the state", problems)
    return frozenset(resolved)


def schedule_counters(state: Any, plan: Plan) -> list[str]:
    """The paths of optax's schedule counters in `state`: every leaf named ``count`` whose
    parent holds no parameter-shaped statistics (a ``scale_by_schedule`` or
    ``inject_hyperparams`` state; Adam's ``count`` sits beside its moments)."""
    leaves, _ = flatten(state)
    index = _suffix_index([leaf.path for leaf in plan.leaves])
    holders = set()
    for path in leaves:
        owner = _owner(path, index, None)
        if owner is not None and _FIELD_KINDS.get(owner.field) != "params":
            holders.add("/".join(owner.prefix[:-1]))
    return [p for p in leaves
            if p.rpartition("/")[2] == "count" and p.rpartition("/")[0] not in holders]


# ----------------------------------------------------------------------------- matching


def _parts(path: str) -> tuple:
    return tuple(path.split("/")) if path else ()


def _suffix_index(paths: list[str]) -> dict[tuple, str]:
    """Path components -> parameter path, also without Linen's leading ``params`` collection (an
    optimizer over ``variables["params"]`` writes ``mu/Dense_0/kernel``)."""
    index = {}
    for path in paths:
        parts = _parts(path)
        if len(parts) > 1 and parts[0] == "params":
            index.setdefault(parts[1:], path)
    for path in paths:
        index[_parts(path)] = path  # a full path wins over a stripped one
    return index


def _owner(path: str, index: dict, by_path: dict | None) -> _Owner | None:
    """The parameter whose path the state path ends with (the longest such), or None."""
    parts = _parts(path)
    for k in range(len(parts), 0, -1):
        param = index.get(parts[-k:])
        if param is None:
            continue
        prefix = parts[:-k]
        old_suffix = None
        if by_path is not None:
            source = by_path[param][0].source
            stripped = len(_parts(param)) != k  # matched without the leading "params"
            old_suffix = None if source is None else _parts(source)[1 if stripped else 0:]
        return _Owner(param, prefix[-1] if prefix else "", prefix, old_suffix)
    return None


def _kind(owner: _Owner, fields_at: set, kinds: dict) -> str | None:
    """``"params"``, ``"statistic"``, ``"factored"`` (Adafactor's), or None (unknown)."""
    field = owner.field
    if field in kinds:
        return kinds[field]
    if field in ADAFACTOR_FIELDS or field == "v" and owner.prefix[:-1] + ("v_row",) in fields_at:
        return "factored"
    return _FIELD_KINDS.get(field)


def _dtype(leaf: Any) -> Any:
    return leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _old_path(path, owner, leaf, old_leaves, old_shapes, used, problems) -> str | None:
    """The old state's path of the same field for the source parameter (None if it has none)."""
    if leaf.source is None:
        return None
    old_path = "/".join(owner.prefix + owner.old_suffix)
    if old_path not in old_leaves:
        problems.append(f"state leaf {path!r}: old_state lacks {old_path!r}, the same field of its "
                        f"source parameter {leaf.source!r}")
        return None
    used.add(old_path)
    old = old_leaves[old_path]
    expected = old_shapes[leaf.source][0]
    if tuple(np.shape(old)) != expected:
        problems.append(f"old_state leaf {old_path!r} has shape {tuple(np.shape(old))}, but its "
                        f"parameter {leaf.source!r} has {expected}")
        return None
    return old_path


def _other_leaf(path, fresh, old_leaves, reset, holders, used, problems) -> str | None:
    """A leaf that is not parameter-shaped: the old state's path it is kept from, or None where
    it is reset (the fresh state's)."""
    parent, _, name = path.rpartition("/")
    if path in old_leaves:
        used.add(path)
    if path in reset or "all" in reset or name == "count" and (
            "bias_correction" in reset and parent in holders or "schedule" in reset and parent not in holders):
        return None
    if path not in old_leaves:
        problems.append(f"fresh_state leaf {path!r} is not parameter-shaped and old_state lacks it: "
                        f"are they states of the same optimizer?")
        return None
    old = old_leaves[path]
    if np.shape(old) != np.shape(fresh):
        problems.append(f"state leaf {path!r} has shape {np.shape(old)} in old_state but "
                        f"{np.shape(fresh)} in fresh_state")
    return path


# ----------------------------------------------------------------------------- Adafactor


def factored_dims(shape: tuple) -> tuple[int, int]:
    """Adafactor's (d1, d0) for a factored leaf: its second-largest and largest axes. ``v_row``
    is the leaf's shape without d0, ``v_col`` without d1."""
    order = np.argsort(shape)
    return int(order[-2]), int(order[-1])


def _full_estimate(shape, row, col, v):
    """The second-moment estimate Adafactor uses, from its factored (or full) statistics."""
    if tuple(np.shape(v)) == tuple(shape):
        return jnp.asarray(v)
    d1, d0 = factored_dims(shape)
    row = jnp.asarray(row)
    return (jnp.expand_dims(row / jnp.mean(row, axis=-1, keepdims=True), d0)
            * jnp.expand_dims(jnp.asarray(col), d1))


_ADAFACTOR_ORDER = ("v_row", "v_col", "v")  # a factored move reads its old fields in this order


def _plan_factored(prefix, new_path, old_suffix, paths, fresh_leaves, old_leaves, stat_by_path,
                   old_shapes, used, problems, moves: _Moves, kept: dict) -> None:
    """Adafactor's ``v_row``/``v_col``/``v`` of one parameter, moved through the full estimate
    (a move), kept as they are (an unchanged parameter), or fresh (a new layer's)."""
    if set(paths) != set(_ADAFACTOR_ORDER):
        problems.append(f"Adafactor state of {new_path!r} under {'/'.join(prefix)!r} has fields "
                        f"{sorted(paths)}, expected v_row, v_col and v")
        return
    leaf, arrays = stat_by_path[new_path]
    fresh = {field: fresh_leaves[p] for field, p in paths.items()}
    if leaf.source is None:
        return  # every field the fresh state's
    old_paths = {field: "/".join(prefix + (field,) + old_suffix) for field in paths}
    if any(p not in old_leaves for p in old_paths.values()):
        problems.append(f"old_state lacks Adafactor's statistics {sorted(old_paths.values())} of "
                        f"{leaf.source!r}")
        return
    used.update(old_paths.values())
    old = {field: old_leaves[p] for field, p in old_paths.items()}
    old_shape = old_shapes[leaf.source][0]
    if not _factoring_fits(old_shape, old):
        problems.append(f"old_state's Adafactor statistics {sorted(old_paths.values())} do not "
                        f"factor {leaf.source!r} of shape {old_shape} as Adafactor does")
        return
    if not _factoring_fits(leaf.shape, fresh):
        problems.append(f"fresh_state's Adafactor statistics of {new_path!r} do not factor its "
                        f"shape {leaf.shape} as Adafactor does")
        return
    if old_shape == leaf.shape and not any(ax.gather for ax in leaf.axes):
        kept.update({p: old_paths[field] for field, p in paths.items()})  # exactly as it was
        return
    full = tuple(np.shape(fresh["v"])) == leaf.shape  # Adafactor keeps small leaves unfactored
    writes = ("v",) if full else ("v_row", "v_col")
    moves.add(_Move(leaf, _dtype(fresh["v_row"]), (old_shape, _dtype(fresh["v"]) if full else None)),
              arrays, tuple(old_paths[f] for f in _ADAFACTOR_ORDER), tuple(paths[f] for f in writes))


def _refactored(move: _Move, arrays: LeafArrays, old: tuple) -> tuple:
    """A factored move: the old full estimate moved as a statistic (new units 0), then the new
    full ``v`` or its row and column means."""
    leaf, dtype = move.leaf, move.dtype
    old_shape, full_dtype = move.factored
    full = _full_estimate(old_shape, *old)
    full = apply_leaf(leaf, arrays, full, jnp.zeros(leaf.shape, dtype), dtype=dtype)
    if full_dtype is not None:
        return (full.astype(full_dtype),)
    d1, d0 = factored_dims(leaf.shape)
    return jnp.mean(full, axis=d0), jnp.mean(full, axis=d1)


def _factoring_fits(shape: tuple, stats: dict) -> bool:
    if tuple(np.shape(stats["v"])) == tuple(shape):
        return True
    if len(shape) < 2:
        return False
    d1, d0 = factored_dims(shape)
    return (tuple(np.shape(stats["v_row"])) == tuple(np.delete(shape, d0))
            and tuple(np.shape(stats["v_col"])) == tuple(np.delete(shape, d1)))

