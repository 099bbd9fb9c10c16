"""The gymnax DQN, the ID-named environment views and the experiment runner, on tiny budgets."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxsurgery as fs
from experiments import dqn as exp
from flaxsurgery.rl import DQNConfig, EnvView, QNetwork, defaults, dqn, envs, make_train

TINY = DQNConfig(
    total_steps=400, num_envs=2, collect_steps=10, gradient_steps=5, learning_starts=100,
    eval_every=200, eval_episodes=2,
)


# ---------------------------------------------------------------------------------- views


def test_observation_view_picks_features_by_id_in_its_order():
    view = EnvView("CartPole-v1", obs_ids=("theta_dot", "x"))
    full = EnvView("CartPole-v1")
    key = jax.random.key(3)
    obs, _ = view.reset(key)
    full_obs, _ = full.reset(key)
    np.testing.assert_array_equal(obs, full_obs[jnp.array([3, 0])])


@pytest.mark.parametrize("action_id, env_action", [("torque-1", 0), ("torque0", 1), ("torque+1", 2)])
def test_action_view_maps_agent_actions_to_environment_actions(action_id, env_action):
    view = EnvView("Acrobot-v1", action_ids=(action_id,))
    _, state = view.reset(jax.random.key(0))
    key = jax.random.key(1)
    mine = view.step(key, state, 0)
    theirs = view.env.step(key, state, env_action, view.env_params)
    np.testing.assert_array_equal(mine[0], theirs[0])
    np.testing.assert_array_equal(mine[1].velocity_1, theirs[1].velocity_1)


def test_step_returns_gymnax_six_values_with_the_real_final_observation():
    view = EnvView("CartPole-v1", obs_ids=("theta", "x_dot"))
    _, state = view.reset(jax.random.key(0))
    state = state.replace(theta=jnp.float32(0.2), theta_dot=jnp.float32(1.0))  # falling over
    obs, _, reward, terminated, truncated, info = view.step(jax.random.key(1), state, 1)
    assert bool(terminated) and not bool(truncated) and float(reward) == 1.0
    final = info["final_observation"]
    assert final.shape == (2,) and float(final[0]) > 0.2094  # the pole past the limit, not a reset
    assert abs(float(obs[0])) <= 0.05  # the next episode's first observation


def test_view_first_used_inside_jit_caches_no_tracer():
    envs._make.cache_clear()
    view = EnvView("Acrobot-v1")
    inside = jax.jit(lambda key: view.reset(key)[0])(jax.random.key(0))
    np.testing.assert_array_equal(inside, view.reset(jax.random.key(0))[0])


def test_view_lists_every_bad_id_at_once():
    with pytest.raises(ValueError) as error:
        EnvView("Acrobot-v1", obs_ids=("cos1", "cos1", "phi"), action_ids=("torque+2",))
    message = str(error.value)
    assert "'phi'" in message and "duplicate observation ID 'cos1'" in message
    assert "'torque+2'" in message


# ---------------------------------------------------------------------------------- DQN pieces


def test_buffer_is_a_ring():
    buffer = dqn.buffer_init(capacity=4, obs_shape=(1,))
    for start in (0, 3):
        batch = dqn.Transition(
            obs=jnp.arange(start, start + 3, dtype=jnp.float32)[:, None],
            action=jnp.zeros(3, jnp.int32),
            reward=jnp.arange(start, start + 3, dtype=jnp.float32),
            next_obs=jnp.zeros((3, 1)),
            terminated=jnp.zeros(3, bool),
        )
        buffer = dqn.buffer_add(buffer, batch)
    assert int(buffer.count) == 6 and int(dqn.buffer_size(buffer)) == 4
    np.testing.assert_array_equal(buffer.data.reward, [4.0, 5.0, 2.0, 3.0])
    sample = dqn.buffer_sample(buffer, jax.random.key(0), 64)
    assert set(np.asarray(sample.reward).tolist()) <= {2.0, 3.0, 4.0, 5.0}


@pytest.mark.parametrize("double_dqn", [False, True])
def test_bootstrap_is_cut_on_termination_only(double_dqn):
    """A truncated transition (terminated False) bootstraps; a terminated one does not."""
    config = DQNConfig(gamma=0.5, huber=False, double_dqn=double_dqn)
    net = QNetwork((), 2)  # one Dense layer: Q = obs @ kernel + bias
    params = {"params": {"Dense_0": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}}
    target = {"params": {"Dense_0": {"kernel": 2 * jnp.eye(2), "bias": jnp.zeros(2)}}}
    batch = dqn.Transition(
        obs=jnp.array([[1.0, 0.0], [1.0, 0.0]]),
        action=jnp.array([0, 0]),
        reward=jnp.array([1.0, 1.0]),
        next_obs=jnp.array([[0.0, 3.0], [0.0, 3.0]]),
        terminated=jnp.array([False, True]),
    )
    # Q(s, 0) = 1; next value = target Q(s', 1) = 6 with either action choice.
    # Truncated: error 1 - (1 + 0.5 * 6) = -3; terminated: 1 - 1 = 0.
    loss = dqn.td_loss(config, net.apply, params, target, batch)
    np.testing.assert_allclose(loss, 0.5 * (9.0 + 0.0) / 2)


def test_config_lists_every_problem():
    with pytest.raises(ValueError) as error:
        DQNConfig(total_steps=1000, eval_every=150, learning_starts=10)
    message = str(error.value)
    assert "eval_every=150" in message and "total_steps=1000" in message
    assert "learning_starts=10" in message


def test_defaults_per_environment_and_their_shorter_runs():
    config = defaults.default_config("CartPole-v1")
    assert (config.total_steps, config.epsilon_steps, config.max_grad_norm) == (300_000, 150_000, None)
    short = defaults.default_config("Acrobot-v1", total_steps=20_000)
    full = defaults.default_config("Acrobot-v1")
    # The same evaluations, and exploration and learning start at the same share of the run.
    assert len(short.eval_steps) == len(full.eval_steps)
    assert short.epsilon_steps / short.total_steps == full.epsilon_steps / full.total_steps
    assert short.learning_starts / short.total_steps == full.learning_starts / full.total_steps
    with pytest.raises(ValueError, match="no DQN defaults for 'Pendulum-v1'"):
        defaults.default_config("Pendulum-v1")


def test_no_clipping_keeps_the_optimizer_state_structure():
    params = {"w": jnp.ones(3)}
    clipped = dqn.make_optimizer(TINY).init(params)
    unclipped = dqn.make_optimizer(dataclasses.replace(TINY, max_grad_norm=None)).init(params)
    assert jax.tree.structure(clipped) == jax.tree.structure(unclipped)


# ---------------------------------------------------------------------------------- training


def test_seeds_differ_and_progress_runs_once_per_evaluation():
    calls = []
    view = EnvView("CartPole-v1")
    train = make_train(TINY, view, QNetwork((8,), view.num_actions), progress=calls.append)
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 3))
    assert out.returns.shape == (3, len(TINY.eval_steps))
    assert [int(c) for c in calls] == [200, 400]
    flat = jax.tree.leaves(out.params)[0]
    assert not np.allclose(flat[0], flat[1])  # every seed has its own key


def test_starts_from_given_parameters():
    view = EnvView("CartPole-v1")
    net = QNetwork((8,), view.num_actions)
    params = net.init(jax.random.key(5), jnp.zeros(4))
    config = dataclasses.replace(TINY, learning_starts=10_000)  # never learns: params unchanged
    out = jax.jit(make_train(config, view, net))(jax.random.key(0), params)
    jax.tree.map(np.testing.assert_array_equal, out.params, params)


def test_run_returns_where_it_ended_and_a_second_run_goes_on_from_there():
    """The first run's buffer, step and update counters come back; a run given them keeps
    counting, explores at epsilon's end value and learns from the first iteration, where a
    fresh run waits for its buffer to fill."""
    view = EnvView("CartPole-v1")
    net = QNetwork((8,), view.num_actions)
    config = dataclasses.replace(TINY, buffer_size=400, learning_starts=400, epsilon_steps=200)
    train = jax.jit(make_train(config, view, net))
    first = train(jax.random.key(0))
    assert int(first.steps) == config.total_steps and int(first.buffer.count) == 400
    iterations = config.total_steps // (config.num_envs * config.collect_steps)
    # the buffer reaches learning_starts only after the last collection: one iteration learns
    assert int(first.updates) == config.gradient_steps
    fresh = train(jax.random.key(1), first.params, first.target_params, first.opt_state)
    assert int(fresh.updates) == config.gradient_steps  # an empty buffer waits again
    going_on = train(jax.random.key(1), first.params, first.target_params, first.opt_state,
                     first.buffer, first.steps, first.updates)
    assert int(going_on.steps) == 2 * config.total_steps
    assert int(going_on.buffer.count) == 800
    assert int(going_on.updates) == config.gradient_steps * (1 + iterations)
    assert float(dqn.epsilon(config, going_on.steps)) == pytest.approx(config.epsilon_end)


def test_default_run_equals_one_given_an_empty_buffer_and_zero_counters():
    view = EnvView("CartPole-v1")
    train = jax.jit(make_train(TINY, view, QNetwork((8,), view.num_actions)))
    default = train(jax.random.key(2))
    empty = dqn.buffer_init(TINY.buffer_size, view.obs_shape)
    explicit = train(jax.random.key(2), None, None, None, empty, jnp.int32(0), jnp.int32(0))
    jax.tree.map(np.testing.assert_array_equal, default, explicit)


def test_a_buffer_of_another_shape_is_refused():
    view = EnvView("CartPole-v1")
    train = make_train(TINY, view, QNetwork((8,), view.num_actions))
    small = dqn.buffer_init(TINY.buffer_size, (3,))
    with pytest.raises(ValueError, match=r"init_buffer holds observations shaped \(10000, 3\)"):
        train(jax.random.key(0), init_buffer=small)


def test_dqn_learns_cartpole_in_a_few_thousand_steps():
    config = DQNConfig(
        total_steps=8_000, num_envs=4, collect_steps=25, gradient_steps=50, learning_starts=500,
        epsilon_steps=3_000, target_period=250, eval_every=2_000, eval_episodes=5,
    )
    view = EnvView("CartPole-v1")
    train = make_train(config, view, QNetwork((32, 32), view.num_actions))
    returns = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4)).returns
    best = np.asarray(returns.mean(axis=0))[1:].max()
    assert best > 100.0, returns


# ---------------------------------------------------------------------------------- experiment


def test_experiment_transplants_every_seed_and_writes_results(tmp_path, capsys):
    experiment = exp.Experiment(
        name="tiny",
        old_view=EnvView("Acrobot-v1", obs_ids=("cos1", "sin1", "dtheta1"), action_ids=("torque-1", "torque+1")),
        new_view=EnvView("Acrobot-v1"),
        old_hidden=(4,),
        new_hidden=(6, 6),
        config=dataclasses.replace(TINY, eval_episodes=1),
        threshold=-100.0,
        layer_map={"params/Dense_1": None, "params/Dense_2": "params/Dense_1"},
    )
    summary = exp.main(experiment, ["--seeds", "2", "--steps", "400", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "tiny" / "curves.png").stat().st_size > 0
    arms = summary["arms"]
    assert list(arms) == list(exp.ARMS)
    # The preserving transplant keeps the greedy policy: the same return on the same episodes.
    assert arms["transplant"]["first_return"] == pytest.approx(arms["old"]["final_return"])
    assert "| transplant |" in capsys.readouterr().out


def test_continue_arms_and_control_go_on_from_the_old_run(tmp_path):
    """The continue arms start from the old agent's greedy policy (preserving rules), the
    control from the old agent itself; the summary pairs them with scratch and the control
    and checks the continue arm's targets."""
    experiment = exp.Experiment(
        name="tiny_continue", old_view=EnvView("CartPole-v1"), new_view=EnvView("CartPole-v1"),
        old_hidden=(4,), new_hidden=(6,), config=dataclasses.replace(TINY, eval_episodes=1),
        threshold=475.0,
    )
    arms = (*exp.ABLATION_ARMS, "continue_seed")
    summary = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path),
                                    "--arms", ",".join(arms)])
    got = summary["arms"]
    assert list(got) == ["old", *[arm for arm in exp.NEW_ARMS if arm in arms], "control"]
    old_final = got["old"]["final_return"]
    for arm in ("transplant", "continue", "continue_buffer", "continue_explore", "control"):
        assert got[arm]["first_return"] == pytest.approx(old_final), arm
    assert set(summary["paired_vs_scratch"]) == set(arms) - {"scratch", "control"}
    assert set(summary["paired_vs_control"]) == set(exp.CONTINUE)
    continuation = summary["continuation"]
    assert continuation["old_steps"] == [TINY.total_steps] * 2
    assert continuation["buffer_dropped"] == [0, 0]
    dip = summary["targets"]["dip"]
    assert dip["floor"] == pytest.approx(got["control"]["lowest_return"] - 0.05 * abs(old_final))
    assert dip["met"] == (got["continue"]["lowest_return"] >= dip["floor"])
    phases = summary["phase_wall_s"]  # every phase timed; together at most the whole run
    assert list(phases) == ["old", "surgery", "new", "control"]
    assert all(s > 0 for s in phases.values()) and sum(phases.values()) <= summary["wall_s"]


