"""Running a model's forward pass for tracing, with one clear error when it cannot run.

The tracer calls ``apply(variables, *sample_inputs)`` under `jax.make_jaxpr`. What goes
wrong there is the user's model meeting the user's inputs, not the tracer: an argument the
samples do not give (``train=``), a collection the call wants to update (BatchNorm's
``batch_stats`` in training mode), variables of another model, a sample of the wrong shape, an
output that is not arrays (a distribution). Each becomes a `ForwardPassError` (a
``ValueError``) that names the cause and the fix, instead of a hint that points elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flaxsurgery.paths import collection_of, flatten

WRAP_HINT = ("trace the call as the policy runs it, with the other arguments fixed: "
             "lambda v, obs: model.apply(v, obs, train=False) (fs.surgery takes such a function "
             "as its model)")


class ForwardPassError(ValueError):
    """The model's forward pass does not run on the variables and sample inputs given."""


class VariablesMismatch(ForwardPassError):
    """The variables are not the model's: a leaf's shape differs, or a leaf is missing."""


class _NotArrays(Exception):
    """Raised inside the trace when the model returns something other than arrays."""

    def __init__(self, kinds: list[str]):
        super().__init__(kinds)
        self.kinds = kinds


def trace_forward(apply: Callable, variables: Any, inputs: tuple) -> tuple:
    """``jax.make_jaxpr(apply, return_shape=True)(variables, *inputs)``, every failure as a
    `ForwardPassError` naming its cause.

    >>> closed, shape = trace_forward(lambda v, x: x @ v["w"], {"w": np.ones((3, 2))}, (np.ones((4, 3)),))
    >>> shape.shape
    (4, 2)
    >>> trace_forward(lambda v, x, train: x, {}, (np.ones((4, 3)),))
    Traceback (most recent call last):
    ...
    flaxsurgery.forward.ForwardPassError: trace_layout: the model's call needs an argument the sample inputs do not give (<lambda>() missing 1 required positional argument: 'train'); trace the call as the policy runs it, with the other arguments fixed: lambda v, obs: model.apply(v, obs, train=False) (fs.surgery takes such a function as its model)
    """
    def arrays_only(variables, *inputs):
        out = apply(variables, *inputs)
        kinds = [type(x).__name__ for x in jax.tree_util.tree_leaves(out) if not hasattr(x, "shape")]
        if kinds:
            raise _NotArrays(kinds)
        return out

    try:
        return jax.make_jaxpr(arrays_only, return_shape=True)(variables, *inputs)
    except _NotArrays as error:
        raise ForwardPassError(
            f"trace_layout: the forward pass returns {error.kinds}, not arrays (a distribution, a "
            f"custom object); trace a function that selects the array whose last axis carries "
            f"units, e.g. the logits of a categorical or the loc of a Gaussian "
            f"(fs.surgery(..., output=lambda out: out.logits))") from None
    except Exception as error:  # any failure of the user's model, explained once
        raise _explained(error, apply, variables, inputs) from error


def _explained(error: Exception, apply: Callable, variables: Any, inputs: tuple) -> ForwardPassError:
    """The error a failed forward pass raises: its cause, and what to do."""
    text = str(error).split(" (https://flax.readthedocs")[0].rstrip(".")
    kind = type(error).__name__
    if kind == "ModifyScopeVariableError":
        collection = re.search(r'collection "([^"]+)"', text)
        return ForwardPassError(
            f"trace_layout: the forward pass updates the collection "
            f"{collection.group(1) if collection else '?'!r} ({text}): the model runs in training "
            f"mode (BatchNorm with use_running_average=False updates its batch_stats); "
            + WRAP_HINT)
    shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(inputs)]
    if kind in ("ScopeParamShapeError", "ScopeParamNotFoundError", "ScopeCollectionNotFound"):
        # Flax infers a kernel's shape from the input, so either side may be the wrong one.
        return VariablesMismatch(
            f"trace_layout: the variables do not fit the model run on sample inputs of shapes "
            f"{shapes}: {_mismatches(apply, variables, inputs, text)}; are the variables this "
            f"model's, and the samples a batch of its inputs?")
    if isinstance(error, TypeError) and re.search(r"missing \d+ required (positional|keyword)", text):
        return ForwardPassError(f"trace_layout: the model's call needs an argument the sample inputs "
                                f"do not give ({text}); " + WRAP_HINT)
    return ForwardPassError(
        f"trace_layout: the forward pass fails on the variables and sample inputs (shapes {shapes}): "
        f"{kind}: {text}. Are the samples the model's inputs, a batch of them? If the call takes "
        f"other arguments, " + WRAP_HINT)


def _mismatches(apply: Callable, variables: Any, inputs: tuple, text: str) -> str:
    """Every leaf where the variables and the model's own init differ, where the model's init
    is at hand (a Linen module's ``apply``); else flax's words for the first such leaf."""
    module = getattr(apply, "__self__", None)
    if module is None or not hasattr(module, "init"):
        return _flax_words(text)
    try:
        want = flatten(jax.eval_shape(module.init, jax.random.key(0), *inputs))[0]
    except Exception:  # noqa: BLE001 - the samples themselves may not fit: say what flax said
        return _flax_words(text)
    have = flatten(variables)[0]
    problems = [f"leaf {p!r} is {tuple(np.shape(have[p]))}, the model makes {tuple(want[p].shape)}"
                for p in have if p in want and tuple(np.shape(have[p])) != tuple(want[p].shape)]
    problems += [f"the variables lack leaf {p!r} {tuple(want[p].shape)}" for p in want
                 if p not in have and collection_of(p) == "params"]
    return "; ".join(problems) if problems else _flax_words(text)


def _flax_words(text: str) -> str:
    """Flax's shape error as the leaf and its two shapes."""
    found = re.search(r'parameter "([^"]+)" in "([^"]*)", the given initializer is expected to '
                      r"generate shape (\(.*?\)), but the existing parameter it received has shape "
                      r"(\(.*?\))", text)
    if not found:
        return text
    name, scope, want, have = found.groups()
    return f"leaf 'params{scope}/{name}' is {have}, the model makes {want}"
