"""A plain-NumPy transplant that loops over every entry the obvious way: the tests' reference."""

from __future__ import annotations

import numpy as np

from flaxsurgery.units import Fill


def reference_leaf(old, fresh, old_axes, new_axes, old_ids, new_ids, rules, neutral=0.0):
    """One leaf transplanted entry by entry.

    Args:
      old, fresh: the old leaf and the new network's fresh leaf (NumPy).
      old_axes, new_axes: the leaf's layout entries (space names, None or WINDOW; no Flat).
      old_ids, new_ids: {space: list of IDs}.
      rules: {space: rule}, a rule's ``incoming`` and ``outgoing`` fills (FRESH, NEUTRAL or MEAN).
      neutral: the value Fill.NEUTRAL means for this leaf.
    """
    out = np.empty(fresh.shape, fresh.dtype)
    mapped = [a for a, s in enumerate(new_axes) if isinstance(s, str)]
    out_axis = mapped[-1] if mapped else None
    for idx in np.ndindex(*fresh.shape):
        source, spatial_pad, new_in, new_out = [], False, None, None
        for axis, space in enumerate(new_axes):
            if not isinstance(space, str):
                shift = (fresh.shape[axis] - 1) // 2 - (old.shape[axis] - 1) // 2
                o = idx[axis] - shift
                spatial_pad |= not 0 <= o < old.shape[axis]
                source.append(o)
                continue
            uid = new_ids[space][idx[axis]]
            ids = old_ids[old_axes[axis]]
            if uid in ids:
                source.append(ids.index(uid))
            else:
                source.append(None)
                if axis == out_axis:
                    new_out = (axis, rules[space].incoming)
                else:  # the last new input axis claims the entry, as in transplant
                    new_in = (axis, rules[space].outgoing)
        if spatial_pad:
            out[idx] = 0.0
            continue
        claim = new_in or new_out
        if claim is None:
            out[idx] = old[tuple(source)]
            continue
        axis, fill = claim
        if fill is Fill.FRESH:
            out[idx] = fresh[idx]
        elif fill is Fill.NEUTRAL:
            out[idx] = neutral
        else:  # Fill.MEAN: the mean over the old units of `axis`
            values = []
            for k in range(old.shape[axis]):
                at = list(source)
                at[axis] = k
                values.append(old[tuple(at)])
            out[idx] = np.mean(values)
    return out
