"""Rules for what is new: new units of a space, and new layers.

A unit has *incoming* weights (where its space is a leaf's output axis: a kernel's column, its
bias, its norm scale) and *outgoing* weights (where its space is an input axis: a kernel's row,
an embedding's row). A :class:`Rule` says how each side of a new unit starts.

What each rule promises, for the role its space plays in the network (a plan checks the promise
on its trees and reports what holds: see ``Plan.report()``):

=====================  ==========================================  ==========================
rule                   inputs / hidden units                       outputs (actions)
=====================  ==========================================  ==========================
``fresh()``            neither (the seeds' rule)                   neither
``zeros()``            function exactly (outgoing weights are 0)   neither: a zero Q-value
                                                                   wins the argmax when every
                                                                   old Q is negative
``fresh_in_zero_out``  function exactly                            neither
``mean(offset)``       function exactly (outgoing weights are 0)   greedy action when
                                                                   ``offset`` is below
                                                                   ``-GREEDY_MARGIN``; the
                                                                   sampled policy too when it
                                                                   is below ``-POLICY_MARGIN``
``copy(k, offset)``    function exactly (outgoing weights are 0)   as ``mean``
``split(k, ratio)``    function exactly (Net2Net: the new unit     neither
                       computes unit k's value; k's outgoing
                       weights are shared ``1-ratio : ratio``)
=====================  ==========================================  ==========================

An output promise holds only where the offset lands on the output layer's bias (a leaf named
``bias``, ``b`` or ``beta``) and no other one-axis leaf (a norm's scale) carries the actions;
otherwise the plan reports "none". No promise holds for a space the forward pass mixes (a
LayerNorm's statistics, a softmax inside the model): see ``flaxsurgery.layout.MIXING``.

``zeros`` means the neutral value: 0 for weights and for one-axis leaves named ``bias``/``mean``
(...), 1 for ``scale``, ``var``, ``std`` (...), so a new BatchNorm feature passes its input
through unchanged; a one-axis leaf of another name must be told (``plan(neutral=...)``).
Exactness for ``split`` holds for element-wise activations and BatchNorm, not LayerNorm (whose
statistics span the features).

New layers (no source in the old network) start from a layer init: ``"identity"`` (kernel 1
where the input unit's ID equals the output unit's ID, a conv kernel's centre tap only; bias 0;
norm scale and variance 1), which preserves the function after an idempotent activation such as
ReLU; ``"near_identity"`` (identity plus ``0.01`` times the fresh kernel: the seeds' rule, not
exact); ``"fresh"``; ``"zeros"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping

import jax.numpy as jnp

FILLS = ("fresh", "zeros", "mean")
LAYER_INITS = ("identity", "near_identity", "fresh", "zeros")
NEAR_IDENTITY_NOISE = 0.01
# Below the mean of the old Q-values by more than float32 rounding of Q-values up to ~1e4.
GREEDY_MARGIN = 1e-3
# New actions' logits this far below the mean of the old ones: a new action's probability is at
# most exp(-20) ~ 2e-9 of the most likely old action's, so the sampled policy is kept (KL < 1e-8
# per new action). An on-policy learner then almost never tries the new action (docs/agents.md).
POLICY_MARGIN = 20.0

Source = Hashable | Mapping


@dataclasses.dataclass(frozen=True)
class Rule:
    """How the new units of one space start.

    Attributes:
      name: the constructor's name, for reports.
      incoming: ``"fresh"``, ``"zeros"`` or ``"mean"`` (of the old units' incoming weights), or
        ``"copy"`` of ``source``'s incoming weights.
      outgoing: ``"fresh"``, ``"zeros"`` or ``"mean"``, or ``"split"``: ``ratio`` of
        ``source``'s outgoing weights, the source unit keeping the rest.
      source: for copy and split, the old unit ID to take from, or a mapping new ID -> old ID.
      offset: added to a new unit's bias (``copy`` and ``mean``).
      ratio: the new unit's share of its source's outgoing weights (``split`` only).
    """

    name: str
    incoming: str
    outgoing: str
    source: Source = None
    offset: float = 0.0
    ratio: float = 0.4

    def __hash__(self):
        source = tuple(sorted(self.source.items(), key=repr)) if isinstance(self.source, Mapping) else self.source
        return hash((self.name, self.incoming, self.outgoing, source, self.offset, self.ratio))

    def source_of(self, new_id: Hashable) -> Hashable:
        """The old unit a new unit copies or splits, by the new unit's ID."""
        if isinstance(self.source, Mapping):
            return self.source.get(new_id)
        return self.source

    def exactness(self, role: str) -> str:
        """What this rule promises for a space of `role`: ``"function"``, ``"policy"`` (the
        sampled policy of logits), ``"greedy"`` or ``"none"``. A plan checks the promise on its
        trees (where the offset lands, the dtype's rounding) and reports what holds."""
        if role == "output":
            if self.incoming in ("mean", "copy") and self.offset < 0:
                return "policy" if -self.offset >= POLICY_MARGIN else "greedy"
            return "none"
        if self.outgoing in ("zeros", "split"):
            return "function"
        return "none"


def fresh() -> Rule:
    """New units keep the new network's own initialisation (the seeds' rule). Preserves neither
    the function nor the greedy action.

    >>> fresh().exactness("hidden")
    'none'
    """
    return Rule("fresh", incoming="fresh", outgoing="fresh")


def zeros() -> Rule:
    """Incoming and outgoing weights 0 (norm scale and variance 1). Preserves the function for
    inputs and hidden units; for outputs it preserves neither (a zero Q wins when rewards are
    negative). A hidden unit that starts all-zero stays dead under ReLU: prefer
    :func:`fresh_in_zero_out` for hidden units.

    >>> zeros().exactness("input"), zeros().exactness("output")
    ('function', 'none')
    """
    return Rule("zeros", incoming="zeros", outgoing="zeros")


def fresh_in_zero_out() -> Rule:
    """Fresh incoming weights, zero outgoing weights (OpenAI Five's rule for new hidden units).
    Preserves the function exactly; gradients reach the new unit through its outgoing weights.

    >>> fresh_in_zero_out().exactness("hidden")
    'function'
    """
    return Rule("fresh_in_zero_out", incoming="fresh", outgoing="zeros")


def mean(outgoing: str = "zeros", offset: float = 0.0) -> Rule:
    """Incoming weights (and bias) are the mean over the old units, `offset` added to the bias.
    For a new action the Q-value is the mean of the old Q-values plus `offset`, never above their
    max: preserves the greedy action. With ``offset=0`` a tie (one old action, or old Q-values
    equal up to float rounding) can still go to the new action; a small negative offset rules
    that out (the "preserving" preset uses ``-GREEDY_MARGIN``). For inputs and hidden units
    (with zero outgoing weights) preserves the function. ``outgoing="mean"`` makes a new
    embedding token the mean of the old tokens.

    >>> mean().exactness("output"), mean(offset=-1e-3).exactness("output")
    ('none', 'greedy')
    """
    if outgoing not in FILLS:
        raise ValueError(f"mean(outgoing=...) must be one of {FILLS}, got {outgoing!r}")
    return Rule("mean", incoming="mean", outgoing=outgoing, offset=float(offset))


def copy(source: Source, offset: float = 0.0) -> Rule:
    """Incoming weights copied from old unit `source`, `offset` added to its bias, outgoing zero.
    For a new action with ``offset < 0`` its Q is below the copied action's, so the greedy action
    is kept exactly; with ``offset >= 0`` neither is kept.

    Args:
      source: the old unit ID to copy, or a mapping new unit ID -> old unit ID.
      offset: added to the copied bias.

    >>> copy("left", offset=-1.0).exactness("output")
    'greedy'
    """
    return Rule("copy", incoming="copy", outgoing="zeros", source=source, offset=float(offset))


def split(source: Source, ratio: float = 0.4) -> Rule:
    """Net2Net widening: the new unit copies `source`'s incoming weights, and `source`'s outgoing
    weights are shared between them, ``ratio`` to the new unit and the rest to the source, so the
    function is exact while the unequal shares break the symmetry between the two.

    Args:
      source: the old unit ID to split, or a mapping new unit ID -> old unit ID.
      ratio: the new unit's share, in (0, 1).

    >>> split(3).exactness("hidden")
    'function'
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"split ratio must lie in (0, 1), got {ratio}")
    return Rule("split", incoming="copy", outgoing="split", source=source, ratio=float(ratio))


def greedy_margin(dtypes) -> float:
    """How far below the old values a new action's value must start for a tie in `dtypes` never to
    go to it: :data:`GREEDY_MARGIN` for float32, scaled by the coarsest dtype's rounding."""
    eps = max((float(jnp.finfo(d).eps) for d in dtypes if jnp.issubdtype(d, jnp.floating)),
              default=float(jnp.finfo(jnp.float32).eps))
    return GREEDY_MARGIN * eps / float(jnp.finfo(jnp.float32).eps)


@dataclasses.dataclass(frozen=True)
class Preset:
    """Default rules by a space's role, and the init of new layers."""

    input: Rule
    hidden: Rule
    output: Rule
    layer: str

    def rule_for(self, role: str) -> Rule:
        return getattr(self, role)


PRESETS = {
    # Function-preserving: new inputs ignored, new hidden units silent, new actions never greedy.
    "preserving": Preset(input=zeros(), hidden=fresh_in_zero_out(), output=mean(offset=-GREEDY_MARGIN),
                         layer="identity"),
    # As preserving, for stochastic policies: new actions' logits far below the old ones, so the
    # sampled policy (not only the greedy action) is kept.
    "policy": Preset(input=zeros(), hidden=fresh_in_zero_out(), output=mean(offset=-POLICY_MARGIN),
                     layer="identity"),
    # The original paper's rules: new units fresh, new layers near-identity.
    "seed": Preset(input=fresh(), hidden=fresh(), output=fresh(), layer="near_identity"),
}
