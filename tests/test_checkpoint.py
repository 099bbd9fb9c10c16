"""Out-of-core checkpoint surgery: the same result as the in-memory transplant, a group at a time."""

from __future__ import annotations

import os
import pathlib
import pickle
import signal
import subprocess
import sys

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

ROOT = pathlib.Path(__file__).resolve().parent.parent
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


# A child that writes the new checkpoint a group at a time and is killed (SIGKILL, no cleanup)
# as soon as the first group is on disk: the state a crash or a pre-empted job leaves.
KILLED_MID_WRITE = """
import os, pickle, signal, sys
from flaxsurgery import checkpoint
with open(sys.argv[1], "rb") as f:
    plan, fresh = pickle.load(f)
def die(done, total):
    if done < total:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.transplant_checkpoint(sys.argv[2], sys.argv[3], plan, fresh, max_group_bytes=400,
                                 progress=die)
"""


def test_a_write_killed_midway_leaves_nothing_loadable_and_never_blocks_a_rerun(setup, monkeypatch):
    tmp_path, old, fresh, layout, new_layout = setup
    p = make_plan(checkpoint.checkpoint_shapes(tmp_path / "old"), fresh, layout, new_layout)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((p, jax.tree.map(np.asarray, fresh))))
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    child = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, "job.pkl", "old", "new"], check=False,
                           cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not (tmp_path / "new").exists()  # nothing half-written is loadable
    assert (tmp_path / ("new" + checkpoint.PARTIAL_SUFFIX)).is_dir()
    with pytest.warns(UserWarning, match=r"removing '.*new\.partial_save', left by an interrupted run"):
        checkpoint.transplant_checkpoint("old", "new", p, fresh, max_group_bytes=400)
    assert_trees_equal(ocp.load(tmp_path / "new"), fs.transplant(old, p, fresh))
    assert not (tmp_path / ("new" + checkpoint.PARTIAL_SUFFIX)).exists()


def test_relative_paths_everywhere(setup, monkeypatch):
    tmp_path, old, fresh, layout, new_layout = setup
    ocp.save(tmp_path / "fresh", fresh)
    monkeypatch.chdir(tmp_path)
    p = make_plan(checkpoint.checkpoint_shapes("old"), fresh, layout, new_layout)
    assert set(checkpoint.load_leaves("old", ["params/Dense_0/bias"])) == {"params/Dense_0/bias"}
    checkpoint.transplant_checkpoint("old", pathlib.Path("new"), p, "fresh")
    assert_trees_equal(ocp.load(tmp_path / "new"), fs.transplant(old, p, fresh))
