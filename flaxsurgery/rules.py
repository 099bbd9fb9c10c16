"""Rules for what is new: new units of a space, and new layers.

A unit has *incoming* weights (where its space is a leaf's output axis: a kernel's column, its
bias, its norm scale) and *outgoing* weights (where its space is an input axis: a kernel's row,
an embedding's row). A [`Rule`][flaxsurgery.Rule] is one object that says everything about itself: the
host-side arrays of a space's units on either side ([`Rule.units`][flaxsurgery.Rule.units]), the device-side
[`Fill`][flaxsurgery.Fill] of each side, what it needs of the IDs ([`Rule.problems`][flaxsurgery.Rule.problems])
and what it preserves at best ([`Rule.preserves`][flaxsurgery.Rule.preserves]). A new rule is a
subclass (here or in your code) and a test; `register_rule` names it for spec files.

What each rule preserves at best, for the role its space plays in the network (a plan checks
it on its trees and reports what holds: see ``Plan.report()``):

=======================  ==========================================  ==========================
rule                     inputs / hidden units                       outputs (actions)
=======================  ==========================================  ==========================
``fresh()``              neither (the seeds' rule)                   neither
``zeros()``              function exactly (outgoing weights are 0)   neither: a zero Q-value
                                                                     wins the argmax when every
                                                                     old Q is negative
``fresh_in_zero_out()``  function exactly                            neither
``mean(offset)``         function exactly (outgoing weights are 0)   greedy action when
                                                                     ``offset`` is below minus
                                                                     `greedy_margin` (or
                                                                     is ``"auto"``); the sampled
                                                                     policy too when it is also
                                                                     below ``-POLICY_MARGIN``
``copy_of(k, offset)``   function exactly (outgoing weights are 0)   as ``mean``
``split(k, ratio)``      function exactly (Net2Net: the new unit     neither
                         computes unit k's value; k's outgoing
                         weights are shared ``1-ratio : ratio``)
=======================  ==========================================  ==========================

An output claim holds only where the offset lands on the output layer's bias (a leaf named
``bias``, ``b`` or ``beta``) and no other one-axis leaf (a norm's scale) carries the actions;
otherwise the plan reports "none". Nothing is preserved for a space the forward pass mixes (a
LayerNorm's statistics, a softmax inside the model): see ``flaxsurgery.layout.MIXING``.

``zeros`` means the neutral value (`Fill.NEUTRAL`): 0 for weights and for one-axis leaves
named ``bias``/``mean`` (...), 1 for ``scale``, ``var``, ``std`` (...), so a new BatchNorm
feature passes its input through unchanged; a one-axis leaf of another name must be told
(``plan(neutral=...)``). Preserved for ``split`` holds for element-wise activations and
BatchNorm, not LayerNorm (whose statistics span the features).

New layers (no source in the old network) start from a layer init: ``"identity"`` (kernel 1
where the input unit's ID equals the output unit's ID, a conv kernel's centre tap only; bias 0;
norm scale and variance 1), which preserves the function where the activation after the new
layer keeps the values before it (none at all, or ReLU after ReLU: see
`flaxsurgery.activations`); ``"near_identity"`` (identity plus ``0.01`` times the fresh
kernel: the seeds' rule, not exact); ``"fresh"``; ``"zeros"`` (the neutral value).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, Literal, get_args

import jax.numpy as jnp
import numpy as np

# NEAR_IDENTITY_NOISE: the apply side's (units) now; importable from here as before.
from flaxsurgery.units import (  # noqa: F401
    NEAR_IDENTITY_NOISE,
    Fill,
    Units,
    index_by_id,
    kept,
    no_fill,
    show,
)

Role = Literal["input", "hidden", "output"]  # the part a space plays in the network
Side = Literal["incoming", "outgoing"]  # which of its units' weights an axis holds
Preserved = Literal["none", "greedy", "policy", "function"]  # what a plan preserves, weakest first
PRESERVED: tuple = get_args(Preserved)
LayerInit = Literal["identity", "near_identity", "fresh", "zeros"]
LAYER_INITS: tuple = get_args(LayerInit)
# The least margin of ``mean(offset="auto")``, the preserving preset's: a new action starts at
# least this far below the old ones (more where the outputs are large or the dtype coarse: see
# `greedy_margin`).
GREEDY_MARGIN = 1e-3
# ``offset=AUTO``: the margin follows the old output layer's magnitude and dtype on the tree at
# hand (`greedy_margin`), resolved when the plan is built.
AUTO = "auto"
# New actions' logits this far below the mean of the old ones: a new action's probability is at
# most exp(-20) ~ 2e-9 of the most likely old action's, so the sampled policy is kept (KL < 1e-8
# per new action). An on-policy learner then almost never tries the new action (docs/agents.md).
POLICY_MARGIN = 20.0

Source = Hashable | Mapping


class Rule:
    """How the new units of one space start. Subclasses set ``name``, ``incoming`` and
    ``outgoing`` (the [`Fill`][flaxsurgery.Fill] of each side of a new unit) and override what differs.

    Attributes:
      name: the constructor's name, for reports.
      incoming: the fill of a new unit's incoming weights (output axes); None where the rule
        takes them from another unit.
      outgoing: the fill of a new unit's outgoing weights (input axes); None likewise.
      offset: added to a new unit's bias (output spaces only).
    """

    name: ClassVar[str]
    incoming: Fill | None
    outgoing: Fill | None
    offset: float = 0.0

    def units(self, src: np.ndarray, side: Side, ids: tuple, on_bias: bool) -> Units:
        """The host-side arrays of a space's units on one axis.

        Args:
          src: each new unit's index among the old units, -1 where it is new.
          side: which weights of the units the axis holds.
          ids: the space's (old IDs, new IDs).
          on_bias: whether the axis is an output layer's bias (where an offset lands).
        """
        added = src < 0
        fill = no_fill(len(src))
        fill[added] = self.incoming if side == "incoming" else self.outgoing
        return Units(src, fill, offset=self._offsets(added, side, on_bias))

    def _offsets(self, added: np.ndarray, side: Side, on_bias: bool) -> np.ndarray | None:
        if side != "incoming" or not on_bias or not self.offset:
            return None
        return np.where(added, self.offset, 0.0).astype(np.float32)

    def problems(self, space: str, ids: tuple) -> list[str]:
        """What this rule cannot do with a space's IDs (old, new), as error lines."""
        old_ids, new_ids = ids
        added = len(set(new_ids) - set(old_ids))
        if added and not old_ids and Fill.MEAN in (self.incoming, self.outgoing):
            return [(f"space {space!r}: rule {self.name} takes the mean over the old units, but the "
                    f"old network has none; choose another rule for it in rules=")]
        return []

    def preserves(self, role: Role) -> tuple[Preserved, str]:
        """What this rule preserves for a space of `role` at best, and why not more where it is
        "none" for a reason the user can change. A plan checks it on its trees (where an offset
        lands, the dtype's rounding) and reports what holds."""
        if role != "output" and self.outgoing is Fill.NEUTRAL:
            return "function", ""
        return "none", ""

    def promise(self, role: Role) -> tuple[Preserved, str]:
        """Renamed: `preserves` (this name warns, and goes in a later release)."""
        warnings.warn("Rule.promise(role) is now Rule.preserves(role)", DeprecationWarning, stacklevel=2)
        return self.preserves(role)

    def exactness(self, role: Role) -> Preserved:
        """Renamed: ``preserves(role)[0]`` (this name warns, and goes in a later release)."""
        warnings.warn("Rule.exactness(role) is now Rule.preserves(role)[0]", DeprecationWarning, stacklevel=2)
        return self.preserves(role)[0]


