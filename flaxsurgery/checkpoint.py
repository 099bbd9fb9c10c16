"""Checkpoint surgery with orbax, out of core: restore, transplant and write a group at a time.

Each new leaf needs only its source leaf (and its fresh leaf where a rule takes fresh values),
so [`transplant_checkpoint`][flaxsurgery.checkpoint.transplant_checkpoint] reads the old checkpoint's shapes without loading it, then
restores a bounded group of leaves, transplants them (`Plan.restricted`) and
appends them to the new checkpoint with orbax's partial save. Peak host memory follows the
largest group, not the model.

    old = checkpoint_shapes("/ckpt/old")                       # shapes and dtypes, nothing loaded
    p = fs.plan(old, jax.eval_shape(model.init, key, x), layout, spaces=...)
    transplant_checkpoint("/ckpt/old", "/ckpt/new", p)        # restored by ocp.load("/ckpt/new")

Checkpoints are orbax pytree checkpoints of nested dicts: those ``ocp.save`` (the v1 API) writes,
and those ``ocp.StandardCheckpointer().save`` writes (read only; the new one is a v1 checkpoint,
whose ``state`` directory the StandardCheckpointer restores too). Requires the ``orbax`` extra.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from etils import epath

from flaxsurgery.groups import leaf_bytes, leaf_groups, subplan
from flaxsurgery.paths import flatten, path_name
from flaxsurgery.plans import Plan
from flaxsurgery.sharding import source_sharding, transplant_fn
from flaxsurgery.transplant import transplant
from flaxsurgery.units import problems_error

PathLike = str | os.PathLike
PARTIAL_SUFFIX = ".partial_save"  # where orbax's partial saves write before the final rename
DEFAULT_GROUP_BYTES = 64 << 20
DEFAULT_CHUNK_BYTES = 8 << 20  # several chunks a leaf: tensorstore compresses them in parallel


def absolute(path: PathLike) -> PathLike:
    """`path` made absolute against the working directory, as orbax requires; a URL
    (``gs://bucket/ckpt``) is returned as it is."""
    if "://" in os.fspath(path):
        return path
    return os.path.abspath(path)


def _is_metadata(node: Any) -> bool:
    return hasattr(node, "shape") and hasattr(node, "dtype")


def _dict_keys(with_path: list, what: str) -> None:
    """Checks that a tree is nested dicts, which orbax restores and saves a part of by keys."""
    odd = [path_name(keys) for keys, _ in with_path
           if not all(isinstance(k, jax.tree_util.DictKey) for k in keys)]
    if odd:
        raise ValueError(f"{what} must be nested dicts (as Flax variables are); leaves {odd[:5]} sit in "
                         f"other containers: convert the tree to dicts first")


def _key_paths(path: PathLike) -> dict[str, tuple]:
    """{leaf path: (orbax key path, shape, dtype)} of a checkpoint, read from its metadata."""
    tree = ocp.metadata(absolute(path)).metadata
    with_path, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_metadata)
    _dict_keys(with_path, f"the tree of checkpoint {os.fspath(path)!r}")
    return {path_name(keys): (keys, tuple(meta.shape), np.dtype(meta.dtype)) for keys, meta in with_path}


def checkpoint_shapes(path: PathLike) -> Any:
    """The checkpoint's tree with a ``jax.ShapeDtypeStruct`` per leaf; reads metadata only.

    Pass it to [`flaxsurgery.plan`][flaxsurgery.plan] as the old tree. `path` may be relative.
    """
    tree = ocp.metadata(absolute(path)).metadata
    return jax.tree.map(lambda meta: jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype)), tree,
                        is_leaf=_is_metadata)


