"""Function-preservation reports: does the new network still compute what the old one did?"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.paths import path_name
from flaxsurgery.plans import Plan

# The relative difference (``max_rel_diff``) that float rounding alone gives a transplant that
# keeps the function but changes the order of a sum (a wider layer adds zero terms; XLA may split
# the sum differently): 32 units in the last place of the dtype. A claimed function holds when
# ``max_rel_diff`` is within this; copy these, not an absolute threshold such as 1e-5, which a
# network with outputs around 100 exceeds by rounding alone.
ROUNDING = {name: 32 * float(jnp.finfo(name).eps) for name in ("float32", "float16", "bfloat16", "float64")}


class VerifyReport(NamedTuple):
    """What [`verify`][flaxsurgery.verify.verify] measured.

    Attributes:
      max_abs_diff: ``max |f_new(x) - f_old(x)|`` over the samples and the output units both
        networks have.
      max_rel_diff: ``max_abs_diff`` divided by the largest ``|f_old(x)|`` over the same
        samples and units: the difference relative to the outputs' magnitude, comparable
        across scales; rounding alone gives up to [`ROUNDING`][flaxsurgery.ROUNDING] of the outputs' dtype.
      greedy_agreement: fraction of samples whose argmax output has the same unit ID in both.
      samples: number of samples compared.
      policy_kl: only where the outputs are declared a policy's logits (``verify(...,
        logits=True)``; None otherwise: Q-values are not a policy): the largest ``KL(old ||
        new)`` over the samples between the softmax distributions of the outputs (the new one
        over the old units' IDs), what a stochastic policy's sampling changes.
    """

    max_abs_diff: float
    max_rel_diff: float
    greedy_agreement: float
    samples: int
    policy_kl: float | None = None


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
    inputs: str | None = None,
    outputs: str | None = None,
    x_new: jnp.ndarray | None = None,
    logits: bool = False,
) -> VerifyReport:
    """Compares the old and new networks on the same samples.

    Args:
      old_fn: ``x -> outputs`` of the old network (parameters bound).
      new_fn: ``x -> outputs`` of the new network.
      x_old: samples for the old network, units of space `inputs` on the last axis.
      plan: the transplant plan between them.
      inputs: the input space; new input units get 0 unless `x_new` is given. Default: the
        plan's one input space.
      outputs: the output space, compared on the units both networks have. Default: the plan's
        one output space.
      x_new: samples for the new network (default: `x_old` mapped by [`map_units`][flaxsurgery.map_units]).
      logits: whether the outputs are a policy's logits (a categorical's): then the report's
        ``policy_kl`` measures how the sampled policy changed. Q-values are not a policy: a
        greedy agent's policy is the argmax, which ``greedy_agreement`` measures.

    Returns:
      A [`VerifyReport`][flaxsurgery.VerifyReport].
    """
    if x_new is None:
        x_new = map_units(x_old, plan, inputs or _only_space(plan, "input", "inputs"))
    outputs = outputs or _only_space(plan, "output", "outputs")
    y_old = _select(old_fn(x_old), outputs)
    y_new = _select(new_fn(x_new), outputs)
    info = plan.space(outputs)
    index = info.index()
    kept = index >= 0
    y_old64, y_new64 = y_old.astype(np.float64), y_new.astype(np.float64)
    diff = np.abs(y_new64[..., kept] - y_old64[..., index[kept]])
    old_ids = np.array(info.old_ids, dtype=object)
    new_ids = np.array(info.new_ids, dtype=object)
    agree = old_ids[y_old.argmax(-1)] == new_ids[y_new.argmax(-1)]
    max_abs = float(diff.max()) if diff.size else 0.0
    return VerifyReport(
        max_abs_diff=max_abs,
        max_rel_diff=_relative(max_abs, np.abs(y_old64[..., index[kept]])),
        greedy_agreement=float(np.mean(agree)),
        samples=int(np.prod(y_old.shape[:-1])),
        policy_kl=_policy_kl(y_old64, y_new64, index) if logits else None,
    )


def _relative(max_abs: float, magnitudes: np.ndarray) -> float:
    """`max_abs` over the largest old output magnitude (0 when both are 0: nothing differs)."""
    scale = float(magnitudes.max()) if magnitudes.size else 0.0
    if scale == 0.0:
        return 0.0 if max_abs == 0.0 else float("inf")
    return max_abs / scale


def _select(y, outputs: str) -> np.ndarray:
    """The output array named `outputs` when a network returns a tuple or dict (``out/0``,
    ``out/logits``, as trace_layout names them); the output itself when it is one array."""
    leaves = jax.tree_util.tree_flatten_with_path(y)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return np.asarray(leaves[0][1])
    named = {"out/" + path_name(p): leaf for p, leaf in leaves}
    if outputs not in named:
        raise ValueError(f"verify: the networks return several arrays {sorted(named)}; name the one "
                         f"whose units to compare with outputs= (got {outputs!r})")
    return np.asarray(named[outputs])


def _only_space(plan: Plan, role: str, argument: str) -> str:
    """The plan's one space of `role` (``obs``/``out`` first, if several)."""
    names = [s.name for s in plan.spaces if s.role == role]
    preferred = {"input": "obs", "output": "out"}[role]
    if len(names) == 1:
        return names[0]
    if preferred in names:
        return preferred
    raise ValueError(f"verify: the plan has {len(names)} {role} spaces {names}; name one with "
                     f"{argument}=")


def _policy_kl(y_old: np.ndarray, y_new: np.ndarray, index: np.ndarray) -> float:
    """max over samples of KL(softmax(old) || softmax(new) at the old units), in float64."""
    if not (index >= 0).any():
        return 0.0
    log_old = _log_softmax(y_old)
    log_new = _log_softmax(y_new)
    at_old = np.full(log_old.shape, -np.inf)
    at_old[..., index[index >= 0]] = log_new[..., index >= 0]
    p_old = np.exp(log_old)
    terms = np.where(p_old > 0, p_old * (log_old - at_old), 0.0)
    return float(np.max(terms.sum(-1)))


def _log_softmax(y: np.ndarray) -> np.ndarray:
    shifted = y - y.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
