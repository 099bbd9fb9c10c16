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


def reference_ring(data, write, size, obs=OBS, actions=ACTIONS, fill=None):
    """A moved ring, built transition by transition.

    Args:
      data: {field: array (capacity, ...)}; write: the next slot written; size: slots stored.

    Returns:
      ({field: array}, kept count, dropped count, whether anything was dropped).
    """
    fill = fill or {}
    capacity = len(next(iter(data.values())))
    ages = [(write - size + a) % capacity for a in range(size)]

    def moved(slot):
        row = {k: v[slot] for k, v in data.items()}
        for name in ("obs", "next_obs"):
            if name in row:
                row[name] = reference_features(row[name], obs[0], obs[1], fill)
        action_id = actions[0][row["action"]]
        row["action"] = actions[1].index(action_id) if action_id in actions[1] else None
        return row

    rows = [moved(slot) for slot in range(capacity)]
    kept = [slot for slot in ages if rows[slot]["action"] is not None]
    # Nothing dropped: the same layout. Else the kept ones first, oldest first (the slots after
    # them are never sampled, and not compared).
    order = list(range(capacity)) if len(kept) == size else kept + list(range(len(kept), capacity))
    out = {k: np.asarray([0 if rows[slot][k] is None else rows[slot][k] for slot in order],
                         data[k].dtype) for k in data}
    return out, len(kept), size - len(kept)


def reference_buffer(buffer, **kwargs):
    """The moved DQN ring: {field: array}, count, dropped."""
    data = {k: np.asarray(v) for k, v in buffer.data._asdict().items()}
    capacity, count = len(data["reward"]), int(buffer.count)
    out, kept, dropped = reference_ring(data, count % capacity, min(count, capacity), **kwargs)
    return out, count if dropped == 0 else kept, dropped


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


@pytest.mark.parametrize("how", MOVE)
@pytest.mark.parametrize("added", [7, 23])  # part-filled, wrapped: compacted either way
def test_new_features_at_the_normalizer_mean_in_a_compacted_ring(how, added):
    """New features at a constant other than 0 while dropped transitions are compacted away."""
    buffer = filled_buffer(capacity=12, added=added)
    stats = {"mean": jnp.array([0.0, 0.0, 2.5, -1.5]), "var": jnp.ones(4), "count": jnp.float32(9)}
    result = MOVE[how](buffer, make_plan(), normalizer=stats)
    assert int(result.dropped) > 0
    assert_matches_reference(result, buffer, fill={"omega": 2.5, "theta_dot": -1.5})


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


def test_action_outside_the_old_ids_in_one_buffer_of_a_population_raises_under_vmap():
    buffers = [filled_buffer(5, 5, seed=seed) for seed in (0, 1)]
    buffers[1] = buffers[1]._replace(
        data=buffers[1].data._replace(action=buffers[1].data.action.at[3].set(-1)))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *buffers)
    move = jax.jit(jax.vmap(lambda b: fs.transplant_buffer(b, make_plan())))
    with pytest.raises(Exception, match=r"field 'action' holds actions outside"):
        jax.block_until_ready(move(stacked))
    good = jax.tree.map(lambda *x: jnp.stack(x), buffers[0], buffers[0])
    assert_matches_reference(jax.tree.map(lambda x: x[1], move(good)), buffers[0])


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


# ----------------------------------------------------------------------------- flashbax


def timestep(n_obs=3):
    return {"obs": jnp.zeros(n_obs), "action": jnp.int32(0), "reward": jnp.float32(0.0),
            "done": jnp.bool_(False)}


def filled_flashbax(buffer, adds, rows, seed=0, n_obs=3, seq=1):
    """A flashbax state after `adds` add calls of `rows` x `seq` random steps."""
    state = buffer.init(timestep(n_obs))
    rng = np.random.default_rng(seed)
    for _ in range(adds):
        batch = {"obs": jnp.asarray(rng.normal(size=(rows, seq, n_obs)), jnp.float32),
                 "action": jnp.asarray(rng.integers(0, 3, (rows, seq)), jnp.int32),
                 "reward": jnp.asarray(rng.normal(size=(rows, seq)), jnp.float32),
                 "done": jnp.asarray(rng.random((rows, seq)) < 0.2)}
        state = buffer.add(state, batch)
    return state


def flashbax_rows(state):
    """{field: array (time, ...)} of each add-batch row."""
    experience = {k: np.asarray(v) for k, v in state.experience.items()}
    return [{k: v[r] for k, v in experience.items()} for r in range(experience["reward"].shape[0])]


def assert_flashbax_matches_reference(result, state, actions):
    capacity = state.experience["reward"].shape[1]
    write, full = int(state.current_index), bool(state.is_full)
    size = capacity if full else write
    dropped = 0
    for r, (row, got) in enumerate(zip(flashbax_rows(state), flashbax_rows(result.buffer))):
        expected, kept, row_dropped = reference_ring(row, write, size, actions=actions)
        dropped += row_dropped
        stored = slice(None) if row_dropped == 0 else slice(0, kept)
        for name in expected:
            np.testing.assert_array_equal(got[name][stored], expected[name][stored],
                                          err_msg=f"row {r} {name}")
            assert got[name].dtype == expected[name].dtype
        if row_dropped:
            assert int(result.buffer.current_index) == kept and not bool(result.buffer.is_full)
    if dropped == 0:
        assert int(result.buffer.current_index) == write and bool(result.buffer.is_full) == full
    assert int(result.dropped) == dropped
    assert type(result.buffer) is type(state)