def test_arms_trained_apart_equal_arms_trained_together_and_merge(tmp_path):
    """Arm seed i trains on the same key whatever else trains: continue and control trained
    alone, with the restart arms taken from an earlier summary, give the summary of one run
    that trained them all."""
    experiment = exp.Experiment(
        name="tiny_reuse", old_view=EnvView("CartPole-v1"), new_view=EnvView("CartPole-v1"),
        old_hidden=(4,), new_hidden=(6,), config=dataclasses.replace(TINY, eval_episodes=1),
        threshold=475.0,
    )
    together = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path / "a")],
                        arms=exp.CONTINUE_ARMS)
    earlier = tmp_path / "a" / "tiny_reuse" / "summary.json"
    apart = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path / "b"),
                                  "--arms", "continue,control", "--reuse", str(earlier)])
    assert list(apart["arms"]) == list(together["arms"])
    for arm in together["arms"]:
        assert apart["arms"][arm]["returns"] == together["arms"][arm]["returns"], arm
    assert apart["continuation"]["reused"]["arms"] == ["transplant", "transplant_seed", "scratch"]


def test_an_arm_keeping_some_layers_takes_the_rest_from_scratch():
    """``Continuation(layers=...)``: the named layers' parameters (and target) come from the
    transplant, every other parameter and the whole optimizer state from scratch; a name the
    network lacks is refused with the names it has."""
    experiment = exp.Experiment(
        name="t", old_view=EnvView("CartPole-v1", action_ids=("left",)),
        new_view=EnvView("CartPole-v1"), old_hidden=(4,), new_hidden=(4,), config=TINY,
        threshold=475.0,
    )
    tx = dqn.make_optimizer(TINY)
    keys = jax.random.split(jax.random.key(0), 2)
    old = exp.init_population(experiment.old_network, (4,), keys)
    fresh = exp.init_population(experiment.new_network, (4,), jax.random.split(keys[0], 2))
    old_opt, fresh_opt = jax.vmap(tx.init)(old), jax.vmap(tx.init)(fresh)
    old_opt = jax.tree.map(lambda leaf: leaf + 1 if leaf.dtype == jnp.float32 else leaf, old_opt)
    plan = exp.make_plan(experiment, "preserving")
    transplanted = exp.transplant_agents(
        plan, exp.Trained(old, old, old_opt, np.zeros((2, 1))), fresh, fresh_opt)
    params, target, opt_state = exp.with_layers(transplanted, (fresh, fresh, fresh_opt),
                                                ("Dense_0",))
    for got in (params, target):
        jax.tree.map(np.testing.assert_array_equal, got["params"]["Dense_0"],
                     old["params"]["Dense_0"])
        jax.tree.map(np.testing.assert_array_equal, got["params"]["Dense_1"],
                     fresh["params"]["Dense_1"])
    assert not np.array_equal(transplanted[0]["params"]["Dense_1"]["kernel"],
                              fresh["params"]["Dense_1"]["kernel"])  # the test can fail
    jax.tree.map(np.testing.assert_array_equal, opt_state, fresh_opt)
    with pytest.raises(ValueError, match=r"\['Dense_9'\] are not in the new network.*'Dense_1'"):
        exp.with_layers(transplanted, (fresh, fresh, fresh_opt), ("Dense_0", "Dense_9"))


