"""Replay buffers moved with the network's plan: the agent's experience continues too.

A replay buffer holds observations in the old network's input space and actions in its output
space. [`transplant_buffer`][flaxsurgery.transplant_buffer] moves every stored transition into the new agent's spaces:

- observations and next observations move along the input space by unit ID (the space's units
  on their last axis): kept features are permuted, removed ones dropped, and a new feature
  starts at a neutral value (0, the value a zero-row transplant ignores; the normaliser's mean
  when the new agent's normaliser statistics are given, so the normalised input is 0) or at a
  value the user computes from the stored old observation;
- actions move by the output space's IDs (an integer remap); a transition whose action was
  removed is dropped and counted, never kept pointing at another action;
- everything else is kept: rewards, flags, the ring's write position and fill count (these
  change only when transitions are dropped; see [`transplant_buffer`][flaxsurgery.transplant_buffer]).

Buffers it knows: a ring with ``data`` and ``count`` (the project's DQN ``Buffer``), flashbax's
``TrajectoryBufferState`` (flat, item and trajectory buffers) and stable-baselines3's
``ReplayBuffer`` (NumPy arrays, returned as a copy). The core imports none of them: a buffer is
recognised by its field names. For JAX buffers the move is pure and jit- and vmap-able.
"""

from __future__ import annotations

import copy as pycopy
import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.paths import flatten, leaf_name
from flaxsurgery.plans import Plan
from flaxsurgery.units import index_by_id, problems_error, show

# Field names that hold observations (units of the input space on their last axis) and actions
# (indices into the output space's units), by default.
OBSERVATION_NAMES = ("obs", "observation", "observations", "next_obs", "next_observation",
                     "next_observations")
ACTION_NAMES = ("action", "actions")
INDEX = "index"  # a field whose values are unit indices, as in fields={"act": ("out", INDEX)}


class BufferSurgery(NamedTuple):
    """What [`transplant_buffer`][flaxsurgery.transplant_buffer] returns.

    Attributes:
      buffer: the moved buffer, of the same type as the one passed in.
      dropped: int32 ``()`` (one per buffer under ``vmap``): stored transitions the moved buffer
        no longer holds because their action was removed (for an SB3 buffer with several
        environments, also the few oldest kept ones that would leave a row part-filled).
    """

    buffer: Any
    dropped: jax.Array


class _Field(NamedTuple):
    """How one stored field moves: its space, and whether its values are unit indices."""

    space: str
    index: bool  # values are indices into the space's units (actions), else units on the last axis


