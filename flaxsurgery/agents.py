"""Surgery on whole agents: one call from the old model and its trained state to the new one.

[`surgery`][flaxsurgery.surgery] traces both forward passes, pairs layers by their place in the forward pass when
inserted or removed layers shift Linen's auto-names, builds the plan, and moves everything shaped
like the parameters: a flax ``TrainState`` (parameters, target and EMA parameters, optimizer
state, step), a Linen variables dict, and observation-normalisation statistics.
"""

from __future__ import annotations

import copy as pycopy
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.buffers import BufferSurgery, transplant_buffer
from flaxsurgery.forward import ForwardPassError, VariablesMismatch
from flaxsurgery.layout import carries_units, leaf_entries, spaces_in
from flaxsurgery.leaves import NEUTRAL_BY_NAME
from flaxsurgery.paths import flatten, layer_of, leaf_name
from flaxsurgery.planner import plan as make_plan
from flaxsurgery.plans import Plan
from flaxsurgery.schedules import ScheduleValue, schedule_values
from flaxsurgery.spaces import roles_of
from flaxsurgery.spec import Spec
from flaxsurgery.state import transplant_state
from flaxsurgery.trace import argument_names, traced_model
from flaxsurgery.units import index_by_id
from flaxsurgery.verify import VerifyReport, verify

# Running statistics of an observation normaliser: the value a new feature starts from.
NORMALIZER_NEUTRAL = {**NEUTRAL_BY_NAME, "summed_variance": None}  # None: the count (variance 1)


class Surgery(NamedTuple):
    """What [`surgery`][flaxsurgery.surgery] returns.

    Attributes:
      state: the new agent's state, structured as the fresh state passed in.
      plan: the plan (``plan.report()`` says what is preserved).
      normalizer: the moved observation-normalisation statistics (None if none were given).
      old_fn: ``inputs -> selected output`` of the old agent, for checks.
      new_fn: ``inputs -> selected output`` of the new agent, for checks.
      input_space: the name of the (first) input's space.
      buffer: the moved replay buffer and the transitions it dropped (a
        [`BufferSurgery`][flaxsurgery.BufferSurgery]; None if no buffer was given).
      schedules: what each schedule given to [`surgery`][flaxsurgery.surgery] does when training continues (a
        `ScheduleValue` each: its value at the new state's count, at
        the kept and at a reset count, and whether it has reached its end).
    """

    state: Any
    plan: Plan
    normalizer: Any
    old_fn: Callable
    new_fn: Callable
    input_space: str
    buffer: BufferSurgery | None = None
    schedules: tuple[ScheduleValue, ...] = ()

    def verify(self, *samples: Any, outputs: str | None = None, logits: bool = False) -> VerifyReport:
        """[`flaxsurgery.verify`][flaxsurgery.verify.verify] of the old and new agent on the old agent's `samples`
        (``logits=True`` where the outputs are a policy's logits: then it reports ``policy_kl``)."""
        return verify(self.old_fn, self.new_fn, samples[0], self.plan, inputs=self.input_space,
                      outputs=outputs, logits=logits)


