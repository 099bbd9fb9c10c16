"""Out-of-core checkpoint surgery: the same result as the in-memory transplant, a group at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp_v0
import orbax.checkpoint.experimental.v1 as ocp
import pytest

import flaxsurgery as fs
from flaxsurgery import checkpoint
from flaxsurgery.groups import leaf_groups, subplan
from tests.conftest import MLP

OLD_MODEL, NEW_MODEL = MLP((16, 16, 3)), MLP((20, 16, 4))


def variables(model, key, inputs):
    return model.init(jax.random.PRNGKey(key), jnp.zeros((1, inputs)))


@pytest.fixture
def setup(tmp_path):
    old, fresh = variables(OLD_MODEL, 0, 5), variables(NEW_MODEL, 1, 6)
    ocp.save(tmp_path / "old", old)
    layout = fs.trace_layout(OLD_MODEL.apply, old, jnp.zeros((4, 5)))
    new_layout = fs.trace_layout(NEW_MODEL.apply, fresh, jnp.zeros((4, 6)))
    return tmp_path, old, fresh, layout, new_layout


def make_plan(old_tree, fresh, layout, new_layout):
    return fs.plan(old_tree, jax.eval_shape(lambda: fresh), layout, new_layout=new_layout,
                   spaces={"obs": (5, 6), "out": (3, 4)})


def assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_shapes_reads_metadata(setup):
    tmp_path, old, *_ = setup
    shapes = checkpoint.checkpoint_shapes(tmp_path / "old")
    assert jax.tree.structure(shapes) == jax.tree.structure(old)
    for s, leaf in zip(jax.tree.leaves(shapes), jax.tree.leaves(old)):
        assert isinstance(s, jax.ShapeDtypeStruct) and (s.shape, s.dtype) == (leaf.shape, leaf.dtype)


@pytest.mark.parametrize(("fresh_as", "read_ahead"), [("tree", 0), ("checkpoint", 1), ("function", 2)])
def test_matches_in_memory_transplant(setup, fresh_as, read_ahead):
    tmp_path, old, fresh, layout, new_layout = setup
    p = make_plan(checkpoint.checkpoint_shapes(tmp_path / "old"), fresh, layout, new_layout)
    assert any(leaf.needs_fresh for leaf in p.leaves)  # the hidden rule takes fresh values
    given = {"tree": fresh, "checkpoint": tmp_path / "fresh",
             "function": lambda path, shape: fs_leaves(fresh)[path]}[fresh_as]
    if fresh_as == "checkpoint":
        ocp.save(tmp_path / "fresh", fresh)
    seen = []
    checkpoint.transplant_checkpoint(tmp_path / "old", tmp_path / "new", p, given, max_group_bytes=400,
                                     read_ahead=read_ahead, progress=lambda done, total: seen.append((done, total)))
    assert_trees_equal(ocp.load(tmp_path / "new"), fs.transplant(old, p, fresh))
    # several groups, reported in order, ending at the total
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1][0] == seen[-1][1]
    # and the function is kept on the old inputs (new input ignored), the greedy action too
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 5))
    old_q = OLD_MODEL.apply(old, x)
    new_q = NEW_MODEL.apply(ocp.load(tmp_path / "new"), jnp.concatenate([x, jnp.ones((8, 1))], axis=1))
    np.testing.assert_allclose(new_q[:, :3], old_q, atol=1e-5)
    np.testing.assert_array_equal(jnp.argmax(new_q, axis=1), jnp.argmax(old_q, axis=1))


def fs_leaves(tree):
    from flaxsurgery.paths import flatten

    return flatten(tree)[0]


def test_reads_standard_checkpointer_and_writes_a_restorable_one(setup):
    tmp_path, old, fresh, layout, new_layout = setup
    with ocp_v0.StandardCheckpointer() as saver:
        saver.save(tmp_path / "v0", old)
    p = make_plan(checkpoint.checkpoint_shapes(tmp_path / "v0"), fresh, layout, new_layout)
    checkpoint.transplant_checkpoint(tmp_path / "v0", tmp_path / "new", p, fresh)
    with ocp_v0.StandardCheckpointer() as reader:
        restored = reader.restore(tmp_path / "new" / "state", jax.eval_shape(lambda: fresh))
    assert_trees_equal(restored, fs.transplant(old, p, fresh))


def test_subplans_make_the_whole(setup):
    _, old, fresh, layout, new_layout = setup
    p = make_plan(old, fresh, layout, new_layout)
    whole = fs_leaves(fs.transplant(old, p, fresh))
    old_leaves, fresh_leaves = fs_leaves(old), fs_leaves(fresh)
    groups = list(leaf_groups(p, 500))
    assert len(groups) > 1 and sum(len(g) for g in groups) == len(p.leaves)
    for group in groups:
        part = subplan(p, [leaf.path for leaf in group])
        got = jax.jit(fs.transplant)({leaf.source: old_leaves[leaf.source] for leaf in group},
                                     part, {leaf.path: fresh_leaves[leaf.path] for leaf in group})
        for path, value in got.items():
            np.testing.assert_array_equal(value, whole[path])


def test_errors_name_the_problem(setup):
    tmp_path, old, fresh, layout, new_layout = setup
    p = make_plan(old, fresh, layout, new_layout)
    wrong = jax.tree.map(lambda x: jnp.zeros((x.shape[0] + 1,) + x.shape[1:], x.dtype), old)
    ocp.save(tmp_path / "wrong", wrong)
    with pytest.raises(ValueError, match="(?s)does not fit the plan.*params/Dense_0/kernel"):
        checkpoint.transplant_checkpoint(tmp_path / "wrong", tmp_path / "new", p, fresh)
    with pytest.raises(ValueError, match="fresh values"):
        checkpoint.transplant_checkpoint(tmp_path / "old", tmp_path / "new", p)
    with pytest.raises(ValueError, match="lacks leaves"):
        checkpoint.load_leaves(tmp_path / "old", ["params/nowhere/kernel"])
    with pytest.raises(ValueError, match="no new leaves"):
        subplan(p, ["params/nowhere/kernel"])
    ocp.save(tmp_path / "listed", {"layers": [np.ones(2, np.float32)]})
    with pytest.raises(ValueError, match="nested dicts"):
        checkpoint.load_leaves(tmp_path / "listed", ["layers/0"])
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        checkpoint.transplant_checkpoint(tmp_path / "old", tmp_path / "taken", p, fresh)