def transplant_buffer(
    buffer: Any,
    plan: Plan,
    *,
    fields: Mapping[str, Any] | None = None,
    input_space: str | None = None,
    output_space: str | None = None,
    new_features: Mapping[Hashable, Callable] | None = None,
    normalizer: Any = None,
    items: bool = False,
) -> BufferSurgery:
    """Moves a replay buffer's stored transitions into the new agent's spaces.

    Fields are found by name (the last part of their path in the stored transitions):
    observations (``obs``, ``observation(s)``, ``next_obs``, ``next_observation(s)``) move along
    the input space, actions (``action``, ``actions``) by the output space's IDs; every other
    field is kept as it is.

    **Dropping.** A transition whose action the new network lacks is dropped. The kept
    transitions are then rewritten oldest first into the ring's first slots, and the write
    position and fill count become the number kept, so the next transition is written after the
    newest kept one and sampling reads only kept ones. When nothing is dropped the buffer's
    layout, write position and fill count are kept exactly. A buffer whose rows are sequences
    (flashbax's flat and trajectory buffers, SB3's ``optimize_memory_usage``) cannot drop a step
    without joining steps that never followed each other: there, a plan that removes actions
    raises, unless ``items=True`` says the buffer's items are whole transitions (an item buffer).

    Args:
      buffer: the old agent's replay buffer: a pytree with ``data`` (transitions, leaves
        ``(capacity, ...)``) and ``count`` (transitions ever added), such as
        ``flaxsurgery.rl.dqn.Buffer``; a flashbax ``TrajectoryBufferState`` (leaves
        ``(add_batch_size, time, ...)``); or an SB3 ``ReplayBuffer`` (left unchanged: a moved
        copy is returned).
      plan: the plan that moved the network.
      fields: ``{field path: space}`` for fields whose units move along a space on their last
        axis, ``{field path: (space, "index")}`` for fields whose values are unit indices, and
        ``{field path: None}`` for a field to keep as it is; paths are ``/``-joined inside the
        stored transitions (``"obs"``, ``"timestep/observation"``). They override the defaults
        by name.
      input_space: the space observations move along (default: the plan's one input space,
        ``"obs"`` if it has several).
      output_space: the space actions index (default: the plan's one output space, ``"out"``
        if it has several).
      new_features: ``{new input unit ID: f}``, where ``f(old_obs)`` computes that feature from
        a stored old observation (the old input space's units on the last axis) and returns an
        array of its shape without the last axis. Other new features start neutral.
      normalizer: the new agent's observation-normalisation statistics (a pytree or object with
        a ``mean`` over the new input space, as [`flaxsurgery.transplant_normalizer`][flaxsurgery.transplant_normalizer]
        returns): new features start at its mean, so their normalised value is 0.
      items: the buffer's items along its time axis are whole transitions (a flashbax item
        buffer), so dropping one joins nothing.

    Returns:
      A [`BufferSurgery`][flaxsurgery.BufferSurgery]: ``.buffer`` (same type as `buffer`) and ``.dropped``.

    Raises:
      ValueError: naming the field, for a stored observation whose last axis is not the old
        input space's size, an action outside the old output space's units (under ``jit``, the
        computation fails with the same message), a field path that is not in the buffer, an
        unknown space; and for a buffer type it does not know.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> import flaxsurgery as fs
      >>> from flaxsurgery.rl.dqn import Buffer, Transition
      >>> p = fs.plan({"w": np.zeros((2, 3), np.float32)}, {"w": np.zeros((3, 2), np.float32)},
      ...             {"w": ("obs", "out")},
      ...             spaces={"obs": (["x", "v"], ["x", "v", "theta"]),
      ...                     "out": (["left", "stay", "right"], ["right", "left"])})
      >>> data = Transition(obs=jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
      ...                   action=jnp.array([0, 1, 2]), reward=jnp.array([1.0, 2.0, 3.0]),
      ...                   next_obs=jnp.zeros((3, 2)), terminated=jnp.zeros(3, bool))
      >>> moved = fs.transplant_buffer(Buffer(data, jnp.int32(3)), p)
      >>> moved.buffer.data.obs[:2]  # the transition that chose "stay" is dropped
      Array([[1., 2., 0.],
             [5., 6., 0.]], dtype=float32)
      >>> moved.buffer.data.action[:2], int(moved.buffer.count), int(moved.dropped)
      (Array([1, 0], dtype=int32), 2, 1)
    """
    adapter = _adapter_of(buffer)
    spaces = _Spaces(plan, input_space, output_space)
    leaves = adapter.fields(buffer)
    moves = _field_moves(leaves, fields, spaces)
    _check_shapes(leaves, moves, plan, adapter.batch_dims)
    fills = _new_feature_fills(plan, moves, new_features, normalizer)
    drops = _drops_actions(plan, moves)
    if drops and adapter.sequences and not items:
        raise ValueError(
            f"the plan removes actions {_removed(plan, drops)} from space {drops!r}, and this "
            f"{adapter.name}'s rows are sequences of steps (sampled as consecutive steps): dropping "
            f"a transition would join steps that never followed each other. Pass items=True if "
            f"its items are whole transitions (a flashbax item buffer); otherwise empty the "
            f"buffer, or keep the removed actions in the new network")
    return adapter.move(buffer, leaves, moves, fills, plan, drops)