@dataclasses.dataclass(frozen=True)
class Fresh(Rule):
    name: ClassVar[str] = "fresh"
    incoming: ClassVar[Fill] = Fill.FRESH
    outgoing: ClassVar[Fill] = Fill.FRESH


@dataclasses.dataclass(frozen=True)
class Zeros(Rule):
    name: ClassVar[str] = "zeros"
    incoming: ClassVar[Fill] = Fill.NEUTRAL
    outgoing: ClassVar[Fill] = Fill.NEUTRAL


@dataclasses.dataclass(frozen=True)
class FreshInZeroOut(Rule):
    name: ClassVar[str] = "fresh_in_zero_out"
    incoming: ClassVar[Fill] = Fill.FRESH
    outgoing: ClassVar[Fill] = Fill.NEUTRAL


class _Margin:
    """A rule whose new output units sit `offset` below the old ones: the greedy action (and,
    far enough below, the sampled policy) is kept when the offset is negative."""

    def preserves(self, role: Role) -> tuple[Preserved, str]:
        if role != "output":
            return super().preserves(role)
        if self.offset == AUTO:
            return "greedy", ""
        if self.offset < 0:
            return ("policy" if -self.offset >= POLICY_MARGIN else "greedy"), ""
        return "none", (f"offset {self.offset:g} is not negative, so a tie (above 0, any input) can "
                        f"go to a new action; use offset='auto' (a margin that follows the outputs' "
                        f"magnitude and dtype)")

    def resolved(self, margin: float) -> Rule:
        """This rule with ``offset="auto"`` replaced by ``-margin`` (the margin the tree needs)."""
        return dataclasses.replace(self, offset=-float(margin)) if self.offset == AUTO else self


