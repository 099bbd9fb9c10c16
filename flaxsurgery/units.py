"""Per-unit host arrays of one axis: where each new unit comes from and how it starts; and how
unit IDs are indexed and shown in error messages.

A rule (`flaxsurgery.rules`) turns a space's unit IDs into `Units`; planning
combines them through composite axes and stores them in a plan as
`AxisArrays`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

# ``near_identity`` layer init: the identity plus this times the fresh kernel (the seeds' rule).
NEAR_IDENTITY_NOISE = 0.01


class Fill(str, enum.Enum):
    """How a new entry starts on the device ([`flaxsurgery.transplant`][flaxsurgery.transplant.transplant] applies it)."""

    FRESH = "fresh"  # the new network's own initial value
    NEUTRAL = "neutral"  # the leaf's neutral value: 0 for a weight or a shift, 1 for a scale
    ZERO = "zero"  # a literal 0: a grown conv window's padding
    MEAN = "mean"  # the mean over the old units along the axis

    def __repr__(self) -> str:
        return f"Fill.{self.name}"


@dataclasses.dataclass
class Units:
    """The units of one axis (host side).

    Attributes:
      src: int32 index into the old axis, -1 for a unit that is filled.
      fill: object array: each new unit's [`Fill`][flaxsurgery.Fill], None where ``src >= 0``.
      scale: float32 multipliers (Net2Net split), or None.
      offset: float32 addends (a new unit's bias margin), or None.
      own: int32 index of the unit itself, -1 if it is new, where ``src`` copies another unit.
    """

    src: np.ndarray
    fill: np.ndarray
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    own: np.ndarray | None = None


def no_fill(n: int) -> np.ndarray:
    """A fill array of `n` units none of which is filled."""
    return np.full(n, None, dtype=object)


def kept(src: np.ndarray) -> Units:
    """Units that all come from the old axis, as `src` says."""
    return Units(src, no_fill(len(src)))


def index_by_id(ids: Sequence[Hashable], among: Sequence[Hashable]) -> np.ndarray:
    """int32: each of `ids`' position in `among`, or -1 where `among` lacks it."""
    position = {uid: i for i, uid in enumerate(among)}
    return np.fromiter((position.get(uid, -1) for uid in ids), dtype=np.int32, count=len(ids))


def prefix_length(src: np.ndarray) -> int | None:
    """k if `src` is ``0..k-1`` followed only by -1, else None."""
    k = int((src >= 0).sum())
    return k if np.array_equal(src[:k], np.arange(k)) and (src[k:] < 0).all() else None


MAX_SHOWN = 8  # IDs shown in an error message before "..."


class SurgeryError(ValueError):
    """Every problem an input has, found at once: one line each, under a title saying what does
    not fit what. A ``ValueError``, so ``except ValueError`` catches it; ``.problems`` holds the
    lines for a program to read.

    >>> error = SurgeryError("the spec does not fit", ["leaf 'w': ...", "space 'obs': ..."])
    >>> error.problems
    ("leaf 'w': ...", "space 'obs': ...")
    >>> print(error)
    the spec does not fit:
      - leaf 'w': ...
      - space 'obs': ...
    """

    def __init__(self, title: str, problems: Sequence[str]):
        self.title, self.problems = title, tuple(problems)
        super().__init__(f"{title}:\n  - " + "\n  - ".join(self.problems))

    def __reduce__(self):  # pickles (multiprocessing, pytest-xdist) with both arguments
        return type(self), (self.title, self.problems)


class Problems(list):
    """The problems found so far: checks append a line each; `check` raises them all at once."""

    def check(self, title: str) -> None:
        """Raises one `SurgeryError` under `title` when any problem was found."""
        if self:
            raise SurgeryError(title, self)


def problems_error(title: str, problems: Sequence[str]) -> SurgeryError:
    """The one error listing every problem, under `title` (what does not fit what)."""
    return SurgeryError(title, problems)


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr`` for error messages: never raises, and long sequences are cut after `limit`."""
    if isinstance(value, (list, tuple)) and len(value) > limit:
        return "[" + ", ".join(show(v) for v in value[:limit]) + f", ... ({len(value)} in all)]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a user's ID may have any __repr__
        return f"<{type(value).__name__} whose repr fails>"
    return text if len(text) <= 200 else text[:200] + "..."