def surgery(
    old_model: Any,
    old_state: Any,
    new_model: Any,
    new_state: Any,
    samples: Any,
    *,
    spec: Spec | None = None,
    new_samples: Any = None,
    output: Callable | None = None,
    input_names: Sequence[str] | None = None,
    reset: Collection[str] = (),
    kinds: Mapping | None = None,
    normalizer: Any = None,
    buffer: Any = None,
    buffer_options: Mapping[str, Any] | None = None,
    schedules: Mapping[str, Any] | None = None,
    **options: Any,
) -> Surgery:
    """Moves a trained agent into a new architecture, in one call.

    Args:
      old_model: a Linen module, or an ``apply(variables, *inputs)`` function.
      old_state: the trained state: a flax ``TrainState`` (and subclasses with target or EMA
        parameters, ``batch_stats``), a Linen variables dict, or a params dict.
      new_model: the new architecture, as `old_model`.
      new_state: the new agent's fresh state of the same kind (``TrainState.create`` with the
        new model's init; a variables dict from ``new_model.init``): gives the result's
        structure, the new units' fresh values and the optimizer's initial statistics.
      samples: a sample input of the old model (a batch of more than one), or a tuple of them.
      spec: the planning options as one [`Spec`][flaxsurgery.Spec] (without layouts: both
        models are traced). Its ``layer_map`` defaults to pairing layers by their place in the
        forward pass (an inserted or removed layer needs none); its ``neutral`` applies to the
        normaliser's statistics too.
      new_samples: the new model's; by default the old samples with their input space's units
        mapped by the spec's `spaces` (new features 0).
      **options: any of [`Spec`][flaxsurgery.Spec]'s fields, in place of the spec's:
        ``spaces`` (``{space: (old_ids, new_ids)}`` for the spaces whose units change; spaces
        are named after the inputs (``obs``), the output (``out``) and the layers
        (``Dense_0``)), ``layer_map``, ``rules``, ``preset``, ``leaf_inits``, ``drop``,
        ``neutral``.
      output: selects the array that carries units from the model's output (the logits of a
        categorical, the loc of a Gaussian, one element of a tuple).
      input_names: names for the input spaces (default: the model's argument names).
      reset: as [`flaxsurgery.transplant_state`][flaxsurgery.transplant_state]: which counters restart, by kind
        (``"schedule"``, ``"bias_correction"``, ``"all"``) or by path (``"n_updates"``).
      kinds: as [`flaxsurgery.transplant_state`][flaxsurgery.transplant_state]: how unknown parameter-shaped fields move.
      normalizer: observation-normalisation statistics to move along the first input's space
        (see [`transplant_normalizer`][flaxsurgery.transplant_normalizer]; `neutral` applies to them too).
      buffer: the old agent's replay buffer, moved along the first input's space and the output
        space ([`flaxsurgery.transplant_buffer`][flaxsurgery.transplant_buffer]); new features start at the moved
        normaliser's mean when `normalizer` is given, else 0.
      buffer_options: more keyword arguments of [`flaxsurgery.transplant_buffer`][flaxsurgery.transplant_buffer]
        (``fields=``, ``output_space=``, ``new_features=``, ``items=``).
      schedules: ``{name: schedule}`` or ``{name: (schedule, counter path)}``: the schedules of
        the continuing run (a learning rate on optax's schedule ``count``, epsilon on the
        agent's step counter); the result says where each starts
        (`flaxsurgery.schedules.schedule_values`).

    Returns:
      A [`Surgery`][flaxsurgery.Surgery]: ``.state``, ``.plan``, ``.normalizer``, ``.buffer``,
      ``.schedules`` and ``.verify(samples)``.

    Raises:
      ValueError: every problem at once, as [`flaxsurgery.plan`][flaxsurgery.plan] does; for a layer pairing
        the forward order cannot settle, the candidates.
    """
    spec = Spec.of(spec, **options)
    samples = samples if isinstance(samples, tuple) else (samples,)
    old_vars, new_vars = variables_of(old_state), variables_of(new_state)
    old_apply, new_apply = _apply_of(old_model, output), _apply_of(new_model, output)
    if input_names is None:  # from the model itself: a selector's wrapper has no argument names
        input_names = argument_names(_apply_of(old_model, None), len(samples), skip=1)
    plan, names = plan_models(old_apply, old_vars, new_apply, new_vars, samples, spec,
                              new_samples=new_samples, input_names=input_names)
    state = transplant_state(old_state, plan, new_state, reset=reset, kinds=kinds)
    moved = None if normalizer is None else transplant_normalizer(normalizer, plan, names[0], spec.neutral)
    moved_buffer = None
    if buffer is not None:
        options = {"input_space": names[0], "normalizer": moved, **(buffer_options or {})}
        moved_buffer = transplant_buffer(buffer, plan, **options)
    values = () if not schedules else schedule_values(old_state, state, new_state, plan, schedules)
    new_vars_out = variables_of(state)
    return Surgery(
        state=state, plan=plan, normalizer=moved,
        old_fn=lambda *x: old_apply(old_vars, *x), new_fn=lambda *x: new_apply(new_vars_out, *x),
        input_space=names[0], buffer=moved_buffer, schedules=values,
    )