def test_reuse_refuses_an_earlier_run_whose_old_agents_differ():
    experiment = exp.Experiment(
        name="t", old_view=EnvView("CartPole-v1"), new_view=EnvView("CartPole-v1"),
        old_hidden=(4,), new_hidden=(6,), config=TINY, threshold=475.0,
    )
    old = np.zeros((2, 3), np.float32)
    earlier = {"experiment": "t", "seeds": 2,
               "config": {"dqn": json.loads(json.dumps(dataclasses.asdict(TINY)))},
               "arms": {"old": {"returns": [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]},
                        "scratch": {"returns": old.tolist()}}}
    with pytest.raises(ValueError, match="old arm's returns differ"):
        exp.with_earlier_arms({"old": old}, earlier, experiment)
    earlier["arms"]["old"]["returns"] = old.tolist()
    merged = exp.with_earlier_arms({"old": old, "control": old}, earlier, experiment)
    assert list(merged) == ["old", "scratch", "control"]
    other = dataclasses.replace(experiment, config=dataclasses.replace(TINY, learning_rate=1e-2))
    with pytest.raises(ValueError, match=r"settings differ in \['learning_rate'\]"):
        exp.with_earlier_arms({"old": old}, earlier, other)


def test_buffers_move_along_the_views_ids():
    """Seed by seed, a stored observation's features move to their IDs' new places (new ones
    at 0) and actions by ID; where no space changes, every stored value stays."""
    old_view = EnvView("CartPole-v1", obs_ids=("x_dot", "theta"))
    new_view = EnvView("CartPole-v1", obs_ids=("theta", "x", "x_dot"))
    experiment = exp.Experiment(name="t", old_view=old_view, new_view=new_view, old_hidden=(4,),
                                new_hidden=(4,), config=TINY, threshold=475.0)
    rng = np.random.default_rng(0)
    buffers = dqn.Buffer(
        dqn.Transition(obs=jnp.asarray(rng.standard_normal((2, 5, 2)), jnp.float32),
                       action=jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.int32),
                       reward=jnp.ones((2, 5)),
                       next_obs=jnp.asarray(rng.standard_normal((2, 5, 2)), jnp.float32),
                       terminated=jnp.zeros((2, 5), bool)),
        jnp.array([5, 3], jnp.int32))
    moved, dropped = exp.move_buffers(exp.make_plan(experiment, "preserving"), buffers)
    assert dropped.tolist() == [0, 0]
    for field in ("obs", "next_obs"):
        old = np.asarray(getattr(buffers.data, field))
        expected = np.stack([old[..., 1], np.zeros_like(old[..., 0]), old[..., 0]], axis=-1)
        np.testing.assert_array_equal(getattr(moved.data, field), expected)
    np.testing.assert_array_equal(moved.data.action, buffers.data.action)
    np.testing.assert_array_equal(moved.count, buffers.count)
    same = dataclasses.replace(experiment, new_view=old_view)
    unchanged, _ = exp.move_buffers(exp.make_plan(same, "preserving"), buffers)
    jax.tree.map(np.testing.assert_array_equal, unchanged, buffers)