# ----------------------------------------------------------------------------- spaces and fields


class _Spaces:
    """The plan's input and output space names, resolved once."""

    def __init__(self, plan: Plan, input_space: str | None, output_space: str | None):
        self.input = input_space or _only_space(plan, "input", "obs", "input_space")
        self.output = output_space or _only_space(plan, "output", "out", "output_space")


def _only_space(plan: Plan, role: str, preferred: str, argument: str) -> str:
    names = [s.name for s in plan.spaces if s.role == role]
    if preferred in names or not names:
        return preferred  # a plan without it raises when a field needs it, naming the field
    if len(names) == 1:
        return names[0]
    raise ValueError(f"the plan has {len(names)} {role} spaces {names}; name the buffer's with "
                     f"{argument}=")


def _field_moves(leaves: Mapping[str, Any], fields: Mapping | None, spaces: _Spaces) -> dict:
    """{field path: _Field} for every stored field that moves; the defaults by name, then
    `fields`."""
    moves: dict[str, _Field] = {}
    for path in leaves:
        name = leaf_name(path)
        if name in OBSERVATION_NAMES:
            moves[path] = _Field(spaces.input, index=False)
        elif name in ACTION_NAMES:
            moves[path] = _Field(spaces.output, index=True)
    problems = []
    for path, how in (fields or {}).items():
        if path not in leaves:
            problems.append(f"fields names {path!r}, which the buffer does not hold (its fields: "
                            f"{sorted(leaves)})")
        elif how is None:
            moves.pop(path, None)
        elif isinstance(how, str):
            moves[path] = _Field(how, index=False)
        elif isinstance(how, tuple) and len(how) == 2 and how[1] == INDEX:
            moves[path] = _Field(how[0], index=True)
        else:
            problems.append(f"fields[{path!r}] must be a space name, (space, 'index') or None, got "
                            f"{show(how)}")
    if problems:
        raise problems_error("the buffer's fields do not fit", problems)
    return moves


def _space_or_raise(plan: Plan, space: str, path: str):
    try:
        return plan.space(space)
    except ValueError:
        raise ValueError(f"buffer field {path!r} moves along space {space!r}, which the plan does "
                         f"not have (its spaces: {[s.name for s in plan.spaces]}); name the right "
                         f"one with input_space=, output_space= or fields=") from None


def _check_shapes(leaves: Mapping, moves: Mapping, plan: Plan, batch_dims: int) -> None:
    """Every moved field's shape and dtype, checked before anything moves: one error for all."""
    problems = []
    for path, move in moves.items():
        info = _space_or_raise(plan, move.space, path)
        x = leaves[path]
        shape, dtype = np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        n_old = len(info.old_ids)
        if move.index:
            if not np.issubdtype(dtype, np.integer):
                problems.append(f"buffer field {path!r} holds {dtype} values, but the indices of "
                                f"space {move.space!r}'s units are integers")
        elif len(shape) <= batch_dims or shape[-1] != n_old:
            problems.append(f"buffer field {path!r} has shape {tuple(shape)}, but its last axis "
                            f"should hold the {n_old} old units of space {move.space!r}")
    if problems:
        raise problems_error("the buffer does not fit the plan", problems)


def _drops_actions(plan: Plan, moves: Mapping) -> str | None:
    """The index space whose removed units drop transitions, or None if none is removed."""
    for move in moves.values():
        if move.index and (plan.space(move.space).index() >= 0).sum() < len(plan.space(move.space).old_ids):
            return move.space
    return None


def _removed(plan: Plan, space: str) -> str:
    info = plan.space(space)
    kept = set(info.new_ids)
    return show([uid for uid in info.old_ids if uid not in kept])


def _inverse(plan: Plan, space: str) -> np.ndarray:
    """int32 (n_old,): each old unit's index among the new units, -1 if it was removed."""
    info = plan.space(space)
    return index_by_id(info.old_ids, info.new_ids)