@dataclasses.dataclass(frozen=True)
class Mean(_Margin, Rule):
    outgoing: Fill = Fill.NEUTRAL
    offset: float | str = 0.0
    name: ClassVar[str] = "mean"
    incoming: ClassVar[Fill] = Fill.MEAN


class _FromSource(Rule):
    """A rule whose new units take another (old) unit's incoming weights: `source`."""

    source: Source

    def __hash__(self):
        source = self.source
        if isinstance(source, Mapping):
            source = tuple(sorted(source.items(), key=repr))
        return hash((type(self), source, self.offset, getattr(self, "ratio", None)))

    def source_of(self, new_id: Hashable) -> Hashable:
        """The old unit a new unit copies or splits, by the new unit's ID."""
        if isinstance(self.source, Mapping):
            return self.source.get(new_id)
        return self.source

    def problems(self, space: str, ids: tuple) -> list[str]:
        old_ids, new_ids = ids
        old_set = set(old_ids)
        missing = sorted({show(self.source_of(u)) for u in new_ids
                          if u not in old_set and self.source_of(u) not in old_set})
        if not missing:
            return []
        return [(f"space {space!r}: {self.name} names source IDs [{', '.join(missing)}] that are not "
                f"old units of the space (old IDs: {show(list(old_ids))})")]

    def sources(self, src: np.ndarray, ids: tuple) -> np.ndarray:
        """Each unit's index among the old units: its own, or for a new unit its source's (-1
        where that is not an old unit, which `problems` reports)."""
        old_ids, new_ids = ids
        from_unit = index_by_id([self.source_of(u) for u in new_ids], old_ids)
        return np.where(src < 0, from_unit, src).astype(np.int32)

    def units(self, src: np.ndarray, side: Side, ids: tuple, on_bias: bool) -> Units:
        copied = self.sources(src, ids)
        if (copied < 0).any():  # a source that is not an old unit: the plan raises
            return kept(src)
        if side == "incoming":  # the source's incoming weights; `own` marks the copies
            return Units(copied, no_fill(len(src)), offset=self._offsets(src < 0, side, on_bias), own=src)
        return self._outgoing_units(src, copied, ids)

    def _outgoing_units(self, src: np.ndarray, copied: np.ndarray, ids: tuple) -> Units:
        return super().units(src, "outgoing", ids, on_bias=False)


@dataclasses.dataclass(frozen=True, eq=True)
class Copy(_Margin, _FromSource):
    source: Source = None
    offset: float | str = 0.0
    name: ClassVar[str] = "copy_of"
    incoming: ClassVar[None] = None  # every new unit's incoming weights are its source's
    outgoing: ClassVar[Fill] = Fill.NEUTRAL
    __hash__ = _FromSource.__hash__


@dataclasses.dataclass(frozen=True, eq=True)
class Split(_FromSource):
    source: Source = None
    ratio: float = 0.4
    name: ClassVar[str] = "split"
    incoming: ClassVar[None] = None  # every new unit's incoming weights are its source's
    outgoing: ClassVar[None] = None  # the source's outgoing weights are shared with it
    __hash__ = _FromSource.__hash__

    def preserves(self, role: Role) -> tuple[Preserved, str]:
        return ("none" if role == "output" else "function"), ""

    def _outgoing_units(self, src: np.ndarray, copied: np.ndarray, ids: tuple) -> Units:
        # The source unit keeps 1 - ratio * (its number of splits) of its outgoing weights.
        added = src < 0
        splits = np.bincount(copied[added], minlength=len(ids[0]))
        scale = np.where(added, self.ratio, 1.0 - self.ratio * splits[np.maximum(src, 0)])
        return Units(copied, no_fill(len(src)), scale=scale.astype(np.float32), own=src)


def fresh() -> Rule:
    """New units keep the new network's own initialisation (the seeds' rule). Preserves neither
    the function nor the greedy action.

    >>> fresh().preserves("hidden")[0]
    'none'
    """
    return Fresh()