GROWN = (["left", "stay", "right"], ["right", "stay", "left", "jump"])  # no action removed


@pytest.mark.parametrize("how", MOVE)
@pytest.mark.parametrize("adds", [2, 9])  # part-filled, wrapped
def test_flashbax_flat_buffer_matches_reference(how, adds):
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_flat_buffer(max_length=12, min_length=2, sample_batch_size=4,
                                  add_sequences=True, add_batch_size=2)
    state = filled_flashbax(buffer, adds, rows=2)
    result = MOVE[how](state, make_plan(actions=GROWN))
    assert_flashbax_matches_reference(result, state, GROWN)
    sample = buffer.sample(result.buffer, jax.random.key(0)).experience
    assert sample.first["obs"].shape == (4, 4)  # it samples as a buffer of the new agent


@pytest.mark.parametrize("how", MOVE)
def test_flashbax_trajectory_buffer_matches_reference(how):
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_trajectory_buffer(max_length_time_axis=8, min_length_time_axis=3,
                                        sample_batch_size=2, add_batch_size=3,
                                        sample_sequence_length=3, period=1)
    state = filled_flashbax(buffer, 5, rows=3, seq=2)
    assert_flashbax_matches_reference(MOVE[how](state, make_plan(actions=GROWN)), state, GROWN)


def test_flashbax_sequences_refuse_to_drop_actions():
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_flat_buffer(max_length=12, min_length=2, sample_batch_size=4,
                                  add_sequences=True, add_batch_size=2)
    state = filled_flashbax(buffer, 3, rows=2)
    with pytest.raises(ValueError, match=r"removes actions \['stay'\].*sequences of steps"):
        fs.transplant_buffer(state, make_plan())


@pytest.mark.parametrize("how", MOVE)
@pytest.mark.parametrize("adds", [1, 4])  # part-filled, wrapped
def test_flashbax_item_buffer_drops_removed_actions(how, adds):
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_item_buffer(max_length=10, min_length=1, sample_batch_size=2,
                                  add_sequences=True, add_batches=True)
    state = filled_flashbax(buffer, adds, rows=3, seed=adds)
    experience = {**state.experience, "action": state.experience["action"].at[0, 0].set(1)}
    state = state.replace(experience=experience)  # slot 0 is stored: one "stay" at least
    result = MOVE[how](state, make_plan(), items=True)
    assert_flashbax_matches_reference(result, state, ACTIONS)
    assert int(result.dropped) > 0


def test_flashbax_item_buffers_of_a_population_under_jit_and_vmap():
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_item_buffer(max_length=10, min_length=1, sample_batch_size=2,
                                  add_sequences=True, add_batches=True)
    states = [filled_flashbax(buffer, adds, rows=3, seed=adds) for adds in (1, 2, 5)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    plan = make_plan()
    moved = jax.jit(jax.vmap(lambda s: fs.transplant_buffer(s, plan, items=True)))(stacked)
    for i, state in enumerate(states):
        assert_flashbax_matches_reference(jax.tree.map(lambda x, i=i: x[i], moved), state, ACTIONS)


def test_flashbax_prioritised_item_buffer_refuses_to_drop():
    fbx = pytest.importorskip("flashbax")
    buffer = fbx.make_prioritised_item_buffer(max_length=8, min_length=1, sample_batch_size=2,
                                              add_sequences=True, add_batches=True)
    state = filled_flashbax(buffer, 2, rows=2)
    with pytest.raises(ValueError, match=r"prioritised flashbax buffer keeps a priority per slot"):
        fs.transplant_buffer(state, make_plan(), items=True)
    moved = fs.transplant_buffer(state, make_plan(actions=GROWN)).buffer  # nothing to drop
    assert moved.sum_tree_state is state.sum_tree_state


# ----------------------------------------------------------------------------- fs.surgery


def test_surgery_moves_the_buffer_with_the_agent_and_q_of_stored_actions_is_kept():
    from tests.conftest import MLP

    obs = (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])
    actions = (["left", "right"], ["right", "noop", "left"])
    old_m, new_m = MLP((16, 2)), MLP((16, 3))
    old = old_m.init(jax.random.key(0), jnp.zeros((2, 2)))
    fresh = new_m.init(jax.random.key(1), jnp.zeros((2, 4)))
    buffer = filled_buffer(capacity=16, added=20, obs_ids=obs[0], n_actions=2)
    stats = {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([2.0, 3.0]), "count": jnp.float32(7)}
    result = fs.surgery(old_m, old, new_m, fresh, buffer.data.obs[:8],
                        spaces={"obs": obs, "out": actions}, normalizer=stats, buffer=buffer)
    moved = result.buffer.buffer
    assert int(result.buffer.dropped) == 0 and int(moved.count) == 20
    np.testing.assert_array_equal(np.asarray(moved.data.obs)[:, [0, 3]], 0.0)  # moved mean is 0
    q_old = result.old_fn(buffer.data.obs)[jnp.arange(16), buffer.data.action]
    q_new = result.new_fn(moved.data.obs)[jnp.arange(16), moved.data.action]
    np.testing.assert_allclose(q_new, q_old, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(moved.data.action, 2 - 2 * np.asarray(buffer.data.action))
    assert result.verify(buffer.data.obs).max_abs_diff <= 1e-5


def test_surgery_without_a_buffer_returns_none():
    from tests.conftest import MLP

    m = MLP((4, 2))
    v = m.init(jax.random.key(0), jnp.zeros((2, 3)))
    assert fs.surgery(m, v, m, v, jnp.ones((2, 3))).buffer is None