# ----------------------------------------------------------------------------- new features


class _Fills(NamedTuple):
    """How an input space's new features start: a constant per new unit, and functions."""

    constant: np.ndarray  # float (n_new,): the neutral value of each unit (used where it is new)
    computed: tuple  # ((new unit position, f), ...)


def _new_feature_fills(plan: Plan, moves: Mapping, new_features: Mapping | None,
                       normalizer: Any) -> dict[str, _Fills]:
    """{input space: _Fills} for every space observations move along."""
    fills = {}
    for space in {m.space for m in moves.values() if not m.index}:
        info = plan.space(space)
        index = info.index()
        constant = np.zeros(len(info.new_ids), np.float64)
        if normalizer is not None:
            constant = _normalizer_mean(normalizer, len(info.new_ids), space)
        computed = []
        problems = []
        position = {uid: i for i, uid in enumerate(info.new_ids)}
        for uid, fn in (new_features or {}).items():
            if uid not in position or index[position[uid]] >= 0:
                problems.append(f"new_features names {show(uid)}, which is not a new unit of space "
                                f"{space!r} (its new units: "
                                f"{show([u for u, i in zip(info.new_ids, index) if i < 0])})")
            elif not callable(fn):
                problems.append(f"new_features[{show(uid)}] must be a function of the stored old "
                                f"observation, got {show(fn)}")
            else:
                computed.append((position[uid], fn))
        if problems:
            raise problems_error("new_features do not fit", problems)
        fills[space] = _Fills(constant, tuple(computed))
    return fills


def _normalizer_mean(normalizer: Any, n_new: int, space: str) -> np.ndarray:
    """The ``mean`` statistic of the new agent's normaliser, one value per new unit."""
    if hasattr(normalizer, "mean") and not callable(normalizer.mean):
        mean = normalizer.mean
    else:
        found = [v for p, v in flatten(normalizer)[0].items() if leaf_name(p) == "mean"]
        mean = found[0] if len(found) == 1 else None
    if mean is None or np.shape(mean)[-1:] != (n_new,) or np.ndim(mean) != 1:
        raise ValueError(f"normalizer must hold one 'mean' over space {space!r}'s {n_new} new "
                         f"units (the new agent's statistics, as transplant_normalizer returns), "
                         f"got {type(normalizer).__name__} with mean of shape "
                         f"{None if mean is None else np.shape(mean)}")
    return np.asarray(mean, np.float64)


# ----------------------------------------------------------------------------- moving arrays


# Up to this many old units, a JAX array's units move by one select per old unit: XLA fuses
# them into one pass in the array's own layout, where a gather along a narrow last axis goes
# through transposes (5-10x slower than a copy on CPU for a million 4-feature observations).
MAX_SELECTS = 64


def _moved_units(xp, x, info, fills: _Fills):
    """`x` with its last axis rearranged from the space's old units to its new ones."""
    index = info.index()
    if xp is jnp and len(info.old_ids) <= MAX_SELECTS:
        new = jnp.broadcast_to(jnp.asarray(fills.constant, x.dtype), x.shape[:-1] + index.shape)
        for old in np.unique(index[index >= 0]):
            new = jnp.where(index == old, x[..., old:old + 1], new)
    else:
        taken = xp.take(x, np.maximum(index, 0), axis=-1)
        new = xp.where(index >= 0, taken, fills.constant.astype(x.dtype))
    if fills.computed and xp is np:
        new = new.copy()
    for position, fn in fills.computed:
        value = xp.asarray(fn(x)).astype(x.dtype)
        new = new.at[..., position].set(value) if xp is jnp else _set_last(new, position, value)
    return new


def _set_last(x: np.ndarray, position: int, value: np.ndarray) -> np.ndarray:
    x[..., position] = value
    return x


