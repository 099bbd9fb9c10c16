"""A transplant's options as one value: [`Spec`][flaxsurgery.Spec].

Every way in reads its options from a Spec: [`plan`][flaxsurgery.plan] (whose keyword
arguments are built into one by `Spec.of`), [`surgery`][flaxsurgery.surgery], the command
line's spec file (`Spec.from_file`). Adding an option is adding a field here (and, where a file
writes it otherwise than Python does, a converter in `_FROM_TEXT`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.units import SurgeryError, show

# Options renamed, old name -> new; the old name still works, with a DeprecationWarning.
RENAMED = {"leaf_rules": "leaf_inits"}


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What to transplant, as a value: every option of [`plan`][flaxsurgery.plan], without the
    trees.

    Attributes:
      layout: the old tree's layout (see `flaxsurgery.layout`; [`surgery`][flaxsurgery.surgery]
        traces it); leaves it omits have no unit axis, and must keep their shape.
      new_layout: the new tree's layout (default: `layout`).
      spaces: ``{space: (old_ids, new_ids)}``; an int ``n`` means IDs ``0..n-1``; a 1-D array
        means its values. Spaces not named keep their IDs by position.
      layer_map: ``{new layer: old layer or None}``, with or without Linen's collection prefix
        (``Dense_2`` or ``params/Dense_2``, as spaces are named); by default a new layer takes from
        the old layer of the same path, if any, as long as that layer plays the same part (a
        layer whose output was the network's output and is now hidden, or the reverse, means the
        layers were renamed, and is an error until `layer_map` says how they pair).
      rules: ``{space: Rule}`` for the new units of a space; the preset covers the others by
        the space's role (input, hidden or output).
      preset: ``"preserving"`` (function-preserving rules), ``"policy"`` (the same, with new
        actions' logits far below the old ones: the sampled policy is kept) or ``"seed"`` (the
        original paper's).
      leaf_inits: ``{new leaf path: layer init}`` (``"identity"``, ``"near_identity"``,
        ``"fresh"``, ``"zeros"``) to initialise a leaf whole, ignoring its source. Formerly
        ``leaf_rules``, which still works, with a DeprecationWarning.
      drop: old leaf or layer paths that may be left out of the new tree.
      neutral: ``{leaf name or path: value}``: what ``zeros`` means for a one-axis leaf whose
        name does not say (``bias``/``mean`` are 0, ``scale``/``var``/``std`` are 1).

    Pass a Spec where a plan goes (``fs.transplant(old, spec, fresh)``). Under ``jax.jit`` it
    builds the plan once per tree structure and shapes: no values are seen there, so a new action
    takes the least margin and the plan claims nothing for it. For an old tree with values it
    plans on every call, so what the plan claims (a new action's margin follows the outputs'
    magnitude, ``offset="auto"``) is always derived from the tree at hand, never an earlier one.

    >>> spec = Spec({"w": ("obs", None)}, spaces={"obs": (["a"], ["a", "b"])})
    >>> spec.plan_for({"w": np.ones((1, 2), np.float32)}, {"w": np.ones((2, 2), np.float32)}).index("obs")
    array([ 0, -1], dtype=int32)
    >>> spec.replace(preset="seed").preset
    'seed'
    """

    layout: Mapping | None = None
    new_layout: Mapping | None = None
    spaces: Mapping | None = None
    layer_map: Mapping | None = None
    rules: Mapping | None = None
    preset: str = "preserving"
    leaf_inits: Mapping | None = None
    drop: Sequence[str] = ()
    neutral: Mapping | None = None
    _plans: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def leaf_rules(self) -> Mapping | None:
        """Renamed: `leaf_inits` (this name warns, and goes in a later release)."""
        _warn_renamed("leaf_rules")
        return self.leaf_inits

    @classmethod
    def of(cls, spec: Spec | Mapping | None = None, /, **options: Any) -> Spec:
        """The one place keyword options become a Spec: `spec` (a Spec, or the old tree's layout)
        with `options` (any of its fields) in place of its own.

        Raises:
          TypeError: for an option that is not a field, naming the fields.
        """
        options = renamed(options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; a Spec's options are {list(OPTIONS)}")
        if isinstance(spec, Spec):
            return dataclasses.replace(spec, **options) if options else spec
        if spec is not None and "layout" in options:
            raise TypeError("the layout is given twice: as the spec argument and as layout=")
        return cls(**({} if spec is None else {"layout": spec}), **options)

    def replace(self, **options: Any) -> Spec:
        """This spec with `options` (any of its fields) changed."""
        return Spec.of(self, **options)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "the spec") -> Spec:
        """A Spec from what a JSON or YAML file holds: IDs as lists, rules by their registered
        name (``"zeros"``, or ``{"mean": {"offset": -0.001}}``; see ``rules.RULES``). The
        layouts are not written in a file: the command line traces them.

        >>> spec = Spec.from_dict({"spaces": {"out": [2, 3]}, "rules": {"out": {"mean": {"offset": -0.01}}}})
        >>> spec.spaces, spec.rules["out"].name
        ({'out': (2, 3)}, 'mean')

        Raises:
          SurgeryError: listing every problem (an unknown key, a rule or space written wrongly).
        """
        if not isinstance(data, Mapping):
            problem = f"it must hold a mapping with keys among {list(FILE_KEYS)}, got {type(data).__name__}"
            raise SurgeryError(f"{where} has problems", [problem])
        problems: list[str] = []
        try:
            data = renamed(dict(data))
        except TypeError as error:
            problems.append(str(error))
            data = {k: v for k, v in data.items() if k not in RENAMED}
        problems += [f"unknown key {show(key)}; the keys are {list(FILE_KEYS)}"
                     for key in data if key not in FILE_KEYS]
        options = {}
        for key, value in data.items():
            if key in FILE_KEYS and value is not None:  # null: the option's default
                convert = _FROM_TEXT.get(key)
                options[key] = value if convert is None else convert(value, problems)
        if problems:
            raise SurgeryError(f"{where} has problems", problems)
        return cls(**options)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> Spec:
        """A Spec from a JSON file, or a YAML one by its suffix (``.yaml``, ``.yml``; needs PyYAML)."""
        path = str(path)
        text = pathlib.Path(path).read_text()
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as error:  # the parser's own message says line and column
                raise ValueError(f"spec {path!r} is not valid YAML: {error}") from error
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"spec {path!r} is not valid JSON: {error}") from error
        return cls.from_dict(data, where=f"spec {path!r}")

    def plan_for(self, old_tree: Any, new_tree: Any) -> Any:
        """The plan for these trees: built once per structure, shapes and dtypes for an old tree
        without values (traced, or shapes only); built anew for one with values, whose margins
        (and so claims) may differ from an earlier tree's of the same shapes."""
        from flaxsurgery.claims import has_values
        from flaxsurgery.planner import plan

        if all(has_values(x) for x in jax.tree_util.tree_leaves(old_tree)):
            return plan(old_tree, new_tree, self)
        key = tuple((jax.tree_util.tree_structure(t),
                     tuple((np.shape(x), str(x.dtype)) for x in jax.tree_util.tree_leaves(t)))
                    for t in (old_tree, new_tree))
        if key not in self._plans:
            self._plans[key] = plan(old_tree, new_tree, self)
        return self._plans[key]