def test_unknown_arms_are_refused():
    with pytest.raises(ValueError, match="unknown arms \\['contineu'\\]"):
        exp.check_arms(["continue", "contineu"])
    with pytest.raises(ValueError, match=r"arms \['half'\] keep layers .* name no preset"):
        exp.check_arms(["half"], {"half": exp.Continuation(None, layers=("Dense_0",))})


def test_experiment_spaces_replace_the_ids_the_views_give():
    """Honest IDs permute the swapped actions' output rows; IDs kept by position copy them."""
    honest = exp.Experiment(
        name="swap", old_view=EnvView("CartPole-v1"),
        new_view=EnvView("CartPole-v1", action_ids=("right", "left")),
        old_hidden=(4,), new_hidden=(4,), config=TINY, threshold=475.0,
    )
    kept = dataclasses.replace(honest, spaces={"out": (("left", "right"), ("left", "right"))})
    params = honest.old_network.init(jax.random.key(0), jnp.zeros(4))
    kernel = params["params"]["Dense_1"]["kernel"]
    for experiment, columns in ((honest, [1, 0]), (kept, [0, 1])):
        new = fs.transplant(params, exp.make_plan(experiment, "preserving"), params)
        np.testing.assert_array_equal(new["params"]["Dense_1"]["kernel"], kernel[:, columns])


def test_renamed_types_keep_their_old_names_with_a_warning():
    from flaxsurgery.rl import ppo

    for module, old, new in ((dqn, "TrainState", dqn.DQNState), (ppo, "TrainState", ppo.PPOState),
                             (ppo, "Transition", ppo.RolloutStep)):
        with pytest.warns(DeprecationWarning, match=f"{old} is renamed {new.__name__}"):
            assert getattr(module, old) is new
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = dqn.Nothing