def _moved_indices(xp, x, inverse: np.ndarray):
    """Old unit indices as new ones (-1 for a removed unit; those transitions are dropped)."""
    if xp is jnp and len(inverse) <= MAX_SELECTS:  # selects fuse; a gather per element does not
        new = jnp.full(x.shape, inverse[0], x.dtype)
        for old in range(1, len(inverse)):
            new = jnp.where(x == old, inverse[old], new)
        return new
    return xp.take(inverse, xp.clip(x, 0, len(inverse) - 1)).astype(x.dtype)


def _outside(xp, x, n_old: int, stored):
    """Whether any stored index lies outside ``0..n_old-1``: one pass, one reduction."""
    return xp.any(_expand(stored, x) & ((x < 0) | (x >= n_old)))


def _action_error(path: str, n_old: int, space: str) -> str:
    return (f"buffer field {path!r} holds actions outside the {n_old} old units of space "
            f"{space!r} (0..{n_old - 1}): is it the old agent's buffer?")


def _check_indices_jax(path: str, x, stored, n_old: int, space: str) -> None:
    """Raises now for concrete values; under ``jit`` the run fails with the same message."""
    bad = _outside(jnp, x, n_old, stored)
    message = _action_error(path, n_old, space)
    if not isinstance(bad, jax.core.Tracer):
        if bool(bad):
            raise ValueError(message)
        return

    def fail(found):
        if np.any(found):
            raise ValueError(message)

    # The host is called only when something is wrong, not on every run (each call is a round
    # trip to Python, slow when the CPU is busy). Under vmap the cond becomes a select and the
    # callback runs each time, with every buffer's flag.
    jax.lax.cond(bad, lambda: jax.debug.callback(fail, bad), lambda: None)


# ----------------------------------------------------------------------------- ring compaction


def _compaction(keep, write, size, capacity: int):
    """Which old slot each slot of the compacted ring takes, oldest kept transition first.

    Args:
      keep: bool (capacity,): whether the transition in each slot is kept.
      write: the ring's write position; size: how many slots hold transitions.

    Returns:
      (source slot per slot, kept count, new write position). With nothing dropped the source
      is each slot itself and the write position is kept; otherwise the kept transitions fill
      slots ``0..kept-1`` in age order, the rest (dropped or never written, never sampled)
      follow, and writing resumes at ``kept``. One prefix sum and one scatter of slot numbers:
      every field is then gathered with the same source.
    """
    slots = jnp.arange(capacity, dtype=jnp.int32)
    oldest = (write - size) % capacity  # the slot of age 0
    ages = (slots - oldest) % capacity
    keep = keep & (ages < size)
    # An inclusive prefix sum in slot order (associative_scan is a log-depth tree of adds;
    # jnp.cumsum is several times slower on CPU), turned into each kept transition's rank in age
    # order, plus one, without rolling the ring: the slots from `oldest` on come first.
    in_slots = jax.lax.associative_scan(jnp.add, keep.astype(jnp.int32))
    kept = in_slots[-1]
    before = jnp.where(oldest > 0, in_slots[oldest - 1], 0)  # kept in slots 0..oldest-1
    ranks = jnp.where(slots >= oldest, in_slots - before, in_slots + kept - before)
    new_write = jnp.where(kept == size, write, kept).astype(jnp.int32)
    shift = new_write - kept  # rank r goes to slot (r + shift) % capacity; 0 once compacted
    # The others follow the kept ones in age order (ages - ranks counts those before), so the
    # destinations are a permutation of the slots: an in-bounds scatter, several times faster
    # on CPU than one that drops the slots it does not place.
    destination = (jnp.where(keep, ranks - 1, kept + ages - ranks) + shift) % capacity
    source = slots.at[destination].set(slots, mode="clip", unique_indices=True)
    return source, kept, new_write


# ----------------------------------------------------------------------------- adapters