def plan_models(old_apply: Callable, old_vars: Any, new_apply: Callable, new_vars: Any,
                samples: tuple, spec: Spec | None = None, *, new_samples: Any = None,
                input_names: Sequence[str] | None = None, **options: Any) -> tuple[Plan, tuple]:
    """The plan between two models, both traced, layers paired by forward order when no
    `layer_map` is given: what [`surgery`][flaxsurgery.surgery] builds before it moves the state (the variables
    may be ``ShapeDtypeStruct`` trees, as from a checkpoint's metadata).

    Returns:
      (the plan, the input spaces' names). What the plan preserves is its report's.

    Raises:
      ValueError: as [`flaxsurgery.plan`][flaxsurgery.plan]; when the new model does not run on the new
        samples (naming a `spaces` key that is no input); for an ambiguous layer pairing.
      TypeError: for an option that is not one of Spec's fields, or a spec that has layouts
        (both are traced here).
    """
    spec = Spec.of(spec, **options)
    if spec.layout is not None or spec.new_layout is not None:
        raise TypeError("the models are traced for their layouts: give a spec without layout and "
                        "new_layout (fs.plan takes layouts)")
    spaces = spec.spaces
    try:
        old_traced = traced_model(old_apply, old_vars, *samples, input_names=input_names)
    except VariablesMismatch as error:
        raise ValueError(f"the old state does not fit the old model: {error}") from None
    names = old_traced.input_names
    if new_samples is None:
        new_samples = tuple(_map_sample(x, spaces.get(name) if spaces else None)
                            for x, name in zip(samples, names))
    new_samples = new_samples if isinstance(new_samples, tuple) else (new_samples,)
    try:
        new_traced = traced_model(new_apply, new_vars, *new_samples, input_names=names)
    except ForwardPassError as error:  # the new samples are derived: say how they were
        shapes = [tuple(np.shape(x)) for x in new_samples]
        unknown = sorted(set(spaces or {}) - set(roles_of(old_traced.layout)) - set(names), key=str)
        lead = (f"spaces names {unknown}, which the old model does not have (its inputs are "
                f"{list(names)}), so " if unknown else "")
        raise ValueError(
            f"{lead}the new model does not run on the new samples (shapes {shapes}). The new "
            f"samples are the old ones with the input spaces {list(names)} mapped by spaces=; "
            f"name the input space there, or pass new_samples=. {error}") from error
    # Spaces the user leaves out keep their IDs; their traced sizes tell the parts of a Concat
    # or Grid apart (a critic's obs and action, concatenated), which the leaves cannot.
    unchanged = {name: (size, size) for name, size in old_traced.sizes.items()
                 if new_traced.sizes.get(name) == size}
    spec = spec.replace(layout=old_traced.layout, new_layout=new_traced.layout,
                        spaces={**unchanged, **(spaces or {})})
    if spec.layer_map is None:
        layer_map, removed = aligned_layers(old_traced, new_traced)
        drop = (spec.drop,) if isinstance(spec.drop, str) else tuple(spec.drop or ())
        spec = spec.replace(layer_map=layer_map, drop=drop + tuple(removed))
    plan = make_plan(old_vars, new_vars, spec)
    return plan, names


