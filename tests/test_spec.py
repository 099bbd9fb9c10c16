"""Spec is the one carrier of planning options: every way in builds one, and the same options give
the same plan whichever way they came."""

import dataclasses
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxsurgery as fs
from flaxsurgery.rl import QNetwork
from flaxsurgery.spec import FILE_KEYS, OPTIONS

OLD = {"Dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)}}
NEW = {"Dense_0": {"kernel": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}
LAYOUT = {"Dense_0/kernel": ("obs", "out"), "Dense_0/bias": ("out",), fs.OUTPUTS: ("out",)}
OPTIONS_GIVEN = {"spaces": {"obs": (["a", "b"], ["a", "c", "b"]), "out": (3, 4)},
                 "rules": {"obs": fs.zeros()}, "preset": "preserving"}


def _same(a: fs.Plan, b: fs.Plan) -> None:
    assert a.leaves == b.leaves and a.spaces == b.spaces and a.report() == b.report()
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_every_way_in_gives_the_same_plan():
    by_keywords = fs.plan(OLD, NEW, LAYOUT, **OPTIONS_GIVEN)
    by_spec = fs.plan(OLD, NEW, fs.Spec(LAYOUT, **OPTIONS_GIVEN))
    by_keyword_spec = fs.plan(OLD, NEW, spec=fs.Spec.of(layout=LAYOUT, **OPTIONS_GIVEN))
    overridden = fs.plan(OLD, NEW, fs.Spec(LAYOUT, preset="seed", **{k: v for k, v in OPTIONS_GIVEN.items()
                                                                     if k != "preset"}), preset="preserving")
    for other in (by_spec, by_keyword_spec, overridden):
        _same(by_keywords, other)
    moved = fs.transplant(OLD, by_spec, NEW)
    np.testing.assert_array_equal(moved["Dense_0"]["kernel"][[0, 2], :3], OLD["Dense_0"]["kernel"])
    np.testing.assert_array_equal(moved["Dense_0"]["kernel"][1], 0.0)  # the new input, rule zeros


def test_a_field_is_an_option_everywhere():
    # The options are the dataclass's fields: a file takes all but the layouts (traced).
    assert set(OPTIONS) == {"layout", "new_layout", "spaces", "layer_map", "rules", "preset",
                            "leaf_inits", "drop", "neutral"}
    assert set(FILE_KEYS) == set(OPTIONS) - {"layout", "new_layout"}
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['presets'\]; a Spec's options are"):
        fs.plan(OLD, NEW, LAYOUT, presets="seed")
    with pytest.raises(TypeError, match="layout is given twice"):
        fs.Spec.of(LAYOUT, layout=LAYOUT)


def test_missing_layout_is_one_clear_problem():
    with pytest.raises(fs.SurgeryError, match="no layout: say which axes carry which space") as error:
        fs.plan(OLD, NEW, spaces=OPTIONS_GIVEN["spaces"])
    assert isinstance(error.value, ValueError) and len(error.value.problems) >= 1


def test_problems_error_carries_every_problem():
    with pytest.raises(fs.SurgeryError) as error:
        fs.plan(OLD, NEW, LAYOUT, preset="nope", layer_map=["Dense_0"], neutral={"gamma": "one"})
    problems = error.value.problems
    assert any("unknown preset 'nope'" in p for p in problems)
    assert any("layer_map must be a mapping" in p for p in problems)
    assert any("neutral['gamma'] must be a number" in p for p in problems)
    assert str(error.value).count("\n  - ") == len(problems)


def test_renamed_option_warns_and_still_works():
    new = {**NEW, "Extra": {"kernel": np.ones((4, 4), np.float32)}}
    plan = fs.plan(OLD, new, LAYOUT, spaces=OPTIONS_GIVEN["spaces"], leaf_inits={"Extra/kernel": "zeros"})
    with pytest.warns(DeprecationWarning, match="leaf_rules= is now leaf_inits="):
        spec = fs.Spec(LAYOUT, spaces=OPTIONS_GIVEN["spaces"], leaf_rules={"Extra/kernel": "zeros"})
    assert spec.leaf_inits == {"Extra/kernel": "zeros"}
    _same(plan, fs.plan(OLD, new, spec))
    with pytest.raises(TypeError, match="both leaf_inits= and leaf_rules="):
        fs.Spec.of(LAYOUT, leaf_inits={}, leaf_rules={})
    with pytest.warns(DeprecationWarning, match=r"Plan.exactness\(\) is now Plan.preserves\(\)"):
        assert plan.exactness() == plan.preserves()


def test_spec_file_round_trip(tmp_path):
    text = {"spaces": {"obs": [["a", "b"], ["a", "c", "b"]], "out": {"old": 3, "new": 4}},
            "rules": {"obs": "zeros", "out": {"mean": {"offset": -0.5}}}, "drop": []}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(text))
    spec = fs.Spec.from_file(path).replace(layout=LAYOUT)
    assert spec.spaces == {"obs": (["a", "b"], ["a", "c", "b"]), "out": (3, 4)}
    assert spec.rules["out"].offset == -0.5 and spec.drop == ()
    plan = fs.plan(OLD, NEW, spec)
    assert plan.space("obs").rule.name == "zeros" and plan.space("out").rule.name == "mean"


def test_spec_file_problems_are_listed_together():
    with pytest.raises(fs.SurgeryError) as error:
        fs.Spec.from_dict({"spaces": {"obs": [1]}, "rules": {"out": "nope", "obs": {"mean": {"bad": 1}}},
                           "layout": {}, "extra": 1})
    problems = "\n".join(error.value.problems)
    for needle in ("unknown key 'layout'", "unknown key 'extra'", "space 'obs' must be [old IDs, new IDs]",
                   "rule of space 'out': unknown rule 'nope'", "rule of space 'obs': rule 'mean':"):
        assert needle in problems, problems


def test_registered_rule_is_known_to_spec_files():
    from flaxsurgery import rules

    fs.register_rule("quarter_mean", lambda: fs.mean(offset=-0.25))
    try:
        spec = fs.Spec.from_dict({"rules": {"out": "quarter_mean"}})
        assert spec.rules["out"].offset == -0.25
    finally:
        del rules.RULES["quarter_mean"]
    with pytest.raises(fs.SurgeryError, match="unknown rule 'quarter_mean'"):
        fs.Spec.from_dict({"rules": {"out": "quarter_mean"}})
    with pytest.raises(ValueError, match="factory must be callable"):
        fs.register_rule("broken", 3)


def test_surgery_takes_a_spec():
    old_model, new_model = QNetwork(hidden=(8,), num_actions=2), QNetwork(hidden=(8,), num_actions=3)
    x = jnp.ones((4, 3))
    old = old_model.init(jax.random.key(0), x)
    fresh = new_model.init(jax.random.key(1), x)
    spec = fs.Spec(spaces={"out": (["left", "right"], ["left", "right", "stay"])})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        by_spec = fs.surgery(old_model, old, new_model, fresh, x, spec=spec)
    by_keywords = fs.surgery(old_model, old, new_model, fresh, x, spaces=spec.spaces)
    _same(by_spec.plan, by_keywords.plan)
    assert by_spec.plan.preserves() == "greedy"
    samples = jax.random.normal(jax.random.key(2), (64, 3))
    assert by_spec.verify(samples).greedy_agreement == 1.0
    with pytest.raises(TypeError, match="the models are traced for their layouts"):
        fs.surgery(old_model, old, new_model, fresh, x, spec=spec.replace(layout={}))


def test_old_names_warn_at_the_callers_line():
    # Python shows a DeprecationWarning only when it names the user's own line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs.plan(OLD, NEW, LAYOUT, spaces=OPTIONS_GIVEN["spaces"], leaf_rules={})
        spec = fs.Spec(LAYOUT, leaf_rules={"Dense_0/bias": "zeros"})
        assert spec.leaf_rules == spec.leaf_inits == {"Dense_0/bias": "zeros"}
        assert fs.zeros().exactness("input") == "function" and fs.mean().promise("output")[0] == "none"
    assert len(caught) == 5 and all(w.category is DeprecationWarning for w in caught)
    assert {pathlib.Path(w.filename).name for w in caught} == {"test_spec.py"}
    assert dataclasses.replace(spec, preset="seed").leaf_inits == spec.leaf_inits  # no "both given"
    assert spec.replace(leaf_rules=None).leaf_inits == spec.leaf_inits  # None: not given


def test_spec_file_nulls_are_defaults_and_old_names_are_problems():
    spec = fs.Spec.from_dict({"drop": None, "layer_map": None, "spaces": {"out": [3, 4]}})
    assert spec.drop == () and spec.layer_map is None
    with pytest.raises(fs.SurgeryError, match="got both leaf_inits= and leaf_rules="):
        fs.Spec.from_dict({"leaf_rules": {}, "leaf_inits": {}})


def test_renamed_plan_follows_its_new_names():
    old = {"a": np.full(3, 1.0, np.float32), "b": np.full(3, 2.0, np.float32)}
    part = fs.plan(old, old, {}).renamed({"a": "z", "b": "y"})
    moved = fs.transplant({"z": old["a"], "y": old["b"]}, part)
    np.testing.assert_array_equal(moved["z"], old["a"])
    np.testing.assert_array_equal(moved["y"], old["b"])
    with pytest.raises(ValueError, match="names must cover every leaf; missing \\['b'\\]"):
        fs.plan(old, old, {}).renamed({"a": "z"})
    with pytest.raises(ValueError, match="two new leaves would get one name"):
        fs.plan(old, old, {}).renamed({"a": "z", "b": "z"})
