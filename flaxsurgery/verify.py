"""Function-preservation reports: does the new network still compute what the old one did?"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from flaxsurgery.spec import Plan


class VerifyReport(NamedTuple):
    """What :func:`verify` measured.

    Attributes:
      max_abs_diff: ``max |f_new(x) - f_old(x)|`` over the samples and the output units both
        networks have.
      greedy_agreement: fraction of samples whose argmax output has the same unit ID in both.
      samples: number of samples compared.
    """

    max_abs_diff: float
    greedy_agreement: float
    samples: int


def map_units(x: jnp.ndarray, plan: Plan, space: str, fill: float = 0.0) -> jnp.ndarray:
    """Rearranges the last axis of `x` from `space`'s old units to its new ones (`fill` for new).

    >>> import flaxsurgery as fs
    >>> p = fs.plan({"w": np.zeros((2, 1), np.float32)}, {"w": np.zeros((3, 1), np.float32)},
    ...             {"w": ("obs", None)}, spaces={"obs": (["b", "c"], ["a", "b", "c"])})
    >>> map_units(jnp.array([[5.0, 7.0]]), p, "obs")
    Array([[0., 5., 7.]], dtype=float32)
    """
    index = plan.index(space)
    taken = jnp.take(jnp.asarray(x), np.maximum(index, 0), axis=-1)
    return jnp.where(index >= 0, taken, jnp.asarray(fill, taken.dtype))


def verify(
    old_fn: Callable,
    new_fn: Callable,
    x_old: jnp.ndarray,
    plan: Plan,
    *,
    inputs: str = "obs",
    outputs: str = "out",
    x_new: jnp.ndarray | None = None,
) -> VerifyReport:
    """Compares the old and new networks on the same samples.

    Args:
      old_fn: ``x -> outputs`` of the old network (parameters bound).
      new_fn: ``x -> outputs`` of the new network.
      x_old: samples for the old network, units of space `inputs` on the last axis.
      plan: the transplant plan between them.
      inputs: the input space; new input units get 0 unless `x_new` is given.
      outputs: the output space, compared on the units both networks have.
      x_new: samples for the new network (default: `x_old` mapped by :func:`map_units`).

    Returns:
      A :class:`VerifyReport`.
    """
    if x_new is None:
        x_new = map_units(x_old, plan, inputs)
    y_old = np.asarray(old_fn(x_old))
    y_new = np.asarray(new_fn(x_new))
    info = plan.space(outputs)
    index = info.index()
    kept = index >= 0
    diff = np.abs(y_new[..., kept] - y_old[..., index[kept]])
    old_ids = np.array(info.old_ids, dtype=object)
    new_ids = np.array(info.new_ids, dtype=object)
    agree = old_ids[y_old.argmax(-1)] == new_ids[y_new.argmax(-1)]
    return VerifyReport(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        greedy_agreement=float(np.mean(agree)),
        samples=int(np.prod(y_old.shape[:-1])),
    )
