"""Leaf paths: the `/`-joined key paths that layouts and plans name leaves by."""

from __future__ import annotations

from typing import Any

import jax


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(key_path: tuple) -> str:
    """Joins a JAX key path with `/`.

    NNX variables flatten to `.../kernel/value`; the trailing `value` is dropped so that a Linen
    params dict and the NNX state of the same model name their leaves alike.

    >>> path_name((jax.tree_util.DictKey("params"), jax.tree_util.DictKey("Dense_0")))
    'params/Dense_0'
    """
    names = [_key_name(k) for k in key_path]
    if len(names) > 1 and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    """Returns ({path: leaf}, treedef) of a pytree, leaves in treedef order."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = {path_name(p): leaf for p, leaf in with_path}
    if len(leaves) != len(with_path):
        raise ValueError("two leaves of the tree have the same `/`-joined path")
    return leaves, treedef


def layer_of(path: str) -> str:
    """The layer path of a leaf path: everything before the last `/`."""
    return path.rpartition("/")[0]


def leaf_name(path: str) -> str:
    """The last part of a leaf path (`kernel`, `bias`, `scale`, ...)."""
    return path.rpartition("/")[2]


def is_under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or lies under it (``Dense_0/kernel`` is under ``Dense_0``).

    >>> is_under("params/Dense_0/kernel", "params/Dense_0/"), is_under("params/Dense_01", "params/Dense_0")
    (True, False)
    """
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def without_collection(path: str) -> str:
    """The path without its first part, Linen's collection (``params/Dense_0`` -> ``Dense_0``)."""
    return path.partition("/")[2]


def collection_of(path: str) -> str:
    """The first part of a path: Linen's collection (``params``, ``batch_stats``)."""
    return path.partition("/")[0]
