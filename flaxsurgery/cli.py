"""The ``flaxsurgery`` command: inspect an orbax checkpoint, show a plan, apply it out of core.

    flaxsurgery inspect CKPT [--model MODULE:FACTORY]
    flaxsurgery plan CKPT --old MODULE:FACTORY --new MODULE:FACTORY --spec SPEC
    flaxsurgery apply CKPT OUT --old MODULE:FACTORY --new MODULE:FACTORY --spec SPEC

A model is named ``module:factory``: ``factory()`` (importable from the current directory)
returns ``(apply, init, inputs)``: ``apply(variables, *inputs)``, ``init(key) -> variables`` and
a tuple of sample inputs (batch size above 1). For a Linen module::

    def small():
        model, x = MLP((64, 3)), jnp.zeros((4, 5))
        return model.apply, lambda key: model.init(key, x), (x,)

The spec (JSON, or YAML with PyYAML) holds a [`Spec`][flaxsurgery.Spec]'s options, without
the layouts (the command traces them; `Spec.from_file` reads it)::

    {"spaces": {"x": [["cart_x", "theta"], ["cart_x", "cart_v", "theta"]], "out": [3, 4]},
     "rules": {"x": "zeros", "out": {"mean": {"offset": -0.001}}},
     "layer_map": {"params/Dense_2": null}, "preset": "preserving", "drop": [],
     "leaf_inits": {}, "neutral": {}}

Space names are the model's traced ones (``flaxsurgery inspect CKPT --model ...`` lists them).
Rules are a registered rule's name, or ``{name: {keyword: value}}`` (``zeros``, ``fresh``,
``fresh_in_zero_out``, ``mean``, ``copy_of``, ``split``, and any registered with
``flaxsurgery.rules.register_rule``). Errors exit with status 1 and the list of problems.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from flaxsurgery.agents import plan_models  # layers paired by forward order, as surgery does
from flaxsurgery.layout import leaf_entries, output_axis, output_spaces, space_of
from flaxsurgery.paths import flatten, path_name
from flaxsurgery.plans import Plan
from flaxsurgery.spec import FILE_KEYS, Spec
from flaxsurgery.trace import trace_layout
from flaxsurgery.units import problems_error


class Model(NamedTuple):
    """What a ``module:factory`` gives: how to run, initialise and trace the model."""

    apply: Any
    init: Any
    inputs: tuple


def load_model(name: str) -> Model:
    """Imports ``module:factory`` and calls the factory."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a model is named module:factory, got {name!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # modules next to where the command runs
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load model {name!r}: {error}") from error
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 3):
        raise ValueError(f"{name} must return (apply, init, inputs), got {type(made).__name__}")
    apply, init, inputs = made
    return Model(apply, init, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,))


def shapes_of(model: Model) -> Any:
    """The model's variables as ``jax.ShapeDtypeStruct``: nothing is initialised."""
    return jax.eval_shape(model.init, jax.random.key(0))


def check_fits(checkpoint: str, shapes: Any, model_name: str, model: Model) -> None:
    """One ValueError naming every leaf where a checkpoint and the model's variables differ
    (leaves only the checkpoint has are the plan's to judge: the spec may ``drop`` them)."""
    have, want = flatten(shapes)[0], flatten(shapes_of(model))[0]
    problems = [f"the model has leaf {p!r} {tuple(want[p].shape)}, the checkpoint lacks it"
                for p in want if p not in have]
    problems += [f"leaf {p!r} is {tuple(have[p].shape)} in the checkpoint, the model makes "
                 f"{tuple(want[p].shape)}" for p in have  # dtypes may differ (a bfloat16 checkpoint)
                 if p in want and tuple(have[p].shape) != tuple(want[p].shape)]
    if problems:
        raise problems_error(f"checkpoint {checkpoint!r} does not fit the model {model_name} (is "
                             f"it the checkpoint's model?)", problems)


def build_plan(old_shapes: Any, old: Model, new: Model, spec: Spec) -> Plan:
    """The plan from the checkpoint's shapes, both models' traced layouts and the spec."""
    new_shapes = shapes_of(new)
    return plan_models(old.apply, old_shapes, new.apply, new_shapes, tuple(old.inputs), spec,
                       new_samples=tuple(new.inputs))[0]


def _checkpoint():
    from flaxsurgery import checkpoint

    return checkpoint


