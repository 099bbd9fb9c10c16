"""Replay buffers moved with the plan, checked field by field against a plain-NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flaxsurgery as fs
from flaxsurgery.rl.dqn import Buffer, Transition, buffer_add, buffer_init
from tests.conftest import examples

OBS = (["x", "v", "theta"], ["theta", "x", "omega", "theta_dot"])  # v removed; omega, theta_dot new
ACTIONS = (["left", "stay", "right"], ["right", "left", "jump"])  # stay removed, jump new


def make_plan(obs=OBS, actions=ACTIONS):
    """A one-layer plan whose input space is ``obs`` and output space ``out``."""
    old = {"w": np.zeros((len(obs[0]), len(actions[0])), np.float32)}
    new = {"w": np.zeros((len(obs[1]), len(actions[1])), np.float32)}
    return fs.plan(old, new, {"w": ("obs", "out")}, spaces={"obs": obs, "out": actions})


def filled_buffer(capacity, added, obs_ids=OBS[0], n_actions=3, seed=0):
    """A DQN ring buffer after `added` transitions of random observations and actions."""
    rng = np.random.default_rng(seed)
    n = len(obs_ids)
    batch = Transition(
        obs=jnp.asarray(rng.normal(size=(added, n)), jnp.float32),
        action=jnp.asarray(rng.integers(0, n_actions, added), jnp.int32),
        reward=jnp.asarray(rng.normal(size=added), jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(added, n)), jnp.float32),
        terminated=jnp.asarray(rng.random(added) < 0.2),
    )
    buffer = buffer_init(capacity, (n,))
    return buffer if added == 0 else buffer_add(buffer, batch)


# ----------------------------------------------------------------------------- NumPy reference


def reference_features(row, old_ids, new_ids, fill):
    """One stored observation in the new input space, unit by unit."""
    by_id = dict(zip(old_ids, row))
    return np.array([by_id.get(uid, fill.get(uid, 0.0)) for uid in new_ids], np.float32)


def reference_buffer(buffer, obs=OBS, actions=ACTIONS, fill=None):
    """The moved ring, built transition by transition: {field: array}, count, dropped."""
    fill = fill or {}
    data = {k: np.asarray(v) for k, v in buffer.data._asdict().items()}
    capacity, count = len(data["reward"]), int(buffer.count)
    size = min(count, capacity)
    oldest = count % capacity if count >= capacity else 0
    ages = [(oldest + a) % capacity for a in range(size)]

    def moved(slot):
        row = {k: v[slot] for k, v in data.items()}
        action_id = actions[0][row["action"]]
        new_action = actions[1].index(action_id) if action_id in actions[1] else None
        row["obs"] = reference_features(row["obs"], obs[0], obs[1], fill)
        row["next_obs"] = reference_features(row["next_obs"], obs[0], obs[1], fill)
        row["action"] = new_action
        return row

    rows = [moved(slot) for slot in range(capacity)]
    kept = [slot for slot in ages if rows[slot]["action"] is not None]
    out = {k: [] for k in data}
    if len(kept) == size:  # nothing dropped: the same layout and count
        order, new_count = list(range(capacity)), count
    else:  # the kept ones first, oldest first; later slots keep their own content
        order, new_count = kept + list(range(len(kept), capacity)), len(kept)
    for slot in order:
        for k in data:
            value = rows[slot][k]
            out[k].append(0 if value is None else value)
    return ({k: np.asarray(v, data[k].dtype) for k, v in out.items()}, new_count,
            size - len(kept))


def assert_matches_reference(result, buffer, **kwargs):
    expected, count, dropped = reference_buffer(buffer, **kwargs)
    got = {k: np.asarray(v) for k, v in result.buffer.data._asdict().items()}
    size = min(count, len(expected["reward"]))
    for name in expected:  # every stored field, the stored slots exactly
        np.testing.assert_array_equal(got[name][:size], expected[name][:size], err_msg=name)
        assert got[name].dtype == expected[name].dtype, name
    if count == int(buffer.count):  # no compaction: the unstored slots too
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert int(result.buffer.count) == count
    assert int(result.dropped) == dropped
    assert result.dropped.dtype == jnp.int32


MOVE = {"eager": fs.transplant_buffer,
        "jit": lambda b, p, **kw: jax.jit(lambda b: fs.transplant_buffer(b, p, **kw))(b)}


# ----------------------------------------------------------------------------- the DQN buffer


@pytest.mark.parametrize("how", MOVE)
@pytest.mark.parametrize("added", [0, 5, 12, 23])  # empty, part-filled, full, wrapped
def test_dqn_buffer_matches_numpy_reference(how, added):
    buffer = filled_buffer(capacity=12, added=added)
    result = MOVE[how](buffer, make_plan())
    assert_matches_reference(result, buffer)
    assert isinstance(result.buffer, Buffer)


@pytest.mark.parametrize("how", MOVE)
def test_nothing_dropped_keeps_layout_write_position_and_count(how):
    actions = (["left", "stay", "right"], ["right", "stay", "left", "jump"])  # permuted, grown
    buffer = filled_buffer(capacity=8, added=19)
    result = MOVE[how](buffer, make_plan(actions=actions))
    assert_matches_reference(result, buffer, actions=actions)
    assert int(result.buffer.count) == 19 and int(result.dropped) == 0


@settings(max_examples=examples(40), deadline=None)
@given(capacity=st.integers(1, 10), added=st.integers(0, 25), seed=st.integers(0, 2**16),
       removed=st.sets(st.sampled_from(ACTIONS[0]), max_size=2))
def test_dqn_buffer_property(capacity, added, seed, removed):
    actions = (ACTIONS[0], [a for a in ACTIONS[0][::-1] if a not in removed] + ["jump"])
    buffer = filled_buffer(capacity, added, seed=seed)
    assert_matches_reference(fs.transplant_buffer(buffer, make_plan(actions=actions)), buffer,
                             actions=actions)


def test_population_under_jit_and_vmap_matches_each_buffer_alone():
    buffers = [filled_buffer(10, added, seed=added) for added in (3, 10, 17)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *buffers)
    plan = make_plan()
    moved = jax.jit(jax.vmap(lambda b: fs.transplant_buffer(b, plan)))(stacked)
    for i, buffer in enumerate(buffers):
        alone = jax.tree.map(lambda x, i=i: x[i], moved)
        assert_matches_reference(alone, buffer)


def test_no_retrace_on_a_second_call():
    plan = make_plan()
    traces = []

    @jax.jit
    def move(b):
        traces.append(1)
        return fs.transplant_buffer(b, plan)

    move(filled_buffer(10, 4))
    move(filled_buffer(10, 14, seed=3))
    assert len(traces) == 1


def test_moved_buffer_feeds_the_dqn_and_the_network_sees_what_it_saw():
    """The old network on a stored observation equals the transplanted one on its moved copy, on
    the actions both have: the buffer and the network moved by the same IDs."""
    obs = (["x", "v"], ["v", "x", "new"])
    actions = (["a", "b", "c"], ["c", "a", "b"])
    old_w = jax.random.normal(jax.random.key(0), (2, 3))
    fresh = {"w": jnp.ones((3, 3))}
    plan = fs.plan({"w": old_w}, fresh, {"w": ("obs", "out")},
                   spaces={"obs": obs, "out": actions}, rules={"obs": fs.zeros()})
    new_w = fs.transplant({"w": old_w}, plan, fresh)["w"]
    buffer = filled_buffer(6, 6, obs_ids=obs[0])
    moved = fs.transplant_buffer(buffer, plan).buffer
    q_old = np.asarray(buffer.data.obs @ old_w)
    q_new = np.asarray(moved.data.obs @ new_w)  # new order c, a, b: old a, b, c at 1, 2, 0
    np.testing.assert_allclose(q_new[:, [1, 2, 0]], q_old, rtol=1e-5, atol=1e-6)
    old_q_taken = q_old[np.arange(6), np.asarray(buffer.data.action)]
    new_q_taken = q_new[np.arange(6), np.asarray(moved.data.action)]
    np.testing.assert_allclose(new_q_taken, old_q_taken, rtol=1e-5, atol=1e-6)
    assert buffer_add(moved, jax.tree.map(lambda x: x[:2], moved.data)).count == 8


# ----------------------------------------------------------------------------- new features


@pytest.mark.parametrize("how", MOVE)
def test_new_features_from_normalizer_mean_and_from_a_function(how):
    buffer = filled_buffer(capacity=6, added=6)
    stats = {"mean": jnp.array([0.0, 0.0, 2.5, 0.0]), "var": jnp.ones(4), "count": jnp.float32(9)}
    result = MOVE[how](buffer, make_plan(), normalizer=stats,
                       new_features={"theta_dot": lambda o: 2.0 * o[..., 2] - o[..., 0]})
    old = np.asarray(buffer.data.obs)
    got = np.asarray(result.buffer.data.obs)
    kept = np.asarray([a != 1 for a in np.asarray(buffer.data.action)])
    np.testing.assert_array_equal(got[: kept.sum(), 2], 2.5)  # omega: the normaliser's mean
    np.testing.assert_allclose(got[: kept.sum(), 3], (2 * old[:, 2] - old[:, 0])[kept], rtol=1e-6)
    np.testing.assert_array_equal(got[: kept.sum(), :2], old[kept][:, [2, 0]])


def test_user_object_normalizer_with_mean_attribute():
    class Stats:
        mean = np.array([0.0, 0.0, -1.0, 4.0])

    result = fs.transplant_buffer(filled_buffer(4, 4), make_plan(), normalizer=Stats())
    np.testing.assert_array_equal(np.asarray(result.buffer.data.next_obs)[: 4 - int(result.dropped), 2:],
                                  np.broadcast_to([-1.0, 4.0], (4 - int(result.dropped), 2)))


# ----------------------------------------------------------------------------- bad input


def test_stored_observation_width_not_the_old_input_space_raises_naming_the_field():
    buffer = filled_buffer(5, 5, obs_ids=["a", "b"])
    with pytest.raises(ValueError, match=r"'obs'.*\(5, 2\).*3 old units of space 'obs'"):
        fs.transplant_buffer(buffer, make_plan())


def test_action_outside_the_old_ids_raises_naming_the_field():
    buffer = filled_buffer(5, 5, n_actions=3)
    bad = buffer._replace(data=buffer.data._replace(action=buffer.data.action.at[2].set(3)))
    with pytest.raises(ValueError, match=r"field 'action' holds actions outside the 3 old units"):
        fs.transplant_buffer(bad, make_plan())
    with pytest.raises(Exception, match=r"field 'action' holds actions outside"):
        jax.block_until_ready(jax.jit(lambda b: fs.transplant_buffer(b, make_plan()))(bad))


def test_action_outside_in_an_unstored_slot_is_ignored():
    buffer = filled_buffer(5, 2)
    stale = buffer._replace(data=buffer.data._replace(action=buffer.data.action.at[4].set(7)))
    assert_matches_reference(fs.transplant_buffer(stale, make_plan()), buffer)


def test_unknown_buffer_type_raises():
    with pytest.raises(ValueError, match=r"does not know a buffer of type dict"):
        fs.transplant_buffer({"obs": jnp.zeros((3, 3))}, make_plan())


def test_bad_fields_and_new_features_raise_with_names():
    buffer = filled_buffer(4, 4)
    with pytest.raises(ValueError, match=r"fields names 'observation'"):
        fs.transplant_buffer(buffer, make_plan(), fields={"observation": "obs"})
    with pytest.raises(ValueError, match=r"new_features names 'x', which is not a new unit"):
        fs.transplant_buffer(buffer, make_plan(), new_features={"x": lambda o: o[..., 0]})
    with pytest.raises(ValueError, match=r"field 'obs' moves along space 'pixels'"):
        fs.transplant_buffer(buffer, make_plan(), input_space="pixels")
    with pytest.raises(ValueError, match=r"'reward' holds float32 values"):
        fs.transplant_buffer(buffer, make_plan(), fields={"reward": ("out", "index")})


def test_fields_argument_moves_other_names_and_keeps_named_ones():
    buffer = filled_buffer(4, 4)
    result = fs.transplant_buffer(buffer, make_plan(), fields={"next_obs": None})
    np.testing.assert_array_equal(np.asarray(result.buffer.data.next_obs)[: 4 - int(result.dropped)],
                                  np.asarray(buffer.data.next_obs)[np.asarray(buffer.data.action) != 1])


def test_caller_buffer_unchanged():
    buffer = filled_buffer(6, 9)
    before = jax.tree.map(np.array, buffer)
    fs.transplant_buffer(buffer, make_plan())
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, buffer), before)