def variables_of(state: Any) -> Any:
    """The variables a model's apply takes, from a training state (``TrainState.params``, plus
    ``batch_stats`` where the state has them) or the variables themselves."""
    if not hasattr(state, "params") or isinstance(state, Mapping):
        return state
    params = state.params
    variables = dict(params) if isinstance(params, Mapping) and "params" in params else {"params": params}
    if getattr(state, "batch_stats", None) is not None:
        variables["batch_stats"] = state.batch_stats
    return variables


def _apply_of(model: Any, output: Callable | None) -> Callable:
    apply = model.apply if hasattr(model, "apply") and hasattr(model, "init") else model
    if not callable(apply):  # one error type for every bad input, as plan's problems
        raise ValueError(f"a model must be a Linen module or an apply(variables, *inputs) function, "  # noqa: TRY004
                         f"got {type(model).__name__}")
    if output is None:
        return apply
    return lambda variables, *inputs: output(apply(variables, *inputs))


def _map_sample(x: Any, ids: tuple | None) -> Any:
    """A sample with its last axis's units mapped from old IDs to new ones (0 for new units)."""
    if ids is None:
        return x
    old_ids, new_ids = (tuple(range(i)) if isinstance(i, (int, np.integer)) else tuple(np.asarray(i).tolist())
                        if hasattr(i, "shape") else tuple(i) for i in ids)
    index = index_by_id(new_ids, old_ids)
    taken = jnp.take(jnp.asarray(x), np.maximum(index, 0), axis=-1)
    return jnp.where(index >= 0, taken, jnp.zeros((), taken.dtype))


# ----------------------------------------------------------------------------- layer pairing


def _layers(traced) -> list[str]:
    """Layers in the order the forward pass first reads them."""
    return list(dict.fromkeys(layer_of(p) for p in traced.order if p in traced.layout))


def _signature(traced, layer: str, roles: dict) -> tuple:
    """What a layer is, apart from its name and sizes: its leaves, their ranks, and which axes
    carry the network's inputs or outputs."""
    entries = leaf_entries(traced.layout)
    leaves = sorted(p for p in entries if layer_of(p) == layer)
    return tuple((leaf_name(p), tuple(
        "-" if not carries_units(a) else "/".join(sorted({roles.get(s, "?") for s in spaces_in(a)}))
        for a in entries[p])) for p in leaves)


def aligned_layers(old, new) -> tuple[dict, list]:
    """The layer map that pairs old and new layers by their place in the forward pass.

    Layers pair from the front while they match (same leaves, ranks and roles), then from the
    back; the new layers left in between are new, the old ones left in between are removed. When
    both sides leave layers in between, the pairing is ambiguous and raises with the candidates.

    Returns:
      (layer map, old layers removed).
    """
    old_roles, new_roles = roles_of(old.layout), roles_of(new.layout)
    old_layers, new_layers = _layers(old), _layers(new)
    old_sig = [_signature(old, layer, old_roles) for layer in old_layers]
    new_sig = [_signature(new, layer, new_roles) for layer in new_layers]
    front = 0
    while front < min(len(old_sig), len(new_sig)) and old_sig[front] == new_sig[front]:
        front += 1
    back = 0
    while back < min(len(old_sig), len(new_sig)) - front and old_sig[-1 - back] == new_sig[-1 - back]:
        back += 1
    old_mid = old_layers[front:len(old_layers) - back]
    new_mid = new_layers[front:len(new_layers) - back]
    if old_mid and new_mid:
        raise ValueError(
            f"cannot pair layers by their place in the forward pass: old layers {old_mid} and new "
            f"layers {new_mid} sit between the matching ones; say which new layer takes from which "
            f"with layer_map (e.g. {{{new_mid[0]!r}: {old_mid[0]!r}}}, or None for a new layer)")
    pairs = list(zip(new_layers[:front], old_layers[:front]))
    pairs += list(zip(new_layers[len(new_layers) - back:], old_layers[len(old_layers) - back:]))
    layer_map = {new: old for new, old in pairs}
    layer_map.update({layer: None for layer in new_mid})
    return layer_map, list(old_mid)