def inspect(args) -> str:
    shapes = _checkpoint().checkpoint_shapes(args.checkpoint)
    leaves = flatten(shapes)[0]
    layout = {}
    if args.model:
        model = load_model(args.model)
        check_fits(args.checkpoint, shapes, args.model, model)
        layout = trace_layout(model.apply, shapes, *model.inputs)
    width = max(len(p) for p in leaves)
    lines = [f"{'leaf':<{width}}  {'shape':<16} {'dtype':<9} spaces"]
    sizes: dict[str, int] = {}
    for path, leaf in leaves.items():
        axes = layout.get(path, ())
        lines.append(f"{path:<{width}}  {tuple(leaf.shape)!s:<16} {leaf.dtype!s:<9} "
                     f"{', '.join(map(str, axes)) if axes else ''}")
        for axis, entry in enumerate(axes):
            if isinstance(entry, str):
                sizes.setdefault(entry, leaf.shape[axis])
    total = sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in leaves.values())
    lines.append(f"{len(leaves)} leaves, {total:,} bytes")
    if sizes:
        lines.append("spaces: " + ", ".join(f"{name} ({size})" for name, size in sizes.items()))
    return "\n".join(lines)


def _plan_from(args) -> tuple[Plan, Model]:
    old, new = load_model(args.old), load_model(args.new)
    shapes = _checkpoint().checkpoint_shapes(args.checkpoint)
    check_fits(args.checkpoint, shapes, f"--old {args.old}", old)
    return build_plan(with_output_values(args.checkpoint, shapes, old), old, new,
                      Spec.from_file(args.spec)), new


def with_output_values(checkpoint: str, shapes: Any, old: Model) -> Any:
    """The checkpoint's shapes with the values of the leaves that hold the outputs' incoming
    weights (the output layer: small): a new action's margin, and so what the plan claims for
    it, follows the old outputs' magnitude, which shapes alone do not tell."""
    layout = trace_layout(old.apply, shapes, *old.inputs)
    outputs = output_spaces(layout)
    paths = [path for path, axes in leaf_entries(layout).items()
             if output_axis(axes) is not None and space_of(axes[output_axis(axes)]) in outputs]
    values = _checkpoint().load_leaves(checkpoint, paths)
    return jax.tree_util.tree_map_with_path(
        lambda key, leaf: values.get(path_name(key), leaf), shapes)


class ProgressBar:
    """A text progress bar on stderr: ``[######----]  60%  1.2 GB / 2.0 GB``."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r[{'#' * filled}{'-' * (self.width - filled)}] {100 * done // max(total, 1):3d}%  "
                          f"{_size(done)} / {_size(total)}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def apply(args) -> str:
    p, new = _plan_from(args)
    fresh = new.init(jax.random.key(args.seed)) if any(leaf.needs_fresh for leaf in p.leaves) else None
    _checkpoint().transplant_checkpoint(args.checkpoint, args.out, p, fresh,
                                        max_group_bytes=int(args.group_mb * (1 << 20)),
                                        progress=None if args.quiet else ProgressBar())
    return p.report() + f"\nwrote {args.out}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flaxsurgery", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    inspect_cmd = commands.add_parser("inspect", help="list a checkpoint's leaves (and spaces, given a model)")
    inspect_cmd.add_argument("checkpoint")
    inspect_cmd.add_argument("--model", help="module:factory of the checkpoint's model, to list its spaces")
    for name, help_text in [("plan", "print the plan's report"), ("apply", "write the new checkpoint")]:
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument("checkpoint", help="the old orbax checkpoint")
        if name == "apply":
            cmd.add_argument("out", help="the new checkpoint's path (must not exist)")
            cmd.add_argument("--seed", type=int, default=0, help="key of the new model's init, for fresh values")
            cmd.add_argument("--group-mb", type=float, default=64, help="leaves transplanted together, in MiB")
            cmd.add_argument("--quiet", action="store_true", help="no progress bar")
        cmd.add_argument("--old", required=True, help="module:factory of the old model")
        cmd.add_argument("--new", required=True, help="module:factory of the new model")
        cmd.add_argument("--spec", required=True, help=f"JSON or YAML spec with keys among {', '.join(FILE_KEYS)}")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run = {"inspect": inspect, "plan": lambda a: _plan_from(a)[0].report(), "apply": apply}[args.command]
    try:
        print(run(args))
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"flaxsurgery {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