def _with_renamed_options(init: Callable) -> Callable:
    """The dataclass's __init__, also taking the options' old names (`RENAMED`), with a warning."""

    @functools.wraps(init)
    def __init__(self, *args: Any, **options: Any) -> None:
        if len(args) > list(OPTIONS).index("leaf_inits") and "leaf_rules" in options:
            raise TypeError("got both leaf_inits and leaf_rules= (its old name); give leaf_inits=")
        init(self, *args, **renamed(options))

    return __init__


Spec.__init__ = _with_renamed_options(Spec.__init__)

OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Spec) if f.init)
FILE_KEYS: tuple[str, ...] = tuple(name for name in OPTIONS if name not in ("layout", "new_layout"))


def _outside_stacklevel() -> int:
    """The stacklevel of the first caller outside flaxsurgery, so that a deprecation warning
    names the user's line (Python shows a DeprecationWarning only when it is blamed on
    ``__main__``), whichever entry point (plan, surgery, Spec) was called."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("flaxsurgery"):
        frame, level = frame.f_back, level + 1
    return level


def _warn_renamed(old: str) -> None:
    warnings.warn(f"{old}= is now {RENAMED[old]}=; the old name will be removed in a later release",
                  DeprecationWarning, stacklevel=_outside_stacklevel())


def renamed(options: dict) -> dict:
    """`options` with each renamed option under its new name (warning once per call); an old
    name given None is left out, as not given.

    Raises:
      TypeError: when an option is given under both names.
    """
    for old, new in RENAMED.items():
        if old in options:
            value = options[old]
            options = {k: v for k, v in options.items() if k != old}
            if value is None:
                continue
            if new in options:
                raise TypeError(f"got both {new}= and {old}= (its old name); give {new}=")
            _warn_renamed(old)
            options[new] = value
    return options


# ----------------------------------------------------------------------------- spec files


def _rules_from_text(given: Any, problems: list) -> dict:
    if not isinstance(given, Mapping):
        problems.append(f"rules must map space names to rules, got {show(given)}")
        return {}
    rules = {}
    for space, text in given.items():
        try:
            rules[space] = rules_lib.rule_from_text(text)
        except ValueError as error:
            problems.append(f"rule of space {space!r}: {error}")
    return rules


def _ids_from_text(given: Any) -> Any:
    return given if isinstance(given, int) else [tuple(i) if isinstance(i, list) else i for i in given]


def _spaces_from_text(given: Any, problems: list) -> dict:
    if not isinstance(given, Mapping):
        problems.append(f"spaces must map space names to [old IDs, new IDs], got {show(given)}")
        return {}
    spaces = {}
    for space, pair in given.items():
        if isinstance(pair, Mapping) and set(pair) == {"old", "new"}:
            pair = [pair["old"], pair["new"]]
        if not (isinstance(pair, list) and len(pair) == 2):
            problems.append(f"space {space!r} must be [old IDs, new IDs] or {{old: ..., new: ...}}, got {pair!r}")
            continue
        spaces[space] = (_ids_from_text(pair[0]), _ids_from_text(pair[1]))
    return spaces


def _drop_from_text(given: Any, problems: list) -> tuple:
    return tuple(given) if isinstance(given, list) else given


# How a spec file writes an option, where it differs from Python's value.
_FROM_TEXT: dict[str, Callable[[Any, list], Any]] = {
    "rules": _rules_from_text,
    "spaces": _spaces_from_text,
    "drop": _drop_from_text,
}