def zeros() -> Rule:
    """Incoming and outgoing weights at the neutral value (0; a norm's scale and variance 1).
    Preserves the function for inputs and hidden units; for outputs it preserves neither (a zero
    Q wins when rewards are negative). A hidden unit that starts all-zero stays dead under ReLU:
    prefer [`fresh_in_zero_out`][flaxsurgery.fresh_in_zero_out] for hidden units.

    >>> zeros().preserves("input")[0], zeros().preserves("output")[0]
    ('function', 'none')
    """
    return Zeros()


def fresh_in_zero_out() -> Rule:
    """Fresh incoming weights, zero outgoing weights (OpenAI Five's rule for new hidden units).
    Preserves the function exactly; gradients reach the new unit through its outgoing weights.

    >>> fresh_in_zero_out().preserves("hidden")[0]
    'function'
    """
    return FreshInZeroOut()


_OUTGOING = {"zeros": Fill.NEUTRAL, "fresh": Fill.FRESH, "mean": Fill.MEAN}


def mean(outgoing: str = "zeros", offset: float | str = 0.0) -> Rule:
    """Incoming weights (and bias) are the mean over the old units, `offset` added to the bias.
    For a new action the Q-value is the mean of the old Q-values plus `offset`, never above their
    max: preserves the greedy action. With ``offset=0`` a tie (one old action, or old Q-values
    equal up to float rounding) can still go to the new action; a negative offset larger than
    the rounding of the outputs rules that out: ``offset="auto"`` (the "preserving" preset's)
    derives it from the old output layer on the tree at hand (`greedy_margin`). For
    inputs and hidden units (with zero outgoing weights) preserves the function.
    ``outgoing="mean"`` makes a new embedding token the mean of the old tokens.

    Args:
      outgoing: how a new unit's outgoing weights start: ``"zeros"`` (the neutral value),
        ``"fresh"`` or ``"mean"``.
      offset: added to a new output unit's bias, or ``"auto"``: minus `greedy_margin`.

    Raises:
      ValueError: for another `outgoing`, or an offset that is neither a number nor "auto".

    >>> mean().preserves("output")[0], mean(offset="auto").preserves("output")[0]
    ('none', 'greedy')
    """
    if outgoing not in _OUTGOING:
        raise ValueError(f"mean(outgoing=...) must be one of {tuple(_OUTGOING)}, got {outgoing!r}")
    return Mean(outgoing=_OUTGOING[outgoing], offset=_offset(offset))


def _offset(offset) -> float | str:
    if offset == AUTO:
        return AUTO
    try:
        return float(offset)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be a number or {AUTO!r}, got {offset!r}") from None


def copy_of(source: Source, offset: float | str = 0.0) -> Rule:
    """Incoming weights copied from old unit `source`, `offset` added to its bias, outgoing zero.
    For a new action with an offset below minus the outputs' rounding (``"auto"``: see
    `greedy_margin`) its Q is below the copied action's, so the greedy action is kept
    exactly; with ``offset >= 0`` neither is kept.

    Args:
      source: the old unit ID to copy, or a mapping new unit ID -> old unit ID.
      offset: added to the copied bias, or ``"auto"``.

    >>> copy_of("left", offset=-1.0).preserves("output")[0]
    'greedy'
    """
    return Copy(source=source, offset=_offset(offset))


def split(source: Source, ratio: float = 0.4) -> Rule:
    """Net2Net widening: the new unit copies `source`'s incoming weights, and `source`'s outgoing
    weights are shared between them, ``ratio`` to the new unit and the rest to the source, so the
    function is exact while the unequal shares break the symmetry between the two.

    Args:
      source: the old unit ID to split, or a mapping new unit ID -> old unit ID.
      ratio: the new unit's share, in (0, 1).

    Raises:
      ValueError: for a ratio outside (0, 1).

    >>> split(3).preserves("hidden")[0]
    'function'
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"split ratio must lie in (0, 1), got {ratio}")
    return Split(source=source, ratio=float(ratio))


def greedy_margin(magnitude: float, terms: int, dtypes) -> float:
    """How far below the old outputs a new output must start for float rounding never to give it
    a tie: ``max(GREEDY_MARGIN, 2 * (terms + 1) * eps * magnitude)``.

    Each output is a sum of `terms` products plus a bias; computed in a dtype of machine epsilon
    ``eps`` (the coarsest of `dtypes`), it is off by at most ``terms * eps`` times the sum of its
    terms' magnitudes (the standard bound for a dot product), `magnitude`; two outputs by twice
    that. A new action that starts further below the old ones than this can neither round up to
    an old action's value nor take a tie (argmax picks the first of equal values, and a new
    action may come first in the ID list). The margin also exceeds the spacing of the bias values
    it is added to, so the offset survives its own rounding.

    Args:
      magnitude: the largest ``|bias_j| + R * sum_i |kernel_ij|`` over the old output units,
        where R bounds the values the output layer reads (1 where the activation before it is
        unbounded: the margin then holds where they stay within +-1 of their typical scale,
        ``docs/rules.md``).
      terms: the number of products in each output's sum (the output layer's fan-in).
      dtypes: the dtypes of the leaves that hold the outputs' units.

    >>> greedy_margin(1.0, 64, ["float32"])  # small outputs: the floor
    0.001
    >>> round(greedy_margin(1e4, 64, ["float32"]), 3)  # |Q| ~ 1e4 needs more than 1e-3
    0.155
    """
    eps = max((float(jnp.finfo(d).eps) for d in dtypes if jnp.issubdtype(d, jnp.floating)),
              default=float(jnp.finfo(jnp.float32).eps))
    return max(GREEDY_MARGIN, 2.0 * (terms + 1) * eps * float(magnitude))


@dataclasses.dataclass(frozen=True)
class Preset:
    """Default rules by a space's role, and the init of new layers."""

    input: Rule
    hidden: Rule
    output: Rule
    layer: LayerInit

    def rule_for(self, role: Role) -> Rule:
        return getattr(self, role)