class _Adapter(NamedTuple):
    """What [`transplant_buffer`][flaxsurgery.transplant_buffer] needs to know of one kind of buffer."""

    name: str
    batch_dims: int  # leading axes before a transition's own (ring; flashbax's batch and time)
    sequences: bool  # rows are sequences of steps: dropping one would join others
    fields: Callable[[Any], dict]
    move: Callable


def _adapter_of(buffer: Any) -> _Adapter:
    if _has(buffer, "data", "count"):
        return _Adapter("ring buffer", 1, False, lambda b: flatten(b.data)[0], _move_count_ring)
    if _has(buffer, "experience", "current_index", "is_full"):
        return _Adapter("flashbax buffer", 2, True, lambda b: flatten(b.experience)[0],
                        _move_flashbax)
    if _has(buffer, "observations", "actions", "pos", "full", "buffer_size") and not isinstance(
            buffer.observations, Mapping):
        return _Adapter("SB3 replay buffer", 2,
                        getattr(buffer, "optimize_memory_usage", False),
                        _sb3_fields, _move_sb3)
    raise ValueError(
        f"transplant_buffer does not know a buffer of type {type(buffer).__name__}: it moves a "
        f"pytree with 'data' and 'count' (flaxsurgery.rl.dqn.Buffer), a flashbax "
        f"TrajectoryBufferState ('experience', 'current_index', 'is_full') and an SB3 "
        f"ReplayBuffer ('observations', 'actions', 'pos', 'full'); move another buffer's arrays "
        f"with flaxsurgery.map_units")


def _has(obj: Any, *names: str) -> bool:
    return all(hasattr(obj, name) for name in names)


def _replace(obj: Any, **changes: Any) -> Any:
    """A copy of a NamedTuple, flax struct or dataclass with some fields changed."""
    if hasattr(obj, "_replace"):
        return obj._replace(**changes)
    if hasattr(obj, "replace"):
        return obj.replace(**changes)
    return dataclasses.replace(obj, **changes)


def _kept_transitions(xp, leaves: Mapping, moves: Mapping, plan: Plan, stored):
    """Whether each transition keeps its action (None when the plan removes no action); every
    action field is checked first. `stored` flags the transitions the buffer holds (one per
    leading position)."""
    keep = None
    for path, move in moves.items():
        if not move.index:
            continue
        info, x = plan.space(move.space), xp.asarray(leaves[path])
        n_old = len(info.old_ids)
        if xp is jnp:
            _check_indices_jax(path, x, stored, n_old, move.space)
        elif _outside(np, x, n_old, stored):
            raise ValueError(_action_error(path, n_old, move.space))
        inverse = _inverse(plan, move.space)
        if (inverse < 0).any():
            kept_here = (_moved_indices(xp, x, inverse) >= 0).reshape(stored.shape + (-1,)).all(-1)
            keep = kept_here if keep is None else keep & kept_here
    return keep


def _moved_leaves(xp, leaves: Mapping, moves: Mapping, fills: Mapping, plan: Plan) -> dict:
    """Every moved field in the new spaces (a removed action's index becomes 0: such
    transitions are dropped, or lie in slots that are never sampled)."""
    out = dict(leaves)
    for path, move in moves.items():
        info, x = plan.space(move.space), xp.asarray(leaves[path])
        if not move.index:
            out[path] = _moved_units(xp, x, info, fills[move.space])
            continue
        moved = _moved_indices(xp, x, _inverse(plan, move.space))
        out[path] = xp.where(moved >= 0, moved, 0).astype(moved.dtype)
    return out