def _nested(items: Iterable[tuple[tuple, Any]]) -> dict:
    """A nested dict from (key path, value) pairs."""
    root: dict = {}
    for keys, value in items:
        node = root
        for key in keys[:-1]:
            node = node.setdefault(key.key, {})
        node[keys[-1].key] = value
    return root


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def load_leaves(path: PathLike, paths: Iterable[str],
                shardings: Mapping[str, jax.sharding.Sharding] | None = None) -> dict[str, jax.Array]:
    """Restores only the leaves `paths` of a checkpoint, each with its sharding.

    Args:
      path: the orbax checkpoint.
      paths: leaf paths (``params/Dense_0/kernel``).
      shardings: ``{leaf path: Sharding}`` to restore straight into (each device reads its own
        shard); leaves not named go to the first local device.

    Returns:
      ``{leaf path: array}``.

    Raises:
      ValueError: if the checkpoint lacks a leaf.
    """
    return _load(_key_paths(path), path, list(paths), shardings or {})


def _load(entries: dict, path: PathLike, paths: list[str], shardings: Mapping) -> dict[str, jax.Array]:
    missing = [p for p in paths if p not in entries]
    if missing:
        raise ValueError(f"checkpoint {os.fspath(path)!r} lacks leaves {missing}; it has {sorted(entries)}")
    if not paths:
        return {}
    abstract = _nested(
        (entries[p][0], jax.ShapeDtypeStruct(entries[p][1], entries[p][2],
                                             sharding=shardings.get(p) or _default_sharding()))
        for p in paths)
    context = ocp.Context()
    context.pytree.loading.partial_load = True
    with context:
        restored = ocp.load(absolute(path), abstract)
    leaves, _ = flatten(restored)
    return leaves


def _check_fits(plan: Plan, entries: dict, path: PathLike) -> None:
    """One ValueError naming every leaf where the checkpoint and the plan's old tree differ."""
    expected = plan.old_leaves
    problems = [f"the checkpoint lacks leaf {p!r}" for p in expected if p not in entries]
    problems += [f"the checkpoint has leaf {p!r}, which the plan's old tree lacks" for p in entries
                 if p not in expected]
    problems += [f"leaf {p!r} is {entries[p][1]} {entries[p][2]} in the checkpoint, the plan expects "
                 f"{expected[p][0]} {expected[p][1]}" for p in entries
                 if p in expected and (entries[p][1], entries[p][2]) != expected[p]]
    if problems:
        raise problems_error(f"checkpoint {os.fspath(path)!r} does not fit the plan (build the "
                             f"plan from checkpoint_shapes of this checkpoint)", problems)


def _new_key_paths(plan: Plan) -> dict[str, tuple]:
    """{new leaf path: key path} from the plan's new tree structure."""
    shaped = jax.tree_util.tree_unflatten(plan.new_treedef, [leaf.shape for leaf in plan.leaves])
    with_path, _ = jax.tree_util.tree_flatten_with_path(shaped, is_leaf=lambda x: isinstance(x, tuple))
    _dict_keys(with_path, "the plan's new tree")
    return {path_name(keys): keys for keys, _ in with_path}