PresetName = Literal["preserving", "policy", "seed"]
PRESETS: dict[PresetName, Preset] = {
    # Function-preserving: new inputs ignored, new hidden units silent, new actions never greedy.
    "preserving": Preset(input=zeros(), hidden=fresh_in_zero_out(), output=mean(offset=AUTO),
                         layer="identity"),
    # As preserving, for stochastic policies: new actions' logits far below the old ones, so the
    # sampled policy (not only the greedy action) is kept.
    "policy": Preset(input=zeros(), hidden=fresh_in_zero_out(), output=mean(offset=-POLICY_MARGIN),
                     layer="identity"),
    # The original paper's rules: new units fresh, new layers near-identity.
    "seed": Preset(input=fresh(), hidden=fresh(), output=fresh(), layer="near_identity"),
}


# ----------------------------------------------------------------------------- registry

# Rules by name, for spec files and the command line: a factory taking the rule's keywords.
RULES: dict[str, Callable[..., Rule]] = {}


def register_rule(name: str, factory: Callable[..., Rule]) -> None:
    """Makes a rule known by `name` to spec files (``{"rules": {"out": {name: {...}}}}``) and the
    command line: `factory` takes the keywords the file gives and returns a [`Rule`][flaxsurgery.Rule].
    Registering changes no plan: a rule preserves what its own `preserves` says, checked by the
    plan on its trees. A later registration under the same name replaces the earlier one.

    Raises:
      ValueError: for a name that is not a non-empty string, or a factory that is not callable.

    >>> register_rule("quiet_mean", lambda offset=-0.5: mean(offset=offset))
    >>> rule_from_text({"quiet_mean": {"offset": -1.0}}).offset
    -1.0
    >>> del RULES["quiet_mean"]
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"a rule's name must be a non-empty string, got {show(name)}")
    if not callable(factory):
        raise ValueError(f"rule {name!r}: the factory must be callable, got {show(factory)}")  # noqa: TRY004 (user input: one error type)
    RULES[name] = factory


def rule_from_text(given: Any) -> Rule:
    """A rule as a spec file writes it, ``"zeros"`` or ``{"mean": {"offset": -0.001}}``.

    Raises:
      ValueError: for an unknown name or keywords the rule does not take.
    """
    if not (isinstance(given, str) or (isinstance(given, Mapping) and len(given) == 1)):
        raise ValueError(f"a rule is a rule's name or {{name: {{keyword: value}}}}, got {show(given)}")
    name, kwargs = (given, {}) if isinstance(given, str) else next(iter(given.items()))
    if name not in RULES:
        raise ValueError(f"unknown rule {show(name)}; choose one of {sorted(RULES)}")
    if not isinstance(kwargs or {}, Mapping):
        raise ValueError(f"rule {name!r}: keywords must be a mapping, got {show(kwargs)}")  # noqa: TRY004
    try:
        rule = RULES[name](**(kwargs or {}))
    except TypeError as error:
        raise ValueError(f"rule {name!r}: {error}") from error
    if not isinstance(rule, Rule):
        raise ValueError(f"rule {name!r}: its factory returned {show(rule)}, not a Rule")  # noqa: TRY004
    return rule


for _factory in (zeros, fresh, fresh_in_zero_out, mean, copy_of, split):
    register_rule(_factory.__name__, _factory)