def _gathered_then_moved(leaves: Mapping, moves: Mapping, fills: Mapping, plan: Plan, source,
                         axis: int) -> dict:
    """Every field's slots gathered from `source` along `axis`, then moved."""
    taken, rest = {}, {}
    for path, x in leaves.items():
        move, shape = moves.get(path), np.shape(x)
        # (slot, unit) fields (after leading axes of length 1): one gather of single values
        if (move is not None and not move.index and not fills[move.space].computed
                and len(shape) == axis + 2 and math.prod(shape[:axis]) == 1
                and math.prod(shape) < 2**31):  # flat indices fit int32
            units = _taken_units(jnp.asarray(x).reshape(shape[axis:]), source,
                                 plan.space(move.space).index(), fills[move.space].constant)
            taken[path] = units.reshape(shape[:axis] + units.shape)
        else:
            rest[path] = jnp.take(jnp.asarray(x), source, axis=axis)
    moved = _moved_leaves(jnp, rest, {p: m for p, m in moves.items() if p in rest}, fills, plan)
    return {path: taken[path] if path in taken else moved[path] for path in leaves}


def _taken_units(x, source, index: np.ndarray, constant: np.ndarray):
    """`x` (slot, unit) with its slots taken from `source` and its units rearranged into the
    new ones (new units at `constant`), as one gather of single values: XLA CPU gathers whole
    rows one at a time, at about twice the cost."""
    width = x.shape[-1]
    flat_index = source[:, None] * width + np.maximum(index, 0)[None, :]
    taken = jnp.take(x.reshape(-1), flat_index, mode="clip")
    return jnp.where(index >= 0, taken, jnp.asarray(constant, x.dtype))


def _expand(stored, x):
    """`stored` (one flag per transition) with trailing axes to broadcast against `x`."""
    return stored.reshape(stored.shape + (1,) * (np.ndim(x) - np.ndim(stored)))


def _move_count_ring(buffer, leaves, moves, fills, plan, drops) -> BufferSurgery:
    """The project's DQN buffer: leaves ``(capacity, ...)``; ``count`` transitions ever added."""
    capacity = jax.tree_util.tree_leaves(buffer.data)[0].shape[0]
    count = jnp.asarray(buffer.count)
    size = jnp.minimum(count, capacity)
    keep = _kept_transitions(jnp, leaves, moves, plan, jnp.arange(capacity) < size)
    treedef = jax.tree_util.tree_structure(buffer.data)
    if keep is None:
        moved = _moved_leaves(jnp, leaves, moves, fills, plan)
        data = jax.tree_util.tree_unflatten(treedef, list(moved.values()))
        return BufferSurgery(_replace(buffer, data=data), jnp.int32(0))
    source, kept, new_write = _compaction(keep, count % capacity, size, capacity)
    moved = _gathered_then_moved(leaves, moves, fills, plan, source, axis=0)
    data = jax.tree_util.tree_unflatten(treedef, list(moved.values()))
    new_count = jnp.where(kept == size, count, new_write).astype(count.dtype)
    return BufferSurgery(_replace(buffer, data=data, count=new_count), (size - kept).astype(jnp.int32))


def _move_flashbax(buffer, leaves, moves, fills, plan, drops) -> BufferSurgery:
    """A flashbax ``TrajectoryBufferState``: leaves ``(add_batch_size, time, ...)``; the write
    position ``current_index`` on the time axis, ``is_full`` once it has wrapped."""
    first = jax.tree_util.tree_leaves(buffer.experience)[0]
    rows, capacity = first.shape[:2]
    write = jnp.asarray(buffer.current_index)
    size = jnp.where(buffer.is_full, capacity, write)
    stored = jnp.broadcast_to(jnp.arange(capacity) < size, (rows, capacity))
    keep = _kept_transitions(jnp, leaves, moves, plan, stored)
    treedef = jax.tree_util.tree_structure(buffer.experience)
    if keep is None:
        moved = _moved_leaves(jnp, leaves, moves, fills, plan)
        experience = jax.tree_util.tree_unflatten(treedef, list(moved.values()))
        return BufferSurgery(_replace(buffer, experience=experience), jnp.int32(0))
    if hasattr(buffer, "sum_tree_state"):
        raise ValueError("the plan removes actions, and this prioritised flashbax buffer keeps a "
                         "priority per slot (sum_tree_state) that compaction would not move; "
                         "empty the buffer, or keep the removed actions in the new network")
    if rows != 1:
        raise ValueError(f"items=True: a flashbax item buffer has one row (add_batch_size 1), "
                         f"this buffer has {rows}; its rows share one write position, so they "
                         f"cannot drop different transitions")
    source, kept, new_write = _compaction(keep[0], write, size, capacity)
    moved = _gathered_then_moved(leaves, moves, fills, plan, source, axis=1)
    experience = jax.tree_util.tree_unflatten(treedef, list(moved.values()))
    full = jnp.asarray(buffer.is_full) & (kept == size)
    return BufferSurgery(
        _replace(buffer, experience=experience, current_index=new_write.astype(write.dtype),
                 is_full=full),
        (size - kept).astype(jnp.int32))


