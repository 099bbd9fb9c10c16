"""A spec that does not fit raises one ValueError naming every problem; nothing is changed."""

from __future__ import annotations

import re

import numpy as np
import pytest

import flaxsurgery as fs


def mlp(n_in=2, hidden=3, n_out=2, dtype=np.float32):
    return {"Dense_0": {"kernel": np.ones((n_in, hidden), dtype), "bias": np.zeros(hidden, dtype)},
            "Dense_1": {"kernel": np.ones((hidden, n_out), dtype), "bias": np.zeros(n_out, dtype)}}


LAYOUT = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"], prefix="")


def problems_of(excinfo) -> list[str]:
    return [line[4:] for line in str(excinfo.value).splitlines() if line.startswith("  - ")]


def test_duplicate_ids():
    with pytest.raises(ValueError, match=re.escape("space 'obs': duplicate new IDs ['a']")):
        fs.plan(mlp(), mlp(), LAYOUT, spaces={"obs": (["a", "b"], ["a", "a"])})


def test_unknown_space():
    with pytest.raises(ValueError, match="spaces names unknown space 'actions'"):
        fs.plan(mlp(), mlp(), LAYOUT, spaces={"actions": (2, 2)})


def test_axis_count_disagrees_with_leaf():
    layout = {**LAYOUT, "Dense_0/kernel": ("obs",)}
    with pytest.raises(ValueError, match=re.escape("old leaf 'Dense_0/kernel' has 2 axes (2, 3), but its layout gives 1")):
        fs.plan(mlp(), mlp(), layout)


def test_id_count_disagrees_with_size():
    with pytest.raises(ValueError, match=re.escape("space 'obs': 3 old IDs ['a', 'b', 'c'] but the old parameters have 2 units")):
        fs.plan(mlp(), mlp(), LAYOUT, spaces={"obs": (["a", "b", "c"], ["a", "b"])})


def test_space_sizes_disagree_between_leaves():
    bad = mlp()
    bad["Dense_1"]["kernel"] = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="space 'h' has 3 old units at 'Dense_0/bias' axis 0, but 4 at 'Dense_1/kernel' axis 0"):
        fs.plan(bad, mlp(), LAYOUT)


def test_new_leaf_no_rule_covers():
    new = {**mlp(), "Extra": {"kernel": np.ones((3, 3), np.float32)}}
    with pytest.raises(ValueError, match="new leaf 'Extra/kernel' .* has no source and identity needs a kernel"):
        fs.plan(mlp(), new, LAYOUT)
    # A layer init for that leaf resolves it.
    plan = fs.plan(mlp(), new, LAYOUT, leaf_inits={"Extra/kernel": "zeros"})
    assert fs.transplant(mlp(), plan)["Extra"]["kernel"].shape == (3, 3)
    # Its old name still works, with a deprecation warning, for a release.
    with pytest.warns(DeprecationWarning, match="leaf_rules= is now leaf_inits="):
        old_name = fs.plan(mlp(), new, LAYOUT, leaf_rules={"Extra/kernel": "zeros"})
    assert old_name.leaves == plan.leaves


def test_old_leaf_dropped_silently():
    new = {"Dense_0": mlp()["Dense_0"]}
    layout = {k: v for k, v in LAYOUT.items() if k.startswith("Dense_0")}
    with pytest.raises(ValueError, match=re.escape("old leaves ['Dense_1/bias', 'Dense_1/kernel'] would be dropped")):
        fs.plan(mlp(), new, LAYOUT, new_layout=layout)
    with pytest.raises(ValueError, match="new layer 'Dense_0' takes its weights from the old layer of the same name"):
        fs.plan(mlp(), new, LAYOUT, new_layout=layout, drop=["Dense_1"])  # Dense_0's output is now the output
    fs.plan(mlp(), new, LAYOUT, new_layout=layout, drop=["Dense_1"], layer_map={"Dense_0": "Dense_0"})  # explicit: fine


def test_layer_map_names_missing_layers():
    with pytest.raises(ValueError) as excinfo:
        fs.plan(mlp(), mlp(), LAYOUT, layer_map={"Dense_9": None, "Dense_1": "Dense_7"})
    problems = problems_of(excinfo)
    assert "layer_map names new layer 'Dense_9', which the new tree lacks" in problems
    assert "layer_map maps 'Dense_1' to old layer 'Dense_7', which the old tree lacks" in problems


def test_dtype_conflict():
    new = mlp()
    new["Dense_1"]["bias"] = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="leaf 'Dense_1/bias': dtype int32 but its source 'Dense_1/bias' is float32"):
        fs.plan(mlp(), new, LAYOUT)


def test_copy_source_must_be_an_old_unit():
    with pytest.raises(ValueError, match=re.escape("space 'out': copy_of names source IDs ['up']")):
        fs.plan(mlp(), mlp(n_out=3), LAYOUT, spaces={"out": (["l", "r"], ["l", "r", "n"])}, rules={"out": fs.copy_of("up")})


def test_split_source_must_be_an_old_unit():
    with pytest.raises(ValueError, match=re.escape("space 'h': split names source IDs ['zz']")):
        fs.plan(mlp(), mlp(hidden=4), LAYOUT, spaces={"h": ([0, 1, 2], [0, 1, 2, "n"])}, rules={"h": fs.split("zz")})


def test_every_problem_is_listed_at_once():
    bad_layout = {**LAYOUT, "Dense_0/bias": ("h", None)}
    with pytest.raises(ValueError) as excinfo:
        fs.plan(mlp(), mlp(), bad_layout, spaces={"obs": (["a", "a"], 2), "nope": (1, 1)},
                layer_map={"Dense_5": None}, preset="preserving")
    problems = problems_of(excinfo)
    assert len(problems) >= 4, problems
    assert any("duplicate old IDs ['a']" in p for p in problems)
    assert any("unknown space 'nope'" in p for p in problems)
    assert any("'Dense_0/bias' has 1 axes" in p for p in problems)
    assert any("'Dense_5'" in p for p in problems)


def test_transplant_rejects_a_tree_that_does_not_match_the_plan():
    plan = fs.plan(mlp(), mlp(hidden=4), LAYOUT, rules={"h": fs.zeros()})
    wrong = mlp(n_in=5)
    original = np.array(wrong["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match=re.escape("old_tree leaf 'Dense_0/kernel' has shape (5, 3), the plan expects (2, 3)")):
        fs.transplant(wrong, plan)
    np.testing.assert_array_equal(wrong["Dense_0"]["kernel"], original)


def test_unknown_preset_and_bad_rule():
    with pytest.raises(ValueError, match="unknown preset 'gentle'"):
        fs.plan(mlp(), mlp(), LAYOUT, preset="gentle")
    with pytest.raises(ValueError, match=re.escape("rules['h'] must be a flaxsurgery Rule")):
        fs.plan(mlp(), mlp(), LAYOUT, rules={"h": "zeros"})