def transplant_checkpoint(
    old_path: PathLike,
    new_path: PathLike,
    plan: Plan,
    fresh: Any | PathLike | None = None,
    *,
    max_group_bytes: int = DEFAULT_GROUP_BYTES,
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
    read_ahead: int = 0,
    shardings: Mapping[str, jax.sharding.Sharding] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Transplants an orbax checkpoint into a new one, a bounded group of leaves at a time.

    Host memory peaks near ``max_group_bytes`` (or the largest leaf and its source, if larger)
    plus the fresh leaves of a group, not near the model. The result is what
    ``fs.transplant(old, plan, fresh)`` gives on the whole tree.

    Args:
      old_path: the old orbax checkpoint (its tree is the plan's old tree).
      new_path: where to write the new checkpoint; must not exist.
      plan: from [`flaxsurgery.plan`][flaxsurgery.plan], built on [`checkpoint_shapes`][flaxsurgery.checkpoint.checkpoint_shapes] of `old_path`.
      fresh: where rules take fresh values: the new network's initialised tree; an orbax
        checkpoint of it (read a group at a time); or a function ``fresh(path, shape_dtype)``
        returning one leaf's fresh value (an initializer, so no whole fresh tree is ever built);
        None when no rule needs fresh values.
      max_group_bytes: bytes of new plus source leaves restored and transplanted together.
      chunk_bytes: the largest storage chunk written (orbax's ``chunk_byte_size``); None: one
        chunk a leaf, orbax's default, which compresses each leaf on one thread.
      read_ahead: groups restored ahead on threads (one process only): worth it where reads
        are slow next to the rest; each costs a group's memory.
      shardings: ``{new leaf path: Sharding}``: each new leaf is computed and written with
        its sharding, its source restored straight into the same partitioning (see
        `flaxsurgery.sharding`); leaves not named live on the first local device.
      progress: called as ``progress(bytes_done, bytes_total)`` after each group.

    Raises:
      ValueError: if the checkpoint does not fit the plan, or fresh values are needed and
        `fresh` is None.
      FileExistsError: if `new_path` exists.

    The new checkpoint appears at `new_path` only when complete (orbax writes into
    ``<new_path>.partial_save`` and renames it at the end). A leftover of a run that was killed
    is removed, with a warning, before writing; with several processes it is an error instead
    (remove it, then run again), since another process may already be writing there.
    """
    old_path, new_path = absolute(old_path), absolute(new_path)
    if os.path.exists(new_path):
        raise FileExistsError(f"{os.fspath(new_path)!r} exists: choose a new path or remove it")
    entries = _key_paths(old_path)
    _check_fits(plan, entries, old_path)
    needing = [leaf.path for leaf in plan.leaves if leaf.needs_fresh]
    if needing and fresh is None:
        raise ValueError(f"the plan takes fresh values for {needing}: pass the new network's initialised "
                         f"parameters (or an orbax checkpoint of them) as fresh")
    fresh_leaf = _fresh_source(fresh, shardings or {})
    _clear_leftover(new_path)
    new_keys = _new_key_paths(plan)
    shardings = dict(shardings or {})

    def read(group: list) -> dict:
        placed = {leaf.source: source_sharding(leaf, shardings[leaf.path], plan.old_leaves[leaf.source][0])
                  for leaf in group if leaf.source is not None and leaf.path in shardings}
        return _load(entries, old_path, sorted({leaf.source for leaf in group if leaf.source}), placed)

    groups = list(leaf_groups(plan, max_group_bytes))
    total, written, writing = sum(leaf_bytes(leaf) for leaf in plan.leaves), 0, None
    # One write runs behind the transplant, so memory holds about read_ahead + 2 groups. Several
    # processes read in step, never ahead: orbax's reads synchronise them.
    ahead = read_ahead if jax.process_count() == 1 else 0
    for i, (group, old) in enumerate(zip(groups, _read_ahead(read, groups, ahead), strict=True)):
        new = _transplant_group(old, group, plan, fresh_leaf, shardings)
        del old
        if writing is not None:
            writing.result()
            written += sum(leaf_bytes(leaf) for leaf in groups[i - 1])
            _report(progress, written, total)
        with saving_context(chunk_bytes):
            writing = ocp.partial.save_async(new_path, _nested((new_keys[p], x) for p, x in new.items()))
        del new
    if writing is not None:
        writing.result()
    _report(progress, total, total)
    ocp.partial.finalize(new_path)


def _clear_leftover(new_path: PathLike) -> None:
    """Removes what an interrupted run left in `new_path`'s staging directory: orbax would
    otherwise refuse to write the leaves again (a ``PartialSaveReplacementError`` that never
    names the directory). It never holds a loadable checkpoint, only pieces of one."""
    leftover = os.fspath(new_path) + PARTIAL_SUFFIX
    staging = epath.Path(leftover)  # a local or a cloud path alike
    if not staging.exists():
        return
    if jax.process_count() > 1:
        raise FileExistsError(f"{leftover!r} is left from an interrupted run (a checkpoint never "
                              f"finished): remove it (rm -r {leftover!r}), then run again")
    warnings.warn(f"removing {leftover!r}, left by an interrupted run (never a loadable "
                  f"checkpoint)", stacklevel=3)
    staging.rmtree()


def _read_ahead(read: Callable, groups: list, ahead: int) -> Iterator[dict]:
    """``read(group)`` for each group in order, up to `ahead` of them being read on threads
    (orbax decompresses a leaf on one thread; several leaves at once use the cores)."""
    if not ahead:
        yield from map(read, groups)
        return
    with concurrent.futures.ThreadPoolExecutor(ahead) as pool:
        reads = collections.deque(pool.submit(read, group) for group in groups[:ahead])
        for i in range(len(groups)):
            old = reads.popleft().result()
            if i + ahead < len(groups):
                reads.append(pool.submit(read, groups[i + ahead]))
            yield old


def _transplant_group(old: dict, group: list, plan: Plan, fresh_leaf: Callable, shardings: Mapping) -> dict:
    """``{new path: leaf}`` of one group: those needing fresh values apart from the others."""
    new = {}
    with_fresh = [leaf.path for leaf in group if leaf.needs_fresh]
    without = [leaf.path for leaf in group if not leaf.needs_fresh]
    if with_fresh:
        part = subplan(plan, with_fresh)
        new.update(_apply(old, part, fresh_leaf(part.leaves), shardings))
    if without:
        new.update(_apply(old, subplan(plan, without), None, shardings))
    return new


def saving_context(chunk_bytes: int | None) -> ocp.Context:
    """An orbax context that writes storage chunks of at most `chunk_bytes`."""
    context = ocp.Context()
    context.array.saving.storage_options.chunk_byte_size = chunk_bytes
    return context


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _fresh_source(fresh: Any, shardings: Mapping) -> Callable[[tuple], dict]:
    """A function from leaf plans to ``{path: fresh value}``, whatever form `fresh` takes."""
    if isinstance(fresh, (str, os.PathLike)):
        fresh = absolute(fresh)
        entries = _key_paths(fresh)
        return lambda leaves: _load(entries, fresh, [leaf.path for leaf in leaves], shardings)
    if callable(fresh):
        return lambda leaves: {leaf.path: fresh(leaf.path, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
                               for leaf in leaves}
    tree = flatten(fresh)[0] if fresh is not None else {}

    def pick(leaves: tuple) -> dict:
        missing = [leaf.path for leaf in leaves if leaf.path not in tree]
        if missing:
            raise ValueError(f"fresh lacks leaves {missing}: pass the whole new network's parameters")
        return {leaf.path: tree[leaf.path] for leaf in leaves}

    return pick


def _apply(old: dict, part: Plan, fresh: dict | None, shardings: Mapping) -> dict:
    """One sub-plan applied under jit; where the new leaves have shardings, in those shardings."""
    old = {p: old[p] for p in part.sources}
    if any(shardings.get(leaf.path) for leaf in part.leaves):
        return transplant_fn(part, shardings)(old, fresh)
    anonymous, names = _anonymous(part)
    renamed = _TRANSPLANT({names[p]: x for p, x in old.items()}, anonymous,
                          None if fresh is None else {names[p]: x for p, x in fresh.items()})
    paths = {name: p for p, name in names.items()}
    return {paths[name]: x for name, x in renamed.items()}


_TRANSPLANT = jax.jit(transplant)


def _anonymous(part: Plan) -> tuple[Plan, dict[str, str]]:
    """`part` with its leaves named by position, and {path: name}.

    Layers alike (a stack of equal blocks) then give equal sub-plans, which jit compiles once.
    """
    names = {p: f"old{i:06d}" for i, p in enumerate(sorted(part.sources))}
    names.update({leaf.path: f"new{i:06d}" for i, leaf in enumerate(part.leaves)})  # leaves come sorted
    return part.renamed(names), names