SB3_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _sb3_fields(buffer) -> dict:
    return {name: getattr(buffer, name) for name in SB3_FIELDS
            if getattr(buffer, name, None) is not None}


def _move_sb3(buffer, leaves, moves, fills, plan, drops) -> BufferSurgery:
    """SB3's ``ReplayBuffer``: NumPy arrays ``(buffer_size, n_envs, ...)``; ``pos`` the next row
    written, ``full`` once it has wrapped. Returns a moved copy; the caller's is unchanged.

    Rows hold one transition per environment and share ``pos``, so after a drop the kept
    transitions (oldest first, row by row) fill whole rows: the oldest ``kept % n_envs`` of them
    are dropped too, and counted.
    """
    capacity = int(buffer.buffer_size)
    size = capacity if buffer.full else int(buffer.pos)
    n_envs = np.shape(leaves["observations"])[1]
    stored = np.broadcast_to((np.arange(capacity) < size)[:, None], (capacity, n_envs))
    keep = _kept_transitions(np, leaves, moves, plan, stored)
    moved = _moved_leaves(np, leaves, moves, fills, plan)
    moved = {name: value if name in moves else np.array(value, copy=True)
             for name, value in moved.items()}
    out = pycopy.copy(buffer)
    order = (np.arange(size) + (int(buffer.pos) if buffer.full else 0)) % capacity  # oldest first
    flat_kept = np.arange(size * n_envs) if keep is None else np.flatnonzero(keep[order])
    whole = len(flat_kept) // n_envs * n_envs
    if whole < size * n_envs:
        chosen = flat_kept[len(flat_kept) - whole:]  # the newest whole rows' worth
        rows, envs = order[chosen // n_envs], chosen % n_envs
        for name, value in moved.items():
            compacted = value[rows, envs].reshape((whole // n_envs, n_envs) + value.shape[2:])
            value[:whole // n_envs] = compacted
        out.pos, out.full = whole // n_envs, False
    for name, value in moved.items():
        setattr(out, name, value)
    return BufferSurgery(_sb3_spaces(out, buffer, plan, moves), jnp.int32(size * n_envs - whole))


def _sb3_spaces(out, buffer, plan: Plan, moves: Mapping):
    """The copy's observation and action spaces, for the new agent: a ``Box``'s kept features
    keep their bounds by ID, new ones are unbounded; a ``Discrete`` has the new action count."""
    obs_move, action_move = moves.get("observations"), moves.get("actions")
    space = buffer.observation_space
    if obs_move is not None and hasattr(space, "low") and hasattr(space, "high"):
        index = plan.space(obs_move.space).index()
        bounds = [np.where(index >= 0, np.take(np.asarray(b), np.maximum(index, 0), axis=-1), inf)
                  for b, inf in ((space.low, -np.inf), (space.high, np.inf))]
        out.observation_space = type(space)(low=bounds[0], high=bounds[1], dtype=space.dtype)
        out.obs_shape = out.observation_space.shape
    actions = buffer.action_space
    if action_move is not None and hasattr(actions, "n") and int(getattr(actions, "start", 0)) == 0:
        out.action_space = type(actions)(len(plan.space(action_move.space).new_ids))
    return out