# ----------------------------------------------------------------------------- normalisers


def transplant_normalizer(stats: Any, plan: Plan, space: str, neutral: Mapping | None = None) -> Any:
    """Moves observation-normalisation statistics along `space` with the plan.

    Every array whose last axis has the space's old size is rearranged by unit ID; a new feature
    starts neutral: ``mean`` 0, ``var``/``std`` 1, Brax's ``summed_variance`` the count (variance
    1). Scalars (the shared ``count``, ``std_eps``) are kept, and so are dtypes (SB3 keeps
    float64). The count is shared, so a new feature's running statistics move as slowly as the
    old ones': it starts as if ``count`` samples with mean 0 and variance 1 had been seen.

    Accepts a pytree (a dict, Brax's ``RunningStatisticsState``, whose ``UInt64`` count is read
    as a number) or an object with array attributes (SB3's ``RunningMeanStd``, returned as a
    copy). `neutral` overrides a statistic's starting value by name: Brax's statistics updated
    in ``"ema"`` mode keep the variance itself in ``summed_variance``, so pass
    ``neutral={"summed_variance": 1.0}`` for them.

    Raises:
      ValueError: for an array of another shape, or one whose name does not tell its neutral
        value.
    """
    info = plan.space(space)
    index = info.index()
    n_old = len(info.old_ids)
    fills = {**NORMALIZER_NEUTRAL, **(neutral or {})}
    if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(stats)):  # a pytree
        leaves, treedef = flatten(stats)
        count = _count(leaves)
        moved = {p: _move(p, x, index, n_old, count, space, fills) for p, x in leaves.items()}
        return jax.tree_util.tree_unflatten(treedef, [moved[p] for p in leaves])
    if hasattr(stats, "__dict__"):  # an object such as SB3's RunningMeanStd
        out = pycopy.copy(stats)
        fields = {k: v for k, v in vars(stats).items()}
        count = _count(fields)
        for name, value in fields.items():
            setattr(out, name, _move(name, value, index, n_old, count, space, fills))
        return out
    raise ValueError(f"normalizer statistics must be a pytree or an object with array attributes, "
                     f"got {type(stats).__name__}")


def _count(leaves: Mapping) -> Any:
    """The statistics' sample count: a leaf named ``count`` or ``n``, or Brax's ``UInt64``
    count (``count/hi``, ``count/lo``) as a float."""
    counts = [v for p, v in leaves.items() if leaf_name(p) in ("count", "n")]
    if counts:
        return counts[0]
    hi = [v for p, v in leaves.items() if p.endswith("count/hi")]
    lo = [v for p, v in leaves.items() if p.endswith("count/lo")]
    if hi and lo:
        return np.float64(int(np.asarray(hi[0])) * 2**32 + int(np.asarray(lo[0])))
    return None


def _move(path: str, value: Any, index: np.ndarray, n_old: int, count: Any, space: str,
          fills: Mapping) -> Any:
    if np.ndim(value) == 0:
        return value
    if np.shape(value)[-1] != n_old:
        raise ValueError(f"normalizer leaf {path!r} has shape {np.shape(value)}, but space {space!r} "
                         f"has {n_old} old units on the last axis")
    name = leaf_name(path)
    if name not in fills:
        raise ValueError(f"normalizer leaf {path!r}: its name does not tell a new feature's neutral "
                         f"value (known: {sorted(fills)}); say it with neutral={{{name!r}: ...}}")
    fill = fills[name]
    if fill is None:
        if count is None:
            raise ValueError(f"normalizer leaf {path!r} needs the statistics' count")
        fill = count
    xp = np if isinstance(value, np.ndarray) else jnp
    taken = xp.take(xp.asarray(value), np.maximum(index, 0), axis=-1)
    return xp.where(index >= 0, taken, xp.asarray(fill, dtype=taken.dtype)).astype(taken.dtype)

