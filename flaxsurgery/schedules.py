"""What each schedule of a training state does after surgery: its value at the moved state's
count, at the kept count and at a restarted one (`schedule_values`), so a continuing run can see
an ended schedule before it trains on it. The counters themselves move with the state
([`transplant_state`][flaxsurgery.transplant_state]'s ``reset=``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from flaxsurgery.paths import flatten
from flaxsurgery.plans import Plan
from flaxsurgery.state import schedule_counters
from flaxsurgery.units import problems_error, show

ENDED = 0.01  # a schedule whose value is below 1% of its start has reached its end


class ScheduleValue(NamedTuple):
    """What a schedule does when training continues after surgery.

    Attributes:
      name: the schedule's name, as given (``"learning_rate"``, ``"epsilon"``).
      counter: the path of the counter it runs on in the state.
      count: the counter in the new state (kept, or restarted by ``reset=``).
      value: the schedule at `count`: what the continuing run starts from.
      kept_value: the schedule at the old state's count (the counter kept).
      reset_value: the schedule at the fresh state's count (the counter restarted).
      ended: `value` is below 1% of `reset_value` (an annealed learning rate at its end): the
        continuing run barely moves.
      restart: the ``reset=`` that restarts it.
    """

    name: str
    counter: str
    count: Any
    value: Any
    kept_value: Any
    reset_value: Any
    ended: bool
    restart: tuple

    def __str__(self) -> str:
        note = (f"; it has reached its end: reset={self.restart} restarts it at "
                f"{_shown(self.reset_value)}" if self.ended else "")
        return (f"{self.name} on {self.counter} = {_shown(self.count)}: {_shown(self.value)} "
                f"(kept {_shown(self.kept_value)}, reset {_shown(self.reset_value)}){note}")


def _shown(x: Any) -> str:
    x = np.asarray(x)
    return f"{x.item():.4g}" if x.size == 1 else np.array2string(x, precision=4, threshold=6)


def schedule_values(old_state: Any, new_state: Any, fresh_state: Any, plan: Plan,
                    schedules: Mapping[str, Any]) -> tuple[ScheduleValue, ...]:
    """Each schedule's value where the continuing run starts, with the counter kept and reset.

    Args:
      old_state, new_state, fresh_state: the old state, the moved one, and the fresh one (the
        states [`transplant_state`][flaxsurgery.transplant_state] took and returned).
      plan: the parameters' plan.
      schedules: ``{name: schedule}`` for a schedule of optax's schedule counter (the state's
        ``count`` beside no moments; where several hold the same count, as
        ``inject_hyperparams``' do, the shortest path), or ``{name: (schedule, counter path)}`` for one that
        runs on another counter (``("steps",)``, ``"n_updates"``); a schedule maps a count to
        its value (an optax schedule, or any function).

    Raises:
      ValueError: for a counter path the state lacks, or a schedule given alone when the state
        has no optax schedule counter or several.
    """
    old_leaves, _ = flatten(old_state)
    new_leaves, _ = flatten(new_state)
    fresh_leaves, _ = flatten(fresh_state)
    values, problems = [], []
    for name, given in schedules.items():
        fn, counter = given if isinstance(given, tuple) else (given, None)
        path = _counter_path(counter, new_state, new_leaves, plan, problems, name)
        if path is None:
            continue
        if path not in old_leaves:
            problems.append(f"schedule {name!r}: old_state lacks its counter {path!r}")
            continue
        count = new_leaves[path]
        value, kept, start = (np.asarray(fn(c)) for c in (count, old_leaves[path], fresh_leaves[path]))
        ended = bool(np.any(value < ENDED * start))
        restart = ("schedule",) if path in schedule_counters(new_state, plan) else (path,)
        values.append(ScheduleValue(name, path, np.asarray(count), value, kept, start, ended, restart))
    if problems:
        raise problems_error("the schedules do not fit the state", problems)
    return tuple(values)


def _counter_path(counter, state, leaves, plan, problems, name) -> str | None:
    if counter is None:
        found = sorted(schedule_counters(state, plan), key=len)
        values = {np.asarray(leaves[p]).tobytes() for p in found}
        if len(found) == 1 or found and len(values) == 1:  # inject_hyperparams keeps two, equal
            return found[0]
        problems.append(f"schedule {name!r}: the state has {len(found)} optax schedule counters "
                        f"{found}; name its counter with {{{name!r}: (schedule, 'path')}}")
        return None
    matches = [p for p in leaves if p == counter or p.endswith("/" + counter)]
    if len(matches) != 1:
        problems.append(f"schedule {name!r} runs on counter {counter!r}, which matches "
                        f"{len(matches)} leaves of the state ({show(matches)}); name one path")
        return None
    return matches[0]
