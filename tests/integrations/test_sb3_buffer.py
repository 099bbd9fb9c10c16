"""SB3's ReplayBuffer (NumPy, the SBX recipe's) moved with the plan, field by field against a
plain-NumPy reference; the caller's buffer is never changed."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.buffers import ReplayBuffer

import flaxsurgery as fs

OBS = (["x", "v", "theta"], ["theta", "x", "omega", "theta_dot"])
ACTIONS = (["left", "stay", "right"], ["right", "left", "jump"])  # stay removed
GROWN = (["left", "stay", "right"], ["right", "stay", "left", "jump"])  # none removed
FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def make_plan(actions=ACTIONS):
    old = {"w": np.zeros((3, 3), np.float32)}
    new = {"w": np.zeros((4, len(actions[1])), np.float32)}
    return fs.plan(old, new, {"w": ("obs", "out")}, spaces={"obs": OBS, "out": actions})


def filled(rows, n_envs, added, seed=0, optimize_memory_usage=False):
    """An SB3 ReplayBuffer of `rows` rows after `added` calls of `add` (one step of every env)."""
    box = gym.spaces.Box(np.float32([-1, -2, -3]), np.float32([1, 2, 3]), dtype=np.float32)
    buffer = ReplayBuffer(rows * n_envs, box, gym.spaces.Discrete(3), device="cpu",
                          n_envs=n_envs, optimize_memory_usage=optimize_memory_usage,
                          handle_timeout_termination=not optimize_memory_usage)
    rng = np.random.default_rng(seed)
    for _ in range(added):
        buffer.add(rng.normal(size=(n_envs, 3)).astype(np.float32),
                   rng.normal(size=(n_envs, 3)).astype(np.float32),
                   rng.integers(0, 3, n_envs), rng.normal(size=n_envs).astype(np.float32),
                   (rng.random(n_envs) < 0.2).astype(np.float32),
                   [{"TimeLimit.truncated": bool(rng.random() < 0.1)} for _ in range(n_envs)])
    return buffer


def reference(buffer, actions):
    """({field: array}, pos, full, dropped), built transition by transition."""
    data = {name: np.asarray(getattr(buffer, name)) for name in FIELDS
            if getattr(buffer, name, None) is not None}
    capacity, n_envs = data["rewards"].shape
    size = capacity if buffer.full else buffer.pos
    start = buffer.pos if buffer.full else 0
    order = [((start + a) % capacity, e) for a in range(size) for e in range(n_envs)]

    def moved(row, env):
        t = {name: value[row, env] for name, value in data.items()}
        for name in ("observations", "next_observations"):
            if name in t:
                by_id = dict(zip(OBS[0], t[name]))
                t[name] = np.array([by_id.get(uid, 0.0) for uid in OBS[1]], np.float32)
        action_id = ACTIONS[0][int(t["actions"][0])]
        t["actions"] = (np.array([actions[1].index(action_id)]) if action_id in actions[1]
                        else None)
        return t

    cells = {(row, env): moved(row, env) for row in range(capacity) for env in range(n_envs)}
    kept = [cell for cell in order if cells[cell]["actions"] is not None]
    whole = len(kept) // n_envs * n_envs
    if whole == len(order):
        layout, pos, full = {cell: cell for cell in cells}, buffer.pos, buffer.full
    else:
        layout = {cell: cell for cell in cells}
        for i, cell in enumerate(kept[len(kept) - whole:]):
            layout[(i // n_envs, i % n_envs)] = cell
        pos, full = whole // n_envs, False
    def value(cell, name):
        v = cells[layout[cell]][name]
        return np.zeros_like(data[name][cell]) if v is None else v

    out = {name: np.array([[value((r, e), name) for e in range(n_envs)] for r in range(capacity)],
                          data[name].dtype) for name in data}
    return out, pos, full, len(order) - whole


def assert_matches(result, buffer, actions):
    expected, pos, full, dropped = reference(buffer, actions)
    stored = slice(None) if (pos, full) == (buffer.pos, buffer.full) else slice(0, pos)
    for name, value in expected.items():
        got = getattr(result.buffer, name)
        assert got.dtype == getattr(buffer, name).dtype, name
        np.testing.assert_array_equal(got[stored], value[stored], err_msg=name)
    assert (result.buffer.pos, result.buffer.full) == (pos, full)
    assert int(result.dropped) == dropped


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("added", [0, 2, 7])  # empty, part-filled, wrapped
@pytest.mark.parametrize("actions", [ACTIONS, GROWN], ids=["removed", "grown"])
def test_sb3_replay_buffer_matches_reference_and_is_not_mutated(n_envs, added, actions):
    buffer = filled(rows=5, n_envs=n_envs, added=added, seed=added + n_envs)
    before = copy.deepcopy(vars(buffer))
    result = fs.transplant_buffer(buffer, make_plan(actions))
    assert_matches(result, buffer, actions)
    for name in FIELDS:  # the caller's arrays are untouched
        np.testing.assert_array_equal(getattr(buffer, name), before[name], err_msg=name)
    assert (buffer.pos, buffer.full) == (before["pos"], before["full"])
    assert result.buffer is not buffer and result.buffer.observations is not buffer.observations


def test_sb3_moved_buffer_has_the_new_spaces_and_samples():
    result = fs.transplant_buffer(filled(rows=6, n_envs=1, added=6), make_plan())
    moved = result.buffer
    assert moved.obs_shape == (4,) and moved.action_space.n == 3
    np.testing.assert_array_equal(moved.observation_space.low, [-3.0, -1.0, -np.inf, -np.inf])
    if moved.pos:
        sample = moved.sample(2)
        assert tuple(sample.observations.shape) == (2, 4)
    moved.add(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), np.array([2]),
              np.zeros(1), np.zeros(1), [{}])


def test_sb3_memory_optimised_buffer_refuses_to_drop_but_moves_otherwise():
    buffer = filled(rows=5, n_envs=1, added=4, optimize_memory_usage=True)
    with pytest.raises(ValueError, match=r"SB3 replay buffer's rows are sequences"):
        fs.transplant_buffer(buffer, make_plan())
    assert_matches(fs.transplant_buffer(buffer, make_plan(GROWN)), buffer, GROWN)


def test_sb3_bad_observation_width_and_actions_raise_naming_the_field():
    buffer = filled(rows=4, n_envs=1, added=3)
    bad = copy.deepcopy(buffer)
    bad.actions[1, 0, 0] = 5
    with pytest.raises(ValueError, match=r"field 'actions' holds actions outside the 3 old"):
        fs.transplant_buffer(bad, make_plan())
    narrow = copy.deepcopy(buffer)
    narrow.observations = narrow.observations[..., :2]
    with pytest.raises(ValueError, match=r"field 'observations' has shape \(4, 1, 2\)"):
        fs.transplant_buffer(narrow, make_plan())
